"""Parsers shared by every ``amat`` command: noise levels, ``--models``, ``--deltas`` and
the evaluation options (the same names and defaults for every task)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from amat_hooks.tasks import TaskError

class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line (what is wrong, the closest spelling of an
    unknown option, where the help is), not the whole usage text; subparsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            hints = [m for w in message.split(":", 1)[1].split() if w.startswith("-")
                     and (m := _closest(w, self._all_options()))]
            if hints:
                message += f" (did you mean {' '.join(hints)}?)"
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def _all_options(self) -> list[str]:
        out = list(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for p in action.choices.values():
                    out += p._all_options() if isinstance(p, OneLineArgumentParser) else list(p._option_string_actions)
        return out


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``args`` was parsed for (``amat run``, ``amat eval yolo``)."""
    for name in (getattr(args, "amat_command", None), getattr(args, "task", None)):
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if name is None or sub is None or name not in sub.choices:
            break
        parser = sub.choices[name]
    return parser


def _closest(word: str, options: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word.split("=", 1)[0], sorted(set(options)), n=1, cutoff=0.75)
    return found[0] if found else None


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


def parse_threshold(text: str) -> tuple[float, bool]:
    """``--radius-threshold 0.5`` (relative to the clean score) or ``abs:0.3`` -> (value, relative)."""
    t = str(text).strip()
    relative = not t.startswith("abs:")
    try:
        v = float(t[4:] if not relative else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--radius-threshold takes a number (relative) or abs:NUMBER, "
                                         f"got {text!r}") from None
    if not (math.isfinite(v) and v > 0) or (relative and v > 1):
        raise argparse.ArgumentTypeError(f"--radius-threshold must be in (0, 1] (relative) or abs:V with V > 0, "
                                         f"got {text!r}")
    return v, relative


def parse_attacks(text: str) -> tuple[str, ...]:
    """``--attacks pgd,segpgd,worst`` -> the names (``none`` -> none)."""
    items = tuple(a.strip().lower() for a in str(text).split(",") if a.strip())
    return () if items == ("none",) else items


def checked_levels(levels) -> list[float]:
    """``--levels`` as :func:`~amat_hooks.evaluation.check_levels` accepts them, or a
    :class:`TaskError` naming the problem."""
    from amat_hooks.evaluation import check_levels

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
    g.add_argument("--attacks", default="pgd,ifgsm",
                   help="comma-separated (default pgd,ifgsm): pgd, ifgsm (the training loss), segpgd, cospgd, "
                        "mce (segmentation tasks: SegPGD, CosPGD, masked CE, as L2 PGD), the task's attacks aimed "
                        "at its metric (landmark: heatmap, vote; yolo, yolov5: suppress, displace), worst (per "
                        "sample and level the worst of the others listed, the aimed attacks always included: the "
                        "number to quote); 'none' with --radius")
    g.add_argument("--protocol", choices=("paper", "authors"), default="paper",
                   help="paper: PGD steps of 2.5 eps / steps, IFGSM eps / steps, eval mode (default); authors: "
                        "the authors' evaluation scripts (PGD 0.05 eps, IFGSM 0.5 eps, nnU-Net 0.05 eps; landmark "
                        "models in train mode with batch 1; nnU-Net slices holding every foreground class), "
                        "docs/protocols.md rows 12-14")
    g.add_argument("--pgd-steps", type=int, default=100, help="steps of pgd, segpgd, cospgd, mce (100)")
    g.add_argument("--ifgsm-steps", type=int, default=10)
    g.add_argument("--radius", action="store_true",
                   help="also each sample's robust radius (smallest L2 noise that breaks it) from one "
                        "minimal-norm attack: the robustness curve at every level from one run, a histogram")
    g.add_argument("--radius-objective", default="auto",
                   help="objective(s) of the radius run: auto (mce for segmentation, else loss), loss, segpgd, "
                        "cospgd, mce; several comma-separated = the per-sample minimum")
    g.add_argument("--radius-threshold", type=parse_threshold, default=(0.5, True), metavar="T|abs:V",
                   help="a sample is broken when its metric falls below T x its clean value (0.5; lower-is-better "
                        "metrics: rises above clean / T), or with abs:V below V")
    g.add_argument("--radius-steps", type=int, default=100, help="iterations of the radius run (100)")
    g.add_argument("--radius-max", type=float, default=None,
                   help="largest radius searched (default twice the largest level)")
    g.add_argument("--out", default=default_out, help=f"report folder (default {default_out})")
    g.add_argument("--name", default="robustness", help="report file stem")
    g.add_argument("--resume", action="store_true", help="continue an interrupted evaluation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")
