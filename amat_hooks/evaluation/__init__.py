"""What a trained model withstands, split by concern: :mod:`.task` (what an integration
supplies), :mod:`.run` (attacks at every level, the per-sample worst case, resume),
:mod:`.radius` (each sample's robust radius), :mod:`.checks` (gradient masking), :mod:`.result`,
:mod:`.objectives` (segmentation objectives), :mod:`.metrics`, :mod:`.report` (every table)
and :mod:`.figures` (every plot). The names below are the public API.
"""
from __future__ import annotations

from amat_hooks.evaluation.checks import MASKING_FLOOR_TOL, MASKING_RANDOM_MARGIN, masking_check, warn_if_weak
from amat_hooks.evaluation.radius import RADIUS_OBJECTIVES, MinNormResult, RadiusSpec, min_norm
from amat_hooks.evaluation.result import EvalResult, load_result, save_result
from amat_hooks.evaluation.run import (ATTACKS, KNOWN_ATTACKS, check_attacks, check_levels, fingerprint,
                                       robustness_eval)
from amat_hooks.evaluation.task import AttackNotSupported, EvalBatch, EvalTask

__all__ = ["ATTACKS", "AttackNotSupported", "EvalBatch", "EvalResult", "EvalTask", "KNOWN_ATTACKS",
           "MASKING_FLOOR_TOL", "MASKING_RANDOM_MARGIN", "MinNormResult", "RADIUS_OBJECTIVES", "RadiusSpec",
           "check_attacks", "check_levels", "fingerprint", "load_result", "masking_check", "min_norm",
           "robustness_eval", "save_result", "warn_if_weak"]
