"""nnU-Net v2 integration with real nnU-Net processes (CPU, generated data).

One generated 2D dataset is planned/preprocessed once per session (:func:`prepared_dataset`,
shared with the other test_nnunet_*.py files of this folder, which import these helpers); every training runs the real
``nnUNetv2_train`` console script in a subprocess with a few iterations,
``nnUNet_def_n_proc=1`` and no data-augmentation workers. Every process runs under the
umask :data:`UMASK` (not the usual 0022), so the permission test sees what a plain ``open``
gives there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
DATA = REPO.parent / "shared" / "data"
DATASET_ID = 990
DATASET = "Dataset990_AMATShapes"
TRAINER_FOLDER = REPO / "amat_hooks" / "integrations" / "nnunet" / "trainers"

pytestmark = pytest.mark.slow
#: umask of every process these tests start: files must come out 0640, as a plain open gives
UMASK = 0o027


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAT_", "nnUNet_"))}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0",
               nnUNet_compile="false", OMP_NUM_THREADS="2", MPLBACKEND="Agg",
               AMAT_NETWORK_GUARD=str(root / "network_attempts.txt"))
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: int = 400, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), umask=UMASK)
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def _train(root: Path, trainer: str, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    return _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu",
                 *args], _env(root, **env), ok=ok)


def _fold(root: Path, trainer: str) -> Path:
    return root / "res" / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0"


def _log(fold: Path, containing: str = "") -> str:
    """The newest training log of a fold folder (nnU-Net names them by start time) that
    contains ``containing`` (loading a model for amat eval/calibrate also starts a log)."""
    logs = [p.read_text() for p in sorted(fold.glob("training_log_*.txt"))]
    return next(t for t in reversed(logs) if containing in t)


def _amat_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["amat_hooks"]


def table_digest(margins: dict) -> str:
    """The digest docs/nnunet.md describes: SHA-256 of the JSON [ids, values as float.hex()]."""
    import hashlib

    payload = json.dumps([[list(i) for i in margins["ids"]], [float(v).hex() for v in margins["values"]]],
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _margins(state: dict) -> dict:
    m = state["policy"]["margins"]
    return dict(zip(map(tuple, m["ids"]), m["values"]))


def prepared_dataset(tmp_path_factory) -> Path:
    """Generated raw dataset (12 cases x 6 slices of 32x32) planned and preprocessed for 2d,
    once per pytest session for every nnU-Net test module (``raw/`` and ``pre/`` of the
    returned root; each module trains into its own ``nnUNet_results``). Modules other than
    this one must not rely on the xi file this module's ``calibrated`` fixture writes into
    ``pre/`` (they set AMAT_XI or AMAT_XI_SOURCE)."""
    root = tmp_path_factory.getbasetemp() / "nnunet"
    done = root / ".prepared"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        env = _env(root, nnUNet_n_proc_DA="1")  # nnU-Net's preprocessing crashes with 0 DA processes
        _run([str(BIN / "amat"), "nnunet-generate", "--id", str(DATASET_ID)], env)
        _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"], env)
        assert (root / "pre" / DATASET / "nnUNetPlans_2d").is_dir()
        done.touch()
    return root


def stderr_reason(p: subprocess.CompletedProcess) -> str:
    """The one-line reason a failed nnUNetv2_train printed, checked to come before the traceback."""
    lines = p.stderr.splitlines()
    reasons = [i for i, ln in enumerate(lines) if ln.startswith("amat-hooks: error: ")]
    assert reasons, f"no 'amat-hooks: error:' line on stderr:\n{p.stderr[-3000:]}"
    tb = next((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), len(lines))
    assert reasons[0] < tb, "the reason must come before the traceback"
    assert "--adv" not in p.stderr + p.stdout, "nnUNetv2_train has no --adv flags"
    return lines[reasons[0]]


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory) -> Path:
    return prepared_dataset(tmp_path_factory)


@pytest.fixture(scope="session")
def calibrated(nnunet) -> Path:
    """A clean STD model (1 epoch) and xi calibrated from it with `amat calibrate nnunet`."""
    _train(nnunet, "nnUNetTrainerSTD", AMAT_EPOCHS="1", AMAT_ITERS="3", AMAT_VAL_ITERS="1")
    p = _run([str(BIN / "amat"), "calibrate", "nnunet", str(DATASET_ID), "2d", "0"], _env(nnunet))
    xi_file = nnunet / "pre" / DATASET / "amat_xi__nnUNetPlans__2d__fold_0.json"
    assert xi_file.is_file(), p.stdout + p.stderr
    (nnunet / "calibrate_output.txt").write_text(p.stdout + p.stderr)
    return xi_file


@pytest.fixture(scope="session")
def amat_run(nnunet, calibrated) -> Path:
    """nnUNetTrainerAMAT from scratch, 2 epochs x 3 iterations, xi from the calibration file
    (the paper's order: STD, calibrate, AMAT)."""
    # one data-augmentation worker process: nnU-Net's usual multi-process loader path
    _train(nnunet, "nnUNetTrainerAMAT", AMAT_EPOCHS="2", AMAT_ITERS="3", AMAT_VAL_ITERS="1", AMAT_STEPS="3",
           AMAT_XI_SOURCE="file", nnUNet_n_proc_DA="1")
    return _fold(nnunet, "nnUNetTrainerAMAT")


@pytest.fixture(scope="session")
def sat_run(nnunet) -> Path:
    _train(nnunet, "nnUNetTrainerSAT", AMAT_EPS="2", AMAT_EPOCHS="1", AMAT_ITERS="2", AMAT_VAL_ITERS="1",
           AMAT_STEPS="2")
    return _fold(nnunet, "nnUNetTrainerSAT")


@pytest.fixture(scope="session")
def evaluated(nnunet, amat_run, tmp_path_factory) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    """`amat eval nnunet` of the STD and AMAT models on the fold's validation slices."""
    out = tmp_path_factory.mktemp("eval")
    cmd = [str(BIN / "amat"), "eval", "nnunet", str(DATASET_ID), "2d", "0", "--models",
           "STD=nnUNetTrainerSTD,AMAT=nnUNetTrainerAMAT", "--levels", "4,1", "--pgd-steps", "3",
           "--ifgsm-steps", "2", "--batch-size", "4", "--out", str(out), "--no-progress"]
    return out, cmd, _run(cmd, _env(nnunet))


def test_calibration_xi_is_mean_of_clean_slice_losses(nnunet, calibrated):
    rec = json.loads(calibrated.read_text())
    split = json.loads((nnunet / "pre" / DATASET / "splits_final.json").read_text())[0]
    assert rec["kind"] == "amat-hooks xi" and rec["task"] == "nnunet" and rec["rule"] == "mean"
    assert rec["source"]["n_cases"] == len(split["train"]) and rec["n_samples"] == 6 * len(split["train"])
    assert rec["identity"] == {"dataset": DATASET, "configuration": "2d", "plans": "nnUNetPlans"}
    mean, std = rec["stats"]["mean"][0], rec["stats"]["std"][0]
    assert rec["xi"]["mean"][0] == pytest.approx(mean, rel=1e-6)
    assert rec["xi"]["mean+2std"][0] == pytest.approx(mean + 2 * std, rel=1e-5)
    assert rec["stats"]["min"][0] < rec["stats"]["max"][0]
    # the calibration only loads the clean model: it must not announce a training budget
    out = (nnunet / "calibrate_output.txt").read_text()
    assert "epochs x" not in out and "STD baseline" not in out and "iterations" not in out
    # no -device given: nnU-Net's default (cuda), or the CPU with a note where there is no CUDA device
    assert ("note: no CUDA device found: running on the CPU" in out) == (not torch.cuda.is_available())


def test_calibration_without_clean_model_says_how_to_train_one(nnunet):
    p = _run([str(BIN / "amat"), "calibrate", "nnunet", str(DATASET_ID), "2d", "3"], _env(nnunet), ok=False)
    assert p.returncode == 2
    assert "no clean model at" in p.stderr and f"nnUNetv2_train {DATASET_ID} 2d 3 -tr nnUNetTrainerSTD" in p.stderr


def test_amat_training_moves_margins_keyed_by_case_and_slice(nnunet, calibrated, amat_run):
    state = _amat_state(amat_run / "checkpoint_final.pth")
    assert state["host_state"]["dataset_id"] == f"{DATASET}/2d" and state["host_state"]["mode"] == "amat"
    xi = json.loads(calibrated.read_text())["xi"]["mean"]
    assert state["xi"] == pytest.approx(xi) and state["policy"]["config"]["xi_source"] == f"calibration file {calibrated}"
    margins = _margins(state)
    assert 3 <= len(margins) <= 24  # 2 epochs x 3 iterations x batch 4, duplicates merged
    split = json.loads((nnunet / "pre" / DATASET / "splits_final.json").read_text())[0]
    for case, z in margins:
        assert case in split["train"] and 0 <= z < 6
    step = state["config"]["delta"]
    assert step == 1.0  # documented default for datasets the paper does not name
    assert state["config"]["boundary"] == "none"  # Algorithm 1 by default
    values = torch.tensor(list(margins.values()), dtype=torch.float64)
    # Algorithm 1 from scratch: a margin grows by Delta when the noisy loss is under xi and is
    # otherwise kept (full-radius noise: (||x - x~|| + E) / 2 = E) - it never shrinks below Delta
    assert (values >= step * (1 - 1e-6)).all(), values
    visits = values / step
    assert torch.allclose(visits, visits.round(), atol=1e-5), "margins must be whole multiples of Delta"
    log = _log(amat_run, "Epoch 0")
    assert log.count("AMAT margins n=") == 2 and "xi from calibration file " + str(calibrated) in log
    assert "amat-hooks: AMAT training" in log and "checkpoint_latest.pth every 1 epoch," in log
    # Delta from the dataset's name is announced as a guess, with how to set it
    assert ("amat-hooks: AMAT training (nnUNetTrainerAMAT), Delta 1 is a GUESS from the dataset name "
            f"{DATASET} (no Heart, Hippocampus or Prostate in the name: the default") in log
    assert "set it with -tr nnUNetTrainerAMAT_step0p5 for Delta 0.5, or AMAT_STEP" in log
    assert (amat_run / "progress.png").stat().st_size > 0
    logging = torch.load(amat_run / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logging["amat_margin_mean"]) == len(logging["train_losses"]) == 2
    assert logging["amat_margin_mean"][-1] == pytest.approx(float(values.mean()))
    assert not (nnunet / "network_attempts.txt").exists()


def test_continue_restores_margins_exactly(nnunet, amat_run):
    saved = _amat_state(amat_run / "checkpoint_final.pth")
    backup = nnunet / "amat_final_before_resume.pth"
    shutil.copyfile(amat_run / "checkpoint_final.pth", backup)
    # --c with one more epoch of 1 iteration: the table is restored, then one batch trains
    _train(nnunet, "nnUNetTrainerAMAT", "--c", AMAT_EPOCHS="3", AMAT_ITERS="1", AMAT_VAL_ITERS="1",
           AMAT_STEPS="3", AMAT_XI_SOURCE="file")
    after = _amat_state(amat_run / "checkpoint_final.pth")
    old, new = _margins(saved), _margins(after)
    assert set(old) <= set(new)
    changed = [k for k in new if k not in old or new[k] != old[k]]
    assert len(changed) <= 4  # at most one batch; every other margin is bit-identical
    m_old, m_new = saved["policy"]["margins"], after["policy"]["margins"]
    assert m_new["updates"] == m_old["updates"] + 4
    assert after["xi"] == saved["xi"]
    log = _log(amat_run, "Epoch 2")
    from amat_hooks.margins import MarginStore

    restored = MarginStore(init=1.0, delta=1.0)
    restored.load_state_dict(m_old)
    assert (f"restored AMAT state from {amat_run / 'checkpoint_final.pth'} (continues at epoch 2): "
            f"{restored.format_summary()}, table sha256 {table_digest(m_old)}") in log
    shutil.copyfile(backup, amat_run / "checkpoint_final.pth")


def test_predict_with_amat_trainer(nnunet, amat_run):
    out = nnunet / "pred"
    _run([str(BIN / "nnUNetv2_predict"), "-i", str(nnunet / "raw" / DATASET / "imagesTr"), "-o", str(out),
          "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerAMAT", "-device", "cpu",
          "--disable_tta", "-npp", "1", "-nps", "1"], _env(nnunet))
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == 12
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(preds[0])))
    assert arr.shape == (6, 32, 32) and set(map(int, set(arr.ravel()))) <= {0, 1}


