"""Speed and memory levers: each one's flag, its effect on the toy model's CPU time and on the
full-size model's peak memory, in one table.

Two measurements per lever, each against its baseline (every lever off, fp32 weights, SDPA):

* **Toy CPU time** -- the real library code (``reenact.inversion.invert`` for inversion levers, a
  ``MotionTransferPipeline`` call for generation levers) on a toy model (``--model``, e.g. built by
  ``python -m reenact.toy.train --out /tmp/toy-levers/model --steps 5 ...``: the bundled model's
  architecture, 8 frames, 16x16 latents), batch 1, one thread. Inversion: the median time per
  optimisation step (step k ends at ``invert``'s callback k) over ``--steps`` steps after
  ``--warmup`` steps, per round. Generation: the median time of one pipeline call (``--gen-steps``
  Euler steps with CFG + VAE decode, 1 image) after one warm-up call. All levers run
  back-to-back in one process and the rounds interleave them (A B C .. A B C ..), so load from
  other processes falls on all alike; the medians pool all rounds. "first" is the wall time of
  the first step / call of round 1 (compile time shows there; inductor's cache is a fresh
  temporary folder, so it is a compile from scratch).
* **Full-size peak memory** -- ``benchmarks/memory.py``'s live-tensor accounting on the meta
  device with the configuration of ``stabilityai/stable-video-diffusion-img2vid``:
  14x576x1024, N = 5. Inversion: UNet weights + peak of one step (fwd + bwd to the embedding +
  Adam). Generation: resident weights (UNet + VAE + CLIP image encoder; with ``--cpu-offload`` only
  the running component) + the larger of the CFG step's and the VAE decode's activation peaks.
  ``--mixed-precision`` (autocast) cannot run on meta; ``--autocast-fit`` measures it on the CPU
  with the full-size UNet at reduced sizes and extrapolates linearly in F*h*w (memory.py's
  method 2; ~5 min, 7 GB of RAM).

Usage::

    python benchmarks/levers.py --model /tmp/toy-levers/model
    python benchmarks/levers.py --model /tmp/toy-levers/model --autocast-fit   # PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

import memory  # benchmarks/memory.py (this script's folder)
from memory import GB

FULL = (14, 576, 1024)  # generation size of SVD img2vid
OPTIM = (320, 576)  # a lower optimisation size for it (same aspect, ~0.31x the pixels)


@dataclass
class Lever:
    """One row: a flag, how to time it on the toy model, how to size it at full size."""

    name: str
    flag: str
    stage: str  # "inversion" | "generation"
    toy: dict | None = field(default_factory=dict)  # None: not measurable on the CPU
    full: dict | None = field(default_factory=dict)  # None: no memory effect to model
    note: str = ""


INVERSION = [
    Lever("baseline", "(none)", "inversion", {}, {}, "fp32 weights, SDPA, no checkpointing"),
    Lever("fp16/bf16 weights", "--dtype bf16", "inversion", {"dtype": "bf16"}, {"dtype": "bf16"},
          "CPU: bf16 (no fp16 there); on a GPU fp16 has the same bytes"),
    Lever("gradient checkpointing", "--gradient-checkpointing", "inversion",
          {"gradient_checkpointing": True}, {"ckpt": 2},
          "diffusers' + the temporal blocks (reenact.inversion.gradient_checkpointing)"),
    Lever("autocast", "--mixed-precision bf16", "inversion", {"mixed_precision": "bf16"},
          {"autocast": True}, "fp32 weights, UNet under torch.autocast(bf16)"),
    Lever("eager attention", "--attention eager", "inversion", {"attention": "eager"},
          {"attention": "eager"}, "diffusers' AttnProcessor: L x L score matrices"),
    Lever("torch.compile", "--compile", "inversion", {"compile": True}, None,
          "first step = compile time (empty inductor cache)"),
    Lever("lower optimisation size", "--optim-size 320x576", "inversion", {"optim_size": "half"},
          {"size": OPTIM}, "toy: 8x8 for its 16x16; full size: 14x320x576 for 576x1024"),
    Lever("early stop", "--early-stop-patience K", "inversion", None, None,
          "per-step cost unchanged; ends the run when the loss EMA stalls for K steps"),
    Lever("autocast + checkpointing", "--mixed-precision bf16 --gradient-checkpointing", "inversion",
          {"mixed_precision": "bf16", "gradient_checkpointing": True}, {"autocast": True, "ckpt": 2},
          "fp32 weights"),
    Lever("fp16 + checkpointing", "--dtype fp16 --gradient-checkpointing", "inversion",
          {"dtype": "bf16", "gradient_checkpointing": True}, {"dtype": "bf16", "ckpt": 2},
          "the 24 GB configuration (toy: bf16)"),
    Lever("fp16 + checkpointing + optim size", "--dtype fp16 --gradient-checkpointing "
          "--optim-size 320x576", "inversion",
          {"dtype": "bf16", "gradient_checkpointing": True, "optim_size": "half"},
          {"dtype": "bf16", "ckpt": 2, "size": OPTIM}, "(toy: bf16, 8x8)"),
]

GENERATION = [
    Lever("baseline", "(none)", "generation", {}, {},
          "fp32 weights, SDPA, --decode-chunk-size 8 (the CLI default), 1 image"),
    Lever("fp16/bf16 weights", "--dtype bf16", "generation", {"dtype": "bf16"}, {"dtype": "bf16"},
          "VAE follows --dtype (CPU: bf16)"),
    Lever("VAE precision", "--vae-dtype bf16", "generation", {"vae_dtype": "bf16"},
          {"vae_dtype": "bf16"}, "fp32 UNet, bf16 VAE (fp16 on a GPU: same bytes)"),
    Lever("decode chunking", "--decode-chunk-size 2", "generation", {"decode_chunk": 2},
          {"decode_chunk": 2}, ""),
    Lever("decode all frames at once", "--decode-chunk-size 14", "generation",
          {"decode_chunk": 14}, {"decode_chunk": 14}, "the SVD pipeline's own default"),
    Lever("model CPU offload", "--cpu-offload", "generation", None, {"offload": True},
          "CUDA only: not timed here"),
    Lever("eager attention", "--attention eager", "generation", {"attention": "eager"},
          {"attention": "eager"}, ""),
    Lever("torch.compile", "--compile", "generation", {"compile": True}, None,
          "first call = compile time (empty inductor cache)"),
    Lever("batched previews", "invert --preview IMG x4", "generation", {"images": 4}, None,
          "4 images in one pipeline call; time per image (4 separate calls: the baseline)"),
    Lever("fp16, offload, chunk 2", "--dtype fp16 --cpu-offload --decode-chunk-size 2",
          "generation", None, {"dtype": "bf16", "offload": True, "decode_chunk": 2}, ""),
]


# --- toy timing ------------------------------------------------------------------------------

@contextlib.contextmanager
def generation_levers(pipe, spec: dict):
    """Apply a generation lever to ``pipe`` for the duration (as ``reenact.cli`` applies it)."""
    from reenact.routing import set_attention

    previous = set_attention(pipe.unet, spec.get("attention", "sdpa"))
    vae_dtype = pipe.vae.dtype
    if "vae_dtype" in spec:
        pipe.vae.to(dtype=memory.DTYPES[spec["vae_dtype"]])
    if spec.get("compile"):
        pipe.unet.compile()
    try:
        yield
    finally:
        pipe.unet._compiled_call_impl = None
        pipe.vae.to(dtype=vae_dtype)
        pipe.unet.set_attn_processor(previous)


def time_inversion(pipe, frames, spec: dict, steps: int) -> list[float]:
    """Seconds per step of one ``invert`` run (first entry: its first step, setup included)."""
    from reenact.inversion import InversionConfig, invert

    over = {k: v for k, v in spec.items() if k != "dtype"}
    if over.get("optim_size") == "half":
        over["optim_size"] = tuple(s // 2 for s in frames.shape[-2:])
    config = InversionConfig(steps=steps, cond_bank_size=2, checkpoint_every=0, seed=0, **over)
    marks = [time.perf_counter()]
    invert(pipe, frames, config, progress=False, callback=lambda s, loss: marks.append(time.perf_counter()))
    return [b - a for a, b in zip(marks, marks[1:])]


def time_generation(pipe, image, emb, spec: dict, calls: int, gen_steps: int) -> list[float]:
    """Seconds per image of ``calls`` pipeline calls (entry 0: the first call)."""
    images = image.expand(spec.get("images", 1), -1, -1, -1)  # (n, 3, H, W) in [0, 1]
    out = []
    with generation_levers(pipe, spec):
        for _ in range(calls):
            t0 = time.perf_counter()
            pipe(images, motion_embedding=emb, num_inference_steps=gen_steps,
                 height=image.shape[-2], width=image.shape[-1],
                 decode_chunk_size=spec.get("decode_chunk", 8), output_type="pt",
                 generator=torch.Generator().manual_seed(0))
            out.append((time.perf_counter() - t0) / len(images))
    return out


def toy_times(args) -> dict:
    from reenact import models
    from reenact.embedding import MotionEmbedding

    torch.manual_seed(0)
    pipes = {d: models.load_pipeline(args.model, "cpu", memory.DTYPES[d]) for d in ("fp32", "bf16")}
    num_frames = pipes["fp32"].unet.config.num_frames
    side = pipes["fp32"].unet.config.sample_size * pipes["fp32"].vae_scale_factor
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(num_frames, 3, side, side, generator=g) * 2 - 1
    image = torch.rand(1, 3, side, side, generator=g)  # a [0, 1] image tensor
    dim = pipes["fp32"].unet.config.cross_attention_dim
    emb = MotionEmbedding(torch.randn(num_frames + 1, 5, dim, generator=g) * 0.5)
    samples: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for lever in INVERSION + GENERATION:
            if lever.toy is None:
                continue
            key = (lever.stage, lever.name)
            pipe = pipes[lever.toy.get("dtype", "fp32")]
            t0 = time.perf_counter()
            if lever.stage == "inversion":
                times = time_inversion(pipe, frames, lever.toy, args.warmup + args.steps)
                kept = times[args.warmup:]
            else:
                times = time_generation(pipe, image, emb, lever.toy, 1 + args.calls, args.gen_steps)
                kept = times[1:]
            if r == 0:
                first[key] = times[0]
            samples.setdefault(key, []).extend(kept)
            print(f"# round {r} {lever.stage} {lever.name}: {1000 * statistics.median(kept):.0f} ms "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    # batched previews: the baseline is one call per image, i.e. the generation baseline itself
    return {k: (statistics.median(v), first[k], len(v)) for k, v in samples.items()}


# --- full-size memory --------------------------------------------------------------------------

def inversion_peak(unets, spec: dict, autocast_fit: dict | None) -> float | None:
    """Weights + peak of one inversion step at full size, bytes (None: not modelled)."""
    frames, h, w = FULL
    if "size" in spec:
        h, w = spec["size"]
    if spec.get("autocast"):
        if not autocast_fit:
            return None
        a, b = autocast_fit[spec.get("ckpt", 0)]
        return memory.param_bytes(unets["fp32"]) + a + b * frames * (h // 8) * (w // 8)
    unet = unets[spec.get("dtype", "fp32")]
    r = memory.inversion_step(unet, frames, h // 8, w // 8, checkpointing=spec.get("ckpt", 0),
                              attention=spec.get("attention", "sdpa"))
    return memory.param_bytes(unet) + r["peak"]


def generation_peak(unets, vaes, clip_params: int, spec: dict) -> float:
    """Resident weights + the larger of CFG-step and decode activation peaks, bytes."""
    frames, h, w = FULL
    dtype = spec.get("dtype", "fp32")
    vae_dtype = spec.get("vae_dtype", dtype)
    unet, vae = unets[dtype], vaes[vae_dtype]
    step = memory.generation_step(unet, frames, h // 8, w // 8, routing=True,
                                  attention=spec.get("attention", "sdpa"))["peak"]
    decode = memory.vae_decode(vae, frames, h // 8, w // 8, spec.get("decode_chunk", 8))["peak"]
    w_unet, w_vae = memory.param_bytes(unet), memory.param_bytes(vae)
    w_clip = clip_params * memory.DTYPES[dtype].itemsize
    if spec.get("offload"):  # only the running component is on the GPU
        return max(w_unet + step, w_vae + decode)
    return w_unet + w_vae + w_clip + max(step, decode)


def autocast_fit(args) -> dict:
    """Fit ``peak = a + b * F*h*w`` of fp32 weights + bf16 autocast on CPU runs (a subprocess)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.abspath(__file__), "_autocast_worker", *args.fit_sizes]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True).stdout
    points = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    fit = {}
    print("\n### Autocast on the CPU (full-size UNet, fp32 weights, torch.autocast bf16, 1 thread)\n")
    print("| grad. checkpointing | latent FxhxW | F*h*w | tracker peak GB | bf16 weights, no autocast, GB |")
    print("|---|---|---|---|---|")
    for p in points:
        print(f"| {memory.CKPT_NAMES[p['ckpt']]} | {p['shape']} | {p['voxels']} | {p['peak'] / GB:.3f} "
              f"| {p['bf16_peak'] / GB:.3f} |")
    print("\n| grad. checkpointing | a (MB) | b (KB per latent voxel) | max rel. residual "
          "| extrapolated to 14x576x1024, activations GB |")
    print("|---|---|---|---|---|")
    for ckpt in sorted({p["ckpt"] for p in points}):
        pts = [p for p in points if p["ckpt"] == ckpt]
        a, b, res = memory.fit_line([p["voxels"] for p in pts], [p["peak"] for p in pts])
        fit[ckpt] = (a, b)
        f, h, w = FULL
        print(f"| {memory.CKPT_NAMES[ckpt]} | {a / 1e6:.0f} | {b / 1e3:.1f} | {100 * res:.1f}% "
              f"| {(a + b * f * (h // 8) * (w // 8)) / GB:.2f} |")
    return fit


