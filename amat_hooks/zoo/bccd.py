"""BCCD (VOC XML) -> Ultralytics YOLO layout with a data YAML.

``amat bccd SRC OUT [--split official|random] [--seed 0]``: SRC is the BCCD folder (the
one holding ``Annotations/``, ``JPEGImages/``, ``ImageSets/``, or its parent). Boxes are
clipped to the image; degenerate boxes (``xmax <= xmin`` or ``ymax <= ymin`` after
clipping) are dropped and counted. ``official`` uses ``ImageSets/Main/{train,val,test}.txt``
(205/87/72); ``random`` is a seeded split with the paper's sizes 294/33/37.
"""
from __future__ import annotations

import random
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("RBC", "WBC", "Platelets")
PAPER_SPLIT = (294, 33, 37)


class BCCDError(ValueError):
    """The source folder is not a BCCD/VOC layout."""


@dataclass
class ConversionReport:
    yaml: Path
    counts: dict[str, int]
    boxes: int = 0
    dropped: list[str] = field(default_factory=list)  # "image: reason"

    def format(self) -> str:
        split = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        text = f"BCCD -> {self.yaml}: {split} images, {self.boxes} boxes; dropped {len(self.dropped)} degenerate box(es)"
        return text + "".join(f"\n  dropped {d}" for d in self.dropped)


def find_root(src: str | Path) -> Path:
    src = Path(src)
    for cand in (src, src / "BCCD"):
        if (cand / "Annotations").is_dir() and (cand / "JPEGImages").is_dir():
            return cand
    raise BCCDError(f"{src} is not a BCCD folder: expected Annotations/ and JPEGImages/ in it (or in {src}/BCCD); "
                    f"get it from https://github.com/Shenggan/BCCD_Dataset")


def _read_split(root: Path, name: str) -> list[str]:
    f = root / "ImageSets" / "Main" / f"{name}.txt"
    if not f.is_file():
        raise BCCDError(f"official split file {f} is missing; use --split random")
    return [line.strip() for line in f.read_text().splitlines() if line.strip()]


def _convert_xml(xml: Path, dropped: list[str]) -> list[str]:
    tree = ET.parse(xml).getroot()
    size = tree.find("size")
    w, h = float(size.findtext("width")), float(size.findtext("height"))
    if not (w > 0 and h > 0):
        raise BCCDError(f"{xml}: image size {w}x{h} is invalid")
    lines = []
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise BCCDError(f"{xml}: unknown class {name!r}; expected one of {CLASSES}")
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
        y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
        if x1 <= x0 or y1 <= y0:
            dropped.append(f"{xml.stem}: {name} box ({x0:g},{y0:g})-({x1:g},{y1:g}) has no area")
            continue
        lines.append(f"{CLASSES.index(name)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                     f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    return lines


def convert(src: str | Path, out: str | Path, split: str = "official", seed: int = 0) -> ConversionReport:
    """Write ``out/images/<split>/*.jpg``, ``out/labels/<split>/*.txt`` and ``out/bccd.yaml``."""
    root = find_root(src)
    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    if not stems:
        raise BCCDError(f"no .xml files in {root / 'Annotations'}")
    if split == "official":
        parts = {name: _read_split(root, name) for name in ("train", "val", "test")}
    elif split == "random":
        if len(stems) != sum(PAPER_SPLIT):
            raise BCCDError(f"random split expects {sum(PAPER_SPLIT)} images as in the paper, found {len(stems)}")
        order = stems[:]
        random.Random(seed).shuffle(order)
        a, b, _ = PAPER_SPLIT
        parts = {"train": order[:a], "val": order[a:a + b], "test": order[a + b:]}
    else:
        raise BCCDError(f"unknown split {split!r}; use 'official' or 'random'")
    out = Path(out)
    dropped: list[str] = []
    boxes = 0
    for name, members in parts.items():
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
        (out / "labels" / name).mkdir(parents=True, exist_ok=True)
        for stem in members:
            img = root / "JPEGImages" / f"{stem}.jpg"
            xml = root / "Annotations" / f"{stem}.xml"
            if not img.is_file() or not xml.is_file():
                raise BCCDError(f"split {name} lists {stem} but {img.name} or {xml.name} is missing")
            lines = _convert_xml(xml, dropped)
            boxes += len(lines)
            shutil.copyfile(img, out / "images" / name / img.name)
            (out / "labels" / name / f"{stem}.txt").write_text("".join(s + "\n" for s in lines))
    yaml = out / "bccd.yaml"
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    yaml.write_text(f"# BCCD, {split} split (seed {seed})\npath: {out.resolve()}\ntrain: images/train\n"
                    f"val: images/val\ntest: images/test\nnames:\n{names}")
    return ConversionReport(yaml=yaml, counts={k: len(v) for k, v in parts.items()}, boxes=boxes, dropped=dropped)
