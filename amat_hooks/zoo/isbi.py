"""ISBI 2015 cephalometric landmarks, in either of two folder layouts (the writers, and the
generated dataset of the embedded default, are in :mod:`amat_hooks.zoo.isbi_writers`).

**CSV layout** (``../shared/data/isbi2015_ceph``): ``dataset/benchmark/images/NNN.jpg``,
``dataset/benchmark/points.csv`` (one annotation per image, 19 points as a Python-dict
string), ``dataset/benchmark/metadata.yaml`` (original size in pixels and mm, optional
split) and ``senior_csv/*_senior.csv`` (the senior doctor, ``image_path,1_x,1_y,...``).

**ISBI 2015 challenge layout** (as the challenge ships it, and as public code reads it):
``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and ``400_junior/NNN.txt`` +
``400_senior/NNN.txt``, at the top level or under ``AnnotationsByMD/``; every text file
starts with 19 ``x,y`` lines in full-resolution pixels (further lines are ignored).

:func:`detect_layout` says which one a folder holds; every dataset says which layout
(:attr:`LandmarkDataset.layout_used`) and which annotation it used
(:attr:`LandmarkDataset.annotation_used`). The paper's ground truth is the mean of the two
doctors, so ``annotation="mean"`` averages both where both exist. Paper split (by image
number, in both layouts): train 1-150, validation 151-200, test 201-300.
"""
from __future__ import annotations

import ast
import csv
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


PAPER_SPLIT = {"train": (1, 150), "val": (151, 200), "test": (201, 300)}
#: ``points`` = the first annotation (points.csv, or 400_junior); ``junior`` is its alias.
ANNOTATIONS = ("mean", "points", "junior", "senior")
PAPER_SIZE = (200, 160)  # (H, W) used for training in the paper
LAYOUTS = ("csv", "isbi2015")
#: The image folders of the ISBI 2015 challenge (images 1-150, 151-300, 301-400).
ISBI_IMAGE_DIRS = ("TrainingData", "Test1Data", "Test2Data")
ISBI_ANNOTATION_DIRS = ("400_junior", "400_senior")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
_ANNOTATION_TEXT = {
    "csv": {"mean": "mean of points.csv and senior_csv", "points": "points.csv only",
            "senior": "senior_csv only"},
    "isbi2015": {"mean": "mean of 400_junior and 400_senior", "points": "400_junior only",
                 "senior": "400_senior only"},
}


class LandmarkDataError(ValueError):
    """A dataset file is malformed; the message names the file, the row and the fix."""


# -- files ----------------------------------------------------------------------------------------
def find_benchmark(root: str | Path) -> Path:
    """The folder holding ``points.csv`` and ``images/`` (accepts the dataset root too)."""
    root = Path(root)
    for cand in (root / "dataset" / "benchmark", root / "benchmark", root):
        if (cand / "points.csv").is_file():
            return cand
    raise LandmarkDataError(
        f"no points.csv found under {root} (looked in dataset/benchmark/, benchmark/ and the folder "
        f"itself); pass the isbi2015_ceph folder, or write a generated one with `amat landmark-data DIR`")


@dataclass
class DataLayout:
    """Where a landmark dataset's files are (:func:`detect_layout`)."""

    kind: str                          # "csv" or "isbi2015"
    root: Path
    description: str                   # what the user is told
    bench: Path | None = None          # csv: the folder of points.csv and images/
    senior_dir: Path | None = None     # csv: senior_csv/ ; isbi2015: 400_senior/
    junior_dir: Path | None = None     # isbi2015: 400_junior/
    image_dirs: list[Path] = field(default_factory=list)  # isbi2015: RawImage/<split folders>


def _isbi_parts(root: Path) -> tuple[list[Path], Path | None, Path | None]:
    raw = next((c for c in (root / "RawImage", root) if any((c / d).is_dir() for d in ISBI_IMAGE_DIRS)), None)
    image_dirs = [raw / d for d in ISBI_IMAGE_DIRS if raw is not None and (raw / d).is_dir()]
    ann = next((c for c in (root / "AnnotationsByMD", root) if any((c / d).is_dir() for d in ISBI_ANNOTATION_DIRS)),
               None)
    junior = ann / "400_junior" if ann is not None and (ann / "400_junior").is_dir() else None
    senior = ann / "400_senior" if ann is not None and (ann / "400_senior").is_dir() else None
    return image_dirs, junior, senior


