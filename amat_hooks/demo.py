"""``amat demo --backend loop``: STD vs SAT vs AMAT with the generic adapter on generated
segmentation data; prints the paper-style robustness table."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks import ifgsm, multi_level, pgd
from .config import AdvConfig
from .integrations.torch_loop import AdversarialLoop
from .metrics import adi, auc_robust, dice_counts
from .synthetic import shapes_segmentation


class TinySegNet(nn.Module):
    """A small encoder-decoder with BatchNorm (BN makes the 'attack must not touch
    running statistics' rule matter)."""

    def __init__(self, ch: int = 16, classes: int = 2) -> None:
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
        self.enc1, self.enc2 = block(1, ch), block(ch, 2 * ch)
        self.mid = block(2 * ch, 2 * ch)
        self.dec = block(3 * ch, ch)
        self.head = nn.Conv2d(ch, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.mid(self.enc2(F.max_pool2d(e1, 2)))
        up = F.interpolate(e2, scale_factor=2, mode="nearest")
        return self.head(self.dec(torch.cat([up, e1], 1)))


def seg_loss_terms(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample [B, 2] terms: cross-entropy and soft-Dice loss (1 - Dice)."""
    ce = F.cross_entropy(output, target, reduction="none").flatten(1).mean(1)
    p = output.softmax(1)[:, 1].flatten(1)
    t = (target == 1).float().flatten(1)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return torch.stack([ce, 1 - dice], 1)


@dataclass
class DemoResult:
    label: str
    clean: float
    pgd: list[float]
    ifgsm: list[float]
    seconds_per_epoch: float
    margin_mean: float | None = None

    @property
    def pgd_avg(self) -> float:
        return sum(self.pgd) / len(self.pgd)

    @property
    def ifgsm_avg(self) -> float:
        return sum(self.ifgsm) / len(self.ifgsm)

    @property
    def auc_robust(self) -> float:
        return auc_robust(self.clean, self.pgd)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, levels: Sequence[float], pgd_steps: int = 100,
             ifgsm_steps: int = 10, seed: int = 0) -> tuple[float, list[float], list[float]]:
    """Clean ADI, then ADI under PGD and IFGSM at every level (one attack call per attack
    for all levels, per-sample eps)."""
    model.eval()
    with torch.no_grad():
        clean = adi(dice_counts(model(x).argmax(1), y, labels=[1]))
    xr, eps = multi_level(levels, x)
    yr = y.repeat(len(levels), 1, 1)
    terms = lambda xa: seg_loss_terms(model(xa), yr)
    torch.manual_seed(seed)
    res = {}
    for name, fn in (("pgd", lambda: pgd(terms, xr, eps, steps=pgd_steps, model=model)),
                     ("ifgsm", lambda: ifgsm(terms, xr, eps, steps=ifgsm_steps, model=model))):
        xa = fn().x_adv
        with torch.no_grad():
            pred = model(xa).argmax(1)
        b = x.shape[0]
        res[name] = [adi(dice_counts(pred[i * b:(i + 1) * b], y, labels=[1])) for i in range(len(levels))]
    return clean, res["pgd"], res["ifgsm"]


def train_one(cfg: AdvConfig, xtr: Tensor, ytr: Tensor, epochs: int, batch: int, seed: int,
              log: Callable[[str], None]) -> tuple[nn.Module, AdversarialLoop, float]:
    torch.manual_seed(seed)
    model = TinySegNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    adv = AdversarialLoop(model, seg_loss_terms, cfg)
    ids = torch.arange(xtr.shape[0])
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=g)
        tot = 0.0
        for s in range(0, len(perm), batch):
            idx = perm[s:s + batch]
            loss = adv.loss((xtr[idx], ytr[idx], ids[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss) * len(idx)
        summ = adv.epoch_end(ep)
        extra = f"  margin mean {summ['margin_mean']:.3f} max {summ['margin_max']:.3f}" if "margin_mean" in summ else ""
        log(f"  [{cfg.label:>6}] epoch {ep + 1:>2}/{epochs} loss {tot / len(perm):.4f}{extra}")
    return model, adv, (time.perf_counter() - t0) / epochs


def run_loop_demo(epochs: int = 12, n_train: int = 96, n_test: int = 48, size: int = 32,
                  levels: Sequence[float] = (1.0, 2.0, 4.0), sat_eps: Sequence[float] = (1.0, 4.0),
                  amat_step: float = 0.5, seed: int = 0, log: Callable[[str], None] = print) -> list[DemoResult]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    xtr, ytr = shapes_segmentation(n_train, size, seed=seed)
    xte, yte = shapes_segmentation(n_test, size, seed=seed + 1000)
    configs = [AdvConfig(mode="none")] + [AdvConfig(mode="sat", eps=e) for e in sat_eps] + [
        AdvConfig(mode="amat", step=amat_step, xi_rule="mean")]
    results = []
    for cfg in configs:
        log(f"training {cfg.label} ({epochs} epochs, {n_train} generated {size}x{size} images)")
        model, adv, spe = train_one(cfg, xtr, ytr, epochs, 16, seed, log)
        clean, p, f = evaluate(model, xte, yte, levels)
        mm = adv.policy.margins.summary()["mean"] if cfg.mode == "amat" else None
        results.append(DemoResult(cfg.label, clean, p, f, spe, mm))
    return results


def format_table(results: Sequence[DemoResult], levels: Sequence[float], metric: str = "ADI") -> str:
    head = ([f"Method", f"{metric}"] + [f"P.{l:g}" for l in levels] + ["Avg."]
            + [f"IF.{l:g}" for l in levels] + ["Avg.", "AUC_rob", "s/epoch"])
    rows = [[r.label, r.clean, *r.pgd, r.pgd_avg, *r.ifgsm, r.ifgsm_avg, r.auc_robust, r.seconds_per_epoch]
            for r in results]
    best = [max(range(len(rows)), key=lambda i: rows[i][c]) for c in range(1, len(head) - 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = [row[0]] + [f"**{v:.4f}**" if best[c - 1] == i else f"{v:.4f}"
                            for c, v in enumerate(row[1:-1], start=1)] + [f"{row[-1]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
