"""The two protocols: the paper's text (the default) and the authors' released code.

The paper (Ma and Liang) and the code behind its tables (SarielMa/amat_conf @ d0aa94e,
SarielMa/nnUNet @ cbed61e, SarielMa/yolov5 @ cb72670) differ in the settings below; each is
an option of its own (``--adv-<name>``, ``AMAT_<NAME>``), ``--adv-protocol`` picks a whole
column for the kind of trainer (its adapter's ``protocol_kind``), and a setting given
explicitly always wins. docs/protocols.md says how to use them; docs/results/README.md has
every row with the code's file and line.

=================  ==================================  =========================================
setting            paper (default)                     authors' code
=================  ==================================  =========================================
pgd_steps, alpha   10 steps of 2.5 E / steps           20 steps; alpha 4 (nnU-Net), 5 (others)
start              uniform in the ball of radius E     on the sphere of radius max(E - D, D)
accept_iterates    the returned iterate                every evaluated iterate must pass
update             every visit                         once per epoch: +D if any visit passed
refine             (|noise| + E) / 2                   YOLO: at least D; landmark: no refine
max_margin_deltas  no cap                              landmark: 10 D
sat_loss           (L0 + L1) / 2                       nnU-Net: the noisy loss only
clamp              the input range for YOLO only       every trainer's input range
attack_bn          statistics restored after attacks   train mode: PGD forwards update BatchNorm
terms              the trainer's loss terms            nnU-Net: accept on hard Dice; landmark:
                                                       0.5 x Dice against the binary mask
=================  ==================================  =========================================

Evaluation (``amat eval --protocol``, :func:`eval_settings`): PGD steps of 2.5 eps / steps and
IFGSM steps of eps / steps, eval mode, every slice with foreground (paper) vs PGD 0.05 eps,
IFGSM 0.5 eps (nnU-Net 0.05 eps), PGD starting on the eps-sphere, landmark models in train mode with batch 1, nnU-Net slices
holding every foreground class of their case (authors).
"""
from __future__ import annotations

import math
from typing import Any

PROTOCOLS = ("paper", "authors")
#: What an adapter says it is (``BatchAdapter.protocol_kind``): the protocol's column per trainer.
KINDS = ("generic", "nnunet", "yolo", "yolov5", "landmark")
#: The settings a protocol decides and their choices (None: a number).
CHOICES: dict[str, tuple[str, ...] | None] = {
    "pgd_steps": None, "alpha": None, "start": ("ball", "sphere"), "accept_iterates": ("last", "all"),
    "update": ("visit", "epoch"), "refine": ("half", "floor", "none"), "max_margin_deltas": None,
    "sat_loss": ("mean", "noisy"), "clamp": ("none", "input"), "attack_bn": ("frozen", "train"),
    "terms": ("trainer", "authors"),
}

_PAPER = {"pgd_steps": 10, "alpha": 2.5, "start": "ball", "accept_iterates": "last", "update": "visit",
          "refine": "half", "max_margin_deltas": None, "sat_loss": "mean", "clamp": "none", "attack_bn": "frozen",
          "terms": "trainer"}
_AUTHORS = {"pgd_steps": 20, "alpha": 5.0, "start": "sphere", "accept_iterates": "all", "update": "epoch",
            "refine": "half", "max_margin_deltas": None, "sat_loss": "mean", "clamp": "input", "attack_bn": "train",
            "terms": "authors"}
_BY_KIND = {
    ("paper", "yolo"): {"clamp": "input"},       # a pixel outside [0, 1] is no image
    ("paper", "yolov5"): {"clamp": "input"},
    ("authors", "nnunet"): {"alpha": 4.0, "sat_loss": "noisy"},
    ("authors", "yolo"): {"refine": "floor"},
    ("authors", "yolov5"): {"refine": "floor"},
    ("authors", "landmark"): {"refine": "none", "max_margin_deltas": 10.0},
}


