"""`amat run` and the landmark tools on a script with the public Multi-Task U-Net code's
habits, not this repo's example: the ISBI 2015 challenge folders (RawImage/, AnnotationsByMD/),
an nn.BCELoss heatmap term, a VGG19 that keeps its (unused) classifier, a DataParallel
wrapper (``module.`` keys), a tqdm bar, batches with an index column, ``net.zero_grad()``.
Everything runs through the console script, without manual conversion."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from amat_hooks.zoo.isbi_dataset import LandmarkDataset
from amat_hooks.zoo.isbi_writers import write_generated_isbi

from support import amat_cmd, run

pytestmark = pytest.mark.slow

PUBLIC = r'''
import argparse, os
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch import optim
from torch.nn import BCELoss
from torch.utils.data import DataLoader
from torchvision.models.vgg import cfgs, make_layers
from tqdm import tqdm


class Cephalometric(torch.utils.data.Dataset):
    def __init__(self, pathDataset, mode, num_landmark=3, resized=(32, 32), R_ratio=0.05):
        self.num_landmark, self.size = num_landmark, list(resized)
        self.Radius = R_ratio * max(resized)
        self.pth_Image = os.path.join(pathDataset, 'RawImage', 'TrainingData')
        self.pth_label_junior = os.path.join(pathDataset, 'AnnotationsByMD/400_junior')
        self.pth_label_senior = os.path.join(pathDataset, 'AnnotationsByMD/400_senior')
        self.list = [{'ID': '{0:03d}'.format(i)} for i in range(1, 5)]

    def __getitem__(self, index):
        item = self.list[index]
        img = Image.open(os.path.join(self.pth_Image, item['ID'] + '.bmp')).convert('RGB')
        ow, oh = img.size
        img = torch.from_numpy(np.asarray(img.resize(self.size[::-1]), dtype=np.float32) / 255.0)
        img = (img.permute(2, 0, 1) - 0.5) / 0.5
        landmarks = []
        with open(os.path.join(self.pth_label_junior, item['ID'] + '.txt')) as f1:
            with open(os.path.join(self.pth_label_senior, item['ID'] + '.txt')) as f2:
                for i in range(self.num_landmark):
                    l1 = f1.readline().split()[0].split(',')
                    l2 = f2.readline().split()[0].split(',')
                    landmarks.append([0.5 * (float(l1[0]) + float(l2[0])) * self.size[1] / ow,
                                      0.5 * (float(l1[1]) + float(l2[1])) * self.size[0] / oh])
        h, w = self.size
        ys = torch.arange(h, dtype=torch.float).view(1, h, 1)
        xs = torch.arange(w, dtype=torch.float).view(1, 1, w)
        lm = torch.tensor(landmarks)
        dx, dy = lm[:, 0].view(-1, 1, 1) - xs, lm[:, 1].view(-1, 1, 1) - ys
        d2, R = dx ** 2 + dy ** 2, self.Radius
        mask = (d2 < R * R).float()
        guassian_mask = torch.exp(-0.5 * d2 / (R * R)) * mask
        return img, mask, guassian_mask, dy / R * mask, dx / R * mask, lm, index

    def __len__(self):
        return len(self.list)


class DoubleConv(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.double_conv = nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                         nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)
        self.conv = DoubleConv(i, o)

    def forward(self, x1, x2=None):
        x1 = self.up(x1)
        if x2 is not None:
            x1 = torch.cat([x2, x1], dim=1)
        return self.conv(x1)


class VGG(nn.Module):  # torchvision's vgg19 keeps a classifier the U-Net never uses
    def __init__(self):
        super().__init__()
        self.features = make_layers(cfgs['E'], batch_norm=False)
        self.classifier = nn.Sequential(nn.Linear(512, 16), nn.ReLU(True), nn.Linear(16, 10))


class UNet_Pretrained(nn.Module):
    def __init__(self, n_channels, n_classes):
        super().__init__()
        self.n_classes = n_classes
        self.vgg = VGG()
        self.up1, self.up2, self.up3 = Up(1024, 256), Up(512, 128), Up(256, 64)
        self.up4, self.up5 = Up(128, 128), Up(128, 64)
        self.final = nn.Conv2d(64, n_classes * 3, kernel_size=1)

    def forward(self, x):
        f = []
        for i, layer in enumerate(self.vgg.features):
            x = layer(x)
            if i in (4, 9, 18, 27, 36):
                f.append(x)
        y = self.up5(self.up4(self.up3(self.up2(self.up1(f[4], f[3]), f[2]), f[1]), f[0]))
        y = self.final(y)
        n = self.n_classes
        return torch.sigmoid(y[:, :n]), y[:, 2 * n:], y[:, n:2 * n]


def L1Loss(pred, gt, mask=None):
    return ((pred - gt).abs() * mask).sum() / mask.sum()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--max_epochs", type=int, default=1)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    os.makedirs(args.runs, exist_ok=True)
    dataset = Cephalometric(args.data, 'Train')
    dataloader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=0)
    net = UNet_Pretrained(3, 3)
    net = torch.nn.DataParallel(net)
    if args.resume:
        net.load_state_dict(torch.load(args.resume))
    optimizer = optim.Adam(params=net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-08, weight_decay=1e-4)
    loss_logic_fn = BCELoss()
    for epoch in range(args.max_epochs):
        net.train()
        rows = 0
        for img, mask, guassian_mask, offset_y, offset_x, landmark_list, idx in tqdm(dataloader):
            net.zero_grad()
            heatmap, regression_y, regression_x = net(img)
            loss = (loss_logic_fn(heatmap, guassian_mask) + L1Loss(regression_y, offset_y, mask)
                    + L1Loss(regression_x, offset_x, mask))
            loss.backward()
            optimizer.step()
            rows += img.shape[0]
        print("Epoch {} Training rows {} loss {:.4f}".format(epoch, rows, loss.item()), flush=True)
        torch.save(net.state_dict(), args.runs + "/model_epoch_{}.pth".format(epoch))
'''


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("public")
    data = write_generated_isbi(root / "ISBI2015", n=8, height=96, width=72, num_landmarks=3, seed=0,
                                layout="isbi2015")
    script = root / "train.py"
    script.write_text(PUBLIC)
    return data, script


def test_public_code_through_amat_run_resume_eval_and_calibrate(public, tmp_path):
    data, script = public
    cmd = ["--", "python", str(script), "--data", str(data)]
    # SAT and AMAT: BCE inferred from the script's nn.BCELoss, two forward passes, DataParallel model
    r = run(amat_cmd() + ["run", "--adv", "sat", "--adv-eps", "1", "--adv-steps", "1"] + cmd
            + ["--runs", str(tmp_path / "sat")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Epoch 0 Training rows 8 " in r.stdout  # 4 clean + 4 noisy rows through the script's loop
    assert "adapter: Multi-Task U-Net (heatmap term: bce; inferred: the script created an nn.BCELoss" in r.stdout
    assert "model: DataParallel" in r.stdout
    assert re.search(r"^\[amat\] epoch 0: SAT1, batches 2, rows fed 8", r.stdout, re.M)  # its own line
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "1", "--adv-steps", "1"] + cmd
            + ["--runs", str(tmp_path / "amat")], tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "amat" / "model_epoch_0.pth"
    side = json.loads(Path(str(ckpt) + ".amat.json").read_text())
    assert side["adapter"]["heatmap_loss"] == "bce" and side["host_state"]["input_shape"] == [3, 32, 32] and side["host_state"]["batch"] == "split"
    assert side["policy"]["config"]["boundary"] == "none"
    assert sorted(side["policy"]["margins"]["ids"]) == [0, 1, 2, 3]
    assert any(k.startswith("module.vgg.classifier.") for k in torch.load(ckpt))

    # resume: margins from the sidecar, weights loaded by the script's own --resume
    r = run(amat_cmd() + ["run", "--adv", "amat", "--adv-step", "1", "--adv-steps", "1", "--adv-resume",
                          str(ckpt) + ".amat.json"] + cmd + ["--runs", str(tmp_path / "amat2"), "--resume", str(ckpt)],
            tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"weights at the first step equal {ckpt}" in r.stdout and "warning" not in r.stderr
    assert "[amat] epoch 1: AMAT, batches 2, rows fed 8" in r.stdout
    side2 = json.loads((tmp_path / "amat2" / "model_epoch_0.pth.amat.json").read_text())
    assert side2["epochs"] == 2 and side2["policy"]["margins"]["updates"] == 8

    # eval: classifier keys ignored and named, module. stripped, input size and heatmap term
    # from the sidecars; clean MRE as computed here from the checkpoint's weights
    r = run(amat_cmd() + ["eval", "landmark", "--models", f"SAT={tmp_path / 'sat' / 'model_epoch_0.pth'},AMAT={ckpt}",
                          "--data", str(data), "--split", "all", "--levels", "0.5", "--pgd-steps", "1",
                          "--ifgsm-steps", "1", "--no-progress", "--out", str(tmp_path / "rep")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "model_epoch_0.pth: ignored 4 key(s) the model does not use: vgg.classifier.* (4 keys)" in r.stderr
    assert "AMAT: input 32x32, heatmap term bce (input size from model_epoch_0.pth.amat.json" in r.stderr
    assert "ISBI 2015 challenge layout" in r.stderr
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet
    from amat_hooks.zoo.landmark_maps import voting
    from amat_hooks.evaluation.metrics import radial_errors_mm

    model = MultiTaskUNet(num_landmarks=3).eval()
    state = {k[len("module."):]: v for k, v in torch.load(ckpt).items() if "classifier" not in k}
    model.load_state_dict(state)
    ds = LandmarkDataset(data, "all", size=(32, 32), num_landmarks=3)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        pred = voting(*model(x), ds.radius)
    truth = torch.stack([ds[i][5] for i in range(len(ds))])
    mre = float(radial_errors_mm(pred, truth, **ds.to_original_mm()).mean())
    res = json.loads((tmp_path / "rep" / "robustness.json").read_text())
    assert res["AMAT"]["clean"]["MRE"] == pytest.approx(mre, rel=1e-4)
    assert "boundary=none" in (tmp_path / "rep" / "robustness.md").read_text()

    # calibrate on the SAT checkpoint (as a stand-in for a clean one): bce terms, identity recorded
    r = run(amat_cmd() + ["calibrate", "landmark", "--checkpoint", str(tmp_path / "sat" / "model_epoch_0.pth"),
                          "--data", str(data), "--split", "all", "--out", str(tmp_path / "xi.json")], tmp_path)
    assert r.returncode == 0, r.stderr
    xi = json.loads((tmp_path / "xi.json").read_text())
    assert xi["identity"] == {"heatmap_loss": "bce"} and xi["source"]["size"] == [32, 32]
    assert xi["source"]["layout"] == "isbi2015" and xi["n_samples"] == 8
    assert "--heatmap-loss bce" in r.stdout


def test_bad_input_gives_one_line(public, tmp_path):
    """A checkpoint missing needed keys, a folder in neither layout: one line each, exit 2."""
    data, _ = public
    from amat_hooks.zoo.multitask_unet import MultiTaskUNet

    state = {f"module.{k}": v for k, v in MultiTaskUNet(num_landmarks=3).state_dict().items()
             if not k.startswith("up3.")}
    torch.save(state, tmp_path / "broken.pth")
    r = run(amat_cmd() + ["eval", "landmark", "--models", str(tmp_path / "broken.pth"), "--data", str(data),
                          "--split", "all", "--size", "32", "32", "--no-progress", "--out", str(tmp_path / "r")],
            tmp_path)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "broken.pth cannot be loaded as a Multi-Task U-Net with 3 landmarks" in err[0]
    assert "needed key(s) missing (up3.conv.* (" in err[0]
    (tmp_path / "nothing" / "images").mkdir(parents=True)
    r = run(amat_cmd() + ["calibrate", "landmark", "--checkpoint", str(tmp_path / "broken.pth"),
                          "--data", str(tmp_path / "nothing")], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no landmark dataset under" in r.stderr and "found neither" in r.stderr