def test_progress_amat_png_fits_its_figure(amat_run):
    """The title and legend are inside the image: its outermost pixel rows and columns are
    background (nnU-Net's seaborn font scale used to push the title off the top)."""
    from PIL import Image

    img = Image.open(amat_run / "progress_amat.png").convert("L")
    w, h = img.size
    px = img.load()
    border = [px[x, y] for x in range(w) for y in (0, 1, h - 2, h - 1)] + \
             [px[x, y] for y in range(h) for x in (0, 1, w - 2, w - 1)]
    assert min(border) > 240, "something is drawn over the edge of progress_amat.png"


def test_sat_training(sat_run):
    state = _amat_state(sat_run / "checkpoint_final.pth")
    assert state["host_state"]["mode"] == "sat" and state["config"]["eps"] == 2.0 and "margins" not in state["policy"]
    log = _log(sat_run, "Epoch 0")
    assert "SAT eps=2" in log
    start = next(ln for ln in log.splitlines() if "amat-hooks: SAT2 training" in ln)
    assert "radius eps 2 for every sample" in start and "2 L2 PGD steps" in start
    for word in ("xi", "margin", "delta", "boundary"):  # SAT has no threshold and no margins
        assert word not in start.lower(), start


def test_continue_with_margins_of_another_dataset_fails_clearly(nnunet, amat_run):
    other = nnunet / "res_other"
    shutil.copytree(nnunet / "res", other)
    ckpt = other / DATASET / "nnUNetTrainerAMAT__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    c = torch.load(ckpt, map_location="cpu", weights_only=False)
    c["amat_hooks"]["host_state"]["dataset_id"] = "Dataset004_Hippocampus/2d"
    c["amat_hooks"]["policy"]["margins"]["dataset_id"] = "Dataset004_Hippocampus/2d"
    torch.save(c, ckpt)
    p = _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", "nnUNetTrainerAMAT", "-device", "cpu",
              "--c"], _env(nnunet, nnUNet_results=str(other), AMAT_EPOCHS="2", AMAT_XI_SOURCE="online"), ok=False)
    assert p.returncode != 0
    reason = stderr_reason(p)
    assert "holds the AMAT margin table of 'Dataset004_Hippocampus/2d'" in reason
    assert f"'{DATASET}/2d'" in reason and "AMAT_FORCE_RESUME=1" in reason and "nnUNet_results" in reason
    assert reason in _log(ckpt.parent)


