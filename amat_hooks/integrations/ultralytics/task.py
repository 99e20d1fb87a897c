"""The YOLO task: ``amat calibrate|eval|grid yolo`` for Ultralytics detection models.

Ultralytics arguments come as ``key=value`` words, as on the ``yolo`` command line
(``data=bccd.yaml split=test imgsz=320``). Evaluation is :class:`.evaluate.YoloEvalTask`
(Ultralytics' own val loader, matcher and ``DetMetrics``); calibration scores the training
images with Ultralytics' own criterion (:func:`.calibrate.per_image_terms`); the grid trains
through the real ``amat yolo detect train`` entry point, one subprocess per Delta.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from amat_hooks.evaluation.objectives import DETECTION_TERMS
from amat_hooks.tasks import CalibrationSet, Task, TaskError, TrainRun, amat_executable

#: Ultralytics arguments that matter to evaluation (the grid forwards these from its training words).
EVAL_KEYS = ("imgsz", "batch", "device", "workers", "conf", "iou", "max_det", "half", "fraction", "rect",
             "single_cls", "agnostic_nms", "classes")
#: Words the grid sets itself per Delta.
GRID_OWNED_WORDS = ("project", "name", "exist_ok", "resume")
GRID_OWNED_FLAGS = ("--adv", "--adv-step", "--adv-eps")


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
            raise TaskError(f"unexpected argument {w!r}; give Ultralytics arguments as key=value")
    return kv, kv_words, flags


def check_data(data: Any, split: str) -> None:
    """The data YAML is a local file and has ``split`` (before any model runs)."""
    from ultralytics.data.utils import check_det_dataset

    if not data:
        raise TaskError("missing data=...; give the data YAML, e.g. data=data/bccd/bccd.yaml")
    if not os.path.isfile(str(data)):
        raise TaskError(f"data={data} is not a local file; amat-hooks never downloads datasets: give "
                        f"the path of a data YAML, e.g. from `amat bccd`")
    try:
        d = check_det_dataset(str(data), autodownload=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises several types for a bad YAML
        raise TaskError(f"cannot read data={data}: {e}") from None
    if not d.get(split):
        have = [k for k in ("train", "val", "test") if d.get(k)]
        raise TaskError(f"split={split} is not in {data} (it has {have}); use split=val or split=test")


class YoloTask(Task):
    """Ultralytics detection models (``.pt`` files an Ultralytics training wrote)."""

    name = "yolo"
    help = "YOLO detection: mAP50-95 / avg IoU under L2 PGD and IFGSM (paper Table 7); key=value Ultralytics args"
    default_levels = "bccd"
    xi_rule = "mean+2std"  # paper section 3.7
    model_spec_help = "WEIGHTS.pt"
    report_metrics = ("mAP50-95", "IoU")
    aimed_attacks = tuple(DETECTION_TERMS)
    accepts_extra = True  # Ultralytics key=value words, extra --adv-* training flags for the grid

    def add_arguments(self, p: argparse.ArgumentParser, command: str) -> None:
        p.epilog = {
            "calibrate": "e.g. amat calibrate yolo model=runs/detect/std/weights/best.pt data=data/bccd/bccd.yaml "
                         "[imgsz=320 batch=16 device=cpu split=train]",
            "eval": "e.g. amat eval yolo --models STD=std/weights/best.pt,AMAT=amat/weights/best.pt "
                    "data=data/bccd/bccd.yaml split=test imgsz=320",
            "grid": "e.g. amat grid yolo --deltas 2.5,3.5,4.5 data=data/bccd/bccd.yaml model=yolov5s.yaml "
                    "imgsz=320 epochs=50 pretrained=False --adv-xi-file xi.json",
        }[command]
        if command == "calibrate":
            p.add_argument("--augmented-passes", type=int, default=0, metavar="N",
                           help="score each training image N times as a training epoch sees it (Ultralytics' "
                                "augmentation from the checkpoint's train args, key=value overrides such as "
                                "mosaic=0, model in train mode), the terms AMAT compares with xi; 0 (default): "
                                "un-augmented images in eval mode")
            return
        g = p.add_argument_group("detection metrics")
        default = "IoU" if command == "grid" else "mAP50-95"
        g.add_argument("--metric", default=default, choices=["mAP50-95", "mAP50", "IoU"],
                       help=f"the table's metric (default {default}; all are computed and kept in the JSON)")
        g.add_argument("--det-conf", type=float, default=0.25,
                       help="confidence above which a prediction counts as a detection for the avg IoU of "
                            "detected objects (default 0.25, Ultralytics' predict default)")

    def check(self, args: argparse.Namespace, command: str) -> None:
        from amat_hooks.integrations.ultralytics.version import check_ultralytics

        check_ultralytics()  # before Ultralytics is imported: an old one is one line, not an ImportError
        from amat_hooks.integrations.ultralytics.offline import prepare_offline

        prepare_offline()
        kv, words, flags = split_words(args.extra)
        args.yolo_kv, args.yolo_words, args.yolo_flags = kv, words, flags
        adv_words = [str(k) for k in kv if str(k).lower().startswith("adv")]  # `amat yolo`'s adv_step=... words
        if adv_words and command != "grid":
            raise TaskError(f"{adv_words[0]}=...: a training setting of `amat yolo`, not an option of "
                            f"amat {command} yolo; drop it")
        if command == "eval":
            if flags:
                raise TaskError(f"unrecognized arguments: {' '.join(flags)}")
            if "model" in kv:
                raise TaskError(f"model={kv['model']}: give models as --models NAME=PATH[,NAME=PATH...] "
                                f"(one report compares them side by side)")
            check_data(kv.get("data"), str(kv.get("split", "val")))
        elif command == "calibrate":
            if flags:
                raise TaskError(f"unrecognized arguments: {' '.join(flags)}")
            for key in ("model", "data"):
                if key not in kv:
                    raise TaskError(f"missing {key}=...; e.g. model=runs/detect/train/weights/best.pt data=data.yaml")
            if not Path(str(kv["model"])).is_file():
                raise TaskError(f"model={kv['model']} not found; give the clean model's best.pt")
            if args.augmented_passes < 0:
                raise TaskError(f"--augmented-passes must be >= 0 (got {args.augmented_passes}); "
                                f"0 scores the un-augmented images")
            check_data(kv["data"], str(kv.get("split", "train")))
        else:
            owned = [w for w in GRID_OWNED_WORDS if w in kv] + [
                f for f in flags if f.split("=")[0] in GRID_OWNED_FLAGS] + [
                f"{k}=" for k in adv_words if "--" + k.lower().replace("_", "-") in (*GRID_OWNED_FLAGS, "--adv-mode")]
            if owned:
                raise TaskError(f"{', '.join(owned)}: the grid sets these itself (one run per Delta under "
                                f"--out); drop them")
            if "model" not in kv:
                raise TaskError("missing model=...; e.g. model=yolov5s.yaml (trained from scratch per Delta)")
            check_data(kv.get("data"), "val")
            from amat_hooks.config import AdvConfigError
            from amat_hooks.integrations.ultralytics.plugin import _check_model_offline

            try:
                _check_model_offline(str(kv["model"]), "train")
            except AdvConfigError as e:
                raise TaskError(str(e)) from None

    # -- eval ---------------------------------------------------------------------------------
    def default_model_name(self, spec: str) -> str:
        p = Path(spec)
        return p.parent.parent.name if p.parent.name == "weights" else p.stem

    def check_model(self, name: str, spec: str, args: argparse.Namespace) -> None:
        if not Path(spec).is_file():
            raise TaskError(f"model {name}: weights {spec} not found (give the .pt Ultralytics wrote, "
                            f"e.g. runs/detect/train/weights/best.pt; amat-hooks never downloads)")

    def eval_task(self, name: str, spec: str, args: argparse.Namespace):
        from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask

        kv = {k: v for k, v in args.yolo_kv.items() if k != "data"}
        return YoloEvalTask(spec, args.yolo_kv["data"], metric=args.metric, det_conf=args.det_conf,
                            workdir=Path(args.out), **kv)

    def adversarial_state(self, spec: str, args: argparse.Namespace) -> Path | None:
        from amat_hooks.integrations.ultralytics.trainer import SIDECAR_NAME

        side = Path(spec).parent / SIDECAR_NAME
        return side if side.is_file() else None

    def title(self, args: argparse.Namespace) -> str:
        yaml = Path(str(args.yolo_kv.get("data")))
        return f"YOLO on {yaml.parent.name}/{yaml.name}, {args.yolo_kv.get('split', 'val')} split ({args.metric})"

    # -- calibrate ----------------------------------------------------------------------------
    def calibration_set(self, args: argparse.Namespace, log=print) -> CalibrationSet:
        from amat_hooks.integrations.ultralytics.calibrate import AugmentedTrainingImages
        from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask

        kv = dict(args.yolo_kv)
        model, data, split, passes = str(kv.pop("model")), str(kv.pop("data")), str(kv.pop("split", "train")), \
            args.augmented_passes
        if passes:
            task = AugmentedTrainingImages(model, data, split, passes=passes, log=log, **kv)
            images, extra = task.images, {"augmented_passes": passes, "mode": "train (augmented)"}
        else:
            task = YoloEvalTask(model, data, split=split, workdir=Path(model).parent,
                                **{k: v for k, v in kv.items() if k in EVAL_KEYS})
            images, extra = len(task.loader.dataset), {}
        return CalibrationSet(task=task, identity={"data": str(Path(data).resolve())},
                              source={"model": model, "data": data, "split": split, "images": images, **extra},
                              default_path=Path(model).parent / "amat_xi_yolo.json")

    def xi_usage(self, path: Path, xi: Sequence[float], args: argparse.Namespace) -> str:
        return (f"train with: amat yolo detect train ... --adv amat --adv-step D --adv-xi-file {path}"
                f"   (or --adv-xi {','.join(f'{v:.6g}' for v in xi)})")

    # -- grid ---------------------------------------------------------------------------------
    def train_run(self, delta: float, folder: Path, args: argparse.Namespace) -> TrainRun:
        cmd = [*amat_executable(), "yolo", "detect", "train", *args.yolo_words, f"project={folder.resolve()}",
               "name=train", "exist_ok=True", *args.yolo_flags, "--adv", "amat", "--adv-step", f"{delta:g}"]
        last = folder / "train" / "weights" / "last.pt"  # the fixed budget's final model, not best.pt
        return TrainRun(cmd=cmd, artefact=lambda: last if last.is_file() else None)

    def grid_eval_task(self, artefact: Path, args: argparse.Namespace):
        from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask

        eval_kv = {k: v for k, v in args.yolo_kv.items() if k in EVAL_KEYS}
        return YoloEvalTask(artefact, args.yolo_kv["data"], metric=args.metric, det_conf=args.det_conf,
                            workdir=Path(args.out), split="val", **eval_kv)
