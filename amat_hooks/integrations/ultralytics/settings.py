"""The adversarial settings of an Ultralytics run: ``AMATDetectionTrainer.with_config``,
``amat yolo``'s flags and words, or ``AMAT_*``; carried to re-created (DDP) trainers as JSON in
:data:`CONFIG_ENV`; validation under attack (:class:`ValAttack`)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from amat_hooks.config import AdvConfig, AdvConfigError

#: The settings of this run as JSON, for trainers Ultralytics re-creates (DDP workers).
CONFIG_ENV = "AMAT_YOLO_CONFIG"


class UnsupportedTaskError(AdvConfigError):
    """Adversarial training was asked for a task other than ``detect``."""


def unsupported_task(task: str) -> UnsupportedTaskError:
    return UnsupportedTaskError(
        f"task '{task}' is not supported yet by amat-hooks' adversarial training (only 'detect' is); "
        f"run it with --adv none (plain Ultralytics), or use a detection model such as "
        f"model=yolov5s.yaml")


@dataclass
class ValAttack:
    """Noise levels (L2, on the [0, 1] image) at which validation also reports mAP50-95."""

    levels: list[float] = field(default_factory=list)
    attack: str = "pgd"
    steps: int = 10

    def validate(self) -> "ValAttack":
        if self.attack not in ("pgd", "ifgsm"):
            raise AdvConfigError(f"unknown --adv-val-attack {self.attack!r}; choose pgd or ifgsm")
        if any(not (e >= 0) for e in self.levels):
            raise AdvConfigError(f"--adv-val-eps levels must be >= 0, got {self.levels}")
        if self.steps < 1:
            raise AdvConfigError(f"--adv-val-steps must be >= 1, got {self.steps}")
        return self


def _config_from(value: Any) -> AdvConfig | None:
    if value is None or isinstance(value, AdvConfig):
        return value
    if isinstance(value, dict):
        return AdvConfig.from_dict(value)
    if isinstance(value, str):
        return AdvConfig(mode=value)
    raise AdvConfigError(f"adv must be an AdvConfig, a dict or a mode string, got {type(value).__name__}")


def _env_settings() -> tuple[AdvConfig | None, ValAttack | None]:
    raw = os.environ.get(CONFIG_ENV)
    if raw:
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise AdvConfigError(f"environment variable {CONFIG_ENV} is not valid JSON: {e}") from None
        cfg = None if d.get("config") is None else AdvConfig.from_dict(d["config"])
        val = None if d.get("val") is None else ValAttack(**d["val"])
        return cfg, val
    if os.environ.get("AMAT_MODE"):
        return AdvConfig.from_env(), None
    return None, None


def settings_env_value(cfg: AdvConfig | None, val: ValAttack | None) -> str:
    """The JSON that :data:`CONFIG_ENV` carries to re-created (DDP) trainers."""
    return json.dumps({"config": None if cfg is None else cfg.to_dict(),
                       "val": None if val is None else asdict(val)}, sort_keys=True)
