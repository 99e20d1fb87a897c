"""The Ultralytics plugin: the ``amat yolo`` and ``amat bccd`` commands and the YOLO task.
The trainer (:mod:`.trainer`) builds its own adapter (:class:`~.adapter.YoloAdapter`).
Importing this module does not import Ultralytics."""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import Sequence

from amat_hooks.config import AdvConfig, AdvConfigError, _float_list
from amat_hooks.hookspecs import hookimpl


# -- command line ---------------------------------------------------------------------------
_YOLO_HELP = """Run Ultralytics' `yolo` command with adversarial training.

Everything that is not an --adv* flag or an adv* word goes to Ultralytics unchanged, e.g.

  amat yolo detect train model=yolov5s.yaml data=bccd.yaml imgsz=320 epochs=300 pretrained=False \\
       --adv amat --adv-step 3.5 --adv-xi-rule mean+2std
  amat yolo detect train model=yolov5s.yaml data=bccd.yaml imgsz=320 adv=amat adv_step=3.5 adv_xi_rule=mean+2std
  amat yolo detect train model=yolov5s.yaml data=bccd.yaml --adv sat --adv-eps 10
  amat yolo detect train resume model=runs/detect/train/weights/last.pt
  amat yolo detect val model=best.pt data=bccd.yaml --adv-val-eps 5 --adv-val-attack pgd

Every --adv-* flag below is also an Ultralytics-style key=value word: --adv amat is adv=amat,
--adv-step 3.5 is adv_step=3.5 (or adv-step=3.5), --adv-xi-file xi.json is adv_xi_file=xi.json,
--adv-force-resume is adv_force_resume=True. A misspelt flag or word is refused with the right
spelling before Ultralytics starts. Needs Ultralytics >= 8.4 (detect task only).

Margins, xi and settings are saved in weights/amat_state.json next to last.pt; results.csv,
results.png and every Ultralytics logger get train/clean_*_loss, train/noisy_*_loss and (AMAT)
metrics/margin_mean, metrics/margin_max.
"""


def _add_val_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adversarial validation (amat-hooks)")
    g.add_argument("--adv-val-eps", type=_float_list, default=None,
                   help="L2 noise levels at which validation also reports mAP50-95, comma-separated")
    g.add_argument("--adv-val-attack", default="pgd", choices=["pgd", "ifgsm"])
    g.add_argument("--adv-val-steps", type=int, default=None,
                   help="attack iterations (default: 10 while training; 100 PGD / 10 IFGSM in val mode)")


def _one_line_error(message: str) -> None:
    """argparse's error for ``amat yolo``: one line (not the whole usage), exit 2."""
    print(f"amat yolo: error: {message} (amat yolo --help lists the options)", file=sys.stderr)
    raise SystemExit(2)


class _WordParser(argparse.ArgumentParser):
    """The --adv* options alone, to read the key=value words; errors are AdvConfigError."""

    def error(self, message: str):  # type: ignore[override]
        raise AdvConfigError(message)


def _add_adv_arguments(p: argparse.ArgumentParser) -> None:
    AdvConfig.add_arguments(p, default_mode=None)
    _add_val_arguments(p)


def _adv_parser() -> argparse.ArgumentParser:
    p = _WordParser(prog="amat yolo", add_help=False, allow_abbrev=False)
    _add_adv_arguments(p)
    return p


