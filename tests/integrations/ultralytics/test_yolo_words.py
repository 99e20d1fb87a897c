"""`amat yolo` the Ultralytics way: key=value words for every --adv* flag, the margins and the
clean / noisy losses in the trainer's metrics (results.csv, results.png, every logger's
on_fit_epoch_end), and bad input refused in one line before Ultralytics starts (misspelt
flags and words, xi of another task, xi of the wrong length or below a term's floor, an
Ultralytics older than 8.4)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from support import amat_cmd, run

pytest.importorskip("ultralytics")

COMMON = ["imgsz=64", "batch=4", "workers=0", "device=cpu", "pretrained=False", "seed=0"]
AMAT_KEYS = [f"train/{kind}_{k}_loss" for kind in ("clean", "noisy") for k in ("box", "cls", "dfl")] + [
    "metrics/margin_mean", "metrics/margin_max"]

#: The real `amat` entry point (amat_hooks.cli.main, what the console script runs) with one
#: logger added the way Ultralytics' own integrations are: a default on_fit_epoch_end callback.
RECORDER = """
import json, sys
from amat_hooks.offline import apply_offline_env
apply_offline_env()
import ultralytics.utils.callbacks.base as base
RECORDS = sys.argv[1]  # `amat yolo` hands Ultralytics its own sys.argv

def record(trainer):
    with open(RECORDS, "a") as f:
        f.write(json.dumps({"epoch": trainer.epoch, "metrics": {k: float(v) for k, v in trainer.metrics.items()},
                            "tloss": trainer.label_loss_items(trainer.tloss)}) + "\\n")

