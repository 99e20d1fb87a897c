"""``amat eval yolo`` and ``amat grid yolo``: Ultralytics models through the core's
evaluation, report and grid (:mod:`amat_hooks.commands`); only the task is ours
(:class:`.evaluate.YoloEvalTask`). Training in the grid goes through the real
``amat yolo detect train`` entry point, one subprocess per Delta."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

#: Ultralytics arguments that matter to evaluation (the grid forwards these from its training words).
EVAL_KEYS = ("imgsz", "batch", "device", "workers", "conf", "iou", "max_det", "half", "fraction", "rect",
             "single_cls", "agnostic_nms", "classes")
#: Words the grid sets itself per Delta.
GRID_OWNED_WORDS = ("project", "name", "exist_ok", "resume")
GRID_OWNED_FLAGS = ("--adv", "--adv-step", "--adv-eps")


class YoloCommandError(ValueError):
    """Bad command-line input for ``amat eval yolo`` / ``amat grid yolo``."""


def fail(prog: str, msg: str) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def parse_models(text: str | None) -> dict[str, Path]:
    """``STD=runs/std/weights/best.pt,AMAT=...``; a bare path is named after its run folder."""
    if not text:
        raise YoloCommandError("--models is required, e.g. --models STD=runs/detect/std/weights/best.pt,"
                               "AMAT=runs/detect/amat/weights/best.pt")
    models: dict[str, Path] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, path = item.partition("=")
        if not sep:
            path = name
            p = Path(path)
            name = p.parent.parent.name if p.parent.name == "weights" else p.stem
        if not name or not path:
            raise YoloCommandError(f"--models item {item!r} is not NAME=PATH")
        if name in models:
            raise YoloCommandError(f"model name {name!r} given twice in --models")
        if not Path(path).is_file():
            raise YoloCommandError(f"model {name}: weights {path} not found (give the .pt Ultralytics wrote, "
                                   f"e.g. runs/detect/train/weights/best.pt; amat-hooks never downloads)")
        models[name] = Path(path)
    if not models:
        raise YoloCommandError("--models needs at least one NAME=PATH")
    return models


def split_words(words: Sequence[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(Ultralytics ``key=value`` overrides parsed, the same words as given, the remaining
    ``--flag [value]`` words)."""
    from ultralytics.cfg import parse_key_value_pair

    kv: dict[str, Any] = {}
    kv_words: list[str] = []
    flags: list[str] = []
    for w in words:
        if w.startswith("-") or (flags and "=" not in w):
            flags.append(w)
        elif "=" in w:
            k, v = parse_key_value_pair(w)
            kv[k] = v
            kv_words.append(w)
        else:
            raise YoloCommandError(f"unexpected argument {w!r}; give Ultralytics arguments as key=value")
    return kv, kv_words, flags


def check_data(data: Any, split: str) -> None:
    """The data YAML is a local file and has ``split`` (before any model runs)."""
    from ultralytics.data.utils import check_det_dataset

    if not data:
        raise YoloCommandError("missing data=...; give the data YAML, e.g. data=data/bccd/bccd.yaml")
    if not os.path.isfile(str(data)):
        raise YoloCommandError(f"data={data} is not a local file; amat-hooks never downloads datasets: give "
                               f"the path of a data YAML, e.g. from `amat bccd`")
    try:
        d = check_det_dataset(str(data), autodownload=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises several types for a bad YAML
        raise YoloCommandError(f"cannot read data={data}: {e}") from None
    if not d.get(split):
        have = [k for k in ("train", "val", "test") if d.get(k)]
        raise YoloCommandError(f"split={split} is not in {data} (it has {have}); use split=val or split=test")


# -- amat eval yolo ------------------------------------------------------------------------------
def eval_command(args: argparse.Namespace) -> int:
    from .offline import prepare_offline

    prepare_offline()
    from ...commands import run_evaluations
    from ...evaluation import check_levels
    from .evaluate import YoloEvalError, YoloEvalTask, sidecar_margins

    try:
        kv, _, flags = split_words(args.extra)
        if flags:
            raise YoloCommandError(f"unrecognized arguments: {' '.join(flags)}")
        if "model" in kv:
            raise YoloCommandError(f"model={kv['model']}: give models as --models NAME=PATH[,NAME=PATH...] "
                                   f"(one report compares them side by side)")
        models = parse_models(args.models)
        data = kv.pop("data", None)
        split = str(kv.get("split", "val"))
        check_data(data, split)
        check_levels(args.levels)
    except (YoloCommandError, ValueError) as e:
        return fail("amat eval yolo", str(e))
    out = Path(args.out)
    margins: dict[str, list[float]] = {}

    def factory(name: str, weights: Path):
        def make() -> YoloEvalTask:
            m = sidecar_margins(weights)
            if m:
                margins[name] = m
            return YoloEvalTask(weights, data, metric=args.metric, det_conf=args.det_conf, workdir=out, **kv)
        return make

    tasks = {name: factory(name, w) for name, w in models.items()}
    yaml = Path(str(data))
    title = f"YOLO on {yaml.parent.name}/{yaml.name}, {split} split ({args.metric})"
    try:
        run_evaluations(tasks, args, title=title)
    except YoloEvalError as e:
        return fail("amat eval yolo", str(e))
    from ...report import plot_margin_histogram

    for name, w in models.items():  # also for models taken from the cache on --resume
        values = margins.get(name) or sidecar_margins(w)
        if values:
            path = plot_margin_histogram(values, out / f"{args.name}_{name}_margins.png", title=f"{name} margins")
            print(f"margin histogram: {path}")
    return 0


# -- amat grid yolo ------------------------------------------------------------------------------
def amat_executable() -> list[str]:
    """The real ``amat`` entry point of this environment (console script, else ``-m``)."""
    exe = Path(sys.executable).with_name("amat")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "amat_hooks.cli"]


