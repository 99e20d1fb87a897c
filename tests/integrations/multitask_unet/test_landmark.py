"""Multi-Task U-Net landmark detection: targets, loss terms, voting, metrics, data reader,
adapter - against hand-computed values and the example script's own loss code."""
from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from amat_hooks.integrations.multitask_unet import plugin as lm_plugin
from amat_hooks.integrations.multitask_unet.adapter import LandmarkAdapter
from amat_hooks.zoo.isbi import LandmarkDataError, image_size, read_points_csv, read_senior_csv
from amat_hooks.zoo.isbi_dataset import LandmarkDataset
from amat_hooks.zoo.isbi_writers import generate_landmark_images, write_generated_isbi
from amat_hooks.integrations.multitask_unet.adapter import dice_loss, landmark_terms, masked_l1
from amat_hooks.zoo.landmark_maps import landmark_targets, radius_for
from amat_hooks.zoo.landmark_maps import voting
from amat_hooks.evaluation.metrics import mre, radial_errors_mm, sdr

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "landmark"
ISBI = REPO.parent / "shared" / "data" / "isbi2015_ceph"


# -- targets ----------------------------------------------------------------------------------------
def test_radius_is_five_percent_of_the_longer_side():
    assert radius_for(200, 160) == pytest.approx(10.0)
    assert radius_for(64, 48) == pytest.approx(3.2)


def test_targets_hand_computed():
    # landmark at x=5, y=4 in a 12x10 (HxW) image, R = 2
    mask, heat, oy, ox = landmark_targets(torch.tensor([[5.0, 4.0]]), 12, 10, radius=2.0)
    assert mask.shape == heat.shape == oy.shape == ox.shape == (1, 12, 10)
    # disk d < 2 around an integer point: centre, 4 neighbours at d=1, 4 diagonals at d=sqrt 2
    assert int(mask.sum()) == 9
    assert heat[0, 4, 5] == pytest.approx(1.0) and ox[0, 4, 5] == 0 and oy[0, 4, 5] == 0
    # (x=6, y=4): d = 1 -> exp(-1/8); offset_x = (5 - 6) / 2
    assert heat[0, 4, 6] == pytest.approx(math.exp(-0.125))
    assert ox[0, 4, 6] == pytest.approx(-0.5) and oy[0, 4, 6] == pytest.approx(0.0)
    # (x=6, y=5): d^2 = 2 -> exp(-2/8); offsets (-0.5, -0.5)
    assert heat[0, 5, 6] == pytest.approx(math.exp(-0.25))
    assert ox[0, 5, 6] == pytest.approx(-0.5) and oy[0, 5, 6] == pytest.approx(-0.5)
    # (x=5, y=2): d = 2 is not inside (d < R, as the original code)
    assert mask[0, 2, 5] == 0 and heat[0, 2, 5] == 0 and oy[0, 2, 5] == 0
    # (x=4, y=3): offsets point back to the landmark: (+0.5, +0.5)
    assert ox[0, 3, 4] == pytest.approx(0.5) and oy[0, 3, 4] == pytest.approx(0.5)


def test_targets_refuse_landmarks_outside_the_image():
    with pytest.raises(ValueError, match=r"landmark 2 .*outside the 10x12 \(WxH\) image"):
        landmark_targets(torch.tensor([[1.0, 1.0], [10.0, 3.0]]), 12, 10)
    with pytest.raises(ValueError, match="outside"):
        landmark_targets(torch.tensor([[-0.5, 1.0]]), 12, 10)


# -- voting -----------------------------------------------------------------------------------------
def test_voting_decodes_a_synthetic_map_to_the_known_point():
    h, w = 64, 48
    r = radius_for(h, w)
    pts = torch.tensor([[13.25, 20.5], [40.0, 50.75], [2.0, 3.0]])  # last one near the corner
    _, heat, oy, ox = landmark_targets(pts, h, w, r)
    got = voting(heat[None], oy[None], ox[None], r)
    assert got.shape == (1, 3, 2)
    assert torch.allclose(got[0], pts, atol=1e-4)


