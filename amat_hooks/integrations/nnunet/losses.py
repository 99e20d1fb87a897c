"""Per-sample loss terms from nnU-Net's OWN loss object (no re-implementation).

nnU-Net's training loss is ``DeepSupervisionWrapper(DC_and_CE_loss | DC_and_BCE_loss)``:
CE (or BCE) + (negative) soft Dice over the deep-supervision outputs, ignore label and
regions handled inside. It reduces over the batch, so the per-sample value of sample i
is the same loss object applied to the one-sample batch ``[i:i+1]``. It can be negative
(Dice enters as -Dice), so xi must come from these same numbers (``amat calibrate``).

Under DDP with batch Dice the loss all-gathers its Dice statistics; the attack scores
samples a rank-dependent number of times (it stops early when every sample crossed its
boundary), so per-sample scoring runs with the loss's ``ddp`` switches turned off.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

#: Name of the single loss term (K = 1) in logs and xi files.
TERM_NAMES = ("dc_ce",)


@contextlib.contextmanager
def collectives_off(loss: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``ddp = False`` on every (sub)module of the loss that has it."""
    changed = []
    modules = loss.modules() if isinstance(loss, nn.Module) else []
    for m in modules:
        if getattr(m, "ddp", False) is True:
            changed.append(m)
            m.ddp = False
    try:
        yield loss
    finally:
        for m in changed:
            m.ddp = True


def _as_list(v: Any) -> list[Tensor]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def per_sample_terms(loss: nn.Module, output: Tensor | Sequence[Tensor],
                     target: Tensor | Sequence[Tensor], deep_supervision: bool) -> Tensor:
    """``[B, 1]`` per-sample values of the trainer's loss; differentiable w.r.t. ``output``.

    ``deep_supervision``: whether ``loss`` takes lists (``DeepSupervisionWrapper``).
    """
    outs, tgts = _as_list(output), _as_list(target)
    batch = outs[0].shape[0]
    values = []
    with collectives_off(loss):
        for i in range(batch):
            o = [t[i:i + 1] for t in outs]
            g = [t[i:i + 1] for t in tgts]
            v = loss(o, g) if deep_supervision else loss(o[0], g[0])
            values.append(torch.as_tensor(v, dtype=torch.float32, device=outs[0].device).reshape(()))
    return torch.stack(values).float().unsqueeze(1)
