"""One trainer name per setting, a user's own trainer with the mixin, the version floor,
the device default and 3d samples (issue 28), through nnU-Net's own tools.

Fast checks first (the name grammar, settings, the folder-overwrite comparison, the 3d
patch box, hand-computed); then real processes on the shared generated dataset:
nnU-Net's lookup, ``nnUNetv2_train`` with a named trainer and with a user's
``AMATTrainerMixin`` subclass (1 epoch x 2 iterations), ``nnUNetv2_predict`` and
``nnUNetv2_find_best_configuration`` on those folders, the refusal to overwrite a folder
trained with other settings, an nnunetv2 older than 2.8, and ``amat calibrate|eval nnunet``
on a 3d_fullres model.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from amat_hooks.config import AdvConfigError  # noqa: E402
from amat_hooks.integrations.nnunet import names  # noqa: E402
from amat_hooks.integrations.nnunet import settings as st  # noqa: E402
from amat_hooks.integrations.nnunet.compat import nnunet_version_problem  # noqa: E402
from amat_hooks.integrations.nnunet.slices import patch_box  # noqa: E402

from test_nnunet import (BIN, DATASET, DATASET_ID, _amat_state, _env, _log, _run, _train,  # noqa: E402
                         prepared_dataset, stderr_reason)

QUIET = dict(AMAT_ITERS="2", AMAT_VAL_ITERS="1", AMAT_STEPS="2", AMAT_XI_SOURCE="online")


# -- the grammar -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("nnUNetTrainerAMAT", ("amat", None, None, None)),
    ("nnUNetTrainerAMAT_step0p5", ("amat", 0.5, None, None)),
    ("nnUNetTrainerAMAT_step2p25_50epochs", ("amat", 2.25, None, 50)),
    ("nnUNetTrainerAMAT_1epoch", ("amat", None, None, 1)),
    ("nnUNetTrainerSAT_eps5", ("sat", None, 5.0, None)),
    ("nnUNetTrainerSAT_eps0p1_10epochs", ("sat", None, 0.1, 10)),
    ("nnUNetTrainerSTD_5epochs", ("none", None, None, 5)),
    ("nnUNetTrainerSTD_7epochs", ("none", None, None, 7)),  # any length, not only nnU-Net's list
])
def test_names_carry_their_setting(name, expected):
    spec = names.parse_trainer_name(name)
    assert (spec.mode, spec.step, spec.eps, spec.epochs) == expected
    assert spec.name == name  # the one spelling round-trips


def test_names_outside_the_family_are_not_ours():
    for name in ("nnUNetTrainer", "nnUNetTrainer_5epochs", "MyTrainerAMAT", "nnUNetTrainerAMATX"):
        assert names.parse_trainer_name(name) is None


@pytest.mark.parametrize("name,words", [
    ("nnUNetTrainerAMAT_step0p50", ["write Delta '0p50' as '0p5'", "-tr nnUNetTrainerAMAT_step0p5"]),
    ("nnUNetTrainerAMAT_step05", ["as '5'"]),
    ("nnUNetTrainerAMAT_step0", ["Delta must be > 0"]),
    ("nnUNetTrainerAMAT_step0.5", ["not a number written with p", "0p5 for 0.5"]),
    ("nnUNetTrainerAMAT_eps5", ["'eps5' is not understood", "AMAT names carry _step<Delta>"]),
    ("nnUNetTrainerSAT_step1", ["SAT names carry _eps<eps>"]),
    ("nnUNetTrainerSTD_eps1", ["STD names carry only a length"]),
    ("nnUNetTrainerAMAT_1epochs", ["spell it -tr nnUNetTrainerAMAT_1epoch"]),
    ("nnUNetTrainerSAT_eps5_3epoch", ["spell it -tr nnUNetTrainerSAT_eps5_3epochs"]),
    ("nnUNetTrainerAMAT_50epochs_step1", ["'step1' is not understood"]),
])
def test_misspelt_names_are_refused_with_the_right_spelling(name, words):
    with pytest.raises(names.TrainerNameError) as e:
        names.parse_trainer_name(name)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_number_tokens():
    assert [names.number_token(v) for v in (0.5, 5, 5.0, 2.25, 0.125, 10)] == ["0p5", "5", "5", "2p25", "0p125", "10"]
    assert names.trainer_name("amat", step=0.5, epochs=1) == "nnUNetTrainerAMAT_step0p5_1epoch"
    assert names.trainer_name("sat", eps=5, epochs=50) == "nnUNetTrainerSAT_eps5_50epochs"


# -- settings: the name wins, a contradiction is refused --------------------------------------
def test_the_name_fixes_delta_eps_and_epochs():
    s = st.read_settings("amat", "Dataset990_AMATShapes", env={}, trainer_name="nnUNetTrainerAMAT_step0p5_5epochs",
                         fixed={"delta": 0.5, "epochs": 5})
    assert (s.config.delta, s.epochs, s.delta_origin) == (0.5, 5, "trainer")
    # the same value in the variable is no contradiction
    s = st.read_settings("amat", "Dataset990_AMATShapes", env={"AMAT_STEP": "0.50", "AMAT_EPOCHS": "5"},
                         trainer_name="nnUNetTrainerAMAT_step0p5_5epochs", fixed={"delta": 0.5, "epochs": 5})
    assert (s.config.delta, s.epochs) == (0.5, 5)
    s = st.read_settings("sat", "Dataset990_AMATShapes", env={}, trainer_name="nnUNetTrainerSAT_eps5",
                         fixed={"eps": 5.0})
    assert s.config.eps == 5.0 and s.config.label == "SAT5"


@pytest.mark.parametrize("trainer,fixed,env,words", [
    ("nnUNetTrainerAMAT_step0p5", {"delta": 0.5}, {"AMAT_STEP": "1"},
     ["AMAT_STEP=1 contradicts -tr nnUNetTrainerAMAT_step0p5, which trains Delta 0.5",
      "unset AMAT_STEP (the name decides), or use -tr nnUNetTrainerAMAT_step1"]),
    ("nnUNetTrainerSAT_eps5_50epochs", {"eps": 5.0, "epochs": 50}, {"AMAT_EPS": "2.5"},
     ["AMAT_EPS=2.5 contradicts", "which trains eps 5", "-tr nnUNetTrainerSAT_eps2p5_50epochs"]),
    ("nnUNetTrainerSTD_50epochs", {"epochs": 50}, {"AMAT_EPOCHS": "3"},
     ["AMAT_EPOCHS=3 contradicts -tr nnUNetTrainerSTD_50epochs, which trains epochs 50",
      "-tr nnUNetTrainerSTD_3epochs"]),
    ("MyTrainerAMAT", {"delta": 0.5}, {"AMAT_STEP": "2"},
     ["AMAT_STEP=2 contradicts -tr MyTrainerAMAT", "unset AMAT_STEP, or change MyTrainerAMAT.amat_step"]),
])
def test_a_variable_that_contradicts_the_trainer_is_refused(trainer, fixed, env, words):
    mode = "sat" if "SAT" in trainer else ("none" if "STD" in trainer else "amat")
    with pytest.raises(AdvConfigError) as e:
        st.read_settings(mode, "Dataset990_AMATShapes", env=env, trainer_name=trainer, fixed=fixed)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_delta_from_the_dataset_name_is_announced_as_a_guess():
    guess = st.read_settings("amat", "Dataset990_AMATShapes", env={})
    assert guess.delta_origin == "guess" and guess.config.delta == 1.0
    note = st.delta_note(guess, "Dataset990_AMATShapes", "nnUNetTrainerAMAT_10epochs")
    assert note.startswith("Delta 1 is a GUESS from the dataset name Dataset990_AMATShapes (no Heart, "
                           "Hippocampus or Prostate in the name: the default")
    assert "set it with -tr nnUNetTrainerAMAT_step0p5_10epochs for Delta 0.5, or AMAT_STEP" in note
    hippo = st.read_settings("amat", "Dataset004_Hippocampus", env={})
    assert "'hippocampus' in the name: the paper's Delta for Hippocampus" in st.delta_note(
        hippo, "Dataset004_Hippocampus", "nnUNetTrainerAMAT")
    env = st.read_settings("amat", "Dataset004_Hippocampus", env={"AMAT_STEP": "2"})
    assert st.delta_note(env, "Dataset004_Hippocampus", "nnUNetTrainerAMAT") == "Delta 2 from AMAT_STEP"


# -- one folder, one setting: what counts as other settings -----------------------------------
def test_settings_difference_names_the_variables():
    a = st.read_settings("amat", "Dataset990_AMATShapes", env={"AMAT_STEP": "0.5"})
    b = st.read_settings("amat", "Dataset990_AMATShapes", env={"AMAT_STEP": "1", "AMAT_BOUNDARY": "stop"})
    saved = st.comparable_settings(a.config.to_dict(), a.seed)
    assert st.settings_difference(saved, st.comparable_settings(a.config.to_dict(), None)) == []
    diff = st.settings_difference(saved, st.comparable_settings(b.config.to_dict(), 3))
    assert diff == [("AMAT_STEP", 0.5, 1.0), ("AMAT_BOUNDARY", "none", "stop"), ("AMAT_SEED", None, 3)]
    assert [st.format_setting(k, v) for k, v, _ in diff] == ["AMAT_STEP=0.5", "AMAT_BOUNDARY=none", "AMAT_SEED unset"]
    # xi is data, not a choice: a recalibrated rerun is the same setting
    with_xi = dict(a.config.to_dict(), xi=[0.3], xi_source="calibration file x")
    assert st.settings_difference(saved, st.comparable_settings(with_xi, None)) == []
    # a setting an older checkpoint did not record is not compared
    older = {k: v for k, v in saved.items() if k != "AMAT_TERMS"}
    assert st.settings_difference(older, st.comparable_settings(a.config.to_dict(), None)) == []
    assert st.overwrite_requested({"AMAT_OVERWRITE": "1"}) and not st.overwrite_requested({})


# -- version floor, device, 3d patch ----------------------------------------------------------
def test_version_floor():
    assert nnunet_version_problem("2.8.0") is None and nnunet_version_problem("2.8.1") is None
    assert nnunet_version_problem("3.0") is None
    old = nnunet_version_problem("2.7.2")
    assert old.startswith("amat-hooks needs nnunetv2 >= 2.8 (its trainer discovery through nnUNet_extTrainer "
                          "exists from 2.8.0), found 2.7.2; pip install -U 'nnunetv2>=2.8'")
    assert "not installed" in nnunet_version_problem(None)


def test_device_default_follows_nnunet():
    from amat_hooks.integrations.nnunet.task import resolve_device

    notes: list[str] = []
    assert resolve_device("cpu", notes.append) == "cpu" and notes == []
    got = resolve_device(None, notes.append)
    if torch.cuda.is_available():
        assert got == "cuda" and notes == []
    else:
        assert got == "cpu" and len(notes) == 1 and "no CUDA device found: running on the CPU" in notes[0]


def test_3d_patch_box():
    seg = np.zeros((10, 40, 40), dtype=np.int16)
    seg[7:10, 0:4, 36:40] = 1
    # z: centre (7 + 9 + 1) // 2 = 8 -> 8 - 3 = 5, moved inside: min(5, 10 - 6) = 4; y: 2 - 16 < 0 -> 0;
    # x: 38 - 16 = 22 > 40 - 32 = 8 -> 8
    assert patch_box((10, 40, 40), (6, 32, 32), seg) == [[4, 10], [0, 32], [8, 40]]
    # a case smaller than the patch: centred, padded on both sides
    assert patch_box((6, 32, 30), (8, 32, 32), np.zeros((6, 32, 30))) == [[-1, 7], [0, 32], [-1, 31]]
    # no foreground: the case centre
    assert patch_box((10, 40, 40), (6, 32, 32), np.zeros((10, 40, 40))) == [[2, 8], [4, 36], [4, 36]]


def test_mixin_after_the_trainer_is_refused():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from amat_hooks.integrations.nnunet import AMATTrainerMixin

    class Mine(nnUNetTrainer):
        pass

    class MineAMAT(AMATTrainerMixin, Mine):  # the documented order
        amat_step = 0.5

    assert MineAMAT.__mro__.index(AMATTrainerMixin) < MineAMAT.__mro__.index(Mine)
    with pytest.raises(TypeError, match=r"put AMATTrainerMixin before Mine in the bases, "
                                        r"class Wrong\(AMATTrainerMixin, Mine\)"):
        class Wrong(Mine, AMATTrainerMixin):
            pass


# -- real processes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepared_dataset(tmp_path_factory)


def _fold_of(results: Path, trainer: str, configuration: str = "2d") -> Path:
    return results / DATASET / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"


@pytest.mark.slow
def test_nnunets_lookup_resolves_every_name(root):
    """nnU-Net's own by-name lookup (the one nnUNetv2_train and nnUNetv2_predict call), in a
    fresh process that finds our folder through the installed .pth only."""
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "for n in ['nnUNetTrainerAMAT_step0p5', 'nnUNetTrainerSAT_eps5_50epochs', 'nnUNetTrainerSTD_1epoch',\n"
            "          'nnUNetTrainerAMAT_5epochs', 'nnUNetTrainerSAT_10epochs', 'nnUNetTrainerAMAT_step3_7epochs']:\n"
            "    c = f(n); print('R:', n, c.__name__, c.amat_mode, c.amat_step, c.amat_eps, c.amat_epochs)\n"
            "try:\n    f('nnUNetTrainerAMAT_step0p50')\nexcept Exception as e:\n    print('R:', type(e).__name__)\n")
    env = {k: v for k, v in _env(root).items() if k != "nnUNet_extTrainer"}
    p = _run([sys.executable, "-c", code], env)
    rows = [ln[3:] for ln in p.stdout.splitlines() if ln.startswith("R: ")]
    assert rows == ["nnUNetTrainerAMAT_step0p5 nnUNetTrainerAMAT_step0p5 amat 0.5 None None",
                    "nnUNetTrainerSAT_eps5_50epochs nnUNetTrainerSAT_eps5_50epochs sat None 5.0 50",
                    "nnUNetTrainerSTD_1epoch nnUNetTrainerSTD_1epoch none None None 1",
                    "nnUNetTrainerAMAT_5epochs nnUNetTrainerAMAT_5epochs amat None None 5",
                    "nnUNetTrainerSAT_10epochs nnUNetTrainerSAT_10epochs sat None None 10",
                    "nnUNetTrainerAMAT_step3_7epochs nnUNetTrainerAMAT_step3_7epochs amat 3.0 None 7",
                    "TrainerNameError"]
    assert "amat-hooks: error: -tr nnUNetTrainerAMAT_step0p50: write Delta '0p50' as '0p5'" in p.stderr
    info = _run([str(BIN / "amat"), "nnunet-info", "nnUNetTrainerAMAT_step0p5_50epochs", "nnUNetTrainerSAT_eps5"], env)
    assert "registered: yes" in info.stdout
    assert "nnU-Net's lookup of nnUNetTrainerAMAT_step0p5_50epochs: found in " in info.stdout
    assert "- AMAT, Delta 0.5, 50 epochs" in info.stdout and "- SAT, eps 5" in info.stdout
    bad = _run([str(BIN / "amat"), "nnunet-info", "nnUNetTrainerNoSuch"], env, ok=False)
    assert bad.returncode == 1 and "nnU-Net's lookup of nnUNetTrainerNoSuch: NOT FOUND - Could not find" in bad.stdout


MY_TRAINERS = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from amat_hooks.integrations.nnunet import AMATTrainerMixin


class MyTrainer(nnUNetTrainer):
    """A user's own trainer: another learning rate, a line in the log every epoch."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.print_to_log_file(f"MyTrainer epoch start, lr {self.optimizer.param_groups[0]['lr']:.6g}")


