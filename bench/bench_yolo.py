"""Seconds per training iteration of Ultralytics YOLO under STD, SAT and AMAT, same data,
one process, modes interleaved round by round (so CPU contention hits all alike).

One iteration = what Ultralytics' ``_do_train`` does per batch: ``model(batch)`` (clean
forward + our criterion wrapper: attack, noisy forward, combined loss), backward,
optimizer step (+EMA). Also times the per-image loss terms against Ultralytics' plain
criterion call on the same predictions.

    python bench/bench_yolo.py                       # generated data, yolov5n, imgsz 128, batch 8
    python bench/bench_yolo.py --data ../shared/data/bccd_yolo/bccd.yaml --imgsz 320 --model yolov5s.yaml
    python bench/bench_yolo.py --eval                # amat eval yolo: batched levels vs one call per level
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data YAML (default: generated dataset)")
    ap.add_argument("--model", default="yolov5n.yaml")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="rounds; each times --iters iterations per mode")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps for SAT and AMAT")
    ap.add_argument("--boundary", default="none,stop",
                    help="AMAT training semantics to time, comma-separated (first = 'AMAT'): none = Algorithm 1 "
                         "(full radius), stop = the boundary-stop variant")
    ap.add_argument("--refine-steps", type=int, default=2, help="bisection steps of the stop variant")
    ap.add_argument("--sat-eps", type=float, default=10.0)
    ap.add_argument("--amat-step", type=float, default=3.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--eval", action="store_true",
                    help="instead: time `amat eval yolo`'s evaluation, all levels of a batch in one attack call "
                         "vs one evaluation per level (3 levels x PGD + IFGSM)")
    ap.add_argument("--eval-levels", default="5,10,15")
    ap.add_argument("--eval-images", type=int, default=24, help="val images (generated)")
    ap.add_argument("--pgd-steps", type=int, default=10, help="PGD steps in --eval (100 in the paper; the "
                                                                "ratio is per step)")
    ap.add_argument("--ifgsm-steps", type=int, default=10)
    args = ap.parse_args(argv)
    if args.eval:
        return bench_eval(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_yolo_"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "cfg"))
    import torch

    from amat_hooks.zoo.detection_data import make_dataset
    from amat_hooks.integrations.ultralytics.adapter import criterion_with_terms
    from amat_hooks.integrations.ultralytics.trainer import AMATDetectionTrainer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = args.data or str(make_dataset(tmp / "ds", n_train=4 * args.batch, n_val=4, size=args.imgsz, seed=0))
    modes = {
        "STD": dict(mode="none"),
        f"SAT{args.sat_eps:g}": dict(mode="sat", eps=args.sat_eps, pgd_steps=args.steps),
    }
    variants = [v.strip() for v in str(args.boundary).split(",") if v.strip()]
    for j, b in enumerate(variants):
        modes["AMAT" if j == 0 else f"AMAT-{b}"] = dict(mode="amat", delta=args.amat_step, pgd_steps=args.steps,
                                                        boundary=b, refine_steps=args.refine_steps)
    trainers = {}
    for name, adv in modes.items():
        tr = AMATDetectionTrainer.with_config(**adv)(overrides=dict(
            model=args.model, data=data, epochs=1, imgsz=args.imgsz, batch=args.batch, workers=0,
            device=args.device, pretrained=False, project=str(tmp / "runs"), name=name, plots=False,
            verbose=False, seed=0, amp=False))
        tr.model = tr.get_model(cfg=args.model, verbose=False)
        tr._setup_train()
        trainers[name] = tr
    first = next(iter(trainers.values()))
    it = iter(first.train_loader)
    batches = [first.preprocess_batch(next(it)) for _ in range(min(len(first.train_loader), 4))]

    def iteration(tr, batch):
        loss, _ = tr.model(batch)
        tr.scaler.scale(loss.sum()).backward()  # as _do_train: self.loss = loss.sum()
        tr.optimizer_step()

    times: dict[str, list[float]] = {n: [] for n in trainers}
    for name, tr in trainers.items():  # warm-up (also makes AMAT's online xi ready)
        iteration(tr, copy.copy(batches[0]))
    k = 0
    for _ in range(args.rounds):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            for j in range(args.iters):
                iteration(tr, copy.copy(batches[(k + j) % len(batches)]))
            times[name].append((time.perf_counter() - t0) / args.iters)
        k += args.iters
    amat = trainers["AMAT"].amat_last

    # per-image terms vs the plain criterion, same predictions
    tr = trainers["STD"]
    model = tr.model
    model.train()
    b = batches[0]
    crit = model.init_criterion()
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        preds = model(b["img"])
    t_fwd = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        crit(preds, b)
    t_plain = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        criterion_with_terms(crit, preds, b)
    t_terms = (time.perf_counter() - t0) / n

    med = {n_: statistics.median(v) for n_, v in times.items()}
    sat = next(k_ for k_ in med if k_.startswith("SAT"))
    res = {"model": args.model, "imgsz": args.imgsz, "batch": args.batch, "device": args.device,
           "threads": torch.get_num_threads(), "steps": args.steps, "boundary": variants,
           "refine_steps": args.refine_steps, "load_before": os.getloadavg()[0],
           "s_per_iter_median": med, "s_per_iter_all": times,
           "ratio_SAT_STD": med[sat] / med["STD"], "ratio_AMAT_STD": med["AMAT"] / med["STD"],
           "ratio_AMAT_SAT": med["AMAT"] / med[sat],
           "ratio_variants_SAT": {k_: v / med[sat] for k_, v in med.items() if k_.startswith("AMAT")},
           "amat_last_batch": {"pgd_steps_run": amat.attack.steps_run,
                               "crossed": float(amat.attack.crossed.float().mean()),
                               "eps_mean": float(amat.eps.mean())},
           "terms_ms": {"forward": 1e3 * t_fwd, "criterion": 1e3 * t_plain, "criterion_with_terms": 1e3 * t_terms,
                        "terms_over_criterion": t_terms / t_plain,
                        "extra_over_forward": (t_terms - t_plain) / t_fwd}}
    print(f"\n{args.model} imgsz={args.imgsz} batch={args.batch} {args.device} threads={res['threads']} "
          f"PGD steps={args.steps} AMAT semantics={variants} (stop: {args.refine_steps} bisection steps)")
    print("| mode | s/iter (median) | x STD | x SAT |\n|---|---|---|---|")
    for n_, v in med.items():
        print(f"| {n_} | {v:.3f} | {v / med['STD']:.2f} | {v / med[sat]:.2f} |")
    print(f"AMAT/SAT = {res['ratio_AMAT_SAT']:.3f}   (AMAT last batch: {amat.attack.steps_run} PGD steps, "
          f"{res['amat_last_batch']['crossed']:.0%} crossed xi)")
    tm = res["terms_ms"]
    print(f"per-image terms: criterion {tm['criterion']:.2f} ms -> with terms {tm['criterion_with_terms']:.2f} ms "
          f"(x{tm['terms_over_criterion']:.2f}); extra = {tm['extra_over_forward']:.1%} of one forward "
          f"({tm['forward']:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def bench_eval(args) -> int:
    """Batched multi-level evaluation vs one evaluation per level, same model and images,
    interleaved rounds. Two per-level settings: the same images per batch (so the batched
    attack holds 3x the rows), and 3x the images per batch (the same rows per attack call,
    i.e. the same batch memory as the batched run)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_yolo_eval_"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "cfg"))
    import torch

    from amat_hooks.evaluation import robustness_eval
    from amat_hooks.integrations.ultralytics.evaluate import YoloEvalTask
    from amat_hooks.integrations.ultralytics.offline import prepare_offline
    from amat_hooks.zoo.detection_data import NAMES, make_dataset

    prepare_offline()
    from ultralytics.nn.tasks import DetectionModel

    levels = [float(v) for v in args.eval_levels.split(",")]
    data = args.data or str(make_dataset(tmp / "ds", n_train=2, n_val=args.eval_images, size=args.imgsz, seed=0))
    torch.manual_seed(0)
    net = DetectionModel(args.model, nc=len(NAMES), verbose=False)
    net.names = dict(NAMES)
    weights = tmp / "model.pt"
    torch.save({"model": net, "train_args": {"imgsz": args.imgsz}}, weights)
    b = args.batch
    tasks = {"batched": YoloEvalTask(weights, data, imgsz=args.imgsz, batch=b, device=args.device, workdir=tmp),
             "per_level_same_images": YoloEvalTask(weights, data, imgsz=args.imgsz, batch=b, device=args.device,
                                                   workdir=tmp),
             "per_level_same_rows": YoloEvalTask(weights, data, imgsz=args.imgsz, batch=b * len(levels),
                                                 device=args.device, workdir=tmp)}
    kw = dict(attacks=("pgd", "ifgsm"), pgd_steps=args.pgd_steps, ifgsm_steps=args.ifgsm_steps, progress=False)

    def run(name: str) -> float:
        t0 = time.perf_counter()
        if name == "batched":
            robustness_eval(tasks[name], levels, **kw)
        else:
            for lv in levels:
                robustness_eval(tasks[name], [lv], **kw)
        return time.perf_counter() - t0

    run("batched")  # warm-up
    times: dict[str, list[float]] = {n: [] for n in tasks}
    for _ in range(args.rounds):
        for name in tasks:
            times[name].append(run(name))
    med = {n: statistics.median(v) for n, v in times.items()}
    res = {"model": args.model, "imgsz": args.imgsz, "batch": b, "images": args.eval_images, "levels": levels,
           "pgd_steps": args.pgd_steps, "ifgsm_steps": args.ifgsm_steps, "device": args.device,
           "threads": torch.get_num_threads(), "rounds": args.rounds, "s_median": med, "s_all": times,
           "ratio_batched_vs_same_images": med["batched"] / med["per_level_same_images"],
           "ratio_batched_vs_same_rows": med["batched"] / med["per_level_same_rows"]}
    print(f"\n{args.model} imgsz={args.imgsz} {args.eval_images} images, levels {levels}, PGD {args.pgd_steps} + "
          f"IFGSM {args.ifgsm_steps} steps, {args.device} threads={res['threads']}, {args.rounds} rounds")
    print("| evaluation | images/batch | rows per attack call | s (median) | batched / this |\n|---|---|---|---|---|")
    rows = {"batched": (b, b * len(levels)), "per_level_same_images": (b, b),
            "per_level_same_rows": (b * len(levels), b * len(levels))}
    for n, v in med.items():
        print(f"| {n} | {rows[n][0]} | {rows[n][1]} | {v:.2f} | {med['batched'] / v:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