base.default_callbacks["on_fit_epoch_end"].append(record)
from amat_hooks.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from amat_hooks.zoo.detection_data import make_dataset

    root = tmp_path_factory.mktemp("yolo_words")
    cfg = root / "ultralytics_cfg"
    env = {"YOLO_CONFIG_DIR": str(cfg), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    # Ultralytics announces a new settings file once per config folder (3 lines): have it written
    run([sys.executable, "-c", "import amat_hooks.offline as o; o.apply_offline_env(); import ultralytics"],
        cwd=root, env=env, timeout=120)
    return {"root": root, "env": env, "data": make_dataset(root / "d", n_train=8, n_val=4, seed=1)}


# -- a real run written with words ----------------------------------------------------------------
@pytest.mark.slow
def test_words_train_and_metrics_reach_csv_png_and_callbacks(work, tmp_path, monkeypatch):
    """`adv=amat adv_step=0.5 adv-steps=2 adv_xi_rule=mean`: the settings reach the run; each
    epoch's trainer.metrics (what an on_fit_epoch_end logger gets) holds the clean and noisy
    loss items and the margins; results.csv has the same numbers; Ultralytics' loss columns
    are the mean of the clean and noisy ones; the sidecar's margins give the margin columns;
    Ultralytics' plot_results draws every one of them in results.png."""
    records, guard, run_dir = tmp_path / "records.jsonl", tmp_path / "net.txt", tmp_path / "runs" / "words"
    argv = ["yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['data']}", "epochs=2", *COMMON,
            f"project={run_dir.parent}", f"name={run_dir.name}", "plots=True",
            "adv=amat", "adv_step=0.5", "adv-steps=2", "adv_xi_rule=mean"]
    p = run([sys.executable, "-c", RECORDER, str(records), *argv], cwd=tmp_path, guard=guard, timeout=600,
            env=work["env"])
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert not guard.exists() or guard.read_text() == "", f"network access: {guard.read_text()}"
    side = json.loads((run_dir / "weights" / "amat_state.json").read_text())
    assert (side["config"]["mode"], side["config"]["delta"], side["config"]["pgd_steps"],
            side["config"]["xi_rule"]) == ("amat", 0.5, 2, "mean")

    seen = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["epoch"] for r in seen] == [0, 1, 2]  # two epochs, then final_eval's call (best.pt)
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and set(AMAT_KEYS) <= set(rows[0])
    for epoch, (row, rec) in enumerate(zip(rows, seen)):
        m = rec["metrics"]
        assert set(AMAT_KEYS) <= set(m), sorted(m)
        for key in AMAT_KEYS:  # the logger and the CSV got the same number
            assert float(row[key]) == pytest.approx(m[key], rel=1e-5, abs=1e-6), key
        for item in ("box", "cls", "dfl"):  # Ultralytics' own running mean of what was back-propagated
            trained = rec["tloss"][f"train/{item}_loss"]
            assert (m[f"train/clean_{item}_loss"] + m[f"train/noisy_{item}_loss"]) / 2 == pytest.approx(
                trained, rel=1e-4), (epoch, item)
        clean = sum(m[f"train/clean_{i}_loss"] for i in ("box", "cls", "dfl"))
        noisy = sum(m[f"train/noisy_{i}_loss"] for i in ("box", "cls", "dfl"))
        assert noisy > clean > 0, (epoch, clean, noisy)  # PGD raised the loss: two different columns
        assert m["metrics/margin_mean"] == pytest.approx(side["history"][epoch]["margin_mean"], abs=1e-5)
    values = side["policy"]["margins"]["values"]
    assert len(values) == 8
    final = seen[-1]["metrics"]  # after final_eval replaced trainer.metrics, the columns are back
    assert final["metrics/margin_mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)
    assert final["metrics/margin_max"] == pytest.approx(max(values), abs=1e-5)
    assert 0.5 <= max(values) <= 0.5 + 2 * 0.5 + 1e-6  # Delta 0.5: at most one expansion per epoch

    assert (run_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt
    from ultralytics.utils.plotting import plot_results

    titles: list[str] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda *a: (titles.extend(
        ax.get_title() for ax in plt.gcf().axes if ax.get_visible()), close(*a))[1])
    plot_results(file=run_dir / "results.csv")
    assert set(AMAT_KEYS) <= set(titles), titles


# -- refused in one line, before Ultralytics starts -----------------------------------------------
def _xi_file(path: Path, task: str, names: list[str], values: list[float], data: Path | None = None) -> Path:
    """An xi file as `amat calibrate <task>` writes it (the same writer)."""
    import torch

    from amat_hooks.state import write_xi_file, xi_record

    terms = torch.tensor([values, [v * 1.5 for v in values]])
    identity = {"data": str(data.resolve())} if data is not None else {}
    write_xi_file(path, xi_record(task, terms, names, "mean", identity=identity))
    return path


@pytest.fixture(scope="module")
def xi_files(work):
    root, data = work["root"] / "xi", work["data"]
    root.mkdir()
    other = root / "other_data.yaml"
    other.write_text(data.read_text())
    return {
        "landmark": _xi_file(root / "landmark.json", "landmark", ["heatmap", "offset_x", "offset_y"], [0.1, 0.2, 0.3]),
        "nnunet": _xi_file(root / "nnunet.json", "nnunet", ["dc_ce"], [-0.4]),
        "yolov5": _xi_file(root / "yolov5.json", "yolov5", ["box", "obj", "cls"], [0.05, 0.04, 0.01]),
        "other_data": _xi_file(root / "other.json", "yolo", ["box", "cls", "dfl"], [2.0, 2.5, 1.4], data=other),
        "own": _xi_file(root / "own.json", "yolo", ["box", "cls", "dfl"], [2.0, 2.5, 1.4], data=data),
    }


REFUSED = {
    "misspelt word": (["adv=amat", "adv_stp=3.5"], "unknown option adv_stp; did you mean adv_step?"),
    "misspelt word, dashes": (["adv=amat", "adv-xi-rul=mean"], "unknown option adv-xi-rul; did you mean adv-xi-rule?"),
    "misspelt flag": (["--adv", "amat", "--adv-stpe", "3.5"], "unknown option --adv-stpe; did you mean --adv-step?"),
    "abbreviated flag": (["--adv", "amat", "--adv-ste", "3.5"], "unknown option --adv-ste; did you mean --adv-step?"),
    "word and flag": (["adv=amat", "adv_step=1", "--adv-step", "2"], "--adv-step is given twice"),
    "word twice": (["adv=amat", "adv_step=1", "adv-step=2"], "adv-step= is given twice"),
    "bad word value": (["adv=amat", "adv_step=x"], "adv_step=x: argument --adv-step: invalid float value: 'x'"),
    "bad choice": (["adv=amat", "adv_step=1", "adv_norm=l3"], "invalid choice: 'l3'"),
    "bad flag value": (["--adv", "amat", "--adv-step", "abc"], "argument --adv-step: invalid float value: 'abc'"),
    "switch value": (["adv=amat", "adv_step=1", "adv_force_resume=maybe"], "adv_force_resume is a switch"),
    "word without adv": (["adv_step=1"], "--adv-step given without --adv"),
    "xi of 2 terms": (["adv=amat", "adv_step=1", "adv_xi=1,2"],
                      "has 2 value(s) [1.0, 2.0], YOLO's detection loss has 3 terms (box, cls, dfl)"),
    "xi of 4 terms": (["--adv", "amat", "--adv-step", "1", "--adv-xi", "1,2,3,4"], "has 4 value(s)"),
    "negative xi": (["adv=amat", "adv_step=1", "adv_xi=0.5,-0.1,0.5"],
                    "xi for the cls term is -0.1 (from command line --adv-xi), but that term is never below 0"),
    "xi at the floor": (["adv=amat", "adv_step=1", "adv_xi=0,1,1"], "xi for the box term is 0"),
    "landmark xi file": (["adv=amat", "adv_step=1", "adv_xi_file={landmark}"],
                         "holds xi of a landmark model (heatmap, offset_x, offset_y), not of yolo"),
    "nnU-Net xi file": (["--adv", "amat", "--adv-step", "1", "--adv-xi-file", "{nnunet}"],
                        "holds xi of a nnunet model (dc_ce), not of yolo"),
    "classic YOLOv5 xi file": (["adv=amat", "adv_step=1", "adv_xi_file={yolov5}"],
                               "holds xi of a yolov5 model (box, obj, cls), not of yolo"),
    "xi file of other data": (["adv=amat", "adv_step=1", "adv_xi_file={other_data}"],
                              "was calibrated for another run (data"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_words_and_xi_are_refused_in_one_line_before_ultralytics(work, xi_files, tmp_path, name):
    extra, message = REFUSED[name]
    extra = [w.format(**xi_files) for w in extra]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = run([*amat_cmd(), "yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['data']}", "epochs=1",
             *COMMON, *extra], cwd=cwd, env=work["env"], timeout=120)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(lines) == 1 and lines[0].startswith("amat yolo: error: "), lines
    assert message in lines[0], lines[0]
    assert list(cwd.iterdir()) == []  # no runs/ folder, nothing written


@pytest.mark.parametrize("command,message", [
    (["grid", "yolo", "--deltas", "1", "model=yolov5n.yaml", "adv_step=2"], "adv_step=: the grid sets these itself"),
    (["eval", "yolo", "--models", "STD=best.pt", "adv=amat"], "adv=...: a training setting of `amat yolo`")])
def test_training_words_on_the_shared_commands(work, tmp_path, command, message):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = run([*amat_cmd(), *command, f"data={work['data']}"], cwd=cwd, env=work["env"], timeout=120)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert list(cwd.iterdir()) == []


def test_own_xi_file_passes_and_ultralytics_words_are_one_line(work, xi_files, tmp_path):
    """The control: our checks let a yolo xi file of this data through; the run then stops at
    Ultralytics' own argument check (a word it does not know), before training, as one line
    with Ultralytics' closest spelling instead of its SyntaxError traceback and 50 lines of help."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = run([*amat_cmd(), "yolo", "detect", "train", "model=yolov5n.yaml", f"data={work['data']}", "epoch=1",
             *COMMON, "adv=amat", "adv_step=1", f"adv_xi_file={xi_files['own']}", "adv_xi_rule=mean"],
            cwd=cwd, env=work["env"], timeout=120)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("amat yolo: error: 'epoch' is not a valid YOLO argument") and "epochs=100" in lines[0]
    assert list(cwd.iterdir()) == []


def test_help_names_the_words(work, tmp_path):
    p = run([*amat_cmd(), "yolo", "--help"], cwd=tmp_path, env=work["env"], timeout=120)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "adv=amat adv_step=3.5" in text and "--adv-step 3.5 is adv_step=3.5" in text
    assert "metrics/margin_mean" in text and "Ultralytics >= 8.4" in text


def test_python_api_refuses_unreachable_xi_before_the_run_folder(work, tmp_path, monkeypatch):
    """`with_config(xi=...)` and the AMAT_* variables get the same checks as `amat yolo`."""
    from amat_hooks.config import AdvConfigError
    from amat_hooks.integrations.ultralytics.trainer import AMATDetectionTrainer

    with pytest.raises(AdvConfigError, match=r"xi for the dfl term is 0 .*never below 0"):
        AMATDetectionTrainer.with_config(mode="amat", delta=1.0, xi=[1.0, 1.0, 0.0])
    assert AMATDetectionTrainer.with_config(mode="amat", delta=1.0, xi=[1.0, 1.0, 0.5]).adv_config.xi == [1, 1, 0.5]
    monkeypatch.delenv("AMAT_YOLO_CONFIG", raising=False)
    for name, value in {"AMAT_MODE": "amat", "AMAT_STEP": "1", "AMAT_XI": "1,2"}.items():
        monkeypatch.setenv(name, value)
    project = tmp_path / "runs"
    with pytest.raises(AdvConfigError, match=r"xi from environment AMAT_XI has 2 value\(s\) \[1.0, 2.0\]"):
        AMATDetectionTrainer(overrides=dict(model="yolov5n.yaml", data=str(work["data"]), project=str(project)))
    assert not project.exists()


# -- the Ultralytics version ----------------------------------------------------------------------
def test_version_check_reads_release_numbers():
    from amat_hooks.integrations.ultralytics.version import (UltralyticsVersionError, check_ultralytics,
                                                             parse_version)

    assert parse_version("8.4.190") == (8, 4, 190) and parse_version("8.10.0rc1") == (8, 10, 0)
    for ok in ("8.4.0", "8.4.190", "8.10.1", "9.0"):
        assert check_ultralytics(ok) == ok
    for old in ("8.3.253", "8.0", "7.9.9"):
        with pytest.raises(UltralyticsVersionError, match=rf"Ultralytics {old} is installed, .*needs >= 8.4"):
            check_ultralytics(old)
    import ultralytics

    assert check_ultralytics() == ultralytics.__version__  # the installed one passes


@pytest.mark.parametrize("command", [["yolo", "detect", "train", "adv=amat", "adv_step=1"],
                                     ["calibrate", "yolo", "model=best.pt"]])
def test_old_ultralytics_is_one_line_not_an_import_error(work, tmp_path, command):
    """An Ultralytics 8.3 distribution found first on the path (its metadata is what pip
    reports): `amat yolo` and `amat calibrate yolo` stop in one line with the fix."""
    site = tmp_path / "site"
    meta = site / "ultralytics-8.3.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: ultralytics\nVersion: 8.3.0\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = run([*amat_cmd(), *command, f"data={work['data']}"], cwd=cwd, timeout=120,
            env={**work["env"], "PYTHONPATH": str(site)})
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, lines
    assert "Ultralytics 8.3.0 is installed, amat-hooks needs >= 8.4" in lines[0] and "pip install" in lines[0]
    assert list(cwd.iterdir()) == []
