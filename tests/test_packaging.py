"""The package as a user gets it: a wheel built from a copy of the checkout (no setuptools
deprecation warning about the license), its file list (LICENSE, py.typed, the landmark example,
the nnU-Net start-up .pth), its metadata (SPDX license, classifiers, URLs, the true lower
bounds, ``all`` = every integration), and the wheel installed into a fresh virtual
environment where ``amat --version`` and the example run from the installed copy."""
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, the build's whole output, sdist path), built from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"  # pip builds in-tree: never in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "data",
                                                             "*.egg-info", "__pycache__", ".pytest_cache",
                                                             ".hypothesis", "tests"))
    wheels = tmp / "wheels"
    p = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", str(wheels), str(src)], tmp)
    sdist = _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                  "print(b.build_sdist(sys.argv[1]))", str(tmp / "sdist")], src)
    return next(wheels.glob("amat_hooks-*.whl")), p.stdout + p.stderr + sdist.stderr, \
        tmp / "sdist" / sdist.stdout.strip().splitlines()[-1]


def test_the_build_warns_nothing_about_the_license(built):
    _, log, _ = built
    assert "Building wheel for amat-hooks" in log  # the verbose build output was captured
    bad = [ln for ln in log.splitlines() if re.search(r"deprecat|BuildBackendWarning", ln, re.I)]
    assert not bad, "\n".join(bad)


def test_wheel_holds_license_types_example_and_the_nnunet_start_up_line(built):
    whl, _, sdist = built
    names = zipfile.ZipFile(whl).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    for name in (f"{dist_info}/licenses/LICENSE", "amat_hooks/py.typed", "amat_hooks/examples/landmark_train.py",
                 "amat_hooks/examples/landmark_data.py", "amat_hooks/examples/landmark_network.py",
                 "amat_hooks_nnunet.pth", "amat_hooks/integrations/nnunet/amat_hooks_nnunet.pth",
                 "amat_hooks/evaluation/figures.py"):
        assert name in names, name
    license_text = zipfile.ZipFile(whl).read(f"{dist_info}/licenses/LICENSE").decode()
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 the amat-hooks authors" in license_text
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/LICENSE") for n in t.getnames())


def test_wheel_metadata_license_urls_classifiers_and_extras(built):
    whl, _, _ = built
    meta_name = next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(zipfile.ZipFile(whl).read(meta_name))
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX string says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Issues"} <= set(urls)
    assert all(u.startswith("https://github.com/amat-hooks/amat-hooks") for u in urls.values())
    extras: dict[str, set[str]] = {}
    for req in meta.get_all("Requires-Dist"):
        m = re.fullmatch(r"(.+?);\s*extra == \"(\w+)\"", req)
        if m:
            extras.setdefault(m.group(2), set()).add(m.group(1).replace(" ", ""))
    assert extras["nnunet"] == {"nnunetv2>=2.8"} and extras["yolo"] == {"ultralytics>=8.4"}
    for integration in ("nnunet", "yolo", "landmark"):
        assert extras[integration] <= extras["all"], integration


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """(venv python, its site-packages, env): the wheel installed into a fresh venv. The venv's
    own site-packages holds the installed wheel; the dependencies (torch, pluggy, ...) come from
    this environment's site-packages through a path line, which (unlike ``--system-site-packages``
    from a venv's python, which reaches the base interpreter) does not run this environment's .pth
    files, so the checkout's editable install stays out."""
    whl, _, _ = built
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(whl)], tmp)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    ours = _run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    (site / "_amat_test_dependencies.pth").write_text(ours.stdout.strip() + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "nnUNet_extTrainer")}
    return py, site, env


def test_wheel_installed_into_a_fresh_venv_runs_amat_and_the_example(installed, tmp_path):
    py, site, env = installed
    where = _run([str(py), "-c", "import amat_hooks, importlib.metadata as m; print(amat_hooks.__file__); "
                  "print(m.version('amat-hooks'))"], tmp_path, env)
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(site)  # the installed copy, not the checkout
    assert (Path(path).parent / "py.typed").is_file()
    out = _run([str(py.parent / "amat"), "--version"], tmp_path, env)
    assert out.stdout.strip() == f"amat-hooks {version}"
    example = _run([str(py), "-m", "amat_hooks.examples.landmark_train", "--help"], tmp_path, env)
    assert "--data" in example.stdout and "--heatmap-loss" in example.stdout


def test_the_installed_example_trains_under_amat_run(installed, tmp_path):
    """What the CLI's hints name, from the wheel alone: generated data, one AMAT epoch of the
    shipped landmark script through ``amat run``, a checkpoint and its state beside it."""
    py, site, env = installed
    amat = str(py.parent / "amat")
    _run([amat, "landmark-data", str(tmp_path / "ceph"), "--n", "5", "--height", "96", "--width", "72",
          "--landmarks", "3"], tmp_path, env)
    guard = tmp_path / "network_attempts.txt"
    r = _run([amat, "run", "--adv", "amat", "--adv-step", "1", "--adv-xi-rule", "mean+2std", "--adv-steps", "1",
              "--heatmap-loss", "dice", "--", "python", "-m", "amat_hooks.examples.landmark_train",
              "--data", str(tmp_path / "ceph"), "--train-ids", "1-4", "--val-ids", "5", "--size", "64", "48",
              "--num-landmarks", "3", "--batch-size", "2", "--epochs", "1", "--heatmap-loss", "dice",
              "--out", str(tmp_path / "run")], tmp_path, {**env, "AMAT_NETWORK_GUARD": str(guard)}, timeout=600)
    assert "Epoch 0 train rows 8 " in r.stdout  # 4 clean + 4 noisy rows through the shipped script
    assert (tmp_path / "run" / "model_epoch_0.pth").is_file() and not guard.exists()
    side = json.loads((tmp_path / "run" / "model_epoch_0.pth.amat.json").read_text())
    assert side["config"]["mode"] == "amat" and side["epochs"] == 1