def train_amat(delta: float, folder: Path, words: Sequence[str], adv_flags: Sequence[str]) -> Path:
    """One ``amat yolo detect train ... --adv amat --adv-step DELTA`` into ``folder/train``;
    returns its ``last.pt`` (the fixed budget's final model, not the val-selected best)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [*amat_executable(), "yolo", "detect", "train", *words, f"project={folder.resolve()}", "name=train",
           "exist_ok=True", *adv_flags, "--adv", "amat", "--adv-step", f"{delta:g}"]
    log = folder / "train.log"
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    last = folder / "train" / "weights" / "last.pt"
    if p.returncode != 0 or not last.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise RuntimeError(f"training for Delta={delta:g} failed (exit {p.returncode}); log {log}:\n{tail}")
    return last


def grid_command(args: argparse.Namespace) -> int:
    from .offline import prepare_offline

    prepare_offline()
    from ...commands import grid_table, run_grid
    from ...evaluation import check_levels
    from ...io import atomic_write_text
    from .evaluate import YoloEvalError, YoloEvalTask

    try:
        deltas = [float(v) for v in args.deltas.split(",") if v.strip()]
        if not deltas or any(not d > 0 for d in deltas):
            raise YoloCommandError(f"--deltas must be positive numbers, got {args.deltas!r}")
        kv, words, flags = split_words(args.extra)
        owned = [w for w in GRID_OWNED_WORDS if w in kv] + [f for f in flags if f.split("=")[0] in GRID_OWNED_FLAGS]
        if owned:
            raise YoloCommandError(f"{', '.join(owned)}: the grid sets these itself (one run per Delta under "
                                   f"--out); drop them")
        if "model" not in kv:
            raise YoloCommandError("missing model=...; e.g. model=yolov5s.yaml (trained from scratch per Delta)")
        check_data(kv.get("data"), "val")
        check_levels(args.levels)
    except (YoloCommandError, ValueError) as e:
        return fail("amat grid yolo", str(e))
    from ...config import AdvConfigError
    from .plugin import _check_model_offline

    try:
        _check_model_offline(str(kv["model"]), "train")
    except AdvConfigError as e:
        return fail("amat grid yolo", str(e))
    eval_kv = {k: v for k, v in kv.items() if k in EVAL_KEYS}
    out = Path(args.out)

    def train(delta: float, folder: Path) -> Path:
        return train_amat(delta, folder, words, flags)

    def task_for(weights: Path) -> YoloEvalTask:
        return YoloEvalTask(weights, kv["data"], metric=args.metric, det_conf=args.det_conf, workdir=out,
                            split="val", **eval_kv)

    try:
        results = run_grid(deltas, train, task_for, args)
    except (YoloEvalError, RuntimeError) as e:
        return fail("amat grid yolo", str(e))
    for other in ("mAP50-95", "IoU"):
        if other != args.metric:
            table = grid_table({d: replace(r, metric=other) for d, r in results.items()})
            path = atomic_write_text(out / f"grid_{other}.md", table + "\n")
            print(f"\n{table}\n(written: {path})")
    return 0