def test_voting_ignores_a_few_bright_distractor_pixels():
    h, w = 64, 48
    r = radius_for(h, w)
    pt = torch.tensor([[30.0, 12.0]])
    _, heat, oy, ox = landmark_targets(pt, h, w, r)
    g = torch.Generator().manual_seed(0)
    for yy, xx in [(50, 5), (51, 40), (55, 20)]:  # hotter than the true peak, random offsets
        heat[0, yy, xx] = 1.0
        ox[0, yy, xx] = torch.rand(1, generator=g).item() * 2 - 1
        oy[0, yy, xx] = torch.rand(1, generator=g).item() * 2 - 1
    got = voting(heat[None], oy[None], ox[None], r)
    assert torch.allclose(got[0], pt, atol=1e-4)


# -- losses -----------------------------------------------------------------------------------------
def test_masked_l1_and_dice_hand_computed():
    mask = torch.zeros(2, 1, 2, 3)
    mask[:, 0, 0, :] = 1  # 3 pixels per sample
    pred = torch.zeros(2, 1, 2, 3)
    pred[0, 0, 0, 0] = 2.0          # sample 0: |2| at one masked pixel -> 2/3
    pred[1] = 5.0                   # sample 1: 5 everywhere, only masked counts -> 5
    out = masked_l1(pred, torch.zeros_like(pred), mask)
    assert out.tolist() == pytest.approx([2 / 3, 5.0])
    t = torch.zeros(1, 2, 2, 2)
    t[0, 0, 0, :] = 1.0             # channel 0: 2 target pixels
    p = torch.zeros_like(t)
    p[0, 0] = t[0, 0]               # channel 0 perfect: dice 1 -> loss 0
    # channel 1: empty target, empty prediction -> (0 + 1) / (0 + 0 + 1) = 1 -> loss 0
    assert dice_loss(p, t).tolist() == pytest.approx([0.0])
    p2 = torch.zeros_like(t)        # channel 0 empty prediction: 1 - 1/(0+2+1) = 2/3; channel 1: 0
    assert dice_loss(p2, t).tolist() == pytest.approx([(2 / 3 + 0) / 2])