def protocol_settings(protocol: str, kind: str = "generic") -> dict[str, Any]:
    """Every setting of :data:`CHOICES` as ``protocol`` sets it for a trainer of ``kind``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    base = dict(_PAPER if protocol == "paper" else _AUTHORS)
    return {**base, **_BY_KIND.get((protocol, kind if kind in KINDS else "generic"), {})}


#: The authors' published thresholds (the acceptance test compares a term with xi by ``<``).
#: nnU-Net's acceptance terms are (loss: never tested, 1 - hard Dice); the landmark heatmap
#: term is 0.5 x Dice against the mask, so its xi is half the published Dice threshold.
XI_PRESETS: dict[str, tuple[list[float], str]] = {
    "authors:nnunet-heart": ([1e30, 1 - 0.9114448],
                             "SarielMa/amat_conf@d0aa94e nnUNet/nnunet/training/network_training/nnUNetTrainerV2.py:347-356"),
    "authors:nnunet-hippocampus": ([1e30, 1 - 0.8065869],
                                   "SarielMa/amat_conf@d0aa94e nnUNet/nnunet/training/network_training/nnUNetTrainerV2.py:347-356"),
    "authors:nnunet-prostate": ([1e30, 1 - 0.86081946],
                                "SarielMa/amat_conf@d0aa94e nnUNet/nnunet/training/network_training/nnUNetTrainerV2.py:347-356"),
    "authors:yolov5": ([0.03965024, 0.060259447, 0.04034234],
                       "SarielMa/amat_conf@d0aa94e yolov5/train_AMAT.py:352-354 (box, obj, cls)"),
    "authors:landmark": ([0.5 * 0.026233636243294278, 0.027737605627997527, 0.027738130267788035],
                         "SarielMa/amat_conf@d0aa94e landmark_detection/train_AMAT_2zscore.py:63-65 (Dice, rx, ry)"),
}


def xi_preset(kind: str, dataset: str | None = None) -> str | None:
    """The name of the authors' preset for a trainer of ``kind`` (nnU-Net: by dataset name)."""
    if kind == "nnunet":
        low = (dataset or "").lower()
        return next((f"authors:nnunet-{k}" for k in ("heart", "hippocampus", "prostate") if k in low), None)
    return f"authors:{kind}" if f"authors:{kind}" in XI_PRESETS else None


def is_never_tested(value: float) -> bool:
    """A preset column that carries no threshold (nnU-Net's loss column under Dice acceptance)."""
    return not math.isfinite(value) or value >= 1e29


#: Evaluation settings (rows 12-14): the PGD and IFGSM step as a share of each row's eps (None:
#: ``alpha * eps / steps`` for PGD, ``eps / steps`` for IFGSM), PGD's random start (uniform in
#: the eps-ball, or on the eps-sphere as the authors' ``rand_init_norm=None``), the model's mode during the
#: attack and the scoring, and which samples are scored (``any``: every one the task yields;
#: ``every_class``: nnU-Net slices that hold every foreground class of their case).
EVAL_CHOICES: dict[str, tuple[str, ...] | None] = {
    "pgd_step": None, "ifgsm_step": None, "pgd_start": ("ball", "sphere"), "model_mode": ("eval", "train"),
    "samples": ("any", "every_class"),
}
_EVAL = {"paper": {"pgd_step": None, "ifgsm_step": None, "pgd_start": "ball", "model_mode": "eval", "samples": "any"},
         "authors": {"pgd_step": 0.05, "ifgsm_step": 0.5, "pgd_start": "sphere", "model_mode": "eval",
                     "samples": "any"}}
_EVAL_BY_KIND = {
    ("authors", "nnunet"): {"ifgsm_step": 0.05, "samples": "every_class"},
    ("authors", "landmark"): {"model_mode": "train"},
}


def eval_settings(protocol: str, kind: str = "generic") -> dict[str, Any]:
    """The evaluation settings of :data:`EVAL_CHOICES` as ``protocol`` sets them for ``kind``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return {**_EVAL[protocol], **_EVAL_BY_KIND.get((protocol, kind if kind in KINDS else "generic"), {})}


#: ``amat calibrate --protocol authors`` (row 10): the authors' statistic per kind, and how
#: their scripts ran the clean model (landmark: train mode, batch 1, their 0.5 x Dice term).
#: nnU-Net's statistic (mean hard Dice over slices holding every foreground class) is not
#: computed here: its published values are the presets ``authors:nnunet-*``.
_CALIBRATION = {
    "landmark": {"rule": "huber+3", "model_mode": "train", "batch_size": 1, "terms": "authors"},
    "yolo": {"rule": "max"},
    "yolov5": {"rule": "max"},
}


def calibration_settings(protocol: str, kind: str) -> dict[str, Any]:
    """How ``amat calibrate`` scores the clean model under ``protocol`` ({} for the paper's)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return dict(_CALIBRATION.get(kind, {})) if protocol == "authors" else {}
