"""``amat demo --backend loop``: STD vs SAT vs AMAT with the generic adapter on generated
segmentation data; prints the paper-style robustness table."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AdvConfig
from .evaluation import EvalResult, robustness_eval
from .integrations.torch_loop import AdversarialLoop, SegmentationEvalTask
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
            tot += float(loss.detach()) * len(idx)
        summ = adv.epoch_end(ep)
        extra = f"  margin mean {summ['margin_mean']:.3f} max {summ['margin_max']:.3f}" if "margin_mean" in summ else ""
        log(f"  [{cfg.label:>6}] epoch {ep + 1:>2}/{epochs} loss {tot / len(perm):.4f}{extra}")
    return model, adv, (time.perf_counter() - t0) / epochs


def run_loop_demo(epochs: int = 12, n_train: int = 96, n_test: int = 48, size: int = 32,
                  levels: Sequence[float] = (1.0, 2.0, 4.0), sat_eps: Sequence[float] = (1.0, 4.0),
                  amat_step: float = 0.5, seed: int = 0, pgd_steps: int = 100,
                  log: Callable[[str], None] = print) -> tuple[dict[str, EvalResult], dict[str, float], list[float]]:
    """Train STD, SAT (each eps) and AMAT with the same budget and seed; evaluate each.

    Returns (results by method, seconds per epoch by method, AMAT's final margins)."""
    xtr, ytr = shapes_segmentation(n_train, size, seed=seed)
    xte, yte = shapes_segmentation(n_test, size, seed=seed + 1000)
    configs = [AdvConfig(mode="none")] + [AdvConfig(mode="sat", eps=e) for e in sat_eps] + [
        AdvConfig(mode="amat", step=amat_step, xi_rule="mean")]
    results: dict[str, EvalResult] = {}
    timing: dict[str, float] = {}
    margins: list[float] = []
    for cfg in configs:
        log(f"training {cfg.label} ({epochs} epochs, {n_train} generated {size}x{size} images)")
        model, adv, spe = train_one(cfg, xtr, ytr, epochs, 16, seed, log)
        task = SegmentationEvalTask(model, xte, yte, seg_loss_terms, batch_size=len(xte))
        results[cfg.label] = robustness_eval(task, levels, pgd_steps=pgd_steps, progress=False, seed=seed)
        timing[cfg.label] = spe
        if cfg.mode == "amat":
            margins = adv.policy.margins.values().tolist()
    return results, timing, margins
