"""Wall time of the toy world's default inversion and of one generation, and where a step goes.

How a step's time splits: the inversion's own per-step time (median interval between its
per-step callbacks: sampling, UNet forward and backward to the embedding, Adam, logging) against a bare loop of just the UNet forward +
backward on identical inputs (same shapes, same frozen weights, embedding requiring grad). The
difference is everything that is not the UNet. Medians of repeated timings, same process.

    python benchmarks/toy_timing.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from reenact import models
from reenact import video as vio
from reenact.embedding import init_random
from reenact.edm import denoise as edm_denoise
from reenact.edm import loss as edm_loss
from reenact.inversion import InversionConfig, invert
from reenact.routing import flatten_embedding, install_motion_routing
from reenact.toy import bench


def unet_only_step_seconds(pipe, frames: int, tokens: int, repeats: int) -> float:
    unet = pipe.unet
    unet.requires_grad_(False)
    h = w = pipe.unet.config.sample_size
    c = pipe.vae.config.latent_channels
    x0 = torch.randn(1, frames, c, h, w)
    cond = torch.randn(1, frames, c, h, w)
    sigma = torch.tensor([2.0])
    ids = torch.tensor([[6.0, 127.0, 0.05]])
    emb = torch.nn.Parameter(init_random(frames, tokens, unet.config.cross_attention_dim, 0.1))
    times = []
    with install_motion_routing(unet, tokens, frames):
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            x_s = x0 + sigma * torch.randn_like(x0)
            d = edm_denoise(unet, x_s, sigma, cond, flatten_embedding(emb), ids)
            edm_loss(d, x0, sigma).backward()
            emb.grad = None
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--model", default="toy")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = models.load_pipeline(args.model, "cpu")
    load_s = time.perf_counter() - t0
    frames = pipe.unet.config.num_frames
    geometry = models.native_geometry(pipe)
    ref = bench.pick_references(1, *geometry)[0]
    targets = bench.pick_targets(ref, 3, *geometry)
    images = [vio.tensor_to_images(t.video[0])[0] for t in targets]

    cfg = InversionConfig()
    stamps: list[float] = []
    res = invert(pipe, ref.video, cfg, progress=False, callback=lambda step, loss: stamps.append(time.perf_counter()))
    step_s = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))  # the loop only, no set-up
    setup_s = res.seconds - (stamps[-1] - stamps[0]) - step_s
    unet_s = unet_only_step_seconds(pipe, frames, cfg.tokens, args.repeats)

    gen = []
    for n in (1, 3):
        t0 = time.perf_counter()
        bench.generate(pipe, images[:n], res.embedding, steps=25, seed=0)
        gen.append(time.perf_counter() - t0)

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| what | wall time |\n|---|---|")
    print(f"| load the toy pipeline | {load_s:.2f} s |")
    print(f"| default inversion ({cfg.steps} steps, N={cfg.tokens}, F+1 sets) incl. set-up | {res.seconds:.1f} s |")
    print(f"| inversion: one-off set-up (VAE encodes, CLIP init; approx.) | {setup_s:.2f} s |")
    print(f"| inversion: per step of its loop (median) | {1000 * step_s:.1f} ms |")
    print(f"| UNet forward + backward to the embedding alone | {1000 * unet_s:.1f} ms |")
    print(f"| everything else per step (sampling, Adam, logging) | {1000 * (step_s - unet_s):.1f} ms "
          f"({100 * (step_s - unet_s) / step_s:.1f}%) |")
    print(f"| one generation (1 image, 25 Euler steps, CFG, decode) | {gen[0]:.2f} s |")
    print(f"| one generation call for 3 images (batched) | {gen[1]:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
