"""Settings for the nnU-Net trainers, read from environment variables (nnU-Net style).

We do not own ``nnUNetv2_train``'s command line, so the adversarial settings come from
``AMAT_*`` variables (the shared names of :meth:`AdvConfig.from_env`) plus a few that only
make sense for nnU-Net. Everything is resolved once, when the trainer is built, and the
result is logged and stored in every checkpoint.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from amat_hooks.config import ENV_NAMES, AdvConfig, AdvConfigError, env_wording
from amat_hooks.integrations.nnunet.names import parse_trainer_name
from amat_hooks.integrations.nnunet.names import trainer_name as trainer_name_for
from amat_hooks.policy_types import MODES

#: Paper table (section 3.3): AMAT step size Delta per nnU-Net dataset.
PAPER_STEP = {"heart": 5.0, "hippocampus": 0.5, "prostate": 3.0}
#: Delta for any other dataset (documented in docs/nnunet.md).
DEFAULT_STEP = 1.0
XI_SOURCES = ("auto", "file", "online")
#: Runs of at most this many epochs write ``checkpoint_latest.pth`` every epoch unless
#: ``AMAT_SAVE_EVERY`` says otherwise (nnU-Net's own interval, 50, loses up to 49 epochs -
#: margins included - when a short run is interrupted).
SHORT_RUN_EPOCHS = 100
#: nnU-Net's ``save_every`` (``nnUNetTrainer.__init__``), kept for longer runs.
NNUNET_SAVE_EVERY = 50
#: The trainer class of each mode.
TRAINER_OF_MODE = {"none": "nnUNetTrainerSTD", "sat": "nnUNetTrainerSAT", "amat": "nnUNetTrainerAMAT"}

NNUNET_ENV = {
    "AMAT_EPOCHS": "number of epochs (nnU-Net default 1000; length variants set their own)",
    "AMAT_ITERS": "training iterations per epoch (nnU-Net default 250)",
    "AMAT_VAL_ITERS": "validation iterations per epoch (nnU-Net default 50)",
    "AMAT_XI_SOURCE": "auto (calibration file if present, else online) | file | online",
    "AMAT_XI_FILE": "path of the xi file written by `amat calibrate nnunet`",
    "AMAT_SAVE_EVERY": f"write checkpoint_latest.pth every N epochs (default: 1 for runs of at most "
                       f"{SHORT_RUN_EPOCHS} epochs, else nnU-Net's {NNUNET_SAVE_EVERY})",
    "AMAT_FORCE_RESUME": "1: let --c continue margins trained with another AMAT_STEP, AMAT_BOUNDARY or dataset",
    "AMAT_OVERWRITE": "1: let a run without --c replace a results folder that holds a run trained with other "
                      "settings (refused otherwise)",
    "AMAT_SEED": "seed torch, numpy and random when the trainer initialises (nnU-Net has no seed option); "
                 "runs with nnUNet_n_proc_DA=0 then differ only by it",
}

#: What a user can do about a bad value, per variable (appended to the message that names it).
FIXES = {
    "AMAT_SEED": "set AMAT_SEED to a whole number such as 0, or unset it",
    "AMAT_STEP": "set AMAT_STEP to a number > 0 (e.g. AMAT_STEP=0.5), or unset it for the dataset's default",
    "AMAT_EPS": "set AMAT_EPS to a noise level > 0 (e.g. AMAT_EPS=5)",
    "AMAT_STEPS": "set AMAT_STEPS to an integer >= 1, or unset it (default 10)",
    "AMAT_STEP_SIZE": "set AMAT_STEP_SIZE to a number > 0, or unset it (the PGD step is then "
                      "AMAT_ALPHA * eps / AMAT_STEPS)",
    "AMAT_ALPHA": "set AMAT_ALPHA to a number > 0, or unset it (default 2.5)",
    "AMAT_REFINE_STEPS": "set AMAT_REFINE_STEPS to an integer >= 0, or unset it (default 2)",
    "AMAT_MAX_MARGIN": "set AMAT_MAX_MARGIN to a number >= AMAT_STEP, or unset it (no cap)",
    "AMAT_XI": "set AMAT_XI to one number (nnU-Net's loss is one term), or unset it to use the calibration file",
    "AMAT_XI_MOMENTUM": "set AMAT_XI_MOMENTUM to a number in (0, 1], or unset it (default 0.01)",
    "AMAT_EPOCHS": "set AMAT_EPOCHS to an integer >= 1, or unset it",
    "AMAT_ITERS": "set AMAT_ITERS to an integer >= 1, or unset it (nnU-Net's 250)",
    "AMAT_VAL_ITERS": "set AMAT_VAL_ITERS to an integer >= 1, or unset it (nnU-Net's 50)",
    "AMAT_SAVE_EVERY": "set AMAT_SAVE_EVERY to an integer >= 1 (1 = every epoch), or unset it",
}


def env_error(message: str) -> AdvConfigError:
    """A core message in ``nnUNetv2_train``'s terms: flag names become the ``AMAT_*``
    variables (:func:`~amat_hooks.config.env_wording`) and, where the message does not
    already list the choices, the fix for the variable it names is appended."""
    text = env_wording(message)
    named = re.findall(r"AMAT_[A-Z_]*[A-Z]", text)
    fix = next((FIXES[v] for v in named if v in FIXES), None)
    if fix and "choose" not in text and fix not in text:
        text = f"{text}; {fix}"
    return AdvConfigError(text)


def paper_step(dataset_name: str) -> float:
    """Delta for a dataset: the paper's value when its name says Heart/Hippocampus/Prostate."""
    return paper_step_guess(dataset_name)[0]


