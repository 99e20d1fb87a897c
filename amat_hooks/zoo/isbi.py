"""ISBI 2015 cephalometric landmarks, in either of two folder layouts, and a generated
dataset written in either (the embedded default and CI data).

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
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from amat_hooks.zoo.landmark_maps import check_landmarks, landmark_targets, radius_for

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


# -- dataset ----------------------------------------------------------------------------------------
class LandmarkDataset(Dataset):
    """Landmark images (either layout, :func:`detect_layout`) resized to ``size`` (H, W)
    with Multi-Task U-Net targets.

    ``__getitem__`` returns ``(image [C,H,W], mask, heatmap, offset_y, offset_x, landmarks
    [L, 2])`` - the original ``Cephalometric`` order, so the same adapter serves both.
    Landmarks are (x, y) in resized pixels; :meth:`to_original_mm` converts errors back.
    """

    def __init__(self, root: str | Path, split: str | Sequence[int] = "train",
                 size: tuple[int, int] = PAPER_SIZE, annotation: str = "mean", num_landmarks: int = 19,
                 radius_ratio: float = 0.05, channels: int = 3, max_images: int | None = None,
                 cache: bool = True) -> None:
        if annotation not in ANNOTATIONS:
            raise LandmarkDataError(f"unknown annotation {annotation!r}; choose one of {ANNOTATIONS}")
        if channels not in (1, 3):
            raise LandmarkDataError(f"channels must be 1 or 3, got {channels}")
        if annotation == "junior":
            annotation = "points"
        layout = detect_layout(root)
        self.layout, self.layout_used = layout.kind, layout.description
        self.root = Path(root)
        self.size = (int(size[0]), int(size[1]))
        self.num_landmarks = num_landmarks
        self.channels = channels
        self.radius = radius_for(*self.size, ratio=radius_ratio)
        texts = _ANNOTATION_TEXT[layout.kind]
        names, paths, first, senior, sources, meta, meta_file = self._annotated_images(layout, split)
        if max_images is not None:
            names = names[:max_images]
        if not names:
            raise LandmarkDataError(f"no annotated images of split {split!r} in {self.root} ({self.layout_used})")
        self.names = names
        self.paths = [paths[n] for n in names]
        self.image_dir = self.paths[0].parent
        self.original_size = self._original_size(meta, meta_file)
        h0, w0 = self.original_size
        self.pixel_mm = (float(meta["image_height_mm"]) / h0) if "image_height_mm" in meta else 0.1
        self.landmarks_original, used = self._choose_annotations(annotation, first, senior, sources)
        self.annotation = annotation
        self.annotation_used = ", ".join(f"{texts[k]} for {v}/{len(names)} images" for k, v in used.items() if v)
        self.scale = (self.size[0] / h0, self.size[1] / w0)  # resized / original, (y, x)
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def _annotated_images(self, layout, split):
        """Names of the split's annotated images, their paths, both annotation sets (first
        annotator or points.csv; senior) and where they came from, and the metadata."""
        if layout.kind == "csv":
            self.bench = layout.bench
            meta_file = self.bench / "metadata.yaml"
            meta = read_metadata(meta_file)
            numbers = self._split_numbers(split, meta)
            first = read_points_csv(self.bench / "points.csv", self.num_landmarks)
            senior: dict[str, Tensor] = {}
            if layout.senior_dir is not None:
                for p in sorted(layout.senior_dir.glob("*.csv")):
                    senior.update(read_senior_csv(p, self.num_landmarks))
            names = sorted((n for n in set(first) | set(senior) if _image_number(n) in numbers),
                           key=lambda n: (_image_number(n), n))
            paths = {n: self.bench / "images" / n for n in names}
            sources = ("points.csv", f"{layout.senior_dir}/*.csv")
            return names, paths, first, senior, sources, meta, meta_file
        self.bench = layout.root
        meta_file = layout.root / "metadata.yaml"
        meta = read_metadata(meta_file)
        numbers = self._split_numbers(split, meta)
        paths = {n: p for n, p in _isbi_images(layout).items() if _image_number(n) in numbers}
        first, senior = {}, {}
        for n in paths:
            stem = Path(n).stem
            for d, into in ((layout.junior_dir, first), (layout.senior_dir, senior)):
                if d is not None and (d / f"{stem}.txt").is_file():
                    into[n] = read_isbi_txt(d / f"{stem}.txt", self.num_landmarks)
        names = sorted((n for n in paths if n in first or n in senior), key=lambda n: (_image_number(n), n))
        return names, paths, first, senior, ("400_junior", "400_senior"), meta, meta_file

    def _original_size(self, meta: dict[str, str], meta_file: Path) -> tuple[int, int]:
        """The one (H, W) all images share: coordinates and mm conversion need it."""
        sizes = {}
        for n, p in zip(self.names, self.paths):
            if not p.is_file():
                raise LandmarkDataError(f"annotated image {p} does not exist; remove its annotation or add the image")
            sizes[n] = image_size(p)
        distinct = sorted(set(sizes.values()))
        if len(distinct) > 1:
            first_name = self.names[0]
            odd = next(n for n in self.names if sizes[n] != sizes[first_name])
            raise LandmarkDataError(
                f"images of mixed sizes: {first_name} is {sizes[first_name][0]}x{sizes[first_name][1]} (HxW) but "
                f"{odd} is {sizes[odd][0]}x{sizes[odd][1]}; landmark coordinates and mm conversion need one original "
                f"size - resample the odd images or keep them in a separate dataset")
        h0, w0 = distinct[0]
        if "image_height" in meta and (int(meta["image_height"]), int(meta["image_width"])) != (h0, w0):
            raise LandmarkDataError(
                f"{meta_file} says {meta['image_height']}x{meta['image_width']} (HxW) but "
                f"the images are {h0}x{w0}; fix metadata.yaml")
        return distinct[0]

    def _choose_annotations(self, annotation, first, senior, sources):
        """Per image: the mean of both annotators, the senior's, or the first's points, as asked;
        returns the landmarks and how many images used each kind."""
        h0, w0 = self.original_size
        landmarks: list[Tensor] = []
        used = {"mean": 0, "points": 0, "senior": 0}
        for n in self.names:
            a, b = first.get(n), senior.get(n)
            for src, t in zip(sources, (a, b)):
                if t is not None:
                    check_landmarks(t, h0, w0, where=f" of {n} in {src}")
            if annotation == "mean" and a is not None and b is not None:
                lm, kind = (a + b) / 2, "mean"
            elif annotation == "senior" or (annotation == "mean" and a is None):
                if b is None:
                    raise LandmarkDataError(f"{n} has no senior annotation ({sources[1]}); use annotation='points'")
                lm, kind = b, "senior"
            else:
                if a is None:
                    raise LandmarkDataError(f"{n} has no annotation in {sources[0]}; use annotation='senior'")
                lm, kind = a, "points"
            used[kind] += 1
            landmarks.append(lm)
        return landmarks, used

    def _split_numbers(self, split: str | Sequence[int], meta: dict[str, str]) -> set[int]:
        if not isinstance(split, str):
            return {int(i) for i in split}
        if split == "all":
            return set(range(0, 10 ** 6))
        key = f"split_{split}"
        if key in meta:
            a, b = _parse_range(meta[key])
        elif split in PAPER_SPLIT:
            a, b = PAPER_SPLIT[split]
        else:
            raise LandmarkDataError(f"unknown split {split!r}; use train, val, test, all or a list of image numbers")
        return set(range(a, b + 1))

    def __len__(self) -> int:
        return len(self.names)

    def landmarks(self, index: int) -> Tensor:
        """Landmarks ``[L, 2]`` (x, y) in resized pixels."""
        lm = self.landmarks_original[index]
        return torch.stack([lm[:, 0] * self.scale[1], lm[:, 1] * self.scale[0]], 1).float()

    def image(self, index: int) -> Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        raw = _decode(self.paths[index], self.channels).float().unsqueeze(0) / 255.0
        img = F.interpolate(raw, size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        img = (img - 0.5) / 0.5
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int):
        lm = self.landmarks(index)
        lm = torch.minimum(lm.clamp_min(0), torch.tensor([self.size[1] - 1, self.size[0] - 1], dtype=lm.dtype))
        mask, heatmap, offset_y, offset_x = landmark_targets(lm, self.size[0], self.size[1], self.radius)
        return self.image(index), mask, heatmap, offset_y, offset_x, lm

    def to_original_mm(self) -> dict[str, float]:
        """Arguments for :func:`amat_hooks.evaluation.metrics.radial_errors_mm` for this dataset."""
        return {"scale_x": 1 / self.scale[1], "scale_y": 1 / self.scale[0], "pixel_mm": self.pixel_mm}


# -- generated data -----------------------------------------------------------------------------------
def generate_landmark_images(n: int, height: int = 240, width: int = 192, num_landmarks: int = 19,
                             seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` grey uint8 images ``[n, H, W]`` and landmarks ``[n, L, 2]`` (x, y), seeded.

    A skull-like ellipse with one small bright disk per landmark (brightness rising with its
    index, so landmarks are distinguishable), placed at a template shape moved by a random
    shift/scale plus per-landmark jitter, with noise. Learnable, but not trivially.
    """
    if n < 1 or height < 32 or width < 32 or num_landmarks < 1:
        raise ValueError("need n >= 1, an image of at least 32x32 and >= 1 landmark")
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(num_landmarks, dtype=torch.float64)
    angle = 2 * math.pi * k / num_landmarks + 0.3
    rad = 0.22 + 0.08 * (k % 3)
    tx, ty = 0.5 + 0.8 * rad * torch.cos(angle), 0.5 + rad * torch.sin(angle)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    dot = 0.025 * max(height, width)
    images = torch.zeros(n, height, width, dtype=torch.uint8)
    landmarks = torch.zeros(n, num_landmarks, 2, dtype=torch.float64)
    for i in range(n):
        shift = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 0.08
        scale = 1 + (torch.rand(1, generator=g, dtype=torch.float64) - 0.5) * 0.1
        jit = (torch.rand(num_landmarks, 2, generator=g, dtype=torch.float64) - 0.5) * 0.04
        lx = ((tx - 0.5) * scale + 0.5 + shift[0] + jit[:, 0]).clamp(0.05, 0.95) * (width - 1)
        ly = ((ty - 0.5) * scale + 0.5 + shift[1] + jit[:, 1]).clamp(0.05, 0.95) * (height - 1)
        cx, cy = (0.5 + shift[0]) * (width - 1), (0.5 + shift[1]) * (height - 1)
        skull = (((xx - cx) / (0.42 * width)) ** 2 + ((yy - cy) / (0.45 * height)) ** 2 <= 1).double()
        img = 0.15 + 0.25 * skull + 0.1 * yy / height
        for j in range(num_landmarks):
            d2 = (xx - lx[j]) ** 2 + (yy - ly[j]) ** 2
            img = img + (0.25 + 0.35 * j / max(1, num_landmarks - 1)) * torch.exp(-d2 / (2 * dot ** 2))
        img = img + 0.04 * torch.randn(height, width, generator=g, dtype=torch.float64)
        images[i] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        landmarks[i, :, 0], landmarks[i, :, 1] = lx.round(), ly.round()
    return images, landmarks