def test_nan_sample_skipped_in_real_trainer_step(nnunet, tmp_path, monkeypatch):
    """A batch from nnU-Net's own loader with one NaN sample: no crash, finite weights,
    that sample's margin untouched, the others updated."""
    for k, v in _env(nnunet, nnUNet_results=str(tmp_path / "res"), AMAT_STEPS="2",
                     AMAT_XI_SOURCE="online").items():
        monkeypatch.setenv(k, v)
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), "2d", 0, "nnUNetTrainerAMAT", device=torch.device("cpu"))
    trainer.initialize()
    dl_train, _ = trainer.get_dataloaders()
    batch = next(dl_train)
    ids = trainer.sample_ids(batch)
    assert all(isinstance(c, str) and 0 <= z < 6 for c, z in ids)
    batch["data"][1] = float("nan")
    with pytest.warns(RuntimeWarning, match="NaN/inf input"):
        out = trainer.train_step(batch)
    assert torch.isfinite(torch.as_tensor(out["loss"]))
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    store = trainer.amat_engine.policy.margins
    others = [i for j, i in enumerate(ids) if j != 1]
    if ids[1] not in others:
        assert ids[1] not in store
    assert all(i in store for i in others)
    assert trainer.amat_last.updated.tolist() == [j != 1 for j in range(len(ids))]


