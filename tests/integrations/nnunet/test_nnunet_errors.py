"""Bad settings through the real ``nnUNetv2_train`` (issue 14): every message names the
environment variable the user set (never an ``--adv-*`` flag of another front end) and a
fix the user can apply; the one-line reason comes before nnU-Net's traceback on stderr and
is written into the run's training log.

Each case is one short process that stops while the trainer is built or initialised (no
epoch runs). Resume refusals (``--c`` with another Delta or semantics) are in
tests/test_nnunet_resume.py.
"""
from __future__ import annotations

import pytest

pytest.importorskip("nnunetv2")

from test_nnunet import _fold, _log, _train, prepared_dataset, stderr_reason  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepared_dataset(tmp_path_factory)


CASES = [
    # trainer, settings, words the reason must contain (the variable, then the fix)
    ("nnUNetTrainerAMAT", {"AMAT_STEP": "0"}, ["AMAT_STEP must be > 0", "set AMAT_STEP to a number > 0",
                                               "AMAT_STEP=0.5", "or unset it"]),
    ("nnUNetTrainerSAT", {"AMAT_EPS": "0"}, ["AMAT_EPS must be > 0", "set AMAT_EPS to a noise level > 0",
                                             "AMAT_EPS=5"]),
    ("nnUNetTrainerSAT", {}, ["-tr nnUNetTrainerSAT needs a noise level", "set AMAT_EPS", "AMAT_EPS=5"]),
    ("nnUNetTrainerAMAT", {"AMAT_MODE": "bogus"}, ["AMAT_MODE='bogus' is not a mode", "none", "sat", "amat",
                                                   "unset AMAT_MODE", "AMAT_MODE=amat"]),
    ("nnUNetTrainerAMAT", {"AMAT_BOUNDARY": "sometimes"}, ["AMAT_BOUNDARY 'sometimes'",
                                                           "choose one of: none, stop"]),
    ("nnUNetTrainerSTD", {"AMAT_SAVE_EVERY": "0"}, ["AMAT_SAVE_EVERY='0' must be a positive integer",
                                                    "set AMAT_SAVE_EVERY to an integer >= 1"]),
    # found when the trainer is initialised (after nnU-Net built it): same reporting
    ("nnUNetTrainerAMAT", {"AMAT_XI_FILE": "MISSING"}, ["no xi calibration file", "MISSING",
                                                        "amat calibrate nnunet 990 2d 0",
                                                        "AMAT_XI_SOURCE=online"]),
]


@pytest.mark.parametrize("trainer,settings,words", CASES, ids=[
    "step0", "eps0", "sat-no-eps", "mode-bogus", "boundary-bogus", "save-every0", "xi-file-missing"])
def test_bad_setting_names_the_variable_and_a_fix(root, tmp_path, trainer, settings, words):
    settings = {k: (str(tmp_path / "nope.json") if v == "MISSING" else v) for k, v in settings.items()}
    words = [str(tmp_path / "nope.json") if w == "MISSING" else w for w in words]
    results = tmp_path / "res"
    p = _train(root, trainer, ok=False, nnUNet_results=str(results), AMAT_EPOCHS="1", **settings)
    assert p.returncode != 0
    reason = stderr_reason(p)  # before the traceback, no --adv anywhere
    for w in words:
        assert w in reason, (w, reason)
    assert p.stderr.rstrip().splitlines()[-1].endswith(reason[len("amat-hooks: error: "):])  # the exception's text
    fold = results / _fold(root, trainer).relative_to(root / "res")
    assert reason in _log(fold), "the training log must hold the reason"
