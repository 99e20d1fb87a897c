"""CPU seconds per training iteration of Ultralytics YOLO under STD, SAT and AMAT, with the
paper's protocol (the default) and the authors' (``--adv-protocol authors``), same data,
one process, contenders alternating round by round (the order reversed every other round).

One iteration = what Ultralytics' ``_do_train`` does per batch: ``model(batch)`` (clean
forward + our criterion wrapper: attack, noisy forward, combined loss), backward,
optimizer step (+EMA), timed in CPU seconds of the process (``time.process_time``, one
torch thread). SAT and AMAT of one protocol run the same PGD steps (paper 10, authors 20).
Targets: AMAT / SAT <= 1.03 (paper, issue 26), AMAT-authors / SAT-authors <= 1.05 (issue 27),
medians of per-round paired ratios. Also times the per-image loss terms against
Ultralytics' plain criterion call on the same predictions.

    OMP_NUM_THREADS=1 python bench/bench_yolo.py --out docs/perf_yolo.md   # generated data, yolov5n, imgsz 128, batch 8
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data YAML (default: generated dataset)")
    ap.add_argument("--model", default="yolov5n.yaml")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7, help="rounds; each times --iters iterations per contender")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None,
                    help="PGD steps for every SAT and AMAT (default: each protocol's, paper 10, authors 20)")
    ap.add_argument("--stop", action="store_true", help="also time AMAT-stop (the boundary-stop variant)")
    ap.add_argument("--refine-steps", type=int, default=2, help="bisection steps of the stop variant")
    ap.add_argument("--sat-eps", type=float, default=10.0)
    ap.add_argument("--amat-step", type=float, default=3.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--out", default=None, help="write the markdown report here")
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

    t_start, c_start, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_yolo_"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "cfg"))
    import torch

    from amat_hooks.integrations.ultralytics.adapter import criterion_with_terms
    from amat_hooks.integrations.ultralytics.trainer import AMATDetectionTrainer
    from amat_hooks.zoo.detection_data import make_dataset
    from bench.common import machine, order, paired, spread, verdict

    torch.set_num_threads(args.threads)
    data = args.data or str(make_dataset(tmp / "ds", n_train=4 * args.batch, n_val=4, size=args.imgsz, seed=0))
    steps = {"pgd_steps": args.steps} if args.steps else {}
    sat = dict(mode="sat", eps=args.sat_eps, **steps)
    amat = dict(mode="amat", delta=args.amat_step, **steps)
    modes = {
        "STD": dict(mode="none"),
        "SAT": sat,
        "AMAT": amat,
        "SAT-authors": dict(sat, protocol="authors"),
        "AMAT-authors": dict(amat, protocol="authors"),
    }
    if args.stop:
        modes["AMAT-stop"] = dict(amat, boundary="stop", refine_steps=args.refine_steps)
    trainers = {}
    for name, adv in modes.items():
        tr = AMATDetectionTrainer.with_config(**adv)(overrides=dict(
            model=args.model, data=data, epochs=1, imgsz=args.imgsz, batch=args.batch, workers=0,
            device=args.device, pretrained=False, project=str(tmp / "runs"), name=name, plots=False,
            verbose=False, seed=0, amp=False))
        tr.model = tr.get_model(cfg=args.model, verbose=False)
        tr._setup_train()
        trainers[name] = tr
    settings = {name: tr.adv.to_dict() for name, tr in trainers.items() if tr.adv is not None}
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
    for r in range(args.rounds):
        for name in order(list(trainers), r):
            tr = trainers[name]
            c0 = time.process_time()
            for j in range(args.iters):
                iteration(tr, copy.copy(batches[(k + j) % len(batches)]))
            times[name].append((time.process_time() - c0) / args.iters)
        k += args.iters
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in trainers), flush=True)
    last = {n: trainers[n].amat_last for n in ("AMAT", "AMAT-authors")}
    c0 = time.process_time()
    trainers["AMAT-authors"].amat_engine.policy.margins.end_epoch()  # the authors' once-per-epoch update
    t_epoch_update = time.process_time() - c0

    # per-image terms vs the plain criterion, same predictions
    tr = trainers["STD"]
    model = tr.model
    model.train()
    b = batches[0]
    crit = model.init_criterion()
    n = 10
    c0 = time.process_time()
    for _ in range(n):
        preds = model(b["img"])
    t_fwd = (time.process_time() - c0) / n
    c0 = time.process_time()
    for _ in range(n):
        crit(preds, b)
    t_plain = (time.process_time() - c0) / n
    c0 = time.process_time()
    for _ in range(n):
        criterion_with_terms(crit, preds, b)
    t_terms = (time.process_time() - c0) / n

    med = {n_: statistics.median(v) for n_, v in times.items()}
    p_paper, r_paper = paired(times["AMAT"], times["SAT"])
    p_auth, r_auth = paired(times["AMAT-authors"], times["SAT-authors"])
    res = {"model": args.model, "imgsz": args.imgsz, "batch": args.batch, "device": args.device,
           "threads": torch.get_num_threads(), "rounds": args.rounds, "iters": args.iters, "load_before": load0,
           "settings": settings, "cpu_s_per_iter_median": med, "cpu_s_per_iter_rounds": times,
           "paired_AMAT_SAT": p_paper, "paired_AMAT_SAT_rounds": r_paper,
           "paired_AMAT_SAT_authors": p_auth, "paired_AMAT_SAT_authors_rounds": r_auth,
           "authors_epoch_update_ms": 1e3 * t_epoch_update,
           "amat_last_batch": {n_: {"pgd_steps_run": o.attack.steps_run, "eps_mean": float(o.eps.mean()),
                                    "accepted": None if o.accepted is None else float(o.accepted.float().mean())}
                               for n_, o in last.items()},
           "terms_ms": {"forward": 1e3 * t_fwd, "criterion": 1e3 * t_plain, "criterion_with_terms": 1e3 * t_terms,
                        "terms_over_criterion": t_terms / t_plain,
                        "extra_over_forward": (t_terms - t_plain) / t_fwd}}
    if args.stop:
        res["paired_AMAT_stop_SAT"] = paired(times["AMAT-stop"], times["SAT"])[0]
    cmd = (f"OMP_NUM_THREADS={args.threads} .venv/bin/python bench/bench_yolo.py --rounds {args.rounds} "
           f"--iters {args.iters} --imgsz {args.imgsz} --batch {args.batch} --model {args.model}"
           + (f" --steps {args.steps}" if args.steps else "") + (" --stop" if args.stop else "")
           + (f" --out {args.out}" if args.out else ""))
    tm = res["terms_ms"]
    lines = [
        "# Ultralytics YOLO: CPU seconds per training iteration (STD / SAT / AMAT, paper and authors' protocol)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/bench_yolo.py` on {machine(args.threads)}; {args.device}.",
        f"Real `AMATDetectionTrainer` instances (Ultralytics {_ultralytics_version()}) in one process, one per "
        f"contender, the same preprocessed batches; generated data (`amat_hooks.zoo.detection_data`), {args.model} "
        f"from scratch, imgsz {args.imgsz}, batch {args.batch}, `amp=False`. One iteration = `model(batch)` "
        f"(clean forward + the criterion wrapper: attack, noisy forward, combined loss), backward, optimizer step "
        f"with EMA. {args.rounds} rounds x {args.iters} iterations, contenders alternating (order reversed every "
        f"other round), CPU seconds of the process (`time.process_time`); ratios are medians of per-round paired "
        f"ratios. SAT eps {args.sat_eps:g}, AMAT Delta {args.amat_step:g}, online xi (mean). Paper: the protocol's "
        f"10 PGD steps of 2.5 E / 10, uniform start in the ball, noise clamped to [0, 1]. Authors "
        f"(`--adv-protocol authors`): 20 PGD steps of 5 E / 20, start on the sphere, acceptance at every iterate, "
        f"per-epoch margin updates with the Delta floor, PGD forwards in train mode.",
        f"1-minute load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; the bench took "
        f"{(time.time() - t_start) / 60:.1f} min wall, {(time.process_time() - c_start) / 60:.1f} min CPU.",
        "",
        f"Command: `{cmd}`",
        "",
        "| contender | median CPU s / iter | min | x STD | x SAT of its protocol |",
        "|---|---|---|---|---|",
    ]
    for n_, v in med.items():
        base = "SAT-authors" if "authors" in n_ else "SAT"
        lines.append(f"| {n_} | {v:.3f} | {min(times[n_]):.3f} | {v / med['STD']:.2f} | {v / med[base]:.3f} |")
    lines += [
        "",
        "| ratio (median of per-round paired ratios) | measured (quartiles) | target | verdict | per round |",
        "|---|---|---|---|---|",
        f"| AMAT / SAT, paper protocol (issue 26) | **{p_paper:.3f}** ({spread(r_paper)}) | <= 1.03 | "
        f"{verdict(p_paper, 1.03)} | " + ", ".join(f"{v:.3f}" for v in r_paper) + " |",
        f"| AMAT-authors / SAT-authors (issue 27) | **{p_auth:.3f}** ({spread(r_auth)}) | <= 1.05 | "
        f"{verdict(p_auth, 1.05)} | " + ", ".join(f"{v:.3f}" for v in r_auth) + " |",
    ]
    if args.stop:
        lines.append(f"| AMAT-stop / SAT (paper) | {res['paired_AMAT_stop_SAT']:.3f} | report | | |")
    lines += [
        "",
        "Last AMAT batch: " + "; ".join(f"{n_}: {v['pgd_steps_run']} PGD steps, mean margin {v['eps_mean']:.2f}"
                                          for n_, v in res["amat_last_batch"].items())
        + f". The authors' per-epoch margin update (`MarginStore.end_epoch`): {res['authors_epoch_update_ms']:.2f} ms "
          f"CPU, once per epoch.",
        f"Per-image terms: criterion {tm['criterion']:.2f} ms -> with terms {tm['criterion_with_terms']:.2f} ms "
        f"(x{tm['terms_over_criterion']:.2f}); the extra is {tm['extra_over_forward']:.1%} of one forward "
        f"({tm['forward']:.1f} ms); SAT and AMAT pay it alike.",
        "",
        "Raw CPU seconds per iteration, per round: "
        + json.dumps({n_: [round(v, 4) for v in vs] for n_, vs in times.items()}),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _ultralytics_version() -> str:
    try:
        import ultralytics

        return ultralytics.__version__
    except Exception:  # noqa: BLE001
        return "?"


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