def _example_module():
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("landmark_example_train", EXAMPLE / "train.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EXAMPLE))


def _batch(b=3, l=4, h=40, w=36, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = []
    for i in range(b):
        pts = torch.stack([torch.rand(l, generator=g) * (w - 12) + 6, torch.rand(l, generator=g) * (h - 12) + 6], 1)
        maps.append(landmark_targets(pts.round(), h, w))  # integer points: equal disk sizes
    mask, heat, oy, ox = (torch.stack([m[k] for m in maps]) for k in range(4))
    out = (torch.rand(b, l, h, w, generator=g) * 0.98 + 0.01, torch.randn(b, l, h, w, generator=g),
           torch.randn(b, l, h, w, generator=g))
    return out, mask, heat, oy, ox


@pytest.mark.parametrize("kind", ["bce", "dice"])
def test_per_sample_terms_average_to_the_example_scripts_own_loss(kind):
    ex = _example_module()
    out, mask, heat, oy, ox = _batch()
    terms = landmark_terms(out, mask, heat, oy, ox, heatmap_loss=kind)
    assert terms.shape == (3, 3)
    script_heat = torch.nn.BCELoss()(out[0], heat) if kind == "bce" else ex.dice_loss(out[0], heat)
    assert terms[:, 0].mean().item() == pytest.approx(script_heat.item(), rel=1e-5)
    assert terms[:, 1].mean().item() == pytest.approx(ex.L1Loss(out[2], ox, mask).item(), rel=1e-5)
    assert terms[:, 2].mean().item() == pytest.approx(ex.L1Loss(out[1], oy, mask).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["bce", "dice"])
def test_example_loss_on_clean_plus_noisy_rows_is_the_mean_of_both(kind):
    """The runner's injection: the script's loss over 2B rows (targets repeated) must be
    exactly (L_clean + L_noisy) / 2 - Algorithm 1's loss - for each of the three terms."""
    ex = _example_module()
    clean, mask, heat, oy, ox = _batch(seed=1)
    noisy, *_ = _batch(seed=2)
    # masks of different sizes per sample (a landmark at the border) must not matter
    mask[0, 0, :, :3] = 0
    two = lambda a, b: torch.cat([a, b])  # noqa: E731
    rep = lambda t: torch.cat([t, t])  # noqa: E731

    def script_terms(o, m, h, y, x):
        hl = torch.nn.BCELoss()(o[0], h) if kind == "bce" else ex.dice_loss(o[0], h)
        return torch.stack([hl, ex.L1Loss(o[2], x, m), ex.L1Loss(o[1], y, m)])

    both = script_terms(tuple(two(a, b) for a, b in zip(clean, noisy)), rep(mask), rep(heat), rep(oy), rep(ox))
    sep = (script_terms(clean, mask, heat, oy, ox) + script_terms(noisy, mask, heat, oy, ox)) / 2
    assert torch.allclose(both, sep, rtol=1e-5, atol=1e-7)


# -- model ----------------------------------------------------------------------------------------
def test_one_multitask_unet_the_example_imports_it_and_it_runs_offline():
    """The network is written once (model.py); the example's network module only names it the
    original way, and the example imports nothing else from amat_hooks (no hooks, no patches)."""
    import ast

    from amat_hooks.zoo.multitask_unet import MultiTaskUNet
    from amat_hooks.offline import no_network

    def imports(path):
        tree = ast.parse(path.read_text())
        return [(i.module if isinstance(i, ast.ImportFrom) else i.names[0].name, [a.name for a in i.names])
                for i in ast.walk(tree) if isinstance(i, (ast.Import, ast.ImportFrom))]

    shipped = REPO / "amat_hooks" / "examples"
    assert imports(shipped / "landmark_network.py") == [("amat_hooks.zoo.multitask_unet", ["MultiTaskUNet"])]
    ours = [m for f in ("landmark_train.py", "landmark_data.py") for m, _ in imports(shipped / f)
            if m.startswith("amat_hooks")]
    assert sorted(ours) == ["amat_hooks.examples.landmark_data", "amat_hooks.examples.landmark_network"]
    assert imports(EXAMPLE / "network.py") == [("amat_hooks.examples.landmark_network", ["UNet_Pretrained"])]
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("landmark_example_network", EXAMPLE / "network.py")
        net_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(net_mod)
    finally:
        sys.path.remove(str(EXAMPLE))
    with no_network():
        ours = MultiTaskUNet(num_landmarks=3).eval()
        theirs = net_mod.UNet_Pretrained(3, 3).eval()
    assert isinstance(theirs, MultiTaskUNet) and theirs.n_classes == 3
    a = ours.state_dict()
    assert any(k.startswith("vgg.features.34.") for k in a)  # VGG19: 16 convs, last one at index 34
    assert not any("classifier" in k for k in a)  # the unused 120M-parameter classifier is left out
    theirs.load_state_dict(a)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        h1, y1, x1 = ours(x)
    assert h1.shape == (2, 3, 64, 48) and y1.shape == x1.shape == (2, 3, 64, 48)
    assert float(h1.min()) >= 0 and float(h1.max()) <= 1
    with pytest.raises(ValueError, match="H, W >= 32"):
        ours(torch.randn(1, 3, 16, 48))


# -- metrics ----------------------------------------------------------------------------------------
def test_mre_and_sdr_against_hand_made_landmarks():
    target = torch.zeros(1, 5, 2)
    # errors in network pixels; x scaled by 2 to the original, 0.1 mm per original pixel
    pred = torch.tensor([[[5.0, 0.0], [0.0, 20.0], [12.5, 0.0], [0.0, 35.0], [15.0, 40.0]]])
    e = radial_errors_mm(pred, target, scale_x=2.0, scale_y=1.0, pixel_mm=0.1)
    assert e[0].tolist() == pytest.approx([1.0, 2.0, 2.5, 3.5, 5.0])
    assert mre(e) == pytest.approx(2.8)
    assert sdr(e) == pytest.approx({2.0: 20.0, 2.5: 40.0, 3.0: 60.0, 4.0: 80.0})  # strict <, as Yao et al.
    with pytest.raises(ValueError, match=r"\[\.\.\., L, 2\]"):
        radial_errors_mm(torch.zeros(1, 5, 2), torch.zeros(1, 4, 2))


# -- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return write_generated_isbi(tmp_path_factory.mktemp("gen") / "ceph", n=10, height=96, width=80,
                                num_landmarks=4, seed=3)


def test_generated_dataset_reads_back_with_averaged_annotation(generated):
    ds = LandmarkDataset(generated, "train", size=(48, 40), num_landmarks=4)
    assert len(ds) == 6 and ds.names[0] == "001.png"
    assert ds.annotation_used == "mean of points.csv and senior_csv for 6/6 images"
    assert ds.original_size == (96, 80) and ds.pixel_mm == pytest.approx(0.1)
    _, truth = generate_landmark_images(10, 96, 80, 4, seed=3)
    # the two "doctors" differ by +-1 px; their mean is the generated truth, scaled by 0.5
    assert torch.allclose(ds.landmarks(2), (truth[2] * 0.5).float(), atol=1e-5)
    img, mask, heat, oy, ox, lm = ds[0]
    assert img.shape == (3, 48, 40) and mask.shape == (4, 48, 40) and lm.shape == (4, 2)
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert len(LandmarkDataset(generated, "val", size=(48, 40), num_landmarks=4)) == 2
    pts_only = LandmarkDataset(generated, "test", size=(48, 40), num_landmarks=4, annotation="points")
    assert pts_only.annotation_used == "points.csv only for 2/2 images"
    assert image_size(generated / "dataset" / "benchmark" / "images" / "001.png") == (96, 80)


def _rewrite(path: Path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_bad_points_csv_names_file_and_row(tmp_path, generated):
    p = tmp_path / "points.csv"
    rows = list(csv.reader(open(generated / "dataset" / "benchmark" / "points.csv")))
    rows[3][1] = rows[3][1].replace(", 3: {", ", 99: {").rsplit(", 99:", 1)[0] + "}"  # drop one point
    _rewrite(p, rows)
    with pytest.raises(LandmarkDataError, match=r"points.csv row 4 \(003.png\): expected 4 landmarks, got 3"):
        read_points_csv(p, 4)
    s = tmp_path / "senior.csv"
    srows = list(csv.reader(open(generated / "senior_csv" / "all_senior.csv")))
    srows[5] = srows[5][:-2]
    _rewrite(s, srows)
    with pytest.raises(LandmarkDataError, match=r"senior.csv row 6 \(005.png\): expected 4 landmarks"):
        read_senior_csv(s, 4)
    dup = [rows[0], rows[1], [rows[1][0], rows[2][1]]]
    _rewrite(p, dup)
    with pytest.raises(LandmarkDataError, match="appears again with different points"):
        read_points_csv(p, 4)


def test_out_of_image_landmark_and_mixed_sizes_are_refused(tmp_path):
    from torchvision.io import write_png

    root = write_generated_isbi(tmp_path / "d", n=5, height=64, width=48, num_landmarks=2, seed=0)
    bench = root / "dataset" / "benchmark"
    rows = list(csv.reader(open(bench / "points.csv")))
    rows[2][1] = "{0: {'x': 60.0, 'y': 10.0}, 1: {'x': 5.0, 'y': 5.0}}"  # x = 60 >= width 48
    _rewrite(bench / "points.csv", rows)
    with pytest.raises(ValueError, match=r"landmark 1 of 002.png in points.csv at \(x=60, y=10\) lies outside"):
        LandmarkDataset(root, "all", size=(32, 32), num_landmarks=2)
    ok = LandmarkDataset(root, [1, 3, 4, 5], size=(32, 32), num_landmarks=2)
    assert len(ok) == 4
    write_png(torch.zeros(3, 70, 48, dtype=torch.uint8), str(bench / "images" / "004.png"))
    with pytest.raises(LandmarkDataError, match=r"mixed sizes: 001.png is 64x48 \(HxW\) but 004.png is 70x48"):
        LandmarkDataset(root, [1, 3, 4, 5], size=(32, 32), num_landmarks=2)
    with pytest.raises(LandmarkDataError, match="landmark data folder not found"):
        LandmarkDataset(tmp_path / "nowhere")


# -- adapter ----------------------------------------------------------------------------------------
def test_adapter_stretches_the_original_batch_including_landmark_lists():
    b = 2
    x = torch.randn(b, 3, 32, 32)
    maps = [torch.rand(b, 3, 32, 32) for _ in range(4)]
    landmark_list = [[torch.tensor([1, 2]), torch.tensor([3, 4])] for _ in range(3)]  # collated [[x, y]] * L
    batch = (x, *maps, landmark_list)
    adapter = lm_plugin.amat_adapter(batch=batch, host=object())
    assert isinstance(adapter, LandmarkAdapter) and adapter.kind == "dice"  # no BCELoss anywhere: Dice
    assert adapter.inputs(batch) is x and adapter.ids(batch) is None  # tuples carry no ids
    both = torch.cat([x, x + 1])
    out = adapter.with_inputs(batch, both)
    assert out[0] is both and all(torch.equal(o, torch.cat([m, m])) for o, m in zip(out[1:5], maps))
    assert out[5][0][0].tolist() == [1, 2, 1, 2] and out[5][2][1].tolist() == [3, 4, 3, 4]
    assert lm_plugin.amat_adapter(batch=(x, torch.zeros(b)), host=None) is None  # not a landmark batch


def test_adapter_terms_drive_a_real_amat_step():
    """The adapter's bound loss through the core AMAT policy (no re-implemented attack)."""
    from amat_hooks import AMAT, AdversarialEngine, AttackSettings
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    torch.manual_seed(0)
    model = MultiTaskUNet(num_landmarks=2)
    pts = torch.tensor([[10.0, 12.0], [20.0, 30.0]])
    mask, heat, oy, ox = (t.unsqueeze(0).repeat(2, 1, 1, 1) for t in landmark_targets(pts, 40, 32))
    batch = {"image": torch.randn(2, 3, 40, 32), "mask": mask, "heatmap": heat, "offset_y": oy,
             "offset_x": ox, "ids": ["a", "b"]}
    policy = AMAT(delta=0.5, xi=[10.0, 10.0, 10.0], attack=AttackSettings(steps=2, refine_steps=2))
    engine = AdversarialEngine(policy, LandmarkAdapter("dice"))
    out = engine.step(model, batch)
    assert out.clean_terms.shape == (2, 3) and out.noisy_terms.shape == (2, 3)
    assert torch.isfinite(out.loss)
    # huge xi: every sample accepted, margin grows by Delta (Algorithm 1 line 10)
    assert policy.margins.get(["a", "b"]).tolist() == pytest.approx([1.0, 1.0])


# -- the ISBI 2015 challenge layout ------------------------------------------------------------------
def test_generated_challenge_layout_reads_like_the_csv_layout(tmp_path):
    """The same generated images and annotations in both layouts give the same dataset:
    pixels, landmarks (mean of the two doctors), size; each names its layout."""
    from amat_hooks.zoo.isbi import detect_layout

    a = write_generated_isbi(tmp_path / "csv", n=6, height=96, width=72, num_landmarks=3, seed=4)
    b = write_generated_isbi(tmp_path / "isbi", n=6, height=96, width=72, num_landmarks=3, seed=4,
                             layout="isbi2015")
    assert sorted(p.name for p in (b / "RawImage" / "TrainingData").iterdir()) == ["001.bmp", "002.bmp", "003.bmp"]
    txt = (b / "AnnotationsByMD" / "400_senior" / "002.txt").read_text().splitlines()
    assert len(txt) > 3 and all(len(line.split(",")) == 2 for line in txt[:3])  # 3 x,y lines, then others
    assert detect_layout(a).kind == "csv" and detect_layout(b).kind == "isbi2015"
    ds_a = LandmarkDataset(a, "all", size=(48, 36), num_landmarks=3)
    ds_b = LandmarkDataset(b, "all", size=(48, 36), num_landmarks=3)
    assert ds_b.layout_used == ("ISBI 2015 challenge layout (RawImage/{TrainingData,Test1Data}/*.bmp, "
                                "AnnotationsByMD/{400_junior,400_senior}/*.txt)")
    assert ds_a.layout_used.startswith("CSV layout (dataset/benchmark/points.csv")
    assert ds_b.annotation_used == "mean of 400_junior and 400_senior for 6/6 images"
    assert ds_b.names == [f"{i:03d}.bmp" for i in range(1, 7)] and ds_b.original_size == (96, 72)
    _, truth = generate_landmark_images(6, 96, 72, 3, seed=4)
    for i in range(6):
        assert torch.equal(ds_a[i][0], ds_b[i][0])
        assert torch.equal(ds_a.landmarks(i), ds_b.landmarks(i))
        assert torch.allclose(ds_b.landmarks(i), (truth[i] * 0.5).float(), atol=1e-5)
    junior = LandmarkDataset(b, [2], size=(48, 36), num_landmarks=3, annotation="junior")
    assert junior.annotation_used == "400_junior only for 1/1 images"
    assert image_size(b / "RawImage" / "Test1Data" / "005.bmp") == (96, 72)


def test_challenge_layout_with_annotations_at_the_top_level(tmp_path):
    """400_junior/ and 400_senior/ next to RawImage/ (no AnnotationsByMD/), one doctor missing
    for an image, text files with Windows line ends and spaces."""
    b = write_generated_isbi(tmp_path / "isbi", n=4, height=64, width=48, num_landmarks=2, seed=1, layout="isbi2015")
    for d in ("400_junior", "400_senior"):
        (b / "AnnotationsByMD" / d).rename(b / d)
    (b / "AnnotationsByMD").rmdir()
    (b / "400_senior" / "003.txt").unlink()
    j = (b / "400_junior" / "001.txt")
    j.write_bytes(j.read_text().replace(",", ", ").replace("\n", "\r\n").encode())
    ds = LandmarkDataset(b, "all", size=(32, 32), num_landmarks=2)
    assert ds.layout_used == "ISBI 2015 challenge layout (RawImage/{TrainingData,Test1Data}/*.bmp, {400_junior,400_senior}/*.txt)"
    assert ds.annotation_used == "mean of 400_junior and 400_senior for 3/4 images, 400_junior only for 1/4 images"


def test_challenge_layout_errors_name_the_file_and_line(tmp_path):
    from amat_hooks.zoo.isbi import detect_layout, read_isbi_txt

    b = write_generated_isbi(tmp_path / "isbi", n=3, height=64, width=48, num_landmarks=2, seed=0, layout="isbi2015")
    f = b / "AnnotationsByMD" / "400_junior" / "002.txt"
    f.write_text("10,12\n7;x\n")
    with pytest.raises(LandmarkDataError, match=r"400_junior/002.txt line 2: expected 'x,y', got '7;x'"):
        read_isbi_txt(f, 2)
    f.write_text("10,12\n")
    with pytest.raises(LandmarkDataError, match=r"002.txt: expected 2 'x,y' lines, got 1"):
        LandmarkDataset(b, "all", size=(32, 32), num_landmarks=2)
    empty = tmp_path / "empty"
    (empty / "RawImage" / "TrainingData").mkdir(parents=True)
    with pytest.raises(LandmarkDataError) as e:
        detect_layout(empty)
    msg = str(e.value)
    assert "\n" not in msg and "RawImage/ image folders but no 400_junior/ or 400_senior/" in msg
    assert "CSV layout (dataset/benchmark/points.csv" in msg and "ISBI 2015 challenge layout" in msg


# -- checkpoints as public code saves them --------------------------------------------------------------
def _public_checkpoint(path, num_landmarks=3, prefix="module.", drop=(), reshape=()):
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    torch.manual_seed(0)
    model = MultiTaskUNet(num_landmarks=num_landmarks).eval()
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items() if k not in drop}
    for k in reshape:
        state[f"{prefix}{k}"] = torch.zeros(7, 7)
    for i, shape in ((0, (16, 512)), (3, (8, 16))):  # torchvision VGG's classifier, unused
        state[f"{prefix}vgg.classifier.{i}.weight"] = torch.randn(*shape)
        state[f"{prefix}vgg.classifier.{i}.bias"] = torch.randn(shape[0])
    torch.save(state, path)
    return model


def test_public_checkpoints_load_with_unused_keys_named(tmp_path):
    from amat_hooks.integrations.multitask_unet.task import load_model

    ref = _public_checkpoint(tmp_path / "model_epoch_9.pth")
    notes = []
    model = load_model(tmp_path / "model_epoch_9.pth", log=notes.append)
    assert notes == ["model_epoch_9.pth: ignored 4 key(s) the model does not use: vgg.classifier.* (4 keys)"]
    assert model.num_landmarks == 3 and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    torch.save({"epoch": 9, "state_dict": torch.load(tmp_path / "model_epoch_9.pth")}, tmp_path / "nested.pth")
    assert load_model(tmp_path / "nested.pth", log=notes.append).num_landmarks == 3


def test_checkpoints_missing_or_misshaped_keys_are_refused_in_one_line(tmp_path):
    from amat_hooks.integrations.multitask_unet.task import load_model
    from amat_hooks.tasks import TaskError

    _public_checkpoint(tmp_path / "a.pth", drop=("up1.conv.double_conv.0.weight", "up2.conv.double_conv.1.bias"))
    with pytest.raises(TaskError) as e:
        load_model(tmp_path / "a.pth")
    assert str(e.value).endswith("cannot be loaded as a Multi-Task U-Net with 3 landmarks: 2 needed key(s) "
                                 "missing (up1.conv.double_conv.0.weight, up2.conv.double_conv.1.bias)")
    _public_checkpoint(tmp_path / "b.pth", reshape=("up5.conv.double_conv.0.weight",))
    with pytest.raises(TaskError, match=r"1 with the wrong shape \(up5.conv.double_conv.0.weight \[7, 7\] "
                                        r"\(model: \[64, 128, 3, 3\]\)\)"):
        load_model(tmp_path / "b.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "c.pth")
    with pytest.raises(TaskError, match="is not a Multi-Task U-Net checkpoint: no head 'final.weight'"):
        load_model(tmp_path / "c.pth")


# -- the adapter's loss for amat run --------------------------------------------------------------------
def test_adapter_infers_bce_from_the_scripts_module_and_confirms_it():
    from types import SimpleNamespace

    from amat_hooks.adapter import AdapterError

    bce = torch.nn.BCELoss()
    out, mask, heat, oy, ox = _batch()
    batch = (torch.zeros(3, 3, 40, 36), mask, heat, oy, ox)
    logs = []
    host = SimpleNamespace(loss_calls=[bce], amat_log=logs.append)
    sl = LandmarkAdapter("auto", [torch.nn.L1Loss(), bce])
    assert sl.kind == "bce" and "inferred: the script created an nn.BCELoss" in sl.describe()
    assert torch.allclose(sl.output_terms(batch, out), landmark_terms(out, mask, heat, oy, ox, "bce"))
    sl.check_first_step(host)
    assert sl.kind == "bce" and logs == [] and sl.identity() == {"heatmap_loss": "bce"}
    # auto, a BCELoss the script never calls in training: Dice, said once
    sl = LandmarkAdapter("auto", [bce])
    sl.check_first_step(SimpleNamespace(loss_calls=[], amat_log=logs.append))
    assert sl.kind == "dice" and len(logs) == 1 and "heatmap term: dice, not bce" in logs[0]
    assert sl.state() == {"name": "Multi-Task U-Net", "term_names": ["heatmap", "offset_x", "offset_y"],
                          "heatmap_loss": "dice", "terms": "trainer"}
    # the user's flag contradicted by the script: refused
    sl = LandmarkAdapter("dice", [bce])
    with pytest.raises(AdapterError, match="pass --heatmap-loss bce"):
        sl.check_first_step(SimpleNamespace(loss_calls=[bce], amat_log=logs.append))
    # no BCELoss module at all: dice, nothing to check
    sl = LandmarkAdapter("auto", [])
    sl.check_first_step(SimpleNamespace(loss_calls=[], amat_log=logs.append))
    assert sl.kind == "dice" and "functional BCE needs --heatmap-loss bce" in sl.describe()


# -- real data ----------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_isbi2015_reader_on_the_real_data():
    if not (ISBI / "dataset" / "benchmark" / "points.csv").is_file():
        pytest.skip(f"ISBI 2015 data not found at {ISBI} (opt-in real-data test)")
    train = LandmarkDataset(ISBI, "train", size=(200, 160))
    val = LandmarkDataset(ISBI, "val", size=(200, 160))
    test = LandmarkDataset(ISBI, "test", size=(200, 160), max_images=3)
    assert (len(train), len(val), test.names) == (150, 50, ["201.jpg", "202.jpg", "203.jpg"])
    assert train.annotation_used == "mean of points.csv and senior_csv for 150/150 images"
    assert train.original_size == (2400, 1935) and train.pixel_mm == pytest.approx(0.1)
    assert train.radius == pytest.approx(10.0)
    # 001.jpg, landmark 1: points.csv (832, 994), senior_csv/train_senior.csv row of 001.jpg
    senior = {r[0]: r for r in csv.reader(open(ISBI / "senior_csv" / "train_senior.csv"))}
    sx, sy = float(senior["001.jpg"][1]), float(senior["001.jpg"][2])
    lm = train.landmarks(0)
    assert lm[0, 0].item() == pytest.approx((832 + sx) / 2 * 160 / 1935, rel=1e-5)
    assert lm[0, 1].item() == pytest.approx((994 + sy) / 2 * 200 / 2400, rel=1e-5)
    img, mask, heat, oy, ox, _ = train[0]
    assert img.shape == (3, 200, 160) and mask.shape == (19, 200, 160)


@pytest.mark.realdata
def test_challenge_layout_reader_on_the_real_data_converted(tmp_path):
    """../shared/data/isbi2015_ceph converted to the challenge layout (BMP images, points.csv
    as 400_junior, senior_csv as 400_senior) reads exactly as the CSV layout does."""
    from amat_hooks.zoo.isbi_writers import write_isbi2015_layout

    if not (ISBI / "dataset" / "benchmark" / "points.csv").is_file():
        pytest.skip(f"ISBI 2015 data not found at {ISBI} (opt-in real-data test)")
    numbers = [1, 2, 151, 201]
    out = write_isbi2015_layout(ISBI, tmp_path / "ISBI2015", numbers=numbers)
    assert sorted(p.name for p in (out / "RawImage" / "TrainingData").iterdir()) == ["001.bmp", "002.bmp"]
    assert sorted(p.name for p in (out / "RawImage" / "Test1Data").iterdir()) == ["151.bmp", "201.bmp"]
    official = LandmarkDataset(out, numbers, size=(100, 80))
    csv_layout = LandmarkDataset(ISBI, numbers, size=(100, 80))
    assert official.layout == "isbi2015" and official.original_size == (2400, 1935) == csv_layout.original_size
    assert official.annotation_used == "mean of 400_junior and 400_senior for 4/4 images"
    for i in range(len(numbers)):
        assert torch.equal(official.landmarks(i), csv_layout.landmarks(i))
        assert torch.equal(official.image(i), csv_layout.image(i))
    first = (out / "AnnotationsByMD" / "400_junior" / "001.txt").read_text().splitlines()[0]
    assert first == "832,994"  # points.csv, 001.jpg, landmark 1 (full-resolution pixels)


def test_runner_refuses_an_xi_file_calibrated_for_the_other_heatmap_term(tmp_path):
    """The xi file records the heatmap term it was calibrated with; a run whose script
    trains with the other one is refused before its first step."""
    from amat_hooks.state import write_xi_file, xi_record
    from amat_hooks.config import AdvConfig
    from amat_hooks.run import Runner, RunnerError

    rec = xi_record("landmark", torch.tensor([[0.9, 0.3, 0.3], [0.8, 0.2, 0.4]]), ["heatmap", "offset_x", "offset_y"],
                    "mean+2std", identity={"heatmap_loss": "dice"})
    write_xi_file(tmp_path / "xi.json", rec)
    bce = torch.nn.BCELoss()
    for used, ok in ((bce, False), (None, True)):
        runner = Runner(AdvConfig(mode="amat", delta=1.0, xi=[1.0, 1.0, 1.0]), verbose=False,
                        adv_xi_file=str(tmp_path / "xi.json"))
        runner.adapter = LandmarkAdapter("auto", [bce])
        if used is not None:
            runner.loss_calls.append(used)
        if ok:  # the script never calls its BCELoss: dice, as calibrated
            runner.flush(final=True)
            assert runner.adapter.kind == "dice"
        else:
            with pytest.raises(RunnerError, match=r"--adv-xi-file: .*heatmap_loss 'dice' != 'bce'"):
                runner.flush(final=True)