def write_generated_isbi(out: str | Path, n: int = 40, height: int = 240, width: int = 192,
                         num_landmarks: int = 19, seed: int = 0, pixel_mm: float = 0.1,
                         layout: str = "csv") -> Path:
    """Write :func:`generate_landmark_images` in ``layout`` (``csv`` or ``isbi2015``, see the
    module docstring); returns ``out``.

    Two "doctors": the first annotation (points.csv / 400_junior) and the senior one differ
    by +-1 px; their mean is the truth. The CSV layout records the split (60/20/20 %) in
    metadata.yaml as ``split_train: 1-24`` etc.; the challenge layout has no metadata (its
    pixel size is 0.1 mm, like the challenge's): images 1-60 % go to ``TrainingData``, the
    rest to ``Test1Data``, and splits are by image number as for the real data.
    """
    if layout not in LAYOUTS:
        raise LandmarkDataError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    out = Path(out)
    images, landmarks = generate_landmark_images(n, height, width, num_landmarks, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dev = torch.randint(0, 2, landmarks.shape, generator=g).double() * 2 - 1  # +-1 px
    n_train, n_val = max(1, int(0.6 * n)), max(0, int(0.2 * n))
    firsts, seniors = [], []
    for i in range(n):
        junior = (landmarks[i] - dev[i]).clamp(min=0)
        junior[:, 0].clamp_(max=width - 1)
        junior[:, 1].clamp_(max=height - 1)
        firsts.append(junior)
        seniors.append(2 * landmarks[i] - junior)
    rgb = [images[i].unsqueeze(0).expand(3, -1, -1).contiguous() for i in range(n)]
    if layout == "isbi2015":
        folders = [ISBI_IMAGE_DIRS[0] if i < n_train else ISBI_IMAGE_DIRS[1] for i in range(n)]
        _write_isbi2015(out, [i + 1 for i in range(n)], rgb, firsts, seniors, folders)
        return out
    from torchvision.io import write_png

    bench = out / "dataset" / "benchmark"
    (bench / "images").mkdir(parents=True, exist_ok=True)
    (out / "senior_csv").mkdir(parents=True, exist_ok=True)
    rows, senior = [], []
    for i in range(n):
        name = f"{i + 1:03d}.png"
        write_png(rgb[i], str(bench / "images" / name))
        rows.append([name, str({k: {"x": float(firsts[i][k, 0]), "y": float(firsts[i][k, 1])}
                                for k in range(num_landmarks)})])
        senior.append([name] + [f"{v:g}" for v in seniors[i].reshape(-1).tolist()])
    with open(bench / "points.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Document", "points"])
        w.writerows(rows)
    with open(out / "senior_csv" / "all_senior.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path"] + [f"{k + 1}_{c}" for k in range(num_landmarks) for c in "xy"])
        w.writerows(senior)
    meta = [f"image_height: {height}", f"image_width: {width}", f"image_height_mm: {height * pixel_mm:g}",
            f"image_width_mm: {width * pixel_mm:g}", f"split_train: 1-{n_train}",
            f"split_val: {n_train + 1}-{n_train + n_val}", f"split_test: {n_train + n_val + 1}-{n}",
            f"generated: seed {seed}, {num_landmarks} landmarks (amat_hooks)"]
    (bench / "metadata.yaml").write_text("\n".join(meta) + "\n", encoding="utf-8")
    return out


