"""The ISBI 2015 landmark dataset for the Multi-Task U-Net: images of either layout
(:mod:`amat_hooks.zoo.isbi` reads the files) resized, with heatmap and offset targets."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from amat_hooks.zoo.isbi import (LandmarkDataError, PAPER_SPLIT, ANNOTATIONS, PAPER_SIZE, _ANNOTATION_TEXT, detect_layout, read_isbi_txt, _isbi_images, read_metadata, read_points_csv, read_senior_csv, image_size, _decode, _image_number, _parse_range)
from amat_hooks.zoo.landmark_maps import check_landmarks, landmark_targets, radius_for


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
