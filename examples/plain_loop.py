"""A plain PyTorch training loop made adversarial with amat-hooks (two extra lines).

    .venv/bin/python examples/plain_loop.py --adv amat --adv-step 0.5
    .venv/bin/python examples/plain_loop.py --adv sat --adv-eps 2
    .venv/bin/python examples/plain_loop.py --adv none

Generated segmentation data; prints the margin summary each epoch and the clean /
PGD Dice at the end.
"""
import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

from amat_hooks import AdversarialLoop, AdvConfig, AdvConfigError
from amat_hooks.evaluation import robustness_eval
from amat_hooks.evaluation.segmentation import SegmentationEvalTask
from amat_hooks.zoo.segnets import TinySegNet, seg_loss_terms
from amat_hooks.zoo.shapes import shapes_segmentation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    AdvConfig.add_arguments(ap)
    args = ap.parse_args()
    try:
        config = AdvConfig.from_args(args)
    except AdvConfigError as e:  # one line naming the flag and the fix, before any training
        ap.error(str(e))

    x, y = shapes_segmentation(64, 32, seed=0)
    ids = torch.arange(len(x))  # one stable id per sample: AMAT keys margins by it
    loader = DataLoader(TensorDataset(x, y, ids), batch_size=16, shuffle=True)
    model = TinySegNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    adv = AdversarialLoop(model, seg_loss_terms, config)                   # line 1
    for epoch in range(args.epochs):
        model.train()
        for xb, yb, ib in loader:
            loss = adv.loss((xb, yb, ib))                                     # line 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}", adv.epoch_end(epoch))

    xt, yt = shapes_segmentation(32, 32, seed=1)
    res = robustness_eval(SegmentationEvalTask(model, xt, yt, seg_loss_terms, batch_size=32), [1.0, 2.0],
                          pgd_steps=20, progress=False)
    print(f"clean ADI {res.clean['ADI']:.4f}; PGD ADI " +
          ", ".join(f"eps {lv:g}: {res.noisy['pgd'][lv]['ADI']:.4f}" for lv in res.levels))


if __name__ == "__main__":
    main()
