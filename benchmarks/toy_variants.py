"""Quick paired comparison of inversion settings on chosen benchmark references (world-v2 toy).

What the ``toy-v2`` profile's values (``reenact.profiles.TOY_V2``) were chosen with, before the
full benchmark (``reenact bench toy``) confirmed or refuted them: each variant is a set of
:class:`~reenact.inversion.InversionConfig` changes on top of the plain ``InversionConfig()``
(the paper's settings: clip initialisation, independent sets), or ``{"oracle": 1}`` (the model's
own training context) / ``{"none": 1}`` (the stock model). Every variant of a reference uses the
same inversion seed, the same three targets and the same generation noise, so differences are
the settings' (a variant may set ``seed`` to re-draw the inversion's own randomness alone).
Cheaper than the benchmark (10 Euler steps, no reconstruction), and only a few references: a
screen, not a result. One JSON line per (reference, variant) is appended to OUT.

    python benchmarks/toy_variants.py out.jsonl --refs d0,d1,0,4,6 \\
        --variants '{"sets": "shared"}' '{}' '{"frame_lr": 0.1}' '{"init": "random"}'

References: ``dN`` is demo clip N (``reenact.toy.demo.pick_demo_clips``), a number the benchmark
plan's reference (``reenact.toy.bench.reference_plan``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from reenact import models
from reenact import video as vio
from reenact.files import atomic_write
from reenact.inversion import InversionConfig, invert
from reenact.toy import bench, demo
from reenact.toy.metrics import score_video


def reference(pipe, rid: str, plan: list | None):
    """(reference, targets, seed) of ``dN`` (a demo clip) or ``N`` (the benchmark plan's)."""
    geometry = models.native_geometry(pipe)
    if rid.startswith("d"):
        ref, targets = demo.pick_demo_clips(int(rid[1:]), *geometry)
        return ref, targets, int(rid[1:])
    ref = plan[int(rid)]
    return ref, bench.pick_targets(ref, 3, *geometry), int(rid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="JSON lines file (appended to)")
    p.add_argument("--refs", required=True, help="comma-separated: dN (demo clip N) or N (benchmark plan index)")
    p.add_argument("--variants", nargs="+", required=True, help="JSON objects of InversionConfig changes")
    p.add_argument("--model", default="toy-v2")
    p.add_argument("--gen-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = [json.loads(v) for v in args.variants]
    pipe = models.load_pipeline(args.model, "cpu", torch.float32)
    ids = args.refs.split(",")
    numbered = [int(r) for r in ids if not r.startswith("d")]
    plan = bench.pick_references(max(numbered) + 1, *models.native_geometry(pipe)) if numbered else None
    for rid in ids:
        ref, targets, seed = reference(pipe, rid, plan)
        images = [vio.tensor_to_images(t.video[0])[0] for t in targets]
        image_tensors = [vio.image_to_tensor(im) for im in images]
        for variant in variants:
            t0 = time.perf_counter()
            changes = {k: v for k, v in variant.items() if k not in ("oracle", "none")}
            seconds, final_loss = 0.0, None
            if variant.get("none"):
                emb = None
            elif variant.get("oracle"):
                emb = bench.oracle_embedding(args.model, ref)
            else:
                result = invert(pipe, ref.video, InversionConfig(**{"seed": seed, **changes}), progress=False)
                emb, seconds = result.embedding, result.seconds
                final_loss = float(np.mean(result.losses[-20:]))  # noisy: one sigma draw per step
            videos = bench.generate(pipe, images, emb, steps=args.gen_steps, seed=seed)
            scores = [score_video(v, ref, t, im) for v, t, im in zip(videos, targets, image_tensors)]
            row = {"ref": rid, "motion": ref.motion, "variant": variant,
                   "cos": [round(s["trajectory_cosine"], 3) for s in scores],
                   "dir": [bool(s["direction_ok"]) for s in scores],
                   "no_leak": [bool(s["no_leak"]) for s in scores],
                   "mean": float(np.mean([s["trajectory_cosine"] for s in scores])),
                   "inv_s": round(seconds, 1), "total_s": round(time.perf_counter() - t0, 1)}
            if final_loss is not None:
                row["loss_last20"] = round(final_loss, 5)
            append_row(args.out, row)


def append_row(out: Path, row: dict) -> None:
    """Print ``row`` and append it to the JSON-lines file ``out`` (rewritten atomically: an
    interrupted screen never leaves half a line)."""
    print(json.dumps(row), flush=True)
    old = out.read_text() if out.exists() else ""
    with atomic_write(out) as tmp:
        Path(tmp).write_text(old + json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