def test_user_ext_trainer_folders_are_kept(tmp_path):
    user = tmp_path / "my_trainers"
    user.mkdir()
    (user / "nnUNetTrainerMine.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "class nnUNetTrainerMine(nnUNetTrainer):\n    pass\n")
    code = ("import os; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "print('R:' + os.environ['nnUNet_extTrainer']); print('R:' + f('nnUNetTrainerMine').__name__);"
            "print('R:' + f('nnUNetTrainerAMAT').__name__, f('nnUNetTrainerSTD_50epochs').amat_epochs)")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["nnUNet_extTrainer"] = f"{user}{os.pathsep}{tmp_path / 'missing'}"
    p = _run([sys.executable, "-c", code], env)
    lines = [ln[2:] for ln in p.stdout.splitlines() if ln.startswith("R:")]  # nnU-Net prints too
    folders = lines[0].split(os.pathsep)
    assert folders[:2] == [str(user), str(tmp_path / "missing")]
    assert Path(folders[2]).resolve() == TRAINER_FOLDER.resolve() and len(folders) == 3
    assert lines[-2:] == ["nnUNetTrainerMine", "nnUNetTrainerAMAT 50"]
    # a child process inherits the extended value and does not append twice
    env["nnUNet_extTrainer"] = lines[0]
    p = _run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env)
    assert p.stdout.strip() == lines[0]


