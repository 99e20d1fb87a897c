"""Issue 32 for Ultralytics YOLO: the attacks aimed at the detections mAP scores (suppress,
displace) read the head's own decoded boxes and class confidences (checked against Ultralytics'
postprocess), lower what they aim at more than random noise of the same norm, and join `worst`;
issue 28: the masking check's floor is an empty prediction scored by Ultralytics' DetMetrics."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")
import torch  # noqa: E402

pytestmark = pytest.mark.slow
AMAT = Path(sys.executable).with_name("amat")


@pytest.fixture(scope="module")
def std(tmp_path_factory):
    """A clean YOLOv5n trained 25 epochs through `amat yolo ... --adv none` (learns the shapes a bit)."""
    from amat_hooks.zoo.detection_data import make_dataset

    root = tmp_path_factory.mktemp("yolo_aimed")
    data = make_dataset(root / "d3", n_train=32, n_val=16, seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAT_", "YOLO_"))}
    env["YOLO_CONFIG_DIR"] = str(root / "ultralytics_cfg")
    os.environ["YOLO_CONFIG_DIR"] = env["YOLO_CONFIG_DIR"]
    cmd = [str(AMAT) if AMAT.exists() else sys.executable, *([] if AMAT.exists() else ["-m", "amat_hooks.cli"]),
           "yolo", "detect", "train", "model=yolov5n.yaml", f"data={data}", "epochs=25", "imgsz=64", "batch=8",
           "workers=0", "device=cpu", "pretrained=False", "seed=0", "nbs=8", "warmup_epochs=1",
           f"project={root / 'runs'}", "name=std", "val=False", "plots=False", "close_mosaic=0", "--adv", "none"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return root / "runs" / "std" / "weights" / "last.pt", data


def _task(std, tmp_path):
    from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask

    weights, data = std
    return YoloEvalTask(weights, data, imgsz=64, batch=8, det_conf=0.01, workdir=tmp_path)


def test_predictions_and_truth_are_ultralytics_own(std, tmp_path):
    task = _task(std, tmp_path)
    b = next(iter(task.batches()))
    with torch.no_grad():
        boxes, log_conf = task.detection_predictions(b.x)
        preds = task.validator.postprocess(task.model(b.x))  # Ultralytics' NMS on the same forward
    truth = task.detection_truth(b.target, 2)
    assert len(truth) == 2 * len(preds)
    found = 0
    for i, p in enumerate(preds):
        pb = task.validator._prepare_batch(i, {**b.target, "img": b.x})
        assert torch.allclose(truth[i][0], pb["bboxes"].float(), atol=1e-4) and truth[i][1].tolist() == pb["cls"].long().tolist()
        assert torch.equal(truth[i][0], truth[i + len(preds)][0])  # the second level's rows: the same images
        for box, conf, cls in zip(p["bboxes"][:5], p["conf"][:5], p["cls"][:5]):
            near = (boxes[i] - box).abs().amax(1) < 1e-3      # an anchor with exactly this box
            assert near.any(), (i, box)
            assert log_conf[i, near, int(cls)].exp().max().item() == pytest.approx(float(conf), rel=1e-4)
            found += 1
    assert found > 0


def test_aimed_attacks_hit_what_they_aim_at_and_join_worst(std, tmp_path):
    from amat_hooks.evaluation import masking_check, robustness_eval

    task = _task(std, tmp_path)
    levels = [0.3, 1.0]
    r = robustness_eval(task, levels, attacks=("pgd", "worst"), pgd_steps=10, progress=False)
    assert r.worst_of == ["pgd", "suppress", "displace"] and r.steps["suppress"] == 10
    assert r.clean["mAP50"] > 0.3, r.clean  # the model learned the shapes
    top = 1.0
    # suppress: fewer confident true positives (recall at Ultralytics' own threshold) than random noise
    assert r.noisy["suppress"][top]["recall"] < r.random[top]["recall"]
    assert r.noisy["suppress"][top]["mAP50"] < r.random[top]["mAP50"]
    # displace: the confident boxes moved off (the paper's average IoU of detected objects)
    assert r.noisy["displace"][top]["IoU"] < r.random[top]["IoU"] - 0.02
    for lv in levels:
        for i, w in enumerate(r.sample_scores("worst", lv)):
            assert w == min(r.sample_scores(a, lv)[i] for a in r.worst_of)
    # the floor: no detection at all, scored by DetMetrics (0 for every metric)
    assert r.floor == 0.0 and r.floor_from == "no detection"
    b = next(iter(task.batches()))
    assert set(task.reduce([task.trivial_stats(b.target)["no detection"]]).values()) == {0.0}
    assert any(line.startswith("worst case at level 1 from: ") for line in masking_check(r))
