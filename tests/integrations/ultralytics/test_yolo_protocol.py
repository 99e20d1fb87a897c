"""Issue 27 through the real ``amat yolo``: two short runs under ``--adv-protocol authors``.
The authors' YOLO trainer changes margins once per epoch and floors the refine at Delta:
with an xi every term passes, each image grows by Delta once per epoch (0.5 + 2 x 0.5 after
2 epochs); with one nothing passes, the refine (which the [0, 1] clamp can pull below E
under the paper's rule) stays at Delta exactly."""
from __future__ import annotations

import pytest

pytest.importorskip("ultralytics")

from test_yolo_cli import COMMON, _sidecar, amat  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from amat_hooks.zoo.detection_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("yolo_protocol") / "d", n_train=12, n_val=4, seed=2)


@pytest.mark.parametrize("xi,expected", [("1e6,1e6,1e6", 1.5), ("1e-9,1e-9,1e-9", 0.5)], ids=["all-pass", "none-pass"])
def test_authors_protocol_per_epoch_updates_and_refine_floor(data, tmp_path, xi, expected):
    run = tmp_path / "runs" / "authors"
    rc, out = amat(["yolo", "detect", "train", "model=yolov5n.yaml", f"data={data}", "epochs=2", *COMMON,
                    f"project={run.parent}", f"name={run.name}", "val=False", "plots=False",
                    "--adv", "amat", "--adv-step", "0.5", "--adv-steps", "2", "--adv-protocol", "authors",
                    "--adv-xi", xi], tmp_path, guard=tmp_path / "net.txt")
    assert not (tmp_path / "net.txt").exists()
    assert out.count("amat-hooks: adapter: Ultralytics detection batches, the model's own v8 criterion") == 1
    side = _sidecar(run)
    cfg = side["config"]
    assert (cfg["protocol"], cfg["kind"], cfg["update"], cfg["refine"], cfg["accept_iterates"], cfg["start"],
            cfg["clamp"], cfg["pgd_steps"], cfg["alpha"]) == \
        ("authors", "yolo", "epoch", "floor", "all", "sphere", "input", 2, 5.0)
    m = side["policy"]["margins"]
    assert m["update"] == "epoch" and m["pending"] == [] and len(m["ids"]) == 12
    assert m["updates"] == 2 * 12  # one visit per image per epoch, recorded
    assert m["values"] == pytest.approx([expected] * 12)
