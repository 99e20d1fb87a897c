"""Parsers shared by every ``amat`` command: noise levels, ``--models``, ``--deltas`` and
the evaluation options (the same names and defaults for every task)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from ..tasks import TaskError

#: The paper's evaluation noise levels (L2) per task, section 3 / Tables 1-7.
PAPER_LEVELS = {
    "heart": (5.0, 10.0, 15.0),
    "hippocampus": (2.0, 6.0, 10.0),
    "prostate": (10.0, 20.0, 40.0),
    "landmark": (0.5, 1.0, 2.0),
    "bccd": (5.0, 10.0, 15.0),
}


def parse_levels(text: str) -> list[float]:
    """``--levels 2,6,10`` or a paper preset (``--levels hippocampus``)."""
    if text in PAPER_LEVELS:
        return list(PAPER_LEVELS[text])
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels takes comma-separated numbers or one of {sorted(PAPER_LEVELS)}, got {text!r}") from None


def parse_deltas(text: str) -> list[float]:
    """``--deltas 0.5,1,2``: positive, finite, no duplicates, sorted."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise TaskError(f"--deltas must be comma-separated positive numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(d) and d > 0) for d in values):
        raise TaskError(f"--deltas must be positive numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise TaskError(f"--deltas lists a value twice: {text!r}")
    return sorted(values)


def parse_model_specs(text: str | None, default_name: Callable[[str], str]) -> dict[str, str]:
    """``--models NAME=SPEC[,NAME=SPEC...]``; a bare SPEC is named by ``default_name``.

    What a SPEC is belongs to the task (a checkpoint path, ``TRAINER[@RESULTS_ROOT]`` ...)."""
    if not text or not str(text).strip():
        raise TaskError("--models needs at least one NAME=SPEC (e.g. --models STD=PATH,AMAT=PATH)")
    models: dict[str, str] = {}
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = default_name(item), item
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise TaskError(f"--models item {item!r} is not NAME=SPEC")
        if name in models:
            raise TaskError(f"model name {name!r} given twice in --models")
        models[name] = spec
    if not models:
        raise TaskError("--models needs at least one NAME=SPEC (e.g. --models STD=PATH,AMAT=PATH)")
    return models


def checked_levels(levels) -> list[float]:
    """``--levels`` as :func:`~amat_hooks.evaluation.check_levels` accepts them, or a
    :class:`TaskError` naming the problem."""
    from ..evaluation import check_levels

    try:
        return check_levels(levels)
    except ValueError as e:
        raise TaskError(f"--levels: {e}") from None


def add_eval_arguments(p: argparse.ArgumentParser, default_levels: str, default_out: str) -> None:
    """The evaluation options of ``amat eval`` and ``amat grid``."""
    g = p.add_argument_group("evaluation (amat-hooks)")
    g.add_argument("--levels", type=parse_levels, default=parse_levels(default_levels),
                   help=f"L2 noise levels, comma-separated or a paper preset {sorted(PAPER_LEVELS)} "
                        f"(default {default_levels})")
    g.add_argument("--attacks", default="pgd,ifgsm", help="pgd, ifgsm or both (default)")
    g.add_argument("--pgd-steps", type=int, default=100)
    g.add_argument("--ifgsm-steps", type=int, default=10)
    g.add_argument("--out", default=default_out, help=f"report folder (default {default_out})")
    g.add_argument("--name", default="robustness", help="report file stem")
    g.add_argument("--resume", action="store_true", help="continue an interrupted evaluation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")
