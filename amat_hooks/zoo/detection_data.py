"""A generated detection dataset (seeded; no downloads): bright rectangles (class 0) and
discs (class 1) on a noisy background, in Ultralytics' YOLO layout with a data YAML.

Used by the tests and the benchmark; objects are large so a from-scratch YOLOv5n learns
them on CPU in a few dozen epochs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NAMES = {0: "rect", 1: "disc"}


def _image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    img = (rng.normal(90, 20, (size, size, 3))).clip(0, 255)
    labels = []
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(0, 2))
        w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        color = np.array([230, 60, 60] if cls == 0 else [60, 230, 90], dtype=float)
        if cls == 0:
            img[y0:y0 + h, x0:x0 + w] = color
        else:
            yy, xx = np.mgrid[0:size, 0:size]
            cx, cy = x0 + w / 2, y0 + h / 2
            m = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
            img[m] = color
        labels.append((cls, (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size))
    return img.astype(np.uint8), labels


def make_dataset(root: str | Path, n_train: int = 32, n_val: int = 8, size: int = 64, seed: int = 0,
                 unlabeled: int = 0) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/...`` and ``root/data.yaml``.

    ``unlabeled`` > 0 leaves that many training images without a label file (bad input).
    Returns the YAML path.
    """
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = _image(rng, size)
            name = f"{split}_{i:04d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), img[:, :, ::-1])
            if split == "train" and i < unlabeled:
                continue
            with open(root / "labels" / split / f"{name}.txt", "w", encoding="utf-8") as f:
                for c, x, y, w, h in labels:
                    f.write(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                    f"names:\n  0: {NAMES[0]}\n  1: {NAMES[1]}\n", encoding="utf-8")
    return yaml