def paper_step_guess(dataset_name: str) -> tuple[float, str]:
    """Delta guessed from a dataset's name, and why (for the start-up line)."""
    low = dataset_name.lower()
    for key, value in PAPER_STEP.items():
        if key in low:
            return value, f"{key!r} in the name: the paper's Delta for {key.capitalize()}"
    return DEFAULT_STEP, "no Heart, Hippocampus or Prostate in the name: the default"


def delta_note(settings: "NnUNetAdvSettings", dataset_name: str, trainer_name: str) -> str:
    """Where this run's Delta came from, for the start-up line; a guess says how to set it."""
    delta = settings.config.delta
    if settings.delta_origin == "trainer":
        spec = _spec(trainer_name)
        return f"Delta {delta:g} from the trainer's " + ("name" if spec is not None and spec.step is not None
                                                         else f"class ({trainer_name}.amat_step)")
    if settings.delta_origin == "environment":
        return f"Delta {delta:g} from AMAT_STEP"
    _, why = paper_step_guess(dataset_name)
    spec = _spec(trainer_name)
    named = (f"-tr {trainer_name_for(spec.base, step=0.5, epochs=spec.epochs)} for Delta 0.5"
             if spec is not None else f"{trainer_name}.amat_step = 0.5")
    return (f"Delta {delta:g} is a GUESS from the dataset name {dataset_name} ({why}; Heart 5, Hippocampus 0.5, "
            f"Prostate 3, else {DEFAULT_STEP:g}): set it with {named}, or AMAT_STEP")


def _positive_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "")
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise env_error(f"environment variable {key}={raw!r} must be a positive integer (>= 1)")
    return value


@dataclass
class NnUNetAdvSettings:
    """Everything a trainer needs: the shared :class:`AdvConfig` plus run length and xi source."""

    config: AdvConfig
    epochs: int | None = None
    iters: int | None = None
    val_iters: int | None = None
    xi_source: str = "auto"
    xi_file: str | None = None
    save_every: int | None = None
    seed: int | None = None
    delta_origin: str | None = None  # AMAT: "trainer" (its name or class), "environment" (AMAT_STEP), "guess"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "epochs": self.epochs, "iters": self.iters,
                "val_iters": self.val_iters, "xi_source": self.xi_source, "xi_file": self.xi_file,
                "save_every": self.save_every, "seed": self.seed, "delta_origin": self.delta_origin}


#: What a trainer class may fix (its name's setting), with the variable a user could also set.
FIXED_VARIABLES = {"delta": "AMAT_STEP", "eps": "AMAT_EPS", "epochs": "AMAT_EPOCHS"}
_WHAT = {"delta": "Delta", "eps": "eps", "epochs": "epochs"}


def _spec(trainer_name: str):
    """The setting a class name of the family carries (None for any other name, also a
    user's class whose name only resembles the family)."""
    try:
        return parse_trainer_name(trainer_name)
    except AdvConfigError:
        return None