@hookimpl
def amat_add_commands(subparsers: argparse._SubParsersAction) -> None:
    # allow_abbrev=False: a partly typed flag (--adv-ste) is refused with the full name, not guessed
    p = subparsers.add_parser("yolo", help="Ultralytics `yolo` + --adv none|sat|amat (detection)",
                              description=_YOLO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
    _add_adv_arguments(p)
    p.error = _one_line_error  # type: ignore[method-assign]
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


#: Words that name an --adv* option other than by its flag's own name.
_WORD_ALIASES = {"adv_mode": "--adv"}
_TRUE, _FALSE = ("true", "1", "yes", "on", ""), ("false", "0", "no", "off")


def _closest(name: str, candidates: Sequence[str]) -> str:
    best = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {best[0]}?" if best else ""


def _unknown_option(name: str, options: Sequence[str]) -> AdvConfigError:
    """One line for a misspelt --adv* flag or adv* word, with the closest right spelling."""
    if name.startswith("-"):
        candidates = list(options)
    else:
        sep = "-" if "-" in name else "_"
        candidates = [o[2:].replace("-", sep) for o in options] + [k.replace("_", sep) for k in _WORD_ALIASES]
    return AdvConfigError(f"unknown option {name}{_closest(name, candidates)} (amat yolo --help lists every "
                          f"--adv-* option; each is also a word: --adv-step 3.5 is adv_step=3.5)")


def take_adv_words(args: argparse.Namespace, words: Sequence[str]) -> list[str]:
    """Move the ``adv=amat adv_step=3.5`` words (Ultralytics' key=value way of writing the
    --adv* flags, '-' or '_') from ``words`` into ``args``; return the words for Ultralytics.

    A misspelt --adv* flag (argparse leaves it in ``words``) or adv* word, a bad value, and a
    setting given both as a flag and as a word are refused with :class:`AdvConfigError`."""
    parser = _adv_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    options = sorted(actions)
    flags: list[str] = []
    spelled: dict[str, str] = {}  # flag -> how the user wrote it
    rest: list[str] = []
    for w in words:
        name, eq, value = w.partition("=")
        key = name.strip()
        if key.startswith("-"):
            if key.lstrip("-").lower().startswith("adv"):  # a known flag would have been parsed already
                raise _unknown_option(key, options)
            rest.append(w)
            continue
        norm = key.lower().replace("-", "_")
        if not eq or not norm.startswith("adv"):  # no Ultralytics argument starts with "adv"
            rest.append(w)
            continue
        flag = _WORD_ALIASES.get(norm, "--" + norm.replace("_", "-"))
        if flag not in actions:
            raise _unknown_option(key, options)
        if flag in spelled:
            raise AdvConfigError(f"{key}= is given twice ({spelled[flag]} and {w}); keep one")
        spelled[flag] = w
        value = value.strip()
        if actions[flag].nargs == 0:  # a switch such as --adv-force-resume
            if value.lower() not in _TRUE + _FALSE:
                raise AdvConfigError(f"{w}: {key} is a switch; write {key}=True or leave it out")
            if value.lower() in _TRUE:
                flags.append(flag)
        else:
            flags.append(f"{flag}={value}")
    try:
        given = parser.parse_args(flags)
    except AdvConfigError as e:
        m = re.search(r"argument (--adv[\w-]*)", str(e))
        raise AdvConfigError(f"{spelled.get(m.group(1), '') + ': ' if m else ''}{e}") from None
    for flag, action in actions.items():
        if flag not in spelled or action.dest is None:
            continue
        value, default = getattr(given, action.dest), action.default
        if getattr(args, action.dest, default) != default:
            raise AdvConfigError(f"{flag} is given twice (the flag and the word {spelled[flag]}); keep one")
        setattr(args, action.dest, value)
    return rest


def _word_value(words: Sequence[str], key: str) -> str | None:
    """The value of the last ``key=value`` word (Ultralytics' own parse is not needed for it)."""
    found = None
    for w in words:
        k, eq, v = w.partition("=")
        if eq and k.strip().lstrip("-") == key:
            found = v.strip()
    return found


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


def _requested_config(args: argparse.Namespace, data: str | None = None) -> AdvConfig | None:
    """The settings asked for, every value checked (an xi file against this task and data, xi
    against the detection loss's terms), or None for plain Ultralytics / the sidecar's."""
    from amat_hooks.integrations.ultralytics.adapter import check_xi, check_xi_file

    if args.adv_mode is None:
        given = [f for f, v in (("--adv-step", args.adv_step), ("--adv-eps", args.adv_eps),
                                ("--adv-xi", args.adv_xi), ("--adv-xi-file", args.adv_xi_file)) if v is not None]
        if given:
            raise AdvConfigError(f"{', '.join(given)} given without --adv; add --adv amat or --adv sat "
                                 f"(or adv=amat / adv=sat)")
        return None
    if args.adv_xi_file and args.adv_xi is None:
        check_xi_file(args.adv_xi_file, data)
    cfg = AdvConfig.from_args(args)
    check_xi(cfg)
    return cfg


def _yolo_command(args: argparse.Namespace) -> int:
    from amat_hooks.integrations.ultralytics.version import UltralyticsVersionError, check_ultralytics

    try:  # every check of our own settings, before Ultralytics is imported or anything is written
        words = take_adv_words(args, args.extra)
        check_ultralytics()
        cfg = _requested_config(args, _word_value(words, "data"))
    except (AdvConfigError, UltralyticsVersionError) as e:
        return _fail(str(e))
    from amat_hooks.integrations.ultralytics.offline import prepare_offline

    try:
        task, mode, kv = _parse_yolo_words(words)
        prepare_offline()
        from amat_hooks.integrations.ultralytics.settings import CONFIG_ENV, ValAttack, settings_env_value, unsupported_task

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
    """Ultralytics' own entry point, with our trainer (and validator) as the detect classes.

    A word Ultralytics does not know is its ``SyntaxError`` after its whole help text; here
    it is the one line of that error (its closest spellings included), exit 2."""
    from functools import partial

    import ultralytics.models.yolo.detect as detect
    from ultralytics.cfg import CLI_HELP_MSG, entrypoint
    from ultralytics.utils import LOGGER

    from amat_hooks.integrations.ultralytics.trainer import AMATDetectionTrainer

    if val is not None and len(val.levels) > 1:
        return _fail("in mode=val give one --adv-val-eps level per run (or use `amat eval yolo --levels`)")
    saved = (detect.DetectionTrainer, detect.DetectionValidator, list(sys.argv))
    detect.DetectionTrainer = AMATDetectionTrainer
    if val is not None and val.levels:
        from amat_hooks.integrations.ultralytics.validator import AdversarialDetectionValidator

        detect.DetectionValidator = partial(AdversarialDetectionValidator, eps=val.levels[0],
                                            attack=val.attack, steps=val.steps)
    sys.argv[:] = ["yolo", *words]  # Ultralytics reads its module-level ARGV (this same list)

    def no_help(record) -> bool:  # Ultralytics logs its whole CLI help before a bad-argument error
        return record.msg is not CLI_HELP_MSG

    LOGGER.addFilter(no_help)
    try:
        entrypoint()
    except AdvConfigError as e:
        return _fail(str(e))
    except SyntaxError as e:  # Ultralytics' "is not a valid YOLO argument" (cfg.check_dict_alignment)
        if os.environ.get("AMAT_DEBUG"):
            raise
        text = str(e.msg if e.msg is not None else e).replace(CLI_HELP_MSG, "")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return _fail("; ".join(lines) + " (Ultralytics' `yolo cfg` lists its arguments)")
    finally:
        LOGGER.removeFilter(no_help)
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
