"""Convergence of motion-textual inversion on the toy world: transfer score against steps.

For each setting (learning rate, schedule, noise-level distribution, initialisation, tokens),
invert each reference once up to ``--max-steps``, keep the embedding at the snapshot steps
(``invert(..., snapshot_at=...)``, so one run gives the whole curve), animate the targets with
each snapshot and score the mean trajectory cosine (``reenact.toy.bench`` metrics). Reported:
the score curve, and the steps each setting needs to reach 90% of the *default* setting's
final score (a common bar), which is how the defaults were chosen (docs/PERFORMANCE.md).

    python benchmarks/convergence.py --out bench-out/convergence
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reenact.inversion import InversionConfig, invert
from reenact.embedding import MotionEmbedding
from reenact import models
from reenact import video as vio
from reenact.toy import bench, metrics

# name -> InversionConfig overrides; "default" is InversionConfig() as shipped
SETTINGS: dict[str, dict] = {
    "default": {},
    "lr 1e-2 constant (baseline)": {"lr": 1e-2, "lr_schedule": "constant"},
    "lr 1e-1 constant": {"lr": 1e-1, "lr_schedule": "constant"},
    "lr 5e-2 cosine": {"lr": 5e-2, "lr_schedule": "cosine"},
    "ln s ~ N(2.8, 1.6^2)": {"log_sigma_mean": 2.8},
    "init random": {"init": "random"},
}


def steps_to(curve: dict[int, float], bar: float) -> int | None:
    for step in sorted(curve):
        if curve[step] >= bar:
            return step
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--refs", type=int, default=3)
    p.add_argument("--targets", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=480)
    p.add_argument("--snapshots", type=int, nargs="+", default=[15, 30, 60, 120, 240, 480])
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="names from SETTINGS")
    p.add_argument("--model", default="toy")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/convergence"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    snaps = sorted(s for s in set(args.snapshots) if s <= args.max_steps)
    pipe = models.load_pipeline(args.model, "cpu")
    geometry = models.native_geometry(pipe)
    refs = bench.pick_references(args.refs, *geometry)
    targets = [bench.pick_targets(r, args.targets, *geometry) for r in refs]
    images = [[vio.tensor_to_images(t.video[0])[0] for t in ts] for ts in targets]
    curves: dict[str, dict[int, float]] = {}
    seconds: dict[str, float] = {}
    for name in args.settings:
        overrides = SETTINGS[name]
        per_step: dict[int, list[float]] = {s: [] for s in snaps}
        t_inv = 0.0
        for i, ref in enumerate(refs):
            cfg = InversionConfig(**{**overrides, "steps": args.max_steps, "seed": i})
            t0 = time.perf_counter()
            res = invert(pipe, ref.video, cfg, progress=False, snapshot_at=set(snaps))
            t_inv += time.perf_counter() - t0
            for s in snaps:
                emb = MotionEmbedding(res.snapshots[s], {})
                videos = bench.generate(pipe, images[i], emb, steps=args.gen_steps, seed=0)
                for v, t in zip(videos, targets[i]):
                    measured = metrics.measured_motion(v, ref.kind, t.object_color)
                    per_step[s].append(metrics.motion_metrics(ref.truth, measured)["trajectory_cosine"])
            print(f"{name}: ref {i + 1}/{len(refs)} done ({t_inv:.0f}s inverting)", file=sys.stderr, flush=True)
        curves[name] = {s: float(np.mean(v)) for s, v in per_step.items()}
        seconds[name] = t_inv / len(refs)
    bar = 0.9 * curves["default"][snaps[-1]] if "default" in curves else None
    lines = ["| setting | " + " | ".join(f"step {s}" for s in snaps) + " | steps to 90% of default's final | s per inversion |",
             "|---|" + "---|" * (len(snaps) + 2)]
    for name, curve in curves.items():
        need = steps_to(curve, bar) if bar is not None else None
        lines.append(f"| {name} | " + " | ".join(f"{curve[s]:.3f}" for s in snaps)
                     + f" | {need if need is not None else f'> {snaps[-1]}'} | {seconds[name]:.1f} |")
    table = "\n".join(lines)
    print(f"mean trajectory cosine ({args.refs} references x {args.targets} targets; bar = 0.9 x default's final"
          f" = {bar:.3f})\n" if bar is not None else "", end="")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.md").write_text(table + "\n")
    (args.out / "convergence.json").write_text(json.dumps(
        {"curves": curves, "seconds_per_inversion": seconds, "bar": bar, "argv": sys.argv,
         "machine": bench.machine_info()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
