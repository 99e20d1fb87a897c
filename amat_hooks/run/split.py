"""The model's forward during ``amat run``: the handed 2B batch as two forward passes.

The runner hands the script one batch of 2B rows (B clean, then B noisy) so the script's
own loss code computes ``(L_clean + L_noisy) / 2``. When the script forwards those rows,
the global module forward hooks installed here

* ``--adv-batch split`` (default): run the model on the B clean rows and then, separately,
  on the B noisy rows, and return both outputs concatenated along the batch. BatchNorm
  layers then see clean and noisy statistics in two passes, as Algorithm 1 and every
  other path of this project (``Policy.step``) run them;
* ``--adv-batch joint``: leave the one 2B forward alone (BatchNorm statistics over a mix
  of clean and noisy rows, the runner's behaviour before 0.2);

and in both cases keep the (detached) clean and noisy outputs, from which the runner
computes the per-sample terms for the margin test: no extra forward pass.

Hooks are global (``register_module_forward_pre_hook``), not on the model object, so the
script can ``torch.save``/``pickle``/``deepcopy`` its model untouched. They also note which
of the script's ``torch.nn`` loss modules the script calls on a training output
(``Runner.loss_calls``), for adapters that infer the loss from it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from amat_hooks.run.adapter import RunnerError

BATCH_MODES = ("split", "joint")


class _Frame:
    __slots__ = ("module", "pending", "noisy")

    def __init__(self, module: nn.Module, pending: Any, noisy: Tensor | None) -> None:
        self.module, self.pending, self.noisy = module, pending, noisy


class ForwardHooks:
    """Installs the two global hooks; ``remove()`` takes them out again."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._handles: list = []
        self._frames: list[_Frame] = []
        self._in_noisy = False

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> "ForwardHooks":
        if not self._handles:
            try:
                post = register_module_forward_hook(self._post, with_kwargs=True)
            except TypeError:  # torch without keyword arguments in global forward hooks
                post = register_module_forward_hook(lambda m, a, o: self._post(m, a, {}, o))
            self._handles = [register_module_forward_pre_hook(self._pre), post]
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._frames.clear()

    def reset(self) -> None:
        """Forget forwards that never finished (the script raised inside one)."""
        self._frames.clear()
        self._in_noisy = False

    # -- hooks ---------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple) -> tuple | None:
        r = self.runner
        if module is not r.model or self._in_noisy or r.internal or not module.training:
            return None
        x = args[0] if args else None
        pending = r.match_forward(x)
        if pending is None:
            return None
        if r.batch_mode == "joint":
            self._frames.append(_Frame(module, pending, None))
            return None
        b = pending.rows
        self._frames.append(_Frame(module, pending, x[b:]))
        return (x[:b], *args[1:])

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        r = self.runner
        if isinstance(module, nn.modules.loss._Loss):
            if r.recording_losses and not r.internal and r.model is not None and r.model.training \
                    and torch.is_grad_enabled():
                r.loss_calls.append(module)
            return None
        if not self._frames or self._frames[-1].module is not module or self._in_noisy:
            return None
        frame = self._frames.pop()
        pending, b = frame.pending, frame.pending.rows
        halve = bool(getattr(r.adapter, "sums_over_batch", False))
        if frame.noisy is None:  # joint: one 2B forward; split its output rows for the margin test
            clean, noisy = slice_rows(output, 0, b), slice_rows(output, b, 2 * b)
            pending.set_outputs(clean, noisy)
            return half_gradient(output) if halve else None
        self._in_noisy = True
        try:
            noisy_out = module(frame.noisy, *args[1:], **kwargs)
        finally:
            self._in_noisy = False
        pending.set_outputs(output, noisy_out)
        try:
            both = cat_rows(output, noisy_out, b)
            return half_gradient(both) if halve else both
        except ValueError as e:
            err = RunnerError(f"cannot run the clean and the noisy rows as two forward passes: the model's "
                              f"output {e}; pass --adv-batch joint to run them as one forward of 2B rows "
                              f"(BatchNorm then sees both)")
            r.refused = str(err)
            raise err from None


def cat_rows(a: Any, b: Any, rows: int) -> Any:
    """Two outputs of ``rows`` rows each, concatenated along the batch: tensors, and tuples,
    lists, namedtuples and dicts of them; other values are taken from the first output."""
    if isinstance(a, Tensor):
        if a.dim() == 0 or a.shape[0] != rows or not isinstance(b, Tensor) or b.shape[1:] != a.shape[1:]:
            raise ValueError(f"has a tensor of shape {tuple(a.shape)} that is not one row per sample")
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict):
        return type(a)((k, cat_rows(v, b[k], rows)) for k, v in a.items())
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(cat_rows(x, y, rows) for x, y in zip(a, b)))
    if isinstance(a, (list, tuple)):
        return type(a)(cat_rows(x, y, rows) for x, y in zip(a, b))
    return a


def map_tensors(fn, v: Any) -> Any:
    """``fn`` applied to every tensor of an output: tensors, and tuples, lists, namedtuples and
    dicts of them (other values unchanged)."""
    if isinstance(v, Tensor):
        return fn(v)
    if isinstance(v, dict):
        return type(v)((k, map_tensors(fn, x)) for k, x in v.items())
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return type(v)(*(map_tensors(fn, x) for x in v))
    if isinstance(v, (list, tuple)):
        return type(v)(map_tensors(fn, x) for x in v)
    return v


def slice_rows(v: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every tensor in an output."""
    return map_tensors(lambda t: t[start:stop] if t.dim() > 0 else t, v)


def half_gradient(v: Any) -> Any:
    """The same values with half their gradient (``0.5 t + 0.5 t.detach()`` is exactly t): the
    script's summed loss over 2B rows then steps as (L0 + L1) / 2."""
    return map_tensors(lambda t: t * 0.5 + t.detach() * 0.5 if t.requires_grad else t, v)


def detach(v: Any) -> Any:
    """The output with every tensor detached (kept for the margin test only)."""
    return map_tensors(Tensor.detach, v)


class PendingBatch:
    """A batch handed to the script, waiting for its forward and its margin test."""

    __slots__ = ("data", "perturbation", "rows", "shape", "forwarded", "clean_out", "noisy_out")

    def __init__(self, data: Any, perturbation: Any, rows: int, shape: tuple) -> None:
        self.data, self.perturbation, self.rows, self.shape = data, perturbation, rows, shape
        self.forwarded = False
        self.clean_out = self.noisy_out = None

    def set_outputs(self, clean: Any, noisy: Any) -> None:
        self.clean_out, self.noisy_out = detach(clean), detach(noisy)


def model_device(model: nn.Module | None) -> torch.device | None:
    p = next(model.parameters(), None) if model is not None else None
    return None if p is None else p.device


def move_to(v: Any, device: torch.device) -> Any:
    """Tensors (also nested in tuples/lists/dicts) to ``device``."""
    return map_tensors(lambda t: t.to(device), v)
