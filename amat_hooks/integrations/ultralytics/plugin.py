"""The Ultralytics plugin: the ``amat yolo`` and ``amat bccd`` commands and the YOLO task.
The trainer (:mod:`.trainer`) builds its own adapter (:class:`~.adapter.YoloAdapter`).
Importing this module does not import Ultralytics."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from amat_hooks.config import AdvConfig, AdvConfigError, _float_list
from amat_hooks.hookspecs import hookimpl


# -- command line ---------------------------------------------------------------------------
_YOLO_HELP = """Run Ultralytics' `yolo` command with adversarial training.

Everything that is not an --adv* flag goes to Ultralytics unchanged, e.g.

  amat yolo detect train model=yolov5s.yaml data=bccd.yaml imgsz=320 epochs=300 pretrained=False \\
       --adv amat --adv-step 3.5 --adv-xi-rule mean+2std
  amat yolo detect train model=yolov5s.yaml data=bccd.yaml --adv sat --adv-eps 10
  amat yolo detect train resume model=runs/detect/train/weights/last.pt
  amat yolo detect val model=best.pt data=bccd.yaml --adv-val-eps 5 --adv-val-attack pgd

Margins, xi and settings are saved in weights/amat_state.json next to last.pt.
"""


def _add_val_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adversarial validation (amat-hooks)")
    g.add_argument("--adv-val-eps", type=_float_list, default=None,
                   help="L2 noise levels at which validation also reports mAP50-95, comma-separated")
    g.add_argument("--adv-val-attack", default="pgd", choices=["pgd", "ifgsm"])
    g.add_argument("--adv-val-steps", type=int, default=None,
                   help="attack iterations (default: 10 while training; 100 PGD / 10 IFGSM in val mode)")


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("yolo", help="Ultralytics `yolo` + --adv none|sat|amat (detection)",
                              description=_YOLO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    AdvConfig.add_arguments(p, default_mode=None)
    _add_val_arguments(p)
    p.set_defaults(func=_yolo_command, accepts_extra=True)

    p = subparsers.add_parser("bccd", help="convert BCCD (VOC XML) to YOLO format with a data YAML",
                              description="Convert the BCCD dataset to Ultralytics' layout (degenerate boxes "
                                          "dropped and counted).")
    p.add_argument("src", help="BCCD folder (holding Annotations/ JPEGImages/ ImageSets/), e.g. ../shared/data/bccd")
    p.add_argument("out", help="output folder (gets images/, labels/ and bccd.yaml)")
    p.add_argument("--split", default="official", choices=["official", "random"],
                   help="official ImageSets split (205/87/72) or the paper's seeded random 294/33/37")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_bccd_command)


@hookimpl
def amat_tasks():
    from amat_hooks.integrations.ultralytics.task import YoloTask

    return [YoloTask()]


def _fail(msg: str) -> int:
    print(f"amat yolo: error: {msg}", file=sys.stderr)
    return 2


def _parse_yolo_words(words: Sequence[str]) -> tuple[str | None, str | None, dict[str, str]]:
    """(task, mode, key=value overrides) of a `yolo` argument list, without validating."""
    from ultralytics.cfg import MODES, TASKS

    task = mode = None
    kv: dict[str, str] = {}
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            kv[k.strip().lstrip("-")] = v.strip()
        elif w in TASKS:
            task = w
        elif w in MODES:
            mode = w
        elif w == "resume":
            kv["resume"] = "True"
    return task, mode, kv


def _model_task(model: str | None) -> str | None:
    if not model:
        return None
    from ultralytics.nn.tasks import guess_model_task

    try:
        return guess_model_task(model)
    except Exception:  # noqa: BLE001 - Ultralytics reports a bad model path itself
        return None


def _check_model_offline(model: str | None, mode: str | None) -> None:
    """Ultralytics downloads weights it cannot find (and picks yolo26n.pt when model= is
    missing); amat-hooks runs offline, so say so before any download starts."""
    from pathlib import Path

    if mode not in (None, "train", "val", "predict", "export", "benchmark", "track"):
        return
    hint = "build from a model YAML (e.g. model=yolov5s.yaml pretrained=False) or give a local .pt path"
    if not model:
        raise AdvConfigError(f"model=... is missing (Ultralytics would download yolo26n.pt); {hint}")
    if model.endswith((".pt", ".pth")) and not Path(model).is_file():
        from ultralytics.utils import SETTINGS

        if not (Path(SETTINGS["weights_dir"]) / Path(model).name).is_file():
            raise AdvConfigError(f"model={model} is not on disk and amat-hooks never downloads weights; {hint}")


def _requested_config(args: argparse.Namespace) -> AdvConfig | None:
    if args.adv_mode is None:
        given = [f for f, v in (("--adv-step", args.adv_step), ("--adv-eps", args.adv_eps),
                                ("--adv-xi", args.adv_xi), ("--adv-xi-file", args.adv_xi_file)) if v is not None]
        if given:
            raise AdvConfigError(f"{', '.join(given)} given without --adv; add --adv amat or --adv sat")
        return None
    return AdvConfig.from_args(args)


def _yolo_command(args: argparse.Namespace) -> int:
    from amat_hooks.integrations.ultralytics.offline import prepare_offline

    words = list(args.extra)
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return _fail("Ultralytics is not installed; pip install 'amat-hooks[yolo]'")
    try:
        cfg = _requested_config(args)
        task, mode, kv = _parse_yolo_words(words)
        prepare_offline()
        from amat_hooks.integrations.ultralytics.trainer import CONFIG_ENV, ValAttack, settings_env_value, unsupported_task

        val = ValAttack(levels=list(args.adv_val_eps or []), attack=args.adv_val_attack,
                        steps=args.adv_val_steps or 10).validate()
        _check_model_offline(kv.get("model"), mode)
        data = kv.get("data")
        if data and not os.path.isfile(data):
            raise AdvConfigError(f"data={data} is not a local file; amat-hooks never downloads datasets "
                                 f"(Ultralytics would): give the path of a data YAML, e.g. from `amat bccd`")
        task = task or _model_task(kv.get("model"))
        adversarial = cfg is not None and cfg.mode != "none"
        if mode not in (None, "train") and adversarial:
            raise AdvConfigError(f"--adv {cfg.mode} applies to training; for mode={mode} drop it "
                                 f"(use --adv-val-eps to validate under attack)")
        if task is not None and task != "detect" and (adversarial or val.levels):
            raise unsupported_task(task)
    except AdvConfigError as e:
        return _fail(str(e))
    if not words:
        return _fail("no Ultralytics arguments; e.g. amat yolo detect train model=yolov5n.yaml data=data.yaml")
    os.environ[CONFIG_ENV] = settings_env_value(cfg, val)
    if getattr(args, "adv_force_resume", False):
        os.environ["AMAT_FORCE_RESUME"] = "1"  # read where the sidecar is loaded (DDP ranks too)
    return _run_ultralytics(words, val if mode == "val" else None)


def _run_ultralytics(words: Sequence[str], val) -> int:
    """Ultralytics' own entry point, with our trainer (and validator) as the detect classes."""
    from functools import partial

    import ultralytics.models.yolo.detect as detect
    from ultralytics.cfg import entrypoint

    from amat_hooks.integrations.ultralytics.trainer import AMATDetectionTrainer

    saved = (detect.DetectionTrainer, detect.DetectionValidator, list(sys.argv))
    detect.DetectionTrainer = AMATDetectionTrainer
    if val is not None and val.levels:
        from amat_hooks.integrations.ultralytics.validator import AdversarialDetectionValidator

        if len(val.levels) > 1:
            return _fail("in mode=val give one --adv-val-eps level per run (or use `amat eval yolo --levels`)")
        detect.DetectionValidator = partial(AdversarialDetectionValidator, eps=val.levels[0],
                                            attack=val.attack, steps=val.steps)
    sys.argv[:] = ["yolo", *words]  # Ultralytics reads its module-level ARGV (this same list)
    try:
        entrypoint()
    except AdvConfigError as e:
        return _fail(str(e))
    finally:
        detect.DetectionTrainer, detect.DetectionValidator = saved[0], saved[1]
        sys.argv[:] = saved[2]
    return 0


def _bccd_command(args: argparse.Namespace) -> int:
    from amat_hooks.zoo.bccd import BCCDError, convert

    try:
        report = convert(args.src, args.out, split=args.split, seed=args.seed)
    except BCCDError as e:
        print(f"amat bccd: error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    return 0