class MyTrainerAMAT(AMATTrainerMixin, MyTrainer):
    amat_step = 0.5
'''


@pytest.fixture(scope="module")
def named_runs(root, tmp_path_factory) -> Path:
    """Into one results folder: -tr nnUNetTrainerAMAT_step0p5_1epoch, and a user's
    MyTrainerAMAT (AMATTrainerMixin + MyTrainer, from the user's own nnUNet_extTrainer folder)."""
    base = tmp_path_factory.mktemp("named")
    results = base / "res"
    # --npz: nnU-Net's final validation keeps the probabilities nnUNetv2_find_best_configuration ensembles
    _train(root, "nnUNetTrainerAMAT_step0p5_1epoch", "--npz", nnUNet_results=str(results), **QUIET)
    mine = base / "my_trainers"
    mine.mkdir()
    (mine / "my_trainers.py").write_text(MY_TRAINERS)
    _train(root, "MyTrainerAMAT", "--npz", nnUNet_results=str(results), nnUNet_extTrainer=str(mine),
           AMAT_EPOCHS="1", **QUIET)
    return results


@pytest.mark.slow
def test_named_trainer_trains_its_setting_into_its_own_folder(root, named_runs):
    fold = _fold_of(named_runs, "nnUNetTrainerAMAT_step0p5_1epoch")
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    state = ckpt["amat_hooks"]
    assert ckpt["trainer_name"] == "nnUNetTrainerAMAT_step0p5_1epoch" and ckpt["current_epoch"] == 1
    assert state["config"]["delta"] == 0.5 and state["host_state"]["settings"]["delta_origin"] == "trainer"
    assert all(v >= 0.5 * (1 - 1e-6) for v in state["policy"]["margins"]["values"])
    log = _log(fold, "Epoch 0")
    assert ("amat-hooks: AMAT training (nnUNetTrainerAMAT_step0p5_1epoch), Delta 0.5 from the trainer's name, "
            in log)
    assert "1 epochs x 2 iterations" in log


@pytest.mark.slow
def test_own_trainer_with_the_mixin_through_nnunetv2_train(root, named_runs):
    """MyTrainer's own behaviour (learning rate, its log line) and AMAT's (margins, the state
    in the checkpoint) in one real run."""
    fold = _fold_of(named_runs, "MyTrainerAMAT")
    log = _log(fold, "Epoch 0")
    assert "MyTrainer epoch start, lr 0.003" in log  # MyTrainer's __init__ and hook ran
    assert ("amat-hooks: AMAT training (MyTrainerAMAT), Delta 0.5 from the trainer's class "
            "(MyTrainerAMAT.amat_step)") in log
    assert "AMAT margins n=" in log
    state = _amat_state(fold / "checkpoint_final.pth")
    assert state["host_state"]["trainer"] == "MyTrainerAMAT" and state["config"]["delta"] == 0.5
    assert state["policy"]["margins"]["updates"] == 2 * _batch(root)


def _batch(root: Path) -> int:
    plans = json.loads((root / "pre" / DATASET / "nnUNetPlans.json").read_text())
    return int(plans["configurations"]["2d"]["batch_size"])


@pytest.mark.slow
def test_predict_and_find_best_see_the_named_folders(root, named_runs, tmp_path):
    """nnUNetv2_predict by the name; nnUNetv2_find_best_configuration scores each trainer's
    folder apart and ensembles the two."""
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(root / "raw" / DATASET / "imagesTr" / "shapes_000_0000.nii.gz", images)
    out = tmp_path / "pred"
    env = _env(root, nnUNet_results=str(named_runs), nnUNet_extTrainer=str(named_runs.parent / "my_trainers"))
    _run([str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "2d",
          "-f", "0", "-tr", "nnUNetTrainerAMAT_step0p5_1epoch", "-device", "cpu", "--disable_tta", "-npp", "1",
          "-nps", "1"], env)
    assert (out / "shapes_000.nii.gz").is_file()
    p = _run([str(BIN / "nnUNetv2_find_best_configuration"), str(DATASET_ID), "-c", "2d", "-f", "0", "-np", "1",
              "-tr", "nnUNetTrainerAMAT_step0p5_1epoch", "MyTrainerAMAT"], env)
    for trainer in ("nnUNetTrainerAMAT_step0p5_1epoch", "MyTrainerAMAT"):
        assert f"{trainer}__nnUNetPlans__2d: " in p.stdout, p.stdout[-2000:]
    assert ("ensemble___nnUNetTrainerAMAT_step0p5_1epoch__nnUNetPlans__2d___MyTrainerAMAT__nnUNetPlans__2d"
            in p.stdout), p.stdout[-2000:]


@pytest.mark.slow
def test_a_variable_contradicting_the_name_stops_nnunetv2_train(root, tmp_path):
    p = _train(root, "nnUNetTrainerAMAT_step0p5", ok=False, nnUNet_results=str(tmp_path / "res"), AMAT_STEP="1",
               AMAT_EPOCHS="1")
    reason = stderr_reason(p)
    assert reason == ("amat-hooks: error: AMAT_STEP=1 contradicts -tr nnUNetTrainerAMAT_step0p5, which trains "
                      "Delta 0.5; unset AMAT_STEP (the name decides), or use -tr nnUNetTrainerAMAT_step1")
    assert not list((tmp_path / "res").rglob("checkpoint_*.pth"))


@pytest.mark.slow
def test_a_folder_trained_with_other_settings_is_not_overwritten(root, tmp_path):
    results = tmp_path / "res"
    settings = dict(nnUNet_results=str(results), AMAT_EPOCHS="1", AMAT_ITERS="1", AMAT_VAL_ITERS="1",
                    AMAT_STEPS="2", AMAT_XI_SOURCE="online")
    _train(root, "nnUNetTrainerAMAT", AMAT_STEP="0.5", **settings)
    fold = _fold_of(results, "nnUNetTrainerAMAT")
    before = (fold / "checkpoint_final.pth").read_bytes()
    p = _train(root, "nnUNetTrainerAMAT", ok=False, AMAT_STEP="1", **settings)
    reason = stderr_reason(p)
    assert reason == (f"amat-hooks: error: {fold} already holds a run trained with AMAT_STEP=0.5 "
                      f"(checkpoint_final.pth); this run has AMAT_STEP=1 and would overwrite it. Keep both: train "
                      f"it under its own name, -tr nnUNetTrainerAMAT_step1, or set nnUNet_results to another folder; "
                      f"continue the saved run with its settings (AMAT_STEP=0.5) and --c; or set AMAT_OVERWRITE=1 "
                      f"to replace it")
    assert (fold / "checkpoint_final.pth").read_bytes() == before, "the saved run must be untouched"
    assert reason in _log(fold, "already holds a run")
    _train(root, "nnUNetTrainerAMAT", AMAT_STEP="1", AMAT_OVERWRITE="1", **settings)
    assert _amat_state(fold / "checkpoint_final.pth")["config"]["delta"] == 1.0
    assert "AMAT_OVERWRITE=1: replacing the run in" in _log(fold, "AMAT_OVERWRITE=1")


@pytest.mark.slow
def test_nnunet_older_than_2_8_is_named_at_first_use(root, tmp_path):
    """An nnunetv2 2.7.0 distribution first on the path (its metadata is what pip shows)."""
    fake = tmp_path / "old"
    (fake / "nnunetv2-2.7.0.dist-info").mkdir(parents=True)
    (fake / "nnunetv2-2.7.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: nnunetv2\n"
                                                              "Version: 2.7.0\n")
    env = _env(root, PYTHONPATH=str(fake))
    line = ("amat-hooks needs nnunetv2 >= 2.8 (its trainer discovery through nnUNet_extTrainer exists from "
            "2.8.0), found 2.7.0; pip install -U 'nnunetv2>=2.8'")
    info = _run([str(BIN / "amat"), "nnunet-info"], env, ok=False)
    assert info.returncode == 1 and f"error: {line}" in info.stderr
    cal = _run([str(BIN / "amat"), "calibrate", "nnunet", str(DATASET_ID), "2d", "0"], env, ok=False)
    assert cal.returncode == 2 and line in cal.stderr and "Traceback" not in cal.stderr
    train = _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", "nnUNetTrainerAMAT", "-device",
                  "cpu"], _env(root, PYTHONPATH=str(fake), nnUNet_results=str(tmp_path / "res")), ok=False)
    assert stderr_reason(train).startswith(f"amat-hooks: error: {line}")


# -- 3d: calibrate and eval, one patch per case -----------------------------------------------
@pytest.fixture(scope="module")
def root3d(root, tmp_path_factory) -> Path:
    """The generated raw dataset planned for 3d_fullres in a root of its own (the 2d plans of
    the shared root stay as they are), and a clean 3d model (1 epoch x 2 iterations)."""
    r = tmp_path_factory.mktemp("nnunet3d")
    shutil.copytree(root / "raw", r / "raw")
    _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"],
         _env(r, nnUNet_n_proc_DA="1"))
    _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerSTD", "-device",
          "cpu"], _env(r, AMAT_EPOCHS="1", AMAT_ITERS="2", AMAT_VAL_ITERS="1"))
    return r


@pytest.mark.slow
def test_calibrate_and_eval_a_3d_model_one_patch_per_case(root3d, tmp_path):
    split = json.loads((root3d / "pre" / DATASET / "splits_final.json").read_text())[0]
    cal = _run([str(BIN / "amat"), "calibrate", "nnunet", str(DATASET_ID), "3d_fullres", "0"], _env(root3d))
    if not torch.cuda.is_available():  # the device defaults as nnU-Net's, with a note where there is no GPU
        assert "note: no CUDA device found: running on the CPU" in cal.stderr
    assert f"calibrating xi on {len(split['train'])} train cases (one 3d patch each)" in cal.stdout
    rec = json.loads((root3d / "pre" / DATASET / "amat_xi__nnUNetPlans__3d_fullres__fold_0.json").read_text())
    assert rec["n_samples"] == rec["source"]["n_cases"] == len(split["train"])  # one sample per case
    assert rec["identity"]["configuration"] == "3d_fullres"
    out = tmp_path / "eval"
    _run([str(BIN / "amat"), "eval", "nnunet", str(DATASET_ID), "3d_fullres", "0", "--models",
          "STD=nnUNetTrainerSTD", "--levels", "1,2", "--pgd-steps", "2", "--ifgsm-steps", "2", "--out", str(out),
          "-device", "cpu"], _env(root3d))
    r = json.loads((out / "robustness.json").read_text())["STD"]
    import SimpleITK as sitk

    with_fg = sum(int((sitk.GetArrayFromImage(sitk.ReadImage(str(root3d / "raw" / DATASET / "labelsTr" /
                                                                  f"{c}.nii.gz"))) > 0).any()) for c in split["val"])
    assert r["samples"] == with_fg and r["scored"] == f"{with_fg} val cases with foreground (one 3d patch each)"
    for attack in ("pgd", "ifgsm"):
        assert 0.0 <= r["noisy"][attack]["2.0"]["ADI"] <= 1.0