def test_wheel_install_registers_trainer_folder(tmp_path):
    """A normal (non-editable) install: the wheel carries the .pth at its root, and a
    fresh environment that has it finds the trainer folder inside its own site-packages."""
    src = tmp_path / "src"  # build from a copy: pip builds in-tree and must not touch the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(wheels)], dict(os.environ), timeout=300)
    whl = next(wheels.glob("amat_hooks-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "amat_hooks_nnunet.pth" in names
    assert "amat_hooks/integrations/nnunet/trainers/nnunet_trainers_amat_hooks.py" in names
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], dict(os.environ))
    site = next((venv / "lib").glob("python*/site-packages"))
    zipfile.ZipFile(whl).extractall(site)
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH")}
    p = _run([str(venv / "bin" / "python"), "-c", "import os; print(os.environ.get('nnUNet_extTrainer'))"], env)
    assert Path(p.stdout.strip()) == site / "amat_hooks" / "integrations" / "nnunet" / "trainers"


@pytest.mark.realdata
def test_hippocampus_smoke(tmp_path):
    """MSD Hippocampus in the paper's 208/17/35 split: convert, plan, AMAT for a few iterations."""
    src = DATA / "msd_hippocampus"
    if not (src / "imagesTr").is_dir():
        pytest.skip(f"MSD Hippocampus not found at {src} (real-data test)")
    env = _env(tmp_path, nnUNet_n_proc_DA="1")
    p = _run([str(BIN / "amat"), "nnunet-hippocampus", "--src", str(src), "--id", "4"], env)
    assert "208 train / 17 val / 35 test" in p.stdout
    _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "2d", "-np", "1"], env, timeout=500)
    pre = tmp_path / "pre" / "Dataset004_Hippocampus"
    split = json.loads((pre / "splits_final.json").read_text())
    assert len(split) == 1 and (len(split[0]["train"]), len(split[0]["val"])) == (208, 17)
    tests = {p.name[:-len(".nii.gz")] for p in (tmp_path / "raw" / "Dataset004_Hippocampus" / "labelsTs").iterdir()}
    assert len(tests) == 35 and not tests & (set(split[0]["train"]) | set(split[0]["val"]))
    # CPU smoke run only: batch 8 instead of the planned ~316 slices, and nnU-Net's end-of-training
    # validation on 1 of the 17 validation cases (training still draws from all 208 cases)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] > 8
    plans["configurations"]["2d"]["batch_size"] = 8
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))
    (pre / "splits_final.json").write_text(json.dumps([{"train": split[0]["train"], "val": split[0]["val"][:1]}]))
    _run([str(BIN / "nnUNetv2_train"), "4", "2d", "0", "-tr", "nnUNetTrainerAMAT", "-device", "cpu"],
         _env(tmp_path, AMAT_EPOCHS="1", AMAT_ITERS="1", AMAT_VAL_ITERS="1", AMAT_STEPS="1",
              AMAT_REFINE_STEPS="2"), timeout=500)
    fold = tmp_path / "res" / "Dataset004_Hippocampus" / "nnUNetTrainerAMAT__nnUNetPlans__2d" / "fold_0"
    state = _amat_state(fold / "checkpoint_final.pth")
    assert state["config"]["delta"] == 0.5  # the paper's Delta for Hippocampus
    margins = _margins(state)
    assert margins and all(c in split[0]["train"] for c, _ in margins)
    assert "This split has 208 training and 1 validation cases" in next(fold.glob("training_log_*.txt")).read_text()
    assert len(margins) <= 8 and all(0 <= z < 64 for _, z in margins)