def detect_layout(root: str | Path) -> DataLayout:
    """Which layout ``root`` holds (see the module docstring); a clear error if neither."""
    root = Path(root)
    if not root.is_dir():
        raise LandmarkDataError(f"landmark data folder not found: {root}")
    bench = next((c for c in (root / "dataset" / "benchmark", root / "benchmark", root)
                  if (c / "points.csv").is_file()), None)
    if bench is not None:
        senior = next((c for c in (root / "senior_csv", bench.parent.parent / "senior_csv", bench / "senior_csv")
                       if c.is_dir()), None)
        rel = bench.relative_to(root) if bench != root else Path(".")
        return DataLayout("csv", root, f"CSV layout ({rel / 'points.csv'}"
                          + (f" + {senior.relative_to(root) if senior.is_relative_to(root) else senior}/"
                             if senior else ", no senior_csv/") + ")",
                          bench=bench, senior_dir=senior)
    image_dirs, junior, senior = _isbi_parts(root)
    if image_dirs and (junior or senior):
        ann = (junior or senior).parent
        where = f"{ann.relative_to(root)}/" if ann != root else ""
        names = [d.name for d in (junior, senior) if d is not None]
        parts = f"{where}{{{','.join(names)}}}" if len(names) > 1 else f"{where}{names[0]}"
        raw = image_dirs[0].parent
        rawname = f"{raw.relative_to(root)}/" if raw != root else ""
        dirs = [d.name for d in image_dirs]
        dirs_text = f"{{{','.join(dirs)}}}" if len(dirs) > 1 else dirs[0]
        return DataLayout("isbi2015", root, f"ISBI 2015 challenge layout ({rawname}{dirs_text}/*.bmp, "
                          f"{parts}/*.txt)",
                          senior_dir=senior, junior_dir=junior, image_dirs=image_dirs)
    found = ("RawImage/ image folders but no 400_junior/ or 400_senior/" if image_dirs else
             "400_junior/ or 400_senior/ but no RawImage/{TrainingData,Test1Data,Test2Data}/" if (junior or senior)
             else "neither")
    raise LandmarkDataError(
        f"no landmark dataset under {root} (found {found}): expected the CSV layout (dataset/benchmark/points.csv "
        f"+ images/, senior_csv/) or the ISBI 2015 challenge layout (RawImage/{{TrainingData,Test1Data,Test2Data}}/"
        f"NNN.bmp + 400_junior/ and 400_senior/ NNN.txt, at the top level or under AnnotationsByMD/); "
        f"`amat landmark-data DIR` writes a generated one")


