"""Seconds, peak memory and model FLOP utilisation of the full-size SVD UNet on one GPU.

What docs/PERFORMANCE.md otherwise extrapolates from CPU runs, measured on a real card: SVD's
UNet (``UNetSpatioTemporalConditionModel`` with the img2vid configuration, 1.52 B parameters)
built from its config with **random weights** directly on the device (timings and memory do not
depend on the weights), our motion routing installed (N = 5 tokens per set), at
14x576x1024 and 25x576x1024:

* **inversion step**: batch 1, weights fp16 and frozen, gradient checkpointing as
  ``invert --gradient-checkpointing`` runs it (diffusers' plus the temporal transformer blocks),
  forward + backward to the embedding only + an Adam step on the float32 embedding, with a
  ``GradScaler`` as the library uses for fp16 weights;
* **CFG generation step**: the UNet at batch 2 (negative + positive branch), no grad -- one of
  the ``num_inference_steps`` denoising steps of ``animate``; for reference also stock SVD's
  one-token CLIP context through diffusers' own processors;
* with the **lean** hand-over (``install_motion_routing(lean=True)``, the default: the embedding
  stays in the routing state) and the **old** one (``lean=False``: diffusers broadcasts it), when
  the installed reenact has both.

Per configuration: ``--warmup`` untimed steps, then ``--steps`` timed ones between
``torch.cuda.synchronize()`` calls; peak = ``torch.cuda.max_memory_allocated()`` over those steps
(weights included; the activations column subtracts the weights). FLOPs are counted once per
shape with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (as
``benchmarks/flops.py`` does: matmuls, convolutions and attention, 2 FLOPs per multiply-add):
*model* FLOPs exclude the forward recomputed by checkpointing (the MFU convention), *hardware*
FLOPs include it. MFU = model FLOPs / seconds / ``--peak-tflops`` (989 TFLOP/s: the dense
fp16/bf16 tensor-core peak of an H100/H200 SXM without sparsity).

Needs only torch and diffusers (no transformers, no PyAV): it imports ``reenact.routing`` and
``reenact.checkpointing`` (the library's own ``--gradient-checkpointing``), neither of which pulls
in diffusers' SVD pipeline (which needs transformers). A time budget
(``--budget-s``) skips the remaining configurations rather than overrun; the JSON is rewritten
after every configuration, so a cut-off run keeps what it measured.

Usage::

    python benchmarks/gpu_unet.py --out gpu_unet.json              # on the GPU, < 3 min on an H200
    python benchmarks/gpu_unet.py --tiny --device cpu --out /tmp/t.json   # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout

import torch  # noqa: E402
from diffusers import UNetSpatioTemporalConditionModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from diffusers.utils import logging as diffusers_logging  # noqa: E402

from reenact.checkpointing import gradient_checkpointing  # noqa: E402
from reenact.routing import flatten_embedding, install_motion_routing  # noqa: E402

diffusers_logging.set_verbosity_error()  # its "cast with to()" notice, once per build

#: UNetSpatioTemporalConditionModel's config of stabilityai/stable-video-diffusion-img2vid(-xt)
SVD_UNET = dict(
    in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=1024, num_attention_heads=(5, 10, 20, 20), layers_per_block=2,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=768,
)
#: a tiny UNet of the same classes (tests/tiny_model.py's shape): only to smoke-test this script
TINY_UNET = dict(
    in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
    up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32,
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HAS_LEAN = "lean" in inspect.signature(install_motion_routing).parameters


# --- the frozen model ------------------------------------------------------------------------

def build_unet(config: dict, frames: int, device: str, dtype: torch.dtype):
    """The UNet built on ``device`` (meta: shapes only), frozen, diffusers' SDPA processors."""
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(**config, num_frames=frames)
    # AlphaBlender.mix_factor comes from the legacy torch.Tensor() constructor, which ignores the
    # device context: this moves it (and casts everything)
    unet = unet.to(device=device, dtype=dtype).requires_grad_(False).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def routing(unet, tokens: int, frames: int, mode: str):
    """``mode``: ``lean`` | ``old`` (the routing's hand-over) | ``stock`` (none: SVD's CLIP token)."""
    if mode == "stock":
        return contextlib.nullcontext()
    kwargs = {"lean": mode == "lean"} if HAS_LEAN else {}
    return install_motion_routing(unet, tokens=tokens, num_frames=frames, **kwargs)


# --- workloads -------------------------------------------------------------------------------

def make_inputs(batch: int, frames: int, h: int, w: int, device, dtype, generator):
    sample = torch.randn(batch, frames, 8, h, w, device=device, dtype=dtype, generator=generator)
    timestep = torch.full((batch,), 0.5, device=device, dtype=dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * batch, device=device, dtype=dtype)
    return sample, timestep, ids


