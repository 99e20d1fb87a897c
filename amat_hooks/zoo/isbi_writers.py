"""Writers of ISBI 2015 folders: a generated landmark dataset in either layout (the embedded
default and CI data) and a copy of the CSV layout in the challenge layout. The readers are
:mod:`amat_hooks.zoo.isbi`."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from amat_hooks.zoo.isbi import (ISBI_IMAGE_DIRS, LAYOUTS, LandmarkDataError, _decode, _image_number, detect_layout,
                                 read_points_csv, read_senior_csv)


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
