"""nnU-Net integration, fast checks: settings, xi files, per-sample loss, converter, DDP merge.

The real nnU-Net processes are in tests/test_nnunet.py.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from amat_hooks.config import AdvConfigError  # noqa: E402
from amat_hooks.integrations.nnunet import settings as st  # noqa: E402
from amat_hooks.integrations.nnunet.adapter import per_sample_terms  # noqa: E402


# -- settings -------------------------------------------------------------------------------
def test_paper_step_per_dataset_name():
    assert st.paper_step("Dataset002_Heart") == 5.0
    assert st.paper_step("Dataset004_Hippocampus") == 0.5
    assert st.paper_step("Dataset005_Prostate") == 3.0
    assert st.paper_step("Dataset990_AMATShapes") == st.DEFAULT_STEP == 1.0


def test_read_settings_defaults_and_overrides():
    s = st.read_settings("amat", "Dataset004_Hippocampus", env={})
    assert (s.config.mode, s.config.delta, s.config.xi_rule, s.xi_source) == ("amat", 0.5, "mean", "auto")
    assert s.epochs is None and s.iters is None
    env = {"AMAT_STEP": "2", "AMAT_STEPS": "4", "AMAT_XI_RULE": "mean+2std", "AMAT_EPOCHS": "3",
           "AMAT_ITERS": "5", "AMAT_VAL_ITERS": "2", "AMAT_XI_FILE": "/x/xi.json"}
    s = st.read_settings("amat", "Dataset004_Hippocampus", env=env)
    assert (s.config.delta, s.config.pgd_steps, s.config.xi_rule) == (2.0, 4, "mean+2std")
    assert (s.epochs, s.iters, s.val_iters, s.xi_source, s.xi_file) == (3, 5, 2, "file", "/x/xi.json")


@pytest.mark.parametrize("mode,env,needles", [
    ("sat", {}, ["AMAT_EPS", "AMAT_EPS=5"]),
    ("sat", {"AMAT_EPS": "0"}, ["AMAT_EPS must be > 0", "set AMAT_EPS to a noise level > 0"]),
    ("amat", {"AMAT_MODE": "sat", "AMAT_EPS": "5"}, ["-tr nnUNetTrainerSAT", "unset AMAT_MODE"]),
    ("amat", {"AMAT_MODE": "bogus"}, ["AMAT_MODE='bogus' is not a mode", "none (aliases std, clean, off), sat "
                                      "and amat", "unset AMAT_MODE"]),
    ("amat", {"AMAT_EPOCHS": "0"}, ["AMAT_EPOCHS", "set AMAT_EPOCHS to an integer >= 1"]),
    ("amat", {"AMAT_ITERS": "ten"}, ["AMAT_ITERS='ten'", "set AMAT_ITERS to an integer >= 1"]),
    ("amat", {"AMAT_SAVE_EVERY": "-2"}, ["AMAT_SAVE_EVERY='-2'", "1 = every epoch"]),
    ("amat", {"AMAT_XI_SOURCE": "sometimes"}, ["AMAT_XI_SOURCE", "auto, file, online"]),
    ("amat", {"AMAT_STEP": "-1"}, ["AMAT_STEP must be > 0", "AMAT_STEP=0.5"]),
    ("amat", {"AMAT_STEPS": "0"}, ["AMAT_STEPS must be an integer >= 1", "default 10"]),
    ("amat", {"AMAT_STEPS": "x"}, ["AMAT_STEPS='x' is not valid", "set AMAT_STEPS"]),
    ("amat", {"AMAT_ALPHA": "0"}, ["AMAT_ALPHA must be > 0", "default 2.5"]),
    ("amat", {"AMAT_STEP_SIZE": "0"}, ["AMAT_STEP_SIZE must be > 0", "unset it"]),
    ("amat", {"AMAT_REFINE_STEPS": "-1"}, ["AMAT_REFINE_STEPS must be an integer >= 0", "default 2"]),
    ("amat", {"AMAT_BOUNDARY": "x"}, ["AMAT_BOUNDARY 'x'", "choose one of: none, stop"]),
    ("amat", {"AMAT_XI_RULE": "median"}, ["AMAT_XI_RULE: unknown xi rule 'median'", "mean, mean+2std"]),
    ("amat", {"AMAT_NORM": "l1"}, ["AMAT_NORM 'l1'", "choose l2 or linf"]),
    ("amat", {"AMAT_XI": "1,2"}, ["AMAT_XI='1,2' holds 2 numbers", "set AMAT_XI to one number"]),
    ("amat", {"AMAT_MAX_MARGIN": "0.5"}, ["AMAT_MAX_MARGIN=0.5 is below the initial margin AMAT_STEP=1",
                                          "AMAT_MAX_MARGIN to a number >= AMAT_STEP"]),
    ("amat", {"AMAT_XI_MOMENTUM": "2"}, ["AMAT_XI_MOMENTUM must be in (0, 1], got 2.0", "default 0.01"]),
    ("amat", {"AMAT_XI_SOURCE": "online", "AMAT_XI_FILE": "a.json"}, ["unset one"]),
])
def test_read_settings_bad_input_names_the_variable_and_a_fix(mode, env, needles):
    with pytest.raises(AdvConfigError) as e:
        st.read_settings(mode, "Dataset990_AMATShapes", env=env,
                         trainer_name={"sat": "nnUNetTrainerSAT", "amat": "nnUNetTrainerAMAT"}[mode])
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert "--adv" not in str(e.value)  # nnUNetv2_train has no such flags


def test_save_interval_every_epoch_for_short_runs():
    s = st.read_settings("amat", "Dataset990_AMATShapes", env={})
    assert s.save_every is None
    assert st.save_interval(s, num_epochs=5) == 1
    assert st.save_interval(s, num_epochs=100) == 1  # nnUNetTrainerAMAT_100epochs
    assert st.save_interval(s, num_epochs=1000) == 50  # nnU-Net's own interval for its default length
    assert st.save_interval(s, num_epochs=5, current=7) == 7  # a subclass that set save_every keeps it
    s = st.read_settings("none", "Dataset990_AMATShapes", env={"AMAT_SAVE_EVERY": "3"})
    assert s.save_every == 3 and st.save_interval(s, num_epochs=1000) == 3 == st.save_interval(s, 5)
    assert s.to_dict()["save_every"] == 3


def test_progress_amat_figure_after_nnunets_own_plot(tmp_path):
    """nnU-Net's progress plot sets seaborn's font_scale=2.5 globally; the margin plot must
    still fit its title, show whole epochs and keep its legend off the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    from amat_hooks.evaluation.figures import plot_training_margins, training_margins_figure

    logger = LocalLogger()
    n = 3
    for e in range(n):
        for k in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs"):
            logger.log(k, 0.1 * e, e)
        logger.log("dice_per_class_or_region", [0.1], e)
        logger.log("epoch_start_timestamps", float(e), e)
        logger.log("epoch_end_timestamps", e + 0.5, e)
    logger.plot_progress_png(str(tmp_path))  # leaves sns.set(font_scale=2.5) behind
    log = {"margin_mean": [1.0, 1.5, 2.0], "margin_min": [1.0, 1.0, 1.0], "margin_max": [1.0, 2.0, 3.0],
           "xi": [0.3, 0.3, 0.3]}
    with plt.style.context("default"):
        fig = training_margins_figure(log)
        ax = fig.axes[0]
        frame = fig.bbox
        title = ax.title.get_window_extent()
        assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and title.y1 <= frame.y1
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert ticks and all(t.lstrip("\u2212-").isdigit() for t in ticks), ticks
        legend = ax.get_legend().get_window_extent()
        assert legend.y1 <= ax.get_window_extent().y0 and legend.y0 >= frame.y0  # below the axes, inside
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["margin mean", "margin min..max", "xi"]
        plt.close(fig)
    plot_training_margins(log, tmp_path / "progress_amat.png")
    assert (tmp_path / "progress_amat.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".progress_amat*"))
    assert training_margins_figure({k: [] for k in log}) is None


def test_atomic_writer_gives_the_mode_of_a_plain_open(tmp_path):
    from amat_hooks.atomic_files import atomic_torch_save, atomic_write_json, current_umask

    old = os.umask(0o022)
    try:
        for mask in (0o027, 0o077, 0o002):
            os.umask(mask)
            assert current_umask() == mask
            plain = tmp_path / f"plain_{mask:o}"
            plain.write_text("x")
            for path in (atomic_write_json(tmp_path / f"a_{mask:o}.json", {"a": 1}),
                         atomic_torch_save({"a": 1}, tmp_path / f"a_{mask:o}.pth")):
                assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask
    finally:
        os.umask(old)


def _xi_record(dataset="Dataset990_AMATShapes", terms=((-0.5,), (0.0,))):
    from amat_hooks.state import xi_record

    return xi_record("nnunet", torch.tensor(terms), ["loss"] * len(terms[0]), "mean",
                     identity={"dataset": dataset, "configuration": "2d", "plans": "nnUNetPlans"})


def test_xi_file_round_trip_and_errors(tmp_path):
    kw = dict(dataset="Dataset990_AMATShapes", configuration="2d", plans="nnUNetPlans", fold=0, n_terms=1)
    path = tmp_path / "xi.json"
    path.write_text(json.dumps(_xi_record()))
    assert st.load_xi_file(path, rule="mean", **kw) == [-0.25]
    assert st.load_xi_file(path, rule="mean+2std", **kw) == pytest.approx([0.25])  # -0.25 + 2 * 0.25
    # the format written before the shared xi schema is refused with the command that rewrites it
    path.write_text(json.dumps({"kind": "amat-hooks nnunet xi", "dataset": "Dataset990_AMATShapes",
                                "configuration": "2d", "plans": "nnUNetPlans", "fold": "0",
                                "xi": {"mean": [-0.25], "mean+2std": [0.1]}}))
    with pytest.raises(AdvConfigError, match="not an xi file written by amat calibrate; run `amat calibrate nnunet"):
        st.load_xi_file(path, rule="mean+2std", **kw)
    fix = "amat calibrate nnunet 990 2d 0"
    with pytest.raises(AdvConfigError, match="no xi calibration file") as e:
        st.load_xi_file(tmp_path / "missing.json", rule="mean", **kw)
    assert fix in str(e.value)
    path.write_text(json.dumps(_xi_record(dataset="Dataset004_Hippocampus")))
    with pytest.raises(AdvConfigError, match="calibrated for another run") as e:
        st.load_xi_file(path, rule="mean", **kw)
    assert fix in str(e.value)
    path.write_text(json.dumps(_xi_record(terms=((0.1, 0.2),))))
    with pytest.raises(AdvConfigError, match=r"has 2 thresholds \(loss, loss\) but the loss has 1 terms") as e:
        st.load_xi_file(path, rule="mean", **kw)
    assert fix in str(e.value)
    path.write_text("{not json")
    with pytest.raises(AdvConfigError, match="unreadable"):
        st.load_xi_file(path, rule="mean", **kw)
    assert st.default_xi_path("/pre/D", "2d", "nnUNetPlans", 0).name == "amat_xi__nnUNetPlans__2d__fold_0.json"


# -- per-sample loss from nnU-Net's own loss objects -------------------------------------------
def _nnunet_loss(batch_dice: bool, ddp: bool = False, ignore_label=None):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    base = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {},
                          weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(base, [4 / 7, 2 / 7, 1 / 7])


def _outputs_targets(b=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = [torch.randn(b, c, s, s, generator=g) for s in (16, 8, 4)]
    tgts = [torch.randint(0, c, (b, 1, s, s), generator=g).float() for s in (16, 8, 4)]
    return outs, tgts


def test_per_sample_terms_average_to_nnunet_batch_loss():
    """Without batch Dice, nnU-Net's loss is the mean over samples of CE (equal pixel
    counts) and of Dice, so the mean of the per-sample terms must equal the batch loss."""
    loss = _nnunet_loss(batch_dice=False)
    outs, tgts = _outputs_targets()
    terms = per_sample_terms(loss, outs, tgts, deep_supervision=True)
    assert terms.shape == (5, 1)
    assert torch.allclose(terms.mean(), loss(outs, tgts), atol=1e-5)
    # and sample i's term is exactly the loss of the one-sample batch i
    assert torch.allclose(terms[2, 0], loss([o[2:3] for o in outs], [t[2:3] for t in tgts]))


def test_per_sample_terms_are_negative_for_good_predictions_and_differentiable():
    loss = _nnunet_loss(batch_dice=True)
    outs, tgts = _outputs_targets(b=2)
    perfect = [torch.nn.functional.one_hot(t[:, 0].long(), 3).permute(0, 3, 1, 2).float() * 20 for t in tgts]
    perfect = [p.requires_grad_(True) for p in perfect]
    terms = per_sample_terms(loss, perfect, tgts, deep_supervision=True)
    assert (terms < -0.9).all()  # CE ~ 0, Dice ~ 1: the nnU-Net loss lives on [-1, inf)
    terms.sum().backward()
    assert perfect[0].grad is not None


def test_collectives_off_avoids_all_gather_and_restores_flags():
    loss = _nnunet_loss(batch_dice=True, ddp=True)
    outs, tgts = _outputs_targets(b=2)
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="process group has not been initialized"):  # batch Dice all-gathers
        loss([o[:1] for o in outs], [t[:1] for t in tgts])
    terms = per_sample_terms(loss, outs, tgts, deep_supervision=True)
    assert torch.isfinite(terms).all()
    assert loss.loss.dc.ddp is True  # restored


def test_per_sample_terms_with_ignore_label_matches_per_sample_calls():
    loss = _nnunet_loss(batch_dice=False, ignore_label=3)
    outs, tgts = _outputs_targets(b=3, c=3)
    tgts = [t.clone() for t in tgts]
    for t in tgts:
        t[0, :, :2] = 3  # ignored pixels in sample 0
    terms = per_sample_terms(loss, outs, tgts, deep_supervision=True)
    for i in range(3):
        assert torch.allclose(terms[i, 0], loss([o[i:i + 1] for o in outs], [t[i:i + 1] for t in tgts]))


# -- the raw-format converter ------------------------------------------------------------------
def _fake_msd(root: Path, n: int) -> Path:
    import SimpleITK as sitk

    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        arr = np.full((3, 4, 5), i, np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / "imagesTr" / f"hippocampus_{i:03d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8) % 3),
                        str(root / "labelsTr" / f"hippocampus_{i:03d}.nii.gz"))
    return root


def test_convert_hippocampus_layout_and_split(tmp_path):
    from amat_hooks.zoo.nnunet_data import convert_hippocampus

    src = _fake_msd(tmp_path / "msd", 10)
    info = convert_hippocampus(src, tmp_path / "raw", dataset_id=4, preprocessed_root=tmp_path / "pre",
                               split=(6, 2, 2))
    folder = Path(info["folder"])
    assert folder.name == "Dataset004_Hippocampus"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["numTraining"] == 8 and dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    splits = json.loads((tmp_path / "pre" / "Dataset004_Hippocampus" / "splits_final.json").read_text())
    train, val = splits[0]["train"], splits[0]["val"]
    tests = sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTs").glob("*.nii.gz"))
    assert (len(train), len(val), len(tests)) == (6, 2, 2)
    assert len(set(train) | set(val) | set(tests)) == 10
    assert sorted(p.name for p in (folder / "imagesTr").glob("*.nii.gz")) == \
        sorted(f"{c}_0000.nii.gz" for c in train + val)
    # seeded: the same split again
    info2 = convert_hippocampus(src, tmp_path / "raw2", dataset_id=4, split=(6, 2, 2))
    assert json.loads(Path(info2["splits"][0]).read_text()) == splits


def test_convert_hippocampus_bad_input(tmp_path):
    from amat_hooks.zoo.nnunet_data import convert_hippocampus

    with pytest.raises(FileNotFoundError, match="imagesTr/ and labelsTr/"):
        convert_hippocampus(tmp_path / "nothing", tmp_path / "raw")
    src = _fake_msd(tmp_path / "msd", 4)
    with pytest.raises(ValueError, match="split needs 260 cases"):
        convert_hippocampus(src, tmp_path / "raw")
    # a smaller split takes the first cases of the same permutation
    info = convert_hippocampus(src, tmp_path / "raw", split=(2, 1, 1))
    assert (info["train"], info["val"], info["test"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="each part >= 1"):
        convert_hippocampus(src, tmp_path / "raw3", split=(3, 1, 0))


# -- DDP: margins merged at the core with gloo (nnU-Net's own DDP needs CUDA) ------------------
def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from amat_hooks.margins import MarginStore

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    store = MarginStore(init=1.0, delta=1.0, dataset_id="Dataset990_AMATShapes/2d")
    if rank == 0:  # (case, slice) ids exactly as nnUNetTrainerAMAT produces them
        store.update([("shapes_001", 0), ("shapes_002", 4)], torch.tensor([True, True]), torch.tensor([0.9, 1.0]))
    else:
        store.update([("shapes_001", 0), ("shapes_003", 1)], torch.tensor([False, True]), torch.tensor([0.4, 1.0]))
    store.sync()
    torch.save(store.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_margin_tables_merge_across_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    tables = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    merged = [dict(zip(map(tuple, t["ids"]), t["values"])) for t in tables]
    assert merged[0] == merged[1]
    # rank order replay: shapes_001/0 grows to 2 (rank 0), then refines to (0.4 + 2) / 2 (rank 1)
    assert merged[0] == pytest.approx({("shapes_001", 0): 1.2, ("shapes_002", 4): 2.0, ("shapes_003", 1): 2.0})


def test_amat_seed_is_read_checked_and_seeds_every_generator():
    import random

    import numpy as np

    from amat_hooks.integrations.nnunet.trainer import _seed_everything

    assert st.read_settings("none", "Dataset990_AMATShapes", env={"AMAT_SEED": "3"}).seed == 3
    assert st.read_settings("none", "Dataset990_AMATShapes", env={}).seed is None
    with pytest.raises(AdvConfigError, match="AMAT_SEED='x' must be an integer >= 0; set AMAT_SEED to a whole"):
        st.read_settings("none", "Dataset990_AMATShapes", env={"AMAT_SEED": "x"})
    draws = []
    for _ in range(2):
        _seed_everything(7)
        draws.append((torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random()))
    assert draws[0] == draws[1]
    _seed_everything(8)
    assert torch.rand(3).tolist() != draws[0][0]


def test_authors_adi_sample_set_keeps_slices_holding_every_class_of_their_case():
    """Row 14 of docs/protocols.md: a case with labels {1, 2} keeps only its slices holding
    both; a case with label 1 only keeps every slice with 1; padding (valid False) is not seen."""
    from types import SimpleNamespace

    from amat_hooks.integrations.nnunet.evaluate import NnUNetSliceEvalTask

    def row(key, labels, pad=None):
        seg = torch.zeros(1, 4, 4, dtype=torch.int16)
        for i, lab in enumerate(labels):
            seg[0, i, 0] = lab
        valid = torch.ones(4, 4, dtype=torch.bool)
        if pad is not None:
            valid[pad, 0] = False
        return (key, None, [seg], valid)

    task = SimpleNamespace(labels=[1, 2])
    a = [row("a:0", [1]), row("a:1", [1, 2]), row("a:2", [2]), row("a:3", [1, 2], pad=1)]  # a:3's 2 is padding
    b = [row("b:0", [1]), row("b:1", [1, 1])]
    keep = NnUNetSliceEvalTask._every_class(task, a) + NnUNetSliceEvalTask._every_class(task, b)
    assert [r[0] for r in keep] == ["a:1", "b:0", "b:1"]
