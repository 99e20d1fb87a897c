"""The Multi-Task U-Net loss as ``amat run`` needs it (hook ``amat_runner_loss``).

Three per-sample terms ``[heatmap, offset x, offset y]`` (:func:`.losses.landmark_terms`).
The heatmap term is Dice or BCE, whichever the script trains with:

* ``--heatmap-loss auto`` (default): BCE if the script created an ``nn.BCELoss`` (the public
  Multi-Task U-Net code always does), else Dice. Confirmed after the script computed its
  first loss, before its first optimizer step: BCE if the script called one of its
  ``nn.BCELoss`` modules on the training output, else Dice. A wrong guess is corrected
  then (the margin test of every batch uses the right term; only the first batch's noise
  was made against the guessed one, and the log says so).
* ``--heatmap-loss dice|bce``: the user's word; a script that contradicts it (calls its
  ``nn.BCELoss`` in training, or never does) is refused before its first optimizer step,
  so nothing is trained and no state is written.

A script that computes BCE with ``F.binary_cross_entropy`` and creates no ``nn.BCELoss``
cannot be told from Dice: pass ``--heatmap-loss bce``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from amat_hooks.run.loss import RunnerError, ScriptLoss
from amat_hooks.integrations.multitask_unet.losses import TERM_NAMES, landmark_terms

HEATMAP_CHOICES = ("auto", "dice", "bce")


class LandmarkScriptLoss(ScriptLoss):
    """Per-sample ``[heatmap, offset_x, offset_y]`` of a Multi-Task U-Net batch
    ``(image, mask, heatmap, offset_y, offset_x, ...)`` and output ``(heatmap, offset_y, offset_x)``."""

    name = "Multi-Task U-Net"
    term_names = TERM_NAMES
    calibrate_hint = "amat calibrate landmark --checkpoint CLEAN.pth --data DATA"

    def __init__(self, requested: str = "auto", loss_modules: list[nn.Module] | None = None) -> None:
        if requested not in HEATMAP_CHOICES:
            raise RunnerError(f"unknown --heatmap-loss {requested!r}; choose one of {', '.join(HEATMAP_CHOICES)}")
        self.requested = requested
        self.bces = [m for m in loss_modules or [] if isinstance(m, nn.BCELoss)]
        self.bce: nn.Module | None = self.bces[0] if self.bces else None
        if requested != "auto":
            self.kind, self.source = requested, "--heatmap-loss"
        elif self.bces:
            self.kind, self.source = "bce", "inferred: the script created an nn.BCELoss"
        else:
            self.kind, self.source = "dice", ("inferred: the script created no nn.BCELoss (a functional BCE "
                                              "needs --heatmap-loss bce)")
        self.confirmed = False

    def describe(self) -> str:
        check = "" if self.confirmed or not self.bces else ", checked before the first optimizer step"
        return f"{self.name} (heatmap term: {self.kind}; {self.source}{check})"

    def terms(self, batch: Any, output: Any) -> Tensor:
        from amat_hooks.integrations.multitask_unet.plugin import landmark_maps

        maps = landmark_maps(batch)
        _, mask, heatmap, offset_y, offset_x = maps
        return landmark_terms(output, mask, heatmap, offset_y, offset_x, heatmap_loss=self.kind,
                              bce=self.bce if self.kind == "bce" else None)

    def confirm(self, host: Any) -> None:
        if not self.bces:  # no nn.BCELoss module: Dice or a functional BCE, nothing to see
            self.confirmed = True
            return
        called = [m for m in host.loss_calls if isinstance(m, nn.BCELoss)]
        seen = "bce" if called else "dice"
        self.confirmed = True
        if called:
            self.bce = called[0]
        if seen == self.kind:
            return
        what = ("calls its nn.BCELoss on the training output" if called
                else "creates an nn.BCELoss but does not call it on the training output")
        if self.requested != "auto":
            raise RunnerError(f"the script {what}, but --heatmap-loss {self.kind} was given: the attack and xi "
                              f"must use the loss the script trains with; pass --heatmap-loss {seen} (or leave "
                              f"it out: auto)")
        host.amat_log(f"heatmap term: {seen}, not {self.kind} - the script {what}; the first batch's noise was "
                      f"made against {self.kind} (pass --heatmap-loss {seen} to avoid that)")
        self.kind, self.source = seen, f"inferred: the script {what}"

    def identity(self) -> dict[str, Any]:
        return {"heatmap_loss": self.kind}

    def state(self) -> dict[str, Any]:
        return {"term_names": list(TERM_NAMES), "heatmap_loss": self.kind}