def read_isbi_txt(path: str | Path, num_landmarks: int = 19) -> Tensor:
    """``[L, 2]`` (x, y) from the first ``L`` lines ``x,y`` of an ISBI 2015 annotation file."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    pts = []
    for line_no, line in enumerate(lines[:num_landmarks], start=1):
        parts = [v for v in line.replace(",", " ").split() if v]
        try:
            if len(parts) != 2:
                raise ValueError(f"expected 'x,y', got {line.strip()!r}")
            pts.append((float(parts[0]), float(parts[1])))
        except ValueError as e:
            raise LandmarkDataError(f"{path} line {line_no}: {e}") from None
    if len(pts) != num_landmarks:
        raise LandmarkDataError(f"{path}: expected {num_landmarks} 'x,y' lines, got {len(pts)}; fix the file or "
                                f"pass num_landmarks={len(pts)}")
    return torch.tensor(pts, dtype=torch.float64)


def _isbi_images(layout: DataLayout) -> dict[str, Path]:
    """``{file name: path}`` of the numbered images in the split folders (first one wins)."""
    out: dict[str, Path] = {}
    for d in layout.image_dirs:
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit() and p.name not in out:
                out[p.name] = p
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """``key: value`` lines of metadata.yaml (flat, no YAML dependency)."""
    out: dict[str, str] = {}
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip().strip("'\"")
    return out


def read_points_csv(path: str | Path, num_landmarks: int = 19) -> dict[str, Tensor]:
    """``{file name: [L, 2] (x, y)}`` from ``Document,points`` rows. Repeated identical rows
    are merged; conflicting repeats, unreadable rows or a wrong point count are errors."""
    path = Path(path)
    out: dict[str, Tensor] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["document", "points"]:
        raise LandmarkDataError(f"{path}: expected a header 'Document,points', got {rows[0] if rows else 'an empty file'}")
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path} row {line_no}"
        if len(row) != 2:
            raise LandmarkDataError(f"{where}: expected 2 columns (Document, points), got {len(row)}")
        name, text = row[0].strip(), row[1]
        try:
            d = ast.literal_eval(text)
            pts = [(float(d[k]["x"]), float(d[k]["y"])) for k in sorted(d)]
        except (ValueError, SyntaxError, KeyError, TypeError) as e:
            raise LandmarkDataError(f"{where} ({name}): cannot read the points ({e}); expected "
                                    f"\"{{0: {{'x': X, 'y': Y}}, 1: ...}}\"") from None
        if len(pts) != num_landmarks:
            raise LandmarkDataError(f"{where} ({name}): expected {num_landmarks} landmarks, got {len(pts)}; "
                                    f"fix the row or pass num_landmarks={len(pts)}")
        t = torch.tensor(pts, dtype=torch.float64)
        if name in out and not torch.equal(out[name], t):
            raise LandmarkDataError(f"{where}: {name} appears again with different points; keep one row")
        out[name] = t
    return out


def read_senior_csv(path: str | Path, num_landmarks: int = 19) -> dict[str, Tensor]:
    """``{file name: [L, 2]}`` from ``image_path,1_x,1_y,...`` rows (senior doctor)."""
    path = Path(path)
    out: dict[str, Tensor] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise LandmarkDataError(f"{path}: empty file")
    want = 1 + 2 * num_landmarks
    if len(rows[0]) != want:
        raise LandmarkDataError(f"{path} row 1 (header): expected {want} columns (image_path + x, y for "
                                f"{num_landmarks} landmarks), got {len(rows[0])}")
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != want:
            raise LandmarkDataError(f"{path} row {line_no} ({row[0]}): expected {num_landmarks} landmarks "
                                    f"({want} columns), got {len(row)} columns")
        try:
            v = [float(c) for c in row[1:]]
        except ValueError as e:
            raise LandmarkDataError(f"{path} row {line_no} ({row[0]}): {e}") from None
        out[row[0].strip()] = torch.tensor(v, dtype=torch.float64).view(num_landmarks, 2)
    return out


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the PNG/JPEG header without decoding the image."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", head[16:24])
            return int(h), int(w)
        if head[:2] == b"BM" and len(head) >= 26:  # BITMAPINFOHEADER: width, height (negative: top-down)
            w, h = struct.unpack("<ii", head[18:26])
            return abs(int(h)), int(w)
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                code = marker[1]
                if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
                    continue
                (length,) = struct.unpack(">H", f.read(2))
                if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
                    _, h, w = struct.unpack(">BHH", f.read(5))
                    return int(h), int(w)
                f.seek(length - 2, 1)
    img = _decode(path, 1)
    return int(img.shape[1]), int(img.shape[2])


def _decode(path: Path, channels: int) -> Tensor:
    """uint8 ``[C, H, W]``; PNG/JPEG with torchvision, BMP (the challenge's format) and
    anything torchvision cannot read with Pillow."""
    if path.suffix.lower() not in (".bmp", ".tif", ".tiff"):
        from torchvision.io import ImageReadMode, decode_image, read_file

        mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
        try:
            return decode_image(read_file(str(path)), mode=mode)
        except RuntimeError:
            pass
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        raise LandmarkDataError(f"reading {path.name} needs Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    except OSError as e:
        raise LandmarkDataError(f"cannot decode image {path}: {e}") from None
    t = torch.from_numpy(arr.copy())
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t.unsqueeze(0)


def _image_number(name: str) -> int | None:
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else None


def _parse_range(text: str) -> tuple[int, int]:
    a, b = text.split("-")
    return int(a), int(b)
