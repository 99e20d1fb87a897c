"""ISBI 2015 cephalometric dataset for the example script (the shape of the original
``Cephalometric`` loader). Reads either layout:

* the ISBI 2015 challenge's: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and
  ``400_junior/NNN.txt`` + ``400_senior/NNN.txt`` (top level or under ``AnnotationsByMD/``),
  each starting with 19 ``x,y`` lines in full-resolution pixels;
* this repo's CSV one: images in ``<root>/dataset/benchmark/images``, one annotation in
  ``points.csv``, the senior doctor's in ``<root>/senior_csv/*.csv``.

The ground truth is the mean of both doctors where both exist. Returns
``(image, mask, guassian_mask, offset_y, offset_x, landmark_list)``.
"""
import ast
import csv
import glob
import os

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as data
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

ISBI_FOLDERS = ("TrainingData", "Test1Data", "Test2Data")


def parse_ids(text):
    """'1-150' or '1,2,5' -> list of image numbers."""
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


class Cephalometric(data.Dataset):
    def __init__(self, pathDataset, ids, R_ratio=0.05, num_landmark=19, size=(200, 160)):
        self.num_landmark = num_landmark
        self.size = list(size)
        self.Radius = R_ratio * max(size)
        if os.path.isdir(os.path.join(pathDataset, "RawImage")):
            paths, junior, senior = self.read_isbi2015(pathDataset, num_landmark)
            names = ("400_junior", "400_senior")
            self.layout = "ISBI 2015 challenge layout (RawImage/, 400_junior, 400_senior)"
        else:
            paths, junior, senior = self.read_csv_layout(pathDataset, num_landmark)
            names = ("points.csv", "senior_csv")
            self.layout = "CSV layout (points.csv, senior_csv/)"
        self.paths = paths
        self.list = []
        averaged = 0
        wanted = set(ids)
        for name in sorted(paths):
            stem = os.path.splitext(name)[0]
            if not (stem.isdigit() and int(stem) in wanted) or (name not in junior and name not in senior):
                continue
            pts = junior.get(name) or senior[name]
            if name in junior and name in senior:  # the paper's ground truth: mean of the two doctors
                pts = [[(a + b) / 2 for a, b in zip(p, q)] for p, q in zip(junior[name], senior[name])]
                averaged += 1
            self.list.append({"ID": name, "landmarks": pts})
        self.annotation = (f"mean of {names[0]} and {names[1]} for {averaged}/{len(self.list)} images"
                           if averaged else f"{names[0]} only")
        self.images = {}

    @staticmethod
    def read_isbi2015(root, num_landmark):
        ann = os.path.join(root, "AnnotationsByMD")
        ann = ann if os.path.isdir(ann) else root
        paths, junior, senior = {}, {}, {}
        for folder in ISBI_FOLDERS:
            for p in sorted(glob.glob(os.path.join(root, "RawImage", folder, "*.bmp"))):
                name = os.path.basename(p)
                paths[name] = p
                for doctor, into in (("400_junior", junior), ("400_senior", senior)):
                    txt = os.path.join(ann, doctor, os.path.splitext(name)[0] + ".txt")
                    if os.path.isfile(txt):
                        with open(txt) as f:
                            lines = f.read().splitlines()[:num_landmark]
                        into[name] = [[float(v) for v in line.split(",")] for line in lines]
        return paths, junior, senior

    @staticmethod
    def read_csv_layout(root, num_landmark):
        bench = os.path.join(root, "dataset", "benchmark")
        junior = {}
        with open(os.path.join(bench, "points.csv")) as f:
            for row in list(csv.reader(f))[1:]:
                d = ast.literal_eval(row[1])
                junior[row[0]] = [[d[k]["x"], d[k]["y"]] for k in sorted(d)]
        senior = {}
        for p in sorted(glob.glob(os.path.join(root, "senior_csv", "*.csv"))):
            with open(p) as f:
                for row in list(csv.reader(f))[1:]:
                    v = [float(c) for c in row[1:]]
                    senior[row[0]] = [[v[2 * k], v[2 * k + 1]] for k in range(num_landmark)]
        paths = {n: os.path.join(bench, "images", n) for n in set(junior) | set(senior)}
        return paths, junior, senior

    def load(self, name):
        if name not in self.images:
            path = self.paths[name]
            if path.lower().endswith(".bmp"):
                img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
            else:
                img = decode_image(read_file(path), mode=ImageReadMode.RGB)
            self.original_size = list(img.shape[-2:])
            img = F.interpolate(img.float().unsqueeze(0) / 255.0, size=self.size, mode="bilinear",
                                align_corners=False, antialias=True)[0]
            self.images[name] = (img - 0.5) / 0.5
        return self.images[name]

    def __getitem__(self, index):
        item = self.list[index]
        image = self.load(item["ID"])
        h, w = self.size
        oh, ow = self.original_size
        landmark_list = [[int(p[0] * w / ow), int(p[1] * h / oh)] for p in item["landmarks"]]

        ys = torch.arange(h, dtype=torch.float).view(1, h, 1)
        xs = torch.arange(w, dtype=torch.float).view(1, 1, w)
        lm = torch.tensor(landmark_list, dtype=torch.float)
        dx = lm[:, 0].view(-1, 1, 1) - xs
        dy = lm[:, 1].view(-1, 1, 1) - ys
        dist2 = dx ** 2 + dy ** 2
        R = self.Radius
        mask = (dist2 < R * R).float()
        guassian_mask = torch.exp(-0.5 * dist2 / (R * R)) * mask
        offset_x = dx / R * mask
        offset_y = dy / R * mask
        return image, mask, guassian_mask, offset_y, offset_x, landmark_list

    def __len__(self):
        return len(self.list)