def _check_fixed(fixed: Mapping[str, Any], env: Mapping[str, str], trainer_name: str) -> None:
    """A setting the trainer's name (or class) fixes wins over its variable; a variable that
    says something else is refused, with the name that trains what the variable says."""
    spec = _spec(trainer_name)
    for key, value in fixed.items():
        var = FIXED_VARIABLES[key]
        raw = env.get(var, "")
        if value is None or raw == "":
            continue
        try:
            given: float = int(raw) if key == "epochs" else float(raw)
        except ValueError:
            continue  # the variable's own check names it
        if given == value:
            continue
        if spec is not None and given > 0 and (key != "epochs" or float(given).is_integer()):
            other = trainer_name_for(spec.base, **{**{"step": spec.step, "eps": spec.eps, "epochs": spec.epochs},
                                                   {"delta": "step"}.get(key, key): given})
            fix = f"unset {var} (the name decides), or use -tr {other}"
        else:
            fix = f"unset {var}, or change {trainer_name}.amat_{ {'delta': 'step'}.get(key, key)}"
        raise AdvConfigError(f"{var}={raw} contradicts -tr {trainer_name}, which trains {_WHAT[key]} {value:g}; {fix}")


def read_settings(mode: str, dataset_name: str, env: Mapping[str, str] | None = None,
                  trainer_name: str = "nnUNetTrainerAMAT",
                  fixed: Mapping[str, Any] | None = None) -> NnUNetAdvSettings:
    """Resolve the settings of a trainer whose class fixes ``mode`` (none|sat|amat) and
    possibly more (``fixed``: ``delta``, ``eps``, ``epochs`` from its name, see :mod:`.names`).

    ``AMAT_MODE``, when set, must agree with the trainer, and so must ``AMAT_STEP``,
    ``AMAT_EPS`` and ``AMAT_EPOCHS`` where the trainer fixes them (the class, not a
    variable, decides what is trained, so a result folder's name never lies).
    """
    env = os.environ if env is None else env
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    _check_fixed(fixed, env, trainer_name)
    defaults: dict[str, Any] = {"mode": mode}
    delta_origin = None
    if mode == "amat":
        if "delta" in fixed:
            defaults["delta"], delta_origin = float(fixed["delta"]), "trainer"
        elif env.get("AMAT_STEP", "") != "":
            delta_origin = "environment"
        else:
            defaults["delta"], delta_origin = paper_step(dataset_name), "guess"
    if mode == "sat" and "eps" in fixed:
        defaults["eps"] = float(fixed["eps"])
    try:
        cfg = AdvConfig.from_env(env, defaults=defaults)
    except AdvConfigError as e:
        raise env_error(str(e)) from None
    if cfg.mode not in MODES:
        raise AdvConfigError(
            f"AMAT_MODE={env.get('AMAT_MODE')!r} is not a mode; the modes are none (aliases std, clean, off), "
            f"sat and amat, and -tr {trainer_name} trains {mode!r}: unset AMAT_MODE (the trainer decides) "
            f"or set AMAT_MODE={mode}")
    if cfg.mode != mode:
        raise AdvConfigError(
            f"AMAT_MODE={env.get('AMAT_MODE')!r} contradicts -tr {trainer_name} (which trains mode "
            f"{mode!r}); unset AMAT_MODE or use -tr {TRAINER_OF_MODE[cfg.mode]}")
    if mode == "sat" and cfg.eps is None:
        raise AdvConfigError(f"-tr {trainer_name} needs a noise level: set AMAT_EPS (e.g. AMAT_EPS=5)")
    try:
        cfg = cfg.resolved("nnunet")  # the protocol's nnU-Net column, validated
    except AdvConfigError as e:
        raise env_error(str(e)) from None
    if mode == "amat":
        _check_amat_extras(cfg, env)
    xi_source = env.get("AMAT_XI_SOURCE", "") or "auto"
    if xi_source not in XI_SOURCES:
        raise AdvConfigError(f"AMAT_XI_SOURCE={xi_source!r} is not valid; use one of {', '.join(XI_SOURCES)} "
                             f"(or unset it: auto)")
    xi_file = env.get("AMAT_XI_FILE", "") or None
    if xi_file is not None and xi_source == "online":
        raise AdvConfigError("AMAT_XI_FILE is set but AMAT_XI_SOURCE=online; unset one of them")
    epochs = _positive_int(env, "AMAT_EPOCHS")
    return NnUNetAdvSettings(config=cfg, epochs=fixed.get("epochs", epochs),
                             iters=_positive_int(env, "AMAT_ITERS"),
                             val_iters=_positive_int(env, "AMAT_VAL_ITERS"),
                             xi_source="file" if xi_file and xi_source == "auto" else xi_source,
                             xi_file=xi_file, save_every=_positive_int(env, "AMAT_SAVE_EVERY"),
                             seed=_seed(env), delta_origin=delta_origin)


def _seed(env: Mapping[str, str]) -> int | None:
    raw = env.get("AMAT_SEED", "")
    if raw == "":
        return None
    if not raw.strip().isdigit():
        raise env_error(f"environment variable AMAT_SEED={raw!r} must be an integer >= 0")
    return int(raw)


