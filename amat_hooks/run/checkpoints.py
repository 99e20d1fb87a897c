"""Model weights as training scripts save them: a ``state_dict``, or a dict holding one
(``{"state_dict": ...}``, ``{"model": ...}``, ...), with ``module.`` prefixes where the
model was wrapped in ``DataParallel`` / ``DistributedDataParallel``.

Used by the runner (is the model at the first step the checkpoint ``--adv-resume`` points
at?) and by the landmark task (loading public-code checkpoints).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

#: Keys under which scripts commonly nest the model's weights in a checkpoint dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as model weights; the message says why."""


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def extract_state_dict(obj: Any, where: str = "the checkpoint") -> dict[str, Tensor]:
    """The weights in a loaded checkpoint object (see the module docstring); a whole pickled
    model under one of the keys (classic YOLOv5's ``{"model": DetectionModel}``) gives its state_dict."""
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
            if isinstance(obj.get(key), torch.nn.Module):
                return {k: v.float() if v.is_floating_point() else v for k, v in obj[key].state_dict().items()}
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(f"{where} holds no state_dict (a dict with keys {keys}; looked for a dict of "
                              f"tensors at the top level and under {', '.join(NESTED_KEYS)})")
    raise CheckpointError(f"{where} is a {type(obj).__name__}, not a state_dict; save model.state_dict()")


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile)
    prefixes, however often they repeat."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def read_state_dict(path: str | os.PathLike, trusted: bool = False) -> dict[str, Tensor]:
    """The weights in a checkpoint file, prefixes stripped (tensors on the CPU). Loaded with
    ``weights_only=True``; ``trusted``: a checkpoint the user's own script wrote and loads
    (named by amat run's state) may hold pickled objects, as classic YOLOv5's do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - pickled objects: only where the script itself loads them
            if not trusted:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickled objects, corrupt files: say which and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path} as weights ({first[:200]}); save model.state_dict()") from None
    return strip_wrappers(extract_state_dict(obj, where=str(path)))


def compare_state_dicts(model: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> tuple[int, list[str]]:
    """``(number of tensors compared, names that differ)`` over the keys both have (after
    stripping wrapper prefixes); a key only one of them has counts as differing."""
    a, b = strip_wrappers(model), strip_wrappers(saved)
    differ = sorted(set(a) ^ set(b))
    common = [k for k in a if k in b]
    for k in common:
        x, y = a[k].detach(), b[k]
        if x.shape != y.shape or not torch.equal(x.cpu(), y.to(dtype=x.dtype)):
            differ.append(k)
    return len(common), differ