def _val_slices_with_foreground(root: Path) -> int:
    import SimpleITK as sitk

    split = json.loads((root / "pre" / DATASET / "splits_final.json").read_text())[0]
    n = 0
    for case in split["val"]:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "raw" / DATASET / "labelsTr" / f"{case}.nii.gz")))
        n += int((lab.reshape(lab.shape[0], -1) > 0).any(1).sum())
    return n


def test_eval_nnunet_reports_std_and_amat_side_by_side(nnunet, evaluated, tmp_path):
    """`amat eval nnunet` on the fold's validation slices: report files, one sample per
    foreground slice (and the report says how many), SAT/AMAT settings read from the
    checkpoints (no AMAT_* needed), resume."""
    out, cmd, p = evaluated
    assert "sorted" in p.stderr  # levels 4,1 -> 1,4 with a note
    data = json.loads((out / "robustness.json").read_text())
    n_slices = _val_slices_with_foreground(nnunet)
    n_cases = len(json.loads((nnunet / "pre" / DATASET / "splits_final.json").read_text())[0]["val"])
    scored = f"{n_slices} val slices with foreground of {n_cases} cases"
    for name in ("STD", "AMAT"):
        r = data[name]
        assert r["levels"] == [1.0, 4.0] and r["batches"] == -(-n_slices // 4)
        assert r["samples"] == n_slices and r["scored"] == scored
        for attack in ("pgd", "ifgsm"):
            for lv in ("1.0", "4.0"):
                assert 0.0 <= r["noisy"][attack][lv]["ADI"] <= 1.0
    md = (out / "robustness.md").read_text()
    assert "| STD |" in md and "| AMAT |" in md and "P = 3-step PGD" in md
    assert f"Scored: {scored}." in md and f"Scored: {scored}." in p.stdout
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "robustness_AMAT_margins.png").is_file()
    # loading a model for amat calibrate / amat eval leaves no banner-only training log behind
    for trainer in ("nnUNetTrainerSTD", "nnUNetTrainerAMAT"):
        for log in _fold(nnunet, trainer).glob("training_log_*.txt"):
            assert re.search(r": Epoch \d+", log.read_text()), f"{log} is not a training run's log"
    again = _run(cmd + ["--resume"], _env(nnunet))
    assert again.stdout.count("already evaluated") == 2
    assert json.loads((out / "robustness.json").read_text())["AMAT"]["clean"] == data["AMAT"]["clean"]
    missing = _run(cmd[:6] + ["--models", "SAT=nnUNetTrainerSAT@" + str(tmp_path / "none"), "--out",
                              str(tmp_path / "e2")], _env(nnunet), ok=False)
    assert missing.returncode != 0 and "train the model first" in missing.stderr


