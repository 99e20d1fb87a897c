"""ISBI 2015 cephalometric landmarks, in the layout of ``../shared/data/isbi2015_ceph``,
and a generated dataset written in the same layout (the embedded default and CI data).

Layout: ``dataset/benchmark/images/NNN.jpg``, ``dataset/benchmark/points.csv`` (one
annotation per image, 19 points as a Python-dict string), ``dataset/benchmark/
metadata.yaml`` (original size in pixels and mm) and ``senior_csv/*_senior.csv`` (the
senior doctor's annotation, ``image_path,1_x,1_y,...``). The paper's ground truth is the
mean of the two doctors, so ``annotation="mean"`` averages both where both exist; every
dataset says which annotation it used (:attr:`LandmarkDataset.annotation_used`).
Paper split (by image number): train 1-150, validation 151-200, test 201-300.
"""
from __future__ import annotations

import ast
import csv
import math
import struct
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .targets import check_landmarks, landmark_targets, radius_for

PAPER_SPLIT = {"train": (1, 150), "val": (151, 200), "test": (201, 300)}
ANNOTATIONS = ("mean", "points", "senior")
PAPER_SIZE = (200, 160)  # (H, W) used for training in the paper
_ANNOTATION_TEXT = {"mean": "mean of points.csv and senior_csv", "points": "points.csv only",
                    "senior": "senior_csv only"}


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
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        return decode_image(read_file(str(path)), mode=mode)
    except RuntimeError as e:
        raise LandmarkDataError(f"cannot decode image {path}: {e}") from None


def _image_number(name: str) -> int | None:
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else None


def _parse_range(text: str) -> tuple[int, int]:
    a, b = text.split("-")
    return int(a), int(b)


# -- dataset ----------------------------------------------------------------------------------------
class LandmarkDataset(Dataset):
    """ISBI-layout landmark images resized to ``size`` (H, W) with Multi-Task U-Net targets.

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
        self.bench = find_benchmark(root)
        self.root = Path(root)
        self.size = (int(size[0]), int(size[1]))
        self.num_landmarks = num_landmarks
        self.channels = channels
        self.radius = radius_for(*self.size, ratio=radius_ratio)
        meta = read_metadata(self.bench / "metadata.yaml")
        points = read_points_csv(self.bench / "points.csv", num_landmarks)
        senior: dict[str, Tensor] = {}
        senior_dir = self._senior_dir()
        if senior_dir is not None:
            for p in sorted(senior_dir.glob("*.csv")):
                senior.update(read_senior_csv(p, num_landmarks))
        numbers = self._split_numbers(split, meta)
        names = sorted((n for n in set(points) | set(senior) if _image_number(n) in numbers),
                       key=lambda n: (_image_number(n), n))
        if max_images is not None:
            names = names[:max_images]
        if not names:
            raise LandmarkDataError(f"no annotated images of split {split!r} in {self.bench}")
        self.names = names
        self.image_dir = self.bench / "images"
        sizes = {}
        for n in names:
            p = self.image_dir / n
            if not p.is_file():
                raise LandmarkDataError(f"annotated image {p} does not exist; remove its rows or add the image")
            sizes[n] = image_size(p)
        distinct = sorted(set(sizes.values()))
        if len(distinct) > 1:
            first = names[0]
            odd = next(n for n in names if sizes[n] != sizes[first])
            raise LandmarkDataError(
                f"images of mixed sizes: {first} is {sizes[first][0]}x{sizes[first][1]} (HxW) but {odd} is "
                f"{sizes[odd][0]}x{sizes[odd][1]}; landmark coordinates and mm conversion need one original "
                f"size - resample the odd images or keep them in a separate dataset")
        self.original_size = distinct[0]
        h0, w0 = self.original_size
        if "image_height" in meta and (int(meta["image_height"]), int(meta["image_width"])) != (h0, w0):
            raise LandmarkDataError(
                f"{self.bench / 'metadata.yaml'} says {meta['image_height']}x{meta['image_width']} (HxW) but "
                f"the images are {h0}x{w0}; fix metadata.yaml")
        self.pixel_mm = (float(meta["image_height_mm"]) / h0) if "image_height_mm" in meta else 0.1
        self.landmarks_original: list[Tensor] = []
        used = {"mean": 0, "points": 0, "senior": 0}
        for n in names:
            a, b = points.get(n), senior.get(n)
            for src, t in (("points.csv", a), (f"{senior_dir}/*.csv", b)):
                if t is not None:
                    check_landmarks(t, h0, w0, where=f" of {n} in {src}")
            if annotation == "mean" and a is not None and b is not None:
                lm, kind = (a + b) / 2, "mean"
            elif annotation == "senior" or (annotation == "mean" and a is None):
                if b is None:
                    raise LandmarkDataError(f"{n} has no senior annotation in {senior_dir}; use annotation='points'")
                lm, kind = b, "senior"
            else:
                if a is None:
                    raise LandmarkDataError(f"{n} has no row in {self.bench / 'points.csv'}; use annotation='senior'")
                lm, kind = a, "points"
            used[kind] += 1
            self.landmarks_original.append(lm)
        self.annotation = annotation
        self.annotation_used = ", ".join(f"{_ANNOTATION_TEXT[k]} for {v}/{len(names)} images"
                                         for k, v in used.items() if v)
        self.scale = (self.size[0] / h0, self.size[1] / w0)  # resized / original, (y, x)
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def _senior_dir(self) -> Path | None:
        for cand in (self.root / "senior_csv", self.bench.parent.parent / "senior_csv", self.bench / "senior_csv"):
            if cand.is_dir():
                return cand
        return None

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
        raw = _decode(self.image_dir / self.names[index], self.channels).float().unsqueeze(0) / 255.0
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
        """Arguments for :func:`amat_hooks.metrics.radial_errors_mm` for this dataset."""
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
                         num_landmarks: int = 19, seed: int = 0, pixel_mm: float = 0.1) -> Path:
    """Write :func:`generate_landmark_images` in the ISBI 2015 layout; returns ``out``.

    Two "doctors": points.csv and senior_csv differ by +-1 px, their mean is the truth.
    The split (60/20/20 %) is recorded in metadata.yaml as ``split_train: 1-24`` etc.
    """
    from torchvision.io import write_png

    out = Path(out)
    bench = out / "dataset" / "benchmark"
    (bench / "images").mkdir(parents=True, exist_ok=True)
    (out / "senior_csv").mkdir(parents=True, exist_ok=True)
    images, landmarks = generate_landmark_images(n, height, width, num_landmarks, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dev = torch.randint(0, 2, landmarks.shape, generator=g).double() * 2 - 1  # +-1 px
    n_train, n_val = max(1, int(0.6 * n)), max(0, int(0.2 * n))
    rows, senior = [], []
    for i in range(n):
        name = f"{i + 1:03d}.png"
        write_png(images[i].unsqueeze(0).expand(3, -1, -1).contiguous(), str(bench / "images" / name))
        junior = (landmarks[i] - dev[i]).clamp(min=0)
        junior[:, 0].clamp_(max=width - 1)
        junior[:, 1].clamp_(max=height - 1)
        sen = 2 * landmarks[i] - junior
        rows.append([name, str({k: {"x": float(junior[k, 0]), "y": float(junior[k, 1])}
                                for k in range(num_landmarks)})])
        senior.append([name] + [f"{v:g}" for v in sen.reshape(-1).tolist()])
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
