"""amat-hooks: adaptive-margin adversarial training (AMAT) for existing trainers.

The method (attacks, margins, thresholds, policies, the engine) knows nothing of any
trainer; one :class:`BatchAdapter` per trainer says how its batches, sample ids and
per-sample loss terms look; plugins (``hookimpl``) contribute adapters, tasks and commands.
"""
from __future__ import annotations

import os as _os

from amat_hooks.adapter import AdapterError, BatchAdapter, BoundLoss, TupleAdapter
from amat_hooks.attacks import AttackResult, ifgsm, pgd
from amat_hooks.config import AdvConfig, AdvConfigError
from amat_hooks.engine import AdversarialEngine
from amat_hooks.hookspecs import Host, hookimpl, hookspec
from amat_hooks.loop import AdversarialLoop, per_sample_mean
from amat_hooks.margins import MarginMismatchError, MarginStore
from amat_hooks.plugins import get_plugin_manager, new_plugin_manager
from amat_hooks.policies import AMAT, SAT, STD, Policy
from amat_hooks.policy_types import AttackSettings, SemanticsMismatchError, StepOutput
from amat_hooks.tasks import CalibrationSet, Task, TaskError, TrainRun
from amat_hooks.thresholds import OnlineThreshold, accepted, xi_from_losses

__version__ = "0.2.0"

if _os.environ.get("AMAT_NETWORK_GUARD"):  # tests: refuse and record any network access
    from amat_hooks.offline import install_network_guard as _guard

    _guard(_os.environ["AMAT_NETWORK_GUARD"])

__all__ = [
    "AMAT", "SAT", "STD", "AdapterError", "AdvConfig", "AdvConfigError", "AdversarialEngine", "AdversarialLoop",
    "AttackResult", "AttackSettings", "BatchAdapter", "BoundLoss", "CalibrationSet", "Host", "MarginMismatchError",
    "MarginStore", "OnlineThreshold", "Policy", "SemanticsMismatchError", "StepOutput", "Task", "TaskError",
    "TrainRun", "TupleAdapter", "accepted", "get_plugin_manager", "hookimpl", "hookspec", "ifgsm",
    "new_plugin_manager", "per_sample_mean", "pgd", "xi_from_losses",
]