def inversion_steps(unet, frames, h, w, tokens, mode, ckpt, n: int, device, dtype) -> None:
    """``n`` optimisation steps of the embedding (batch 1), as ``reenact.inversion`` runs them."""
    g = torch.Generator(device=device).manual_seed(0)
    dim = unet.config.cross_attention_dim
    param = torch.nn.Parameter(0.1 * torch.randn(frames + 1, tokens, dim, device=device, generator=g))
    opt = torch.optim.Adam([param], lr=1e-2)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)
    sample, t, ids = make_inputs(1, frames, h, w, device, dtype, g)
    target = torch.randn(1, frames, 4, h, w, device=device, generator=g)
    with ckpt(unet), routing(unet, tokens, frames, mode):
        for _ in range(n):
            ehs = flatten_embedding(param).to(dtype)
            out = unet(sample, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
            loss = (out.float() - target).square().mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            del out, loss


@torch.no_grad()
def generation_steps(unet, frames, h, w, tokens, mode, n: int, device, dtype) -> None:
    """``n`` CFG denoising steps: the UNet at batch 2, no grad."""
    g = torch.Generator(device=device).manual_seed(0)
    dim = unet.config.cross_attention_dim
    ctx = 1 if mode == "stock" else (frames + 1) * tokens
    ehs = torch.randn(2, ctx, dim, device=device, dtype=dtype, generator=g)
    sample, t, ids = make_inputs(2, frames, h, w, device, dtype, g)
    with routing(unet, tokens, frames, mode):
        for _ in range(n):
            out = unet(sample, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
            del out


# --- FLOPs (meta device) ---------------------------------------------------------------------

def count_flops(config: dict, frames: int, h: int, w: int, tokens: int, ckpt) -> dict:
    """FLOPs of one inversion step (model: no recompute; hardware: with ``ckpt``) and one CFG
    generation step (routing and stock), counted on meta in fp32 (FLOPs do not depend on it)."""
    unet = build_unet(config, frames, "meta", torch.float32)
    dim = unet.config.cross_attention_dim
    res = {}

    def inv(with_ckpt: bool) -> int:
        sample = torch.empty(1, frames, 8, h, w, device="meta")
        t, ids = torch.empty(1, device="meta"), torch.empty(1, 3, device="meta")
        emb = torch.empty(1, (frames + 1) * tokens, dim, device="meta", requires_grad=True)
        with (ckpt(unet) if with_ckpt else contextlib.nullcontext()), routing(unet, tokens, frames, "lean"):
            with FlopCounterMode(display=False) as mode:
                out = unet(sample, t, encoder_hidden_states=emb, added_time_ids=ids, return_dict=False)[0]
                out.float().square().mean().backward()
        return mode.get_total_flops()

    res["inversion_model"] = inv(False)
    res["inversion_hardware"] = inv(True)
    for m in ("lean", "stock"):
        ctx = 1 if m == "stock" else (frames + 1) * tokens
        sample = torch.empty(2, frames, 8, h, w, device="meta")
        t, ids = torch.empty(2, device="meta"), torch.empty(2, 3, device="meta")
        ehs = torch.empty(2, ctx, dim, device="meta")
        with torch.no_grad(), routing(unet, tokens, frames, m):
            with FlopCounterMode(display=False) as mode:
                unet(sample, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)
        res[f"generation_{m}"] = mode.get_total_flops()
    return res


# --- driver ----------------------------------------------------------------------------------

def parse_shape(s: str) -> tuple[int, int, int]:
    f, h, w = (int(x) for x in s.lower().split("x"))
    if h % 8 or w % 8:
        raise argparse.ArgumentTypeError(f"{s}: height and width must be multiples of 8")
    return f, h, w


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: str, warmup: int, steps: int) -> dict:
    """Warm-up, then time ``steps`` calls; peak memory over all of them (CUDA only)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        if warmup:
            fn(warmup)
        _sync(device)
        t0 = time.perf_counter()
        fn(steps)
        _sync(device)
        seconds = (time.perf_counter() - t0) / steps
    except torch.cuda.OutOfMemoryError as e:
        return {"status": "OOM", "error": str(e).splitlines()[0]}
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {"status": "ok", "seconds_per_step": seconds, "peak_bytes": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results (rewritten as they come)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="weights (default fp16; fp32 on cpu)")
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                   help="FxHxW in pixels (default 14x576x1024 25x576x1024; --tiny: 4x32x32 6x32x48)")
    p.add_argument("--tokens", type=int, default=5, help="N tokens per set")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the card's dense fp16/bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--budget-s", type=float, default=165.0,
                   help="skip configurations that would start after this many seconds")
    p.add_argument("--tiny", action="store_true", help="a tiny UNet of the same classes (smoke test)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    device = args.device
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # a smoke test on a shared CPU: more threads only spin
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; pass --device cpu (with --tiny) for a smoke test")
    dtype = DTYPES[args.dtype or ("fp32" if torch.device(device).type == "cpu" else "fp16")]
    config = TINY_UNET if args.tiny else SVD_UNET
    shapes = args.shapes or ([(4, 32, 32), (6, 32, 48)] if args.tiny else [(14, 576, 1024), (25, 576, 1024)])
    ckpt, ckpt_source = gradient_checkpointing, "reenact.checkpointing.gradient_checkpointing"
    modes = ["lean", "old"] if HAS_LEAN else ["old"]
    out_path = Path(args.out)
    env = {
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "unet": "tiny" if args.tiny else "SVD img2vid (random weights)",
        "tokens": args.tokens,
        "warmup": args.warmup,
        "steps": args.steps,
        "peak_tflops": args.peak_tflops,
        "checkpointing": ckpt_source,
        "routing_hand_overs": modes,
    }
    result = {"environment": env, "flops": {}, "rows": [], "skipped": []}

    def save() -> None:
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out_path)

    print(f"# {env}", file=sys.stderr)
    for frames, hp, wp in shapes:  # FLOP counts first: CPU only, a few seconds each
        s = time.perf_counter()
        result["flops"][f"{frames}x{hp}x{wp}"] = count_flops(config, frames, hp // 8, wp // 8, args.tokens, ckpt)
        print(f"# FLOPs {frames}x{hp}x{wp} counted in {time.perf_counter() - s:.1f} s", file=sys.stderr)
    save()

    s = time.perf_counter()
    unets = {}
    for frames, _, _ in shapes:
        if frames not in unets:  # num_frames only sets a default: one UNet serves every F
            unets[frames] = unets[next(iter(unets))] if unets else build_unet(config, frames, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in next(iter(unets.values())).parameters())
    env["weights_bytes"] = weights
    env["build_seconds"] = time.perf_counter() - s
    print(f"# UNet built on {device} in {env['build_seconds']:.1f} s ({weights / 1e9:.2f} GB of weights)",
          file=sys.stderr)

    plan = []  # most important first: the budget may cut the tail
    for mode in modes:
        for frames, hp, wp in shapes:
            plan.append(("inversion", mode, frames, hp, wp))
        for frames, hp, wp in shapes:
            plan.append(("generation", mode, frames, hp, wp))
    plan += [("generation", "stock", f, hp, wp) for f, hp, wp in shapes]

    for workload, mode, frames, hp, wp in plan:
        name = f"{workload} {mode} {frames}x{hp}x{wp}"
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(name)
            print(f"# skipped (budget): {name}", file=sys.stderr)
            continue
        unet, h, w = unets[frames], hp // 8, wp // 8
        if workload == "inversion":
            def fn(n):
                inversion_steps(unet, frames, h, w, args.tokens, mode, ckpt, n, device, dtype)
        else:
            def fn(n):
                generation_steps(unet, frames, h, w, args.tokens, mode, n, device, dtype)
        s = time.perf_counter()
        row = {"workload": workload, "routing": mode, "shape": f"{frames}x{hp}x{wp}",
               **measure(fn, device, args.warmup, args.steps)}
        flops = result["flops"][row["shape"]]
        if row["status"] == "ok":
            if workload == "inversion":
                model, hardware = flops["inversion_model"], flops["inversion_hardware"]
            else:
                model = hardware = flops["generation_stock" if mode == "stock" else "generation_lean"]
            sec = row["seconds_per_step"]
            row.update(model_tflop=model / 1e12, hardware_tflop=hardware / 1e12,
                       mfu=model / sec / (args.peak_tflops * 1e12),
                       achieved_tflops=hardware / sec / 1e12)
        row["wall_seconds"] = time.perf_counter() - s
        result["rows"].append(row)
        save()
        print(f"# {name}: {row}", file=sys.stderr, flush=True)

    env["total_seconds"] = time.perf_counter() - t_start
    save()
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    env = result["environment"]
    weights = env["weights_bytes"]
    print(f"{env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, weights {env['dtype']} "
          f"({weights / 1e9:.2f} GB), N = {env['tokens']}, {env['warmup']} warm-up + {env['steps']} timed "
          f"steps per row; checkpointing: {env['checkpointing']}; total {env['total_seconds']:.0f} s\n")
    print("| workload | routing hand-over | shape FxHxW | s / step | peak GB (max_memory_allocated) "
          "| activations GB (peak - weights) | model TFLOP / step | MFU | achieved TFLOP/s (incl. recompute) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        what = (f"inversion (B=1, {env['dtype']} + checkpointing, grad to emb)" if r["workload"] == "inversion"
                else "CFG generation (UNet B=2, no grad)")
        if r["status"] != "ok":
            print(f"| {what} | {r['routing']} | {r['shape']} | {r['status']} | | | | | |")
            continue
        peak = r["peak_bytes"]
        peak_s = "n/a" if peak is None else f"{peak / 1e9:.2f}"
        act_s = "n/a" if peak is None else f"{(peak - weights) / 1e9:.2f}"
        print(f"| {what} | {r['routing']} | {r['shape']} | {r['seconds_per_step']:.3f} | {peak_s} | {act_s} "
              f"| {r['model_tflop']:.1f} | {100 * r['mfu']:.1f}% | {r['achieved_tflops']:.0f} |")
    if result["skipped"]:
        print(f"\nskipped (time budget): {', '.join(result['skipped'])}")


if __name__ == "__main__":
    raise SystemExit(main())
