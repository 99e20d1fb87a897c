"""Train the Multi-Task U-Net for cephalometric landmark detection (plain PyTorch).

An ordinary training script in the shape of the original public code: argparse,
DataLoader, a loop with the three loss terms computed inline, a checkpoint every N
epochs. It knows nothing about adversarial training (it imports only its data loader and
network); ``amat run --adv amat ... -- python -m amat_hooks.examples.landmark_train ...``
adds AMAT from outside. Shipped in the wheel; in a checkout ``python examples/landmark/train.py``
runs the same code.
"""
import argparse
import os
import time

import torch
from torch import optim
from torch.nn import BCELoss
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from amat_hooks.examples.landmark_data import Cephalometric, parse_ids
from amat_hooks.examples.landmark_network import UNet_Pretrained


def L1Loss(pred, gt, mask=None):
    assert pred.shape == gt.shape
    distance = (pred - gt).abs()
    if mask is not None:
        distance = distance * mask
    return distance.sum() / mask.sum()


def dice_loss(pred, gt, smooth=1.0):
    """1 - Dice per image and landmark channel, averaged (the AMAT paper's heatmap loss)."""
    p, g = pred.flatten(2), gt.flatten(2)
    dice = (2 * (p * g).sum(2) + smooth) / (p.sum(2) + g.sum(2) + smooth)
    return (1 - dice).mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train Multi-Task U-Net landmark detection")
    parser.add_argument("--data", required=True, help="ISBI 2015 folder: the challenge's layout (RawImage/, "
                                                      "AnnotationsByMD/) or the CSV one (dataset/benchmark, senior_csv)")
    parser.add_argument("--train-ids", default="1-150")
    parser.add_argument("--val-ids", default="151-200")
    parser.add_argument("--size", type=int, nargs=2, default=[200, 160], metavar=("H", "W"))
    parser.add_argument("--num-landmarks", type=int, default=19)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lambda", dest="lam", type=float, default=1.0, help="weight of the heatmap loss")
    parser.add_argument("--heatmap-loss", choices=["bce", "dice"], default="bce")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="runs/landmark")
    parser.add_argument("--init", default=None, help="start from these weights (a model_epoch_*.pth of an earlier run)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    dataset = Cephalometric(args.data, parse_ids(args.train_ids), num_landmark=args.num_landmarks,
                            size=args.size)
    dataloader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)
    val_set = Cephalometric(args.data, parse_ids(args.val_ids), num_landmark=args.num_landmarks, size=args.size)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, num_workers=0)
    print(f"data: {dataset.layout}", flush=True)
    print(f"train set: {len(dataset)} images ({dataset.annotation}); val set: {len(val_set)} images", flush=True)

    device = torch.device(args.device)
    net = UNet_Pretrained(3, args.num_landmarks).to(device)
    if args.init:
        net.load_state_dict(torch.load(args.init, map_location=device, weights_only=True))
        print(f"initial weights: {args.init}", flush=True)
    optimizer = optim.Adam(params=net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-08, weight_decay=1e-4)
    scheduler = StepLR(optimizer, 100, gamma=0.5)
    loss_logic_fn = BCELoss()
    loss_regression_fn = L1Loss

    for epoch in range(args.epochs):
        t0, c0 = time.time(), time.process_time()
        net.train()
        rows, logic_sum, regression_sum = 0, 0.0, 0.0
        for img, mask, guassian_mask, offset_y, offset_x, landmark_list in dataloader:
            img, mask, guassian_mask = img.to(device), mask.to(device), guassian_mask.to(device)
            offset_y, offset_x = offset_y.to(device), offset_x.to(device)
            heatmap, regression_y, regression_x = net(img)
            if args.heatmap_loss == "bce":
                logic_loss = loss_logic_fn(heatmap, guassian_mask)
            else:
                logic_loss = dice_loss(heatmap, guassian_mask)
            regression_loss_y = loss_regression_fn(regression_y, offset_y, mask)
            regression_loss_x = loss_regression_fn(regression_x, offset_x, mask)
            loss = regression_loss_x + regression_loss_y + logic_loss * args.lam

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows += img.shape[0]
            logic_sum += logic_loss.item() * img.shape[0]
            regression_sum += (regression_loss_x + regression_loss_y).item() * img.shape[0]
        scheduler.step()
        print(f"Epoch {epoch} train rows {rows} logic loss {logic_sum / max(rows, 1):.4f} "
              f"regression loss {regression_sum / max(rows, 1):.4f} ({time.time() - t0:.2f} s) "
              f"cpu {time.process_time() - c0:.2f} s", flush=True)

        net.eval()
        val_rows, val_loss = 0, 0.0
        with torch.no_grad():
            for img, mask, guassian_mask, offset_y, offset_x, landmark_list in val_loader:
                img, mask, guassian_mask = img.to(device), mask.to(device), guassian_mask.to(device)
                offset_y, offset_x = offset_y.to(device), offset_x.to(device)
                heatmap, regression_y, regression_x = net(img)
                logic_loss = (loss_logic_fn(heatmap, guassian_mask) if args.heatmap_loss == "bce"
                              else dice_loss(heatmap, guassian_mask))
                loss = (logic_loss + loss_regression_fn(regression_y, offset_y, mask)
                        + loss_regression_fn(regression_x, offset_x, mask))
                val_rows += img.shape[0]
                val_loss += loss.item() * img.shape[0]
        print(f"Epoch {epoch} val rows {val_rows} loss {val_loss / max(val_rows, 1):.4f}", flush=True)

        if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            path = os.path.join(args.out, f"model_epoch_{epoch}.pth")
            torch.save(net.state_dict(), path)
            print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
