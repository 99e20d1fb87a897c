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

from ...config import AdvConfig, AdvConfigError

#: Paper table (section 3.3): AMAT step size Delta per nnU-Net dataset.
PAPER_STEP = {"heart": 5.0, "hippocampus": 0.5, "prostate": 3.0}
#: Delta for any other dataset (documented in docs/nnunet.md).
DEFAULT_STEP = 1.0
XI_SOURCES = ("auto", "file", "online")

NNUNET_ENV = {
    "AMAT_EPOCHS": "number of epochs (nnU-Net default 1000; length variants set their own)",
    "AMAT_ITERS": "training iterations per epoch (nnU-Net default 250)",
    "AMAT_VAL_ITERS": "validation iterations per epoch (nnU-Net default 50)",
    "AMAT_XI_SOURCE": "auto (calibration file if present, else online) | file | online",
    "AMAT_XI_FILE": "path of the xi file written by `amat calibrate nnunet`",
}


def paper_step(dataset_name: str) -> float:
    """Delta for a dataset: the paper's value when its name says Heart/Hippocampus/Prostate."""
    low = dataset_name.lower()
    for key, value in PAPER_STEP.items():
        if key in low:
            return value
    return DEFAULT_STEP


def _positive_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "")
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise AdvConfigError(f"environment variable {key}={raw!r} must be a positive integer") from None
    if value < 1:
        raise AdvConfigError(f"environment variable {key}={raw!r} must be a positive integer (>= 1)")
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

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "epochs": self.epochs, "iters": self.iters,
                "val_iters": self.val_iters, "xi_source": self.xi_source, "xi_file": self.xi_file}


def read_settings(mode: str, dataset_name: str, env: Mapping[str, str] | None = None,
                  trainer_name: str = "nnUNetTrainerAMAT") -> NnUNetAdvSettings:
    """Resolve the settings of a trainer whose class fixes ``mode`` (none|sat|amat).

    ``AMAT_MODE``, when set, must agree with the trainer (the class, not a variable,
    decides what is trained, so a result folder's name never lies).
    """
    env = os.environ if env is None else env
    defaults: dict[str, Any] = {"mode": mode}
    if mode == "amat":
        defaults["delta"] = paper_step(dataset_name)
    cfg = AdvConfig.from_env(env, defaults=defaults)
    if cfg.mode != mode:
        want = {"none": "nnUNetTrainerSTD", "sat": "nnUNetTrainerSAT", "amat": "nnUNetTrainerAMAT"}[cfg.mode] \
            if cfg.mode in ("none", "sat", "amat") else "a matching trainer"
        raise AdvConfigError(
            f"AMAT_MODE={env.get('AMAT_MODE')!r} contradicts -tr {trainer_name} (which trains mode "
            f"{mode!r}); unset AMAT_MODE or use -tr {want}")
    if mode == "sat" and cfg.eps is None:
        raise AdvConfigError(f"-tr {trainer_name} needs a noise level: set AMAT_EPS (e.g. AMAT_EPS=5)")
    cfg.validate()
    xi_source = env.get("AMAT_XI_SOURCE", "") or "auto"
    if xi_source not in XI_SOURCES:
        raise AdvConfigError(f"AMAT_XI_SOURCE={xi_source!r} is not valid; use one of {', '.join(XI_SOURCES)}")
    xi_file = env.get("AMAT_XI_FILE", "") or None
    if xi_file is not None and xi_source == "online":
        raise AdvConfigError("AMAT_XI_FILE is set but AMAT_XI_SOURCE=online; unset one of them")
    return NnUNetAdvSettings(config=cfg, epochs=_positive_int(env, "AMAT_EPOCHS"),
                             iters=_positive_int(env, "AMAT_ITERS"),
                             val_iters=_positive_int(env, "AMAT_VAL_ITERS"),
                             xi_source="file" if xi_file and xi_source == "auto" else xi_source,
                             xi_file=xi_file)


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
    from ...calibration import XiFileError, read_xi_file

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
