"""The Ultralytics YOLO adapter (pluggy plugin module) and the ``amat yolo`` commands.

Batch anatomy (what this adapter knows): an Ultralytics detection batch is a dict with
``img`` (``[B, 3, H, W]``, already ``/255`` after ``preprocess_batch``), ``im_file`` (one
path per image: the sample id; under mosaic the first of the four images), and the
targets ``batch_idx``/``cls``/``bboxes``. Loss terms come from the trainer's own
criterion (see :mod:`.terms`). Importing this module does not import Ultralytics.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Hashable, Sequence

from amat_hooks.config import AdvConfig, AdvConfigError, _float_list
from amat_hooks.hookspecs import hookimpl

TERM_NAMES = ("box", "cls", "dfl")
_TARGET_KEYS = ("batch_idx", "cls", "bboxes")


def _is_yolo_batch(batch: Any) -> bool:
    return isinstance(batch, dict) and "img" in batch and "im_file" in batch


def _is_yolo_host(host: Any) -> bool:
    return hasattr(host, "amat_base_criterion") and hasattr(host, "amat_forward")


# -- hook implementations -------------------------------------------------------------------
@hookimpl
def amat_batch_inputs(batch: Any, host: Any):
    return batch["img"] if _is_yolo_batch(batch) else None


@hookimpl
def amat_batch_sample_ids(batch: Any, host: Any) -> Sequence[Hashable] | None:
    if not _is_yolo_batch(batch):
        return None
    files = list(batch["im_file"])
    return host.sample_ids(files) if hasattr(host, "sample_ids") else files


@hookimpl
def amat_batch_with_inputs(batch: Any, inputs: Any, host: Any):
    """Same batch with ``img`` replaced; with k times the rows the targets are repeated and
    ``batch_idx`` shifted so each copy keeps its own boxes."""
    if not _is_yolo_batch(batch):
        return None
    import torch

    b = batch["img"].shape[0]
    n = inputs.shape[0]
    if n == b:
        return {**batch, "img": inputs}
    k, r = divmod(n, b)
    if r:
        raise ValueError(f"cannot stretch a YOLO batch of {b} images to {n}")
    out = {**batch, "img": inputs, "im_file": list(batch["im_file"]) * k}
    bi = batch["batch_idx"]
    out["batch_idx"] = torch.cat([bi + j * b for j in range(k)])
    for key in ("cls", "bboxes"):
        out[key] = torch.cat([batch[key]] * k)
    return out


@hookimpl
def amat_bind_loss(batch: Any, model: Any, host: Any):
    if not (_is_yolo_batch(batch) and _is_yolo_host(host)):
        return None
    from amat_hooks.policies import BoundLoss
    from amat_hooks.integrations.ultralytics.terms import criterion_with_terms

    criterion = host.amat_base_criterion
    targets = {k: batch[k] for k in _TARGET_KEYS}

    def terms(x):
        return criterion_with_terms(criterion, model(x), targets).terms

    def training(x, clean):
        r = criterion_with_terms(criterion, host.amat_forward(model, x, clean), targets)
        host.amat_record_items(r.items)
        return r.loss.sum(), r.terms  # Ultralytics' convention: loss x batch size, summed

    return BoundLoss(terms=terms, training=training, term_names=loss_term_names(host))


def loss_term_names(host: Any) -> list[str]:
    """The criterion's per-image terms: box, cls, dfl (l1 instead of dfl for reg_max=1)."""
    if host.amat_base_criterion is None:
        return list(TERM_NAMES)
    from amat_hooks.integrations.ultralytics.terms import term_names

    return term_names(host.amat_base_criterion)  # "l1" instead of "dfl" for reg_max=1 heads


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
