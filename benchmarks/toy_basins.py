"""Why does the inversion fail on a reference whose motion the model can make? (world-v2 toy)

On two of the benchmark's references (back-and-forth 2, circle 5) the model's own training
context transfers the motion (the oracle, config o: 0.97 / 0.98) but the default inversion does
not (about 0.27 / -0.1 at both benchmark seeds). This script tells an *objective* failure (the
inversion's loss prefers a wrong embedding) from an *optimisation* failure (a better embedding
exists by the loss, the optimiser does not reach it): for each reference and inversion seed it
inverts with the toy-v2 profile (the benchmark's config e), keeps snapshots, and records for each

* the EDM loss on common draws (``--draws`` samples from the profile's noise distribution, one
  generator for every embedding, so the comparison is paired), beside the oracle's on the same
  draws; and
* the transfer it gives: mean trajectory cosine on the reference's three benchmark targets (25
  Euler steps, generation seeded like the benchmark's).

Seeds are given as offsets, like ``reenact bench toy --seed``: inversion seed = offset + the
reference's plan index. One JSON line per (reference, seed); the references come from
``benchmarks/toy_sweep.py --make-cache``::

    python benchmarks/toy_sweep.py --make-cache refs.pt
    python benchmarks/toy_basins.py OUT.jsonl --cache refs.pt --refs 2,5 --seeds 0,1000,7,13 --snapshots 80
    python benchmarks/toy_basins.py OUT.jsonl --cache refs.pt --refs 2,5 --seeds 0 --snapshots 80,160,320,640
    python benchmarks/toy_basins.py OUT.jsonl --summarise
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def run(out: Path, cache: Path, refs: list[int], seeds: list[int], snapshots: list[int], draws: int) -> None:
    import torch

    from reenact import inversion, models, profiles
    from reenact import video as vio
    from reenact.embedding import MotionEmbedding
    from reenact.routing import install_motion_routing
    from reenact.toy import bench
    from reenact.toy.metrics import score_video

    torch.set_num_threads(1)
    data = torch.load(cache, weights_only=False)
    pipe = models.load_pipeline("toy-v2", "cpu", torch.float32)
    config = profiles.TOY_V2.config()
    for i in refs:
        ref, targets = data["refs"][i], data["targets"][i]
        images = [vio.tensor_to_images(t.video[0])[0] for t in targets]
        image_tensors = [vio.image_to_tensor(im) for im in images]
        oracle = bench.oracle_embedding("toy-v2", ref).tensor.expand(-1, config.tokens, -1).clone()
        for offset in seeds:
            seed = offset + i
            t0 = time.perf_counter()
            result = inversion.invert(pipe, ref.video, dataclasses.replace(config, seed=seed, steps=max(snapshots)),
                                      progress=False, snapshot_at=snapshots)
            seconds = time.perf_counter() - t0
            embs = {"oracle": oracle, **{str(k): v for k, v in sorted(result.snapshots.items())}}
            with inversion._frozen(pipe, config):
                latents = inversion.encode_reference(pipe.vae, ref.video, config)
                routing = install_motion_routing(pipe.unet, config.tokens, ref.video.shape[0])
                try:
                    values = inversion.common_draw_losses(pipe.unet, list(embs.values()), latents,
                                                          dataclasses.replace(config, probe_draws=draws), seed=123)
                finally:
                    routing.remove()
            losses = dict(zip(embs, values))
            row = {"ref": i, "motion": ref.motion, "slices": ref.slices(), "seed": seed, "steps": max(snapshots),
                   "inversion_s": round(seconds, 1), "draws": draws, "oracle_loss": round(losses["oracle"], 5),
                   "snapshots": {}}
            for k, emb in sorted(result.snapshots.items()):
                videos = bench.generate(pipe, images, MotionEmbedding(emb, {}), steps=25, seed=seed)
                scores = [score_video(v, ref, t, im) for v, t, im in zip(videos, targets, image_tensors)]
                row["snapshots"][str(k)] = {
                    "loss": round(losses[str(k)], 5),
                    "cos": [round(s["trajectory_cosine"], 3) for s in scores],
                    "rms": round(float(emb.pow(2).mean().sqrt()), 3)}
            print(json.dumps(row), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")


def summarise(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| reference | seed | oracle loss | loss / transfer cosine at each snapshot (steps) |")
    print("|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["ref"], r["steps"], r["seed"])):
        cells = ", ".join(f"{k}: {s['loss']:.4f} / {np.mean(s['cos']):+.2f}" for k, s in r["snapshots"].items())
        print(f"| {r['motion']} {r['ref']} | {r['seed']} | {r['oracle_loss']:.4f} | {cells} |")
    groups: dict[tuple[int, int], list[tuple[float, float]]] = {}  # (reference, steps): runs at different seeds
    for r in rows:
        last = r["snapshots"][str(r["steps"])]
        groups.setdefault((r["ref"], r["steps"]), []).append((last["loss"], float(np.mean(last["cos"]))))
    for (ref, steps), xs in sorted(groups.items()):
        if len(xs) > 2:
            ranks = [np.argsort(np.argsort([x[k] for x in xs])) for k in (0, 1)]
            rho = np.corrcoef(*ranks)[0, 1]
            best = min(xs)
            print(f"reference {ref}, {steps} steps: {len(xs)} seeds; Spearman rank correlation of loss and transfer "
                  f"{rho:+.2f} (negative: the lower the loss, the better the transfer); the lowest loss "
                  f"{best[0]:.4f} transfers {best[1]:+.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="JSON lines file (appended to)")
    p.add_argument("--cache", type=Path, help="references made by benchmarks/toy_sweep.py --make-cache")
    p.add_argument("--refs", default="2,5", help="plan indices")
    p.add_argument("--seeds", default="0,1000", help="seed offsets (inversion seed = offset + index)")
    p.add_argument("--snapshots", default="80", help="steps at which the embedding is scored; the run lasts the last")
    p.add_argument("--draws", type=int, default=48, help="common noise draws of the loss")
    p.add_argument("--summarise", action="store_true")
    args = p.parse_args()
    if args.summarise:
        summarise(args.out)
        return 0
    if args.cache is None:
        p.error("--cache is required")
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    run(args.out, args.cache, ints(args.refs), ints(args.seeds), ints(args.snapshots), args.draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