def isbi_folder(number: int) -> str:
    """The challenge's image folder of image ``number`` (1-150, 151-300, 301-400)."""
    return ISBI_IMAGE_DIRS[0] if number <= 150 else ISBI_IMAGE_DIRS[1] if number <= 300 else ISBI_IMAGE_DIRS[2]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _write_isbi2015(out: Path, numbers: Sequence[int], images: Sequence[Tensor], firsts: Sequence[Tensor | None],
                    seniors: Sequence[Tensor | None], folders: Sequence[str], annotations_by_md: bool = True) -> None:
    """Images as ``RawImage/<folder>/NNN.bmp``, annotations as ``400_junior``/``400_senior``
    ``NNN.txt`` (19 ``x,y`` lines, then the challenge's trailing lines)."""
    try:
        from PIL import Image
    except ImportError:
        raise LandmarkDataError("writing .bmp images needs Pillow (pip install pillow)") from None
    ann = out / "AnnotationsByMD" if annotations_by_md else out
    for number, img, a, b, folder in zip(numbers, images, firsts, seniors, folders):
        d = out / "RawImage" / folder
        d.mkdir(parents=True, exist_ok=True)
        arr = img.permute(1, 2, 0).contiguous().numpy() if img.shape[0] == 3 else img[0].numpy()
        Image.fromarray(arr).save(d / f"{number:03d}.bmp", format="BMP")
        for name, pts in (("400_junior", a), ("400_senior", b)):
            if pts is None:
                continue
            (ann / name).mkdir(parents=True, exist_ok=True)
            lines = [f"{_fmt(x)},{_fmt(y)}" for x, y in pts.tolist()] + ["1", "2", "1", "3", "1", "2", "1", "1"]
            (ann / name / f"{number:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_isbi2015_layout(src: str | Path, out: str | Path, numbers: Sequence[int] | None = None,
                          num_landmarks: int = 19, annotations_by_md: bool = True) -> Path:
    """Convert a CSV-layout dataset (e.g. ``../shared/data/isbi2015_ceph``) to the ISBI 2015
    challenge layout: the decoded images as BMP (lossless, so both layouts read the same
    pixels), points.csv as ``400_junior``, senior_csv as ``400_senior``; ``numbers``: which
    images (default all). Returns ``out``."""
    layout = detect_layout(src)
    if layout.kind != "csv":
        raise LandmarkDataError(f"{src} is already in the {layout.description}")
    first = read_points_csv(layout.bench / "points.csv", num_landmarks)
    senior: dict[str, Tensor] = {}
    if layout.senior_dir is not None:
        for p in sorted(layout.senior_dir.glob("*.csv")):
            senior.update(read_senior_csv(p, num_landmarks))
    names = sorted((n for n in set(first) | set(senior) if _image_number(n) is not None
                    and (numbers is None or _image_number(n) in set(numbers))), key=_image_number)
    if not names:
        raise LandmarkDataError(f"no annotated images {list(numbers or [])} in {src}")
    out = Path(out)
    imgs = [_decode(layout.bench / "images" / n, 3) for n in names]
    nums = [_image_number(n) for n in names]
    _write_isbi2015(out, nums, imgs, [first.get(n) for n in names], [senior.get(n) for n in names],
                    [isbi_folder(k) for k in nums], annotations_by_md)
    return out
