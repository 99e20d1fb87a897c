"""amat-hooks: adaptive-margin adversarial training (AMAT) for existing trainers.

The core (attacks, margins, thresholds, policies) knows the method; adapters registered
through pluggy hooks (``hookimpl``) know a trainer's batches and losses.
"""
from __future__ import annotations

import os as _os

from .attacks import AttackResult, ifgsm, pgd
from .config import AdvConfig, AdvConfigError
from .engine import AdapterError, AdversarialEngine
from .hookspecs import Host, hookimpl, hookspec
from .loop import AdversarialLoop, per_sample_mean
from .margins import MarginMismatchError, MarginStore
from .plugins import get_plugin_manager, new_plugin_manager
from .policies import AMAT, SAT, STD, AttackSettings, BoundLoss, Policy, SemanticsMismatchError, StepOutput
from .tasks import CalibrationSet, Task, TaskError, TrainRun
from .thresholds import OnlineThreshold, accepted, xi_from_losses

__version__ = "0.1.0"

if _os.environ.get("AMAT_NETWORK_GUARD"):  # tests: refuse and record any network access
    from .offline import install_network_guard as _guard

    _guard(_os.environ["AMAT_NETWORK_GUARD"])

__all__ = [
    "AMAT", "SAT", "STD", "AdapterError", "AdvConfig", "AdvConfigError", "AdversarialEngine",
    "AdversarialLoop", "AttackResult", "AttackSettings", "BoundLoss", "CalibrationSet", "Host",
    "MarginMismatchError", "MarginStore", "OnlineThreshold", "Policy", "SemanticsMismatchError",
    "StepOutput", "Task", "TaskError", "TrainRun", "accepted", "get_plugin_manager", "hookimpl",
    "hookspec", "ifgsm", "new_plugin_manager", "per_sample_mean", "pgd", "xi_from_losses",
]
