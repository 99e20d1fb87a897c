"""ISBI 2015 cephalometric dataset for the example script (the shape of the original
``Cephalometric`` loader): images in ``<root>/dataset/benchmark/images``, one annotation in
``points.csv``, the senior doctor's in ``<root>/senior_csv/*.csv``; the ground truth is the
mean of both where both exist. Returns
``(image, mask, guassian_mask, offset_y, offset_x, landmark_list)``.
"""
import ast
import csv
import glob
import os

import torch
import torch.nn.functional as F
import torch.utils.data as data
from torchvision.io import ImageReadMode, decode_image, read_file


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
        bench = os.path.join(pathDataset, "dataset", "benchmark")
        self.pth_Image = os.path.join(bench, "images")
        junior = {}
        with open(os.path.join(bench, "points.csv")) as f:
            for row in list(csv.reader(f))[1:]:
                d = ast.literal_eval(row[1])
                junior[row[0]] = [[d[k]["x"], d[k]["y"]] for k in sorted(d)]
        senior = {}
        for p in sorted(glob.glob(os.path.join(pathDataset, "senior_csv", "*.csv"))):
            with open(p) as f:
                for row in list(csv.reader(f))[1:]:
                    v = [float(c) for c in row[1:]]
                    senior[row[0]] = [[v[2 * k], v[2 * k + 1]] for k in range(num_landmark)]
        self.list = []
        averaged = 0
        for name in sorted(junior):
            stem = os.path.splitext(name)[0]
            if stem.isdigit() and int(stem) in set(ids):
                pts = junior[name]
                if name in senior:  # the paper's ground truth: mean of the two doctors
                    pts = [[(a + b) / 2 for a, b in zip(p, q)] for p, q in zip(pts, senior[name])]
                    averaged += 1
                self.list.append({"ID": name, "landmarks": pts})
        self.annotation = (f"mean of points.csv and senior_csv for {averaged}/{len(self.list)} images"
                           if averaged else "points.csv only")
        self.images = {}

    def load(self, name):
        if name not in self.images:
            img = decode_image(read_file(os.path.join(self.pth_Image, name)), mode=ImageReadMode.RGB)
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