def test_eval_nnunet_segmentation_attacks_and_worst_case(nnunet, amat_run, tmp_path):
    """The segmentation objectives run on nnU-Net's slices (logits, labels, the padding mask)
    and the per-sample worst case is at most every attack's Dice on every sample."""
    out = tmp_path / "seg"
    p = _run([str(BIN / "amat"), "eval", "nnunet", str(DATASET_ID), "2d", "0", "--models", "AMAT=nnUNetTrainerAMAT",
              "--levels", "2", "--attacks", "pgd,segpgd,mce,worst", "--pgd-steps", "3", "--batch-size", "4",
              "--out", str(out), "--no-progress"], _env(nnunet))
    r = json.loads((out / "robustness.json").read_text())["AMAT"]
    assert set(r["noisy"]) == {"pgd", "segpgd", "mce", "worst"}
    scores = r["per_sample"]["scores"]
    worst = scores["worst"]["2"]  # per-sample scores are keyed by the level as written (%g)
    assert len(worst) == r["samples"] > 0
    for attack in ("pgd", "segpgd", "mce"):
        assert all(w <= a + 1e-9 for w, a in zip(worst, scores[attack]["2"])), attack
    assert r["noisy"]["worst"]["2.0"]["ADI"] <= min(r["noisy"][a]["2.0"]["ADI"] for a in ("pgd", "segpgd", "mce"))
    assert "worst" in p.stdout


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_written_file_has_the_mode_of_a_plain_open(nnunet, calibrated, amat_run, sat_run, evaluated):
    """Under the tests' umask (0027), every file the commands wrote - STD/SAT/AMAT
    checkpoints (amat-hooks rewrites nnU-Net's), progress plots, logs, the xi JSON, the
    evaluation md/csv/json/png, the generated raw dataset - has the mode a plain open()
    gives in such a process."""
    probe = nnunet / "plain_open_probe.txt"
    _run([sys.executable, "-c", f"open({str(probe)!r}, 'w').close()"], _env(nnunet))
    expected = _mode(probe)
    assert expected == 0o666 & ~UMASK == 0o640
    out, _, _ = evaluated
    files = [f for f in (nnunet / "res").rglob("*") if f.is_file()] + [calibrated] + \
            [f for f in out.rglob("*") if f.is_file()] + [f for f in (nnunet / "raw").rglob("*") if f.is_file()]
    names = {f.name for f in files}
    for must in ("checkpoint_final.pth", "checkpoint_best.pth", "progress_amat.png", "progress.png",
                 "robustness.md", "robustness.csv", "robustness.json", "robustness.png",
                 "robustness_AMAT_margins.png", calibrated.name, "dataset.json"):
        assert must in names, must
    assert {amat_run / "checkpoint_final.pth", sat_run / "checkpoint_final.pth"} <= set(files)
    wrong = {str(f.relative_to(nnunet) if nnunet in f.parents else f): oct(_mode(f))
             for f in files if _mode(f) != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"
    assert not [f for f in (nnunet / "res").rglob("*") if ".tmp" in f.name or f.name.endswith(".nnunet-part")]
