"""Screen for the multi-start inversion (``InversionConfig.starts``): does the probe loss after a
few steps pick the start that transfers best?

For each chosen benchmark reference (world-v2 toy), K starts (the model's profile, seeds
``start_seed(ref_seed, k)``) run together for ``--steps`` steps; after each step in ``--probe-at``
every start's probe loss (:func:`reenact.inversion.probe_losses`, with each ``--draws`` count) is
recorded; at the end every start's embedding is scored on the reference's three benchmark
targets (10 Euler steps, like ``benchmarks/toy_variants.py``). Since batched starts are
independent runs, "choose at step S by the probe, keep optimising the chosen one" scores exactly
what the chosen start scores here, so one run answers every (S, draws) rule offline. One JSON line
per reference is appended to OUT.

    python benchmarks/toy_starts.py out.jsonl --refs 1,2,5 --starts 4 --probe-at 10,20,40,80
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from reenact import models, profiles
from reenact import video as vio
from reenact.inversion import (_embedding_metadata, _frozen, create_starts, encode_reference, probe_losses,
                               reference_fingerprint, rotate_hue, start_seed, step_starts)
from reenact.routing import install_motion_routing
from reenact.toy import bench
from reenact.toy.metrics import score_video
from toy_variants import append_row, reference  # benchmarks/toy_variants.py (this script's folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="JSON lines file (appended to)")
    p.add_argument("--refs", required=True, help="comma-separated benchmark plan indices")
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--probe-at", default="10,15,20,30,40,80")
    p.add_argument("--draws", default="8,16")
    p.add_argument("--hue-angles", default="",
                   help="also probe on the clip with its hues rotated by these angles (degrees, comma-"
                        "separated): the same motion in other colours, which an embedding that learned "
                        "the motion rather than the appearance should still denoise")
    p.add_argument("--model", default="toy-v2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    probe_at = {int(s) for s in args.probe_at.split(",")}
    draws = [int(d) for d in args.draws.split(",")]
    angles = [math.radians(float(a)) for a in args.hue_angles.split(",") if a.strip()]
    pipe = models.load_pipeline(args.model, "cpu", torch.float32)
    geometry = models.native_geometry(pipe)
    ids = [int(r) for r in args.refs.split(",")]
    plan = bench.pick_references(max(ids) + 1, *geometry)
    device = pipe.unet.device
    for rid in ids:
        t0 = time.perf_counter()
        ref, targets, _ = reference(pipe, str(rid), plan)
        images = [vio.tensor_to_images(t.video[0])[0] for t in targets]
        image_tensors = [vio.image_to_tensor(im) for im in images]
        config = profiles.inversion_config(args.model, seed=rid, steps=args.steps, starts=args.starts)
        frames = ref.video.detach().float().cpu()
        seeds = [start_seed(rid, k) for k in range(args.starts)]
        probes: dict[str, list[float]] = {}
        with _frozen(pipe, config):
            latents = encode_reference(pipe.vae, frames, config).to(device)
            hued = [encode_reference(pipe.vae, rotate_hue(frames, a), config).to(device) for a in angles]
            states = create_starts(pipe, frames, config, device, False)
            routing = install_motion_routing(pipe.unet, config.tokens, frames.shape[0])
            try:
                while states[0].step < config.steps:
                    for state, loss in zip(states, step_starts(pipe.unet, states, latents, config).tolist()):
                        state.log.add(loss, 0.0)
                    if states[0].step in probe_at:
                        for n in draws:
                            c = dataclasses.replace(config, probe_draws=n)
                            probes[f"{states[0].step}/{n}"] = [round(v, 6) for v in probe_losses(pipe.unet, states, latents, c)]
                            if hued:
                                per = [probe_losses(pipe.unet, states, h, c) for h in hued]
                                probes[f"hue{states[0].step}/{n}"] = [round(float(np.mean(v)), 6) for v in zip(*per)]
            finally:
                routing.remove()
        inv_s = time.perf_counter() - t0
        meta = _embedding_metadata(pipe, frames, config, "", reference_fingerprint(frames)["sha256"], None)
        cos, dirs = [], []
        for state in states:
            videos = bench.generate(pipe, images, state.embedding(meta), steps=10, seed=rid)
            scores = [score_video(v, ref, t, im) for v, t, im in zip(videos, targets, image_tensors)]
            cos.append(float(np.mean([s["trajectory_cosine"] for s in scores])))
            dirs.append(float(np.mean([bool(s["direction_ok"]) for s in scores])))
        row = {"ref": rid, "motion": ref.motion, "seeds": seeds, "cos": [round(c, 3) for c in cos],
               "dir": dirs, "loss_last20": [round(float(np.mean(s.log.losses[-20:])), 5) for s in states],
               "probes": probes, "inv_s": round(inv_s, 1), "total_s": round(time.perf_counter() - t0, 1)}
        append_row(args.out, row)


if __name__ == "__main__":
    main()