def autocast_worker(sizes) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    unets = {"fp32": memory.build_unet("cpu", torch.float32)}
    unets["bf16"] = memory.build_unet("cpu", torch.bfloat16)  # same random weights, rounded
    for ckpt in (0, 2):
        for s in sizes:
            f, h, w = (int(v) for v in s.split("x"))
            r = memory.inversion_step(unets["fp32"], f, h, w, checkpointing=ckpt, autocast=torch.bfloat16)
            ref = memory.inversion_step(unets["bf16"], f, h, w, checkpointing=ckpt)
            print(json.dumps({"ckpt": ckpt, "shape": s, "voxels": f * h * w, "peak": r["peak"],
                              "bf16_peak": ref["peak"], "seconds": r["seconds"]}), flush=True)


# --- the table -------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    wk = sub.add_parser("_autocast_worker")
    wk.add_argument("sizes", nargs="+")
    p.add_argument("--model", default="toy", help="toy model for the CPU timings")
    p.add_argument("--steps", type=int, default=10, help="timed inversion steps per lever and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed inversion steps first")
    p.add_argument("--calls", type=int, default=3, help="timed generation calls per lever and round")
    p.add_argument("--gen-steps", type=int, default=10, help="Euler steps of a generation call")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all levers")
    p.add_argument("--no-toy", action="store_true", help="skip the CPU timings")
    p.add_argument("--autocast-fit", action="store_true",
                   help="measure --mixed-precision's full-size memory on the CPU (~5 min, 7 GB RAM)")
    p.add_argument("--fit-sizes", nargs="+", default=["4x8x16", "4x16x16", "8x16x16"],
                   help="latent FxhxW of the autocast CPU runs")
    args = p.parse_args(argv)
    if args.cmd == "_autocast_worker":
        autocast_worker(args.sizes)
        return 0
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    # compile from scratch: an inductor cache left by an earlier run would hide the compile time
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache = tempfile.mkdtemp(prefix="levers-inductor-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)

    fit = autocast_fit(args) if args.autocast_fit else None
    toy = {} if args.no_toy else toy_times(args)

    unets = {d: memory.build_unet("meta", memory.DTYPES[d]) for d in ("fp32", "bf16")}
    vaes = {d: memory.build_vae("meta", memory.DTYPES[d]) for d in ("fp32", "bf16")}
    clip_params = memory.clip_image_encoder_params()
    full = {}
    for lever in INVERSION + GENERATION:
        if lever.full is None:
            continue
        s = time.perf_counter()
        if lever.stage == "inversion":
            full[(lever.stage, lever.name)] = inversion_peak(unets, lever.full, fit)
        else:
            full[(lever.stage, lever.name)] = generation_peak(unets, vaes, clip_params, lever.full)
        print(f"# memory {lever.stage} {lever.name}: {time.perf_counter() - s:.0f} s", file=sys.stderr)

    print(f"\ntorch {torch.__version__}; toy: {args.model}, 1 thread, medians of "
          f"{args.rounds} interleaved rounds x {args.steps} steps (inversion, after {args.warmup} "
          f"warm-up steps) / x {args.calls} calls of {args.gen_steps} Euler steps (generation); "
          f"full size: 14x576x1024, N = 5, meta live-tensor accounting\n")
    print("| stage | lever | flag | toy CPU ms (median) | vs baseline | toy first step / call, s "
          "| full-size peak GB | vs baseline | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lever in INVERSION + GENERATION:
        key = (lever.stage, lever.name)
        base_key = (lever.stage, "baseline")
        unit = "per step" if lever.stage == "inversion" else "per image"
        if key in toy:
            med, fst, _ = toy[key]
            ref = toy[base_key][0]
            t_cells = [f"{1000 * med:.0f} {unit}", f"{med / ref:.2f}x", f"{fst:.1f}"]
        else:
            t_cells = ["n/a", "", ""]
        peak = full.get(key)
        if peak is not None:
            ref = full[base_key]
            m_cells = [f"{peak / GB:.2f}", f"{peak / ref:.2f}x"]
        else:
            m_cells = ["n/a" if lever.full is not None else "-", ""]
        print(f"| {lever.stage} | {lever.name} | `{lever.flag}` | " + " | ".join(t_cells + m_cells)
              + f" | {lever.note} |")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