def _check_amat_extras(cfg: AdvConfig, env: Mapping[str, str]) -> None:
    """What the core only notices when training starts: say it before, in variable names."""
    terms = 2 if cfg.terms == "authors" else 1  # the authors' Dice acceptance adds a column
    if cfg.xi is not None and len(cfg.xi) != terms:
        raise env_error(f"AMAT_XI={env.get('AMAT_XI')!r} holds {len(cfg.xi)} numbers, the loss has {terms} "
                        f"term{'s' if terms > 1 else ''} (AMAT_TERMS={cfg.terms})")


# -- one results folder, one setting -------------------------------------------------------------
#: AdvConfig fields that do not make two runs different trainings (xi is data, not a choice:
#: a recalibrated rerun is the same setting; kind/bounds are filled in by the trainer).
NOT_SETTINGS = ("xi", "xi_source", "kind", "bounds")


def comparable_settings(config: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
    """What decides what a run trains: the adversarial settings (by their ``AMAT_*`` names) and the seed."""
    out = {ENV_NAMES.get(k, k): v for k, v in config.items() if k not in NOT_SETTINGS}
    out["AMAT_SEED"] = seed
    return out


def settings_difference(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(variable, saved value, this run's value)`` for every setting that differs; a setting
    the saved run did not record (an older amat-hooks) is not compared."""
    return [(k, saved[k], v) for k, v in now.items() if k in saved and not _same(saved[k], v)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def format_setting(variable: str, value: Any) -> str:
    if value is None:
        return f"{variable} unset"
    return f"{variable}={value:g}" if isinstance(value, float) else f"{variable}={value}"


def overwrite_requested(env: Mapping[str, str] | None = None) -> bool:
    """``AMAT_OVERWRITE=1``: replace a results folder trained with other settings."""
    env = os.environ if env is None else env
    return env.get("AMAT_OVERWRITE", "").strip().lower() in ("1", "true", "yes", "on")


def save_interval(settings: NnUNetAdvSettings, num_epochs: int, current: int = NNUNET_SAVE_EVERY) -> int:
    """Epochs between two ``checkpoint_latest.pth``: ``AMAT_SAVE_EVERY``, else 1 for runs of
    at most :data:`SHORT_RUN_EPOCHS` epochs, else ``current`` (nnU-Net's 50, or what a
    subclass set)."""
    if settings.save_every:
        return settings.save_every
    if current == NNUNET_SAVE_EVERY and num_epochs <= SHORT_RUN_EPOCHS:
        return 1
    return current


# -- the xi file --------------------------------------------------------------------------------
def default_xi_path(preprocessed_dataset_folder_base: str | os.PathLike, configuration: str,
                    plans: str, fold: int | str) -> Path:
    """Where ``amat calibrate nnunet`` writes xi and ``nnUNetTrainerAMAT`` looks for it:
    next to the preprocessed dataset (one file per plans/configuration/fold)."""
    return Path(preprocessed_dataset_folder_base) / f"amat_xi__{plans}__{configuration}__fold_{fold}.json"


def calibrate_command(dataset: str, configuration: str, fold: int | str, plans: str) -> str:
    dataset_id = re.sub(r"^Dataset(\d+)_.*$", r"\1", dataset)
    extra = "" if plans == "nnUNetPlans" else f" -p {plans}"
    return f"amat calibrate nnunet {dataset_id} {configuration} {fold}{extra}"


def load_xi_file(path: str | os.PathLike, *, dataset: str, configuration: str, plans: str,
                 fold: int | str, rule: str, n_terms: int) -> list[float]:
    """Read and check a calibration file; every problem names the command that fixes it."""
    from amat_hooks.state import XiFileError, read_xi_file

    fix = f"run `{calibrate_command(dataset, configuration, fold, plans)}`"
    path = Path(path)
    if not path.is_file():
        raise AdvConfigError(f"no xi calibration file at {path}; compute it from a clean (STD) model with "
                             f"`{calibrate_command(dataset, configuration, fold, plans)}` (or set "
                             f"AMAT_XI_SOURCE=online to estimate xi during training)")
    try:
        xf = read_xi_file(path, fix=fix)
        if xf.task not in (None, "nnunet"):
            raise XiFileError(f"{path} holds xi of a {xf.task} model, not of nnU-Net; {fix}")
        xf.check_identity({"dataset": dataset, "configuration": configuration, "plans": plans},
                          fix=calibrate_command(dataset, configuration, fold, plans))
        return xf.thresholds(rule, n_terms, fix=fix)
    except XiFileError as e:
        raise AdvConfigError(str(e)) from None
