"""mAP50-95 under the core's L2 PGD / IFGSM, as an Ultralytics DetectionValidator.

Standalone (one noise level per call, through Ultralytics' own ``model.val``)::

        YOLO("best.pt").val(data="bccd.yaml", validator=partial(AdversarialDetectionValidator,
                                                             eps=5.0, attack="pgd", steps=100))

For paper-style curves over several models use ``amat eval yolo`` (:mod:`.evaluate`: all
levels of a batch in one attack call). During training (``--adv-val-eps 5,10``) the
trainer's validator adds ``metrics/mAP50-95(P5)`` ... next to the clean metrics; fitness
(and so ``best.pt``) stays the clean one.

The attack objective is the sum of the per-image terms of Ultralytics' own detection
loss with the ground-truth boxes (white box), on the normalised ``[0, 1]`` image, clamped.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from amat_hooks.integrations.ultralytics.offline import prepare_offline

prepare_offline()

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.models.yolo.detect import DetectionValidator  # noqa: E402
from ultralytics.nn.autobackend import AutoBackend  # noqa: E402
from ultralytics.utils import DEFAULT_CFG_KEYS  # noqa: E402

from amat_hooks.attacks import ifgsm, pgd  # noqa: E402
from amat_hooks.integrations.ultralytics.adapter import TARGET_KEYS, criterion_with_terms  # noqa: E402

ATTACKS = ("pgd", "ifgsm")


def build_criterion(model: torch.nn.Module) -> Any:
    """The model's own Ultralytics criterion; loaded checkpoints keep ``args`` as a dict,
    which the criterion cannot read, so it is given the full config namespace."""
    args = getattr(model, "args", None)
    if isinstance(args, dict) or args is None:
        ns = get_cfg(overrides={k: v for k, v in (args or {}).items() if k in DEFAULT_CFG_KEYS})
        saved = args
        model.args = ns
        try:
            return model.init_criterion()
        finally:
            model.args = saved
    return model.init_criterion()


def level_tag(attack: str, eps: float) -> str:
    """Paper-style column name: ``P5`` for PGD at 5, ``IF5`` for IFGSM."""
    return f"{'P' if attack == 'pgd' else 'IF'}{eps:g}"


class AdversarialDetectionValidator(DetectionValidator):
    """DetectionValidator whose images are attacked (L2 ball of radius ``eps``) first."""

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, *, eps: float = 0.0,
                 levels: Sequence[float] = (), attack: str = "pgd", steps: int | None = None,
                 step_size: float | None = None) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")
        if not eps >= 0 or any(not e >= 0 for e in levels):
            raise ValueError(f"noise levels must be >= 0, got eps={eps} levels={list(levels)}")
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.eps = float(eps)
        self.levels = [float(e) for e in levels]
        self.attack = attack
        self.steps = steps if steps is not None else (100 if attack == "pgd" else 10)
        self.step_size = step_size
        self._net: torch.nn.Module | None = None
        self._criterion = None

    # -- Ultralytics hooks -----------------------------------------------------------------
    def init_metrics(self, model: torch.nn.Module) -> None:
        super().init_metrics(model)
        net = model.model if isinstance(model, AutoBackend) else model
        if net is not self._net:
            self._net, self._criterion = net, None

    def preprocess(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = super().preprocess(batch)
        if self.eps > 0:
            batch["img"] = self.perturb(batch)
        return batch

    def get_desc(self) -> str:
        desc = super().get_desc()
        return desc if self.eps == 0 else f"{level_tag(self.attack, self.eps)} " + desc.lstrip()

    def __call__(self, trainer=None, model=None, **kwargs):
        if trainer is None or not self.levels:
            return super().__call__(trainer, model, **kwargs)
        eps, plots = self.eps, self.args.plots
        self.eps = 0.0
        stats = super().__call__(trainer, model, **kwargs)
        extra = {}
        try:
            self.args.plots = False
            for level in self.levels:
                self.eps = level
                r = super().__call__(trainer, model, **kwargs)
                if r is not None:
                    extra[f"metrics/mAP50-95({level_tag(self.attack, level)})"] = r["metrics/mAP50-95(B)"]
        finally:
            self.eps, self.args.plots = eps, plots
        return None if stats is None else {**stats, **extra}

    # -- the attack --------------------------------------------------------------------------
    def perturb(self, batch: dict[str, Any]) -> torch.Tensor:
        """Adversarial images for a preprocessed batch (core PGD/IFGSM, bounds [0, 1])."""
        if self._net is None:
            raise RuntimeError("AdversarialDetectionValidator.perturb called before init_metrics(model)")
        net = self._net
        with torch.inference_mode(False), torch.enable_grad():
            if self._criterion is None:  # its constant tensors must not be inference tensors
                self._criterion = build_criterion(net)
            for m in net.modules():  # the head caches anchors made under inference mode: remake them
                if hasattr(m, "anchors") and hasattr(m, "shape"):
                    m.shape = None
            # Validation runs under inference mode: work on ordinary copies.
            x = batch["img"].clone().float()
            targets = {k: batch[k].clone() for k in TARGET_KEYS}
            dtype = next(net.parameters()).dtype
            crit = self._criterion

            def terms(xa: torch.Tensor) -> torch.Tensor:
                return criterion_with_terms(crit, net(xa.to(dtype)), targets).terms

            if self.attack == "pgd":
                res = pgd(terms, x, self.eps, steps=self.steps, step_size=self.step_size, bounds=(0.0, 1.0),
                          model=net)
            else:
                res = ifgsm(terms, x, self.eps, steps=self.steps, step_size=self.step_size, bounds=(0.0, 1.0),
                            model=net)
        return res.x_adv.to(batch["img"].dtype)
