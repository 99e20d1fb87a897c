"""What a trained model withstands: attacks at several noise levels, the per-sample worst
case, the robust radius, the gradient-masking check, metrics and every table and plot.

The public names are re-exported here (``from amat_hooks.evaluation import robustness_eval``).
"""
from __future__ import annotations

from amat_hooks.evaluation.run import *  # noqa: F401,F403
