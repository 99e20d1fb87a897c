import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (opt-in real-data test)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def pip_install(tmp_path_factory):
    """Install a small package (``{relative path: text}``) into this environment for the
    module's tests, the way a third party would ship a plugin; uninstalled afterwards."""
    import subprocess
    import sys

    pip = [sys.executable, "-m", "pip"]
    names: list[str] = []

    def install(name: str, files: dict[str, str]) -> Path:
        root = tmp_path_factory.mktemp(name)
        for rel, text in files.items():
            f = root / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(root)],
                       check=True, capture_output=True)
        names.append(name)
        return root

    yield install
    for name in names:
        subprocess.run(pip + ["uninstall", "-y", "-q", name], check=False, capture_output=True)
