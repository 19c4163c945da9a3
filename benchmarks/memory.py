"""Peak memory of the full-size SVD UNet: one inversion step, one CFG generation step, VAE decoding.

No GPU is needed. Two independent methods, which check each other:

1. **Live-tensor accounting at full size on the meta device** (the tables). The full-size model
   (configuration of ``stabilityai/stable-video-diffusion-img2vid``) is built on ``meta`` (shapes,
   no data) and the workload runs under :class:`LiveBytes`, a ``TorchDispatchMode`` that adds the
   ``nbytes`` of every new tensor storage an op returns and subtracts it when the storage is freed
   (a ``weakref.finalize`` on the storage). Its maximum is the peak of live activation /
   temporary bytes -- what a GPU caching allocator must hold at least (``max_memory_allocated``
   minus the weights). Attention runs through ``aten._scaled_dot_product_flash_attention_for_cpu``
   (what CPU tensors use, a flash kernel saving ``q, k, v, out, logsumexp`` for the backward, like
   CUDA's flash / memory-efficient kernels), so no ``L x L`` attention matrix is ever counted.
   Peak = weights (exact parameter bytes) + that peak.
2. **Real CPU runs at reduced sizes** (``--validate``): the same full-size model with random
   weights on the CPU, one subprocess per dtype, each workload timed and measured twice: with the
   same :class:`LiveBytes` tracker and as the growth of the process's peak RSS (``VmHWM`` in
   ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after the weights are loaded;
   glibc's mmap threshold is pinned at 64 KiB so freed blocks go back to the OS). A straight-line
   fit ``peak = a + b * frames * latent_pixels`` over those points is extrapolated to the full
   sizes and compared with method 1, and method 1 at the reduced sizes is compared with the CPU
   tracker point by point.

Gradient checkpointing is measured three ways: none; ``unet.enable_gradient_checkpointing()``
(diffusers checkpoints SVD's resnets and *spatial* transformer blocks only); and
``reenact.inversion.gradient_checkpointing`` -- what ``invert --gradient-checkpointing`` runs:
diffusers' plus ``reenact.inversion.checkpoint_temporal_blocks`` (same gradients) -- at 14x576x1024
the un-checkpointed temporal blocks hold most of what diffusers' checkpointing leaves.

What is *not* counted by method 1: scratch buffers that kernels allocate and free inside one op
(cuDNN / cuBLAS / oneDNN workspaces), the CUDA context (a few hundred MB) and the caching
allocator's fragmentation -- budget a margin for them on a GPU.

Usage::

    python benchmarks/memory.py                 # full-size tables (meta accounting), ~1 min
    python benchmarks/memory.py --hand-over-only   # old vs lean routing hand-over only
    python benchmarks/memory.py --validate      # + CPU measurements at reduced sizes and the fit (bf16, ~5 min)
    python benchmarks/memory.py --validate --validate-dtypes bf16 fp32   # the PERFORMANCE.md run, ~11 min
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import time
import weakref

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from reenact.inversion import (
    InversionConfig,
    InversionState,
    ReferenceLatents,
    gradient_checkpointing,
    step,
)
from reenact.routing import install_motion_routing, set_attention

GB = 1e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL_SHAPES = [(14, 576, 1024), (14, 320, 576), (25, 576, 1024)]


# --- accounting ------------------------------------------------------------------------------

class LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by tensor storages created while this mode is active.

    Storages that already exist (the weights) are never counted, even when an op returns a view
    of one. Freed storages are subtracted through a finalizer (PyTorch preserves a storage's
    Python object as long as the C++ storage lives, so the finalizer fires when it is freed).
    """

    def __init__(self, ignore: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.sizes: dict[int, int] = {}
        for t in ignore:
            self.sizes[t.untyped_storage()._cdata] = 0
        self.live = 0
        self.peak = 0
        self.sdpa_ops: set[str] = set()

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "attention" in func.__name__:
            self.sdpa_ops.add(func.__name__)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.sizes:
                    n = st.nbytes()
                    self.sizes[key] = n
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key)
        return out


_sdpa = F.scaled_dot_product_attention


def _flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA through the CPU flash kernel: what CPU tensors use, and on meta a stand-in for CUDA flash."""
    if attn_mask is not None or dropout_p or enable_gqa:
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def flash_attention():
    """Route ``F.scaled_dot_product_attention`` (diffusers' and reenact's) to the flash kernel.

    On meta, plain SDPA decomposes into the math path (an ``L x L`` matrix); CPU tensors already
    take the flash kernel, so this changes nothing there.
    """
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _sdpa


# --- models ----------------------------------------------------------------------------------

def _init_random(module: torch.nn.Module) -> None:
    """Fill weights that ``to_empty`` left uninitialised: fan-in scaled normals, norms 1, biases 0.

    Keeps activations O(1) (no denormals, no inf), so CPU timings are not distorted.
    """
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                tmp = torch.empty(p.shape, dtype=torch.float32)
                tmp.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
                p.copy_(tmp)
                del tmp
            elif name.endswith("weight") and "norm" in name:
                p.fill_(1.0)
            elif name.endswith("mix_factor"):
                p.fill_(0.5)
            else:
                p.zero_()


def _materialise(module: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    module.to("meta")  # a few tensors come from the legacy torch.Tensor() constructor (on cpu)
    module = module.to(dtype=dtype)
    if device != "meta":
        module = module.to_empty(device=device)
        _init_random(module)
    return module.requires_grad_(False).eval()


def build_unet(device: str, dtype: torch.dtype, num_frames: int = 14) -> UNetSpatioTemporalConditionModel:
    """Full-size SVD UNet (img2vid config), random weights on cpu / shapes only on meta."""
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(
            in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=1024, num_attention_heads=(5, 10, 20, 20), layers_per_block=2,
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=768,
            num_frames=num_frames,
        )
    unet = _materialise(unet, device, dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def build_vae(device: str, dtype: torch.dtype) -> AutoencoderKLTemporalDecoder:
    """SVD's VAE (``AutoencoderKLTemporalDecoder`` with the img2vid config)."""
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        )
    return _materialise(vae, device, dtype)


def clip_image_encoder_params() -> int:
    """Parameters of SVD's image encoder (OpenCLIP ViT-H/14 vision tower + projection)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    return sum(p.numel() for p in model.parameters())


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --- workloads -------------------------------------------------------------------------------

CKPT_NAMES = {0: "no", 1: "diffusers", 2: "diffusers + temporal blocks (library)"}


@contextlib.contextmanager
def checkpointing_mode(unet, mode: int):
    """0: none; 1: ``unet.enable_gradient_checkpointing()`` alone; 2: the library's
    ``reenact.inversion.gradient_checkpointing`` (diffusers' + the temporal blocks)."""
    if mode == 2:
        with gradient_checkpointing(unet):
            yield
    elif mode == 1:
        unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            unet.disable_gradient_checkpointing()
    else:
        yield


@contextlib.contextmanager
def attention_kind(unet, kind: str):
    """``reenact.routing.set_attention`` for the duration (sdpa: diffusers' AttnProcessor2_0)."""
    previous = set_attention(unet, kind)
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


def inversion_step(unet, frames: int, h: int, w: int, checkpointing: int, tokens: int = 5,
                   attention: str = "sdpa", autocast: torch.dtype | None = None,
                   lean: bool = True) -> dict:
    """One optimisation step as ``reenact.inversion.invert`` runs it (batch 1, routing installed).

    The embedding is a float32 parameter ``(F+1, N, d)`` with Adam; the UNet is frozen and runs in
    its own dtype (or under ``torch.autocast(autocast)``: CPU tensors only, meta has no autocast);
    backward reaches the embedding only. ``checkpointing``: see :func:`checkpointing_mode`.
    ``attention``: ``reenact.routing.set_attention``'s kind. ``lean``: the routing's hand-over
    (``False``: the old one, where diffusers broadcasts the embedding).
    """
    device = unet.device
    tracker = LiveBytes(ignore=tuple(unet.parameters()))
    t0 = time.perf_counter()
    with attention_kind(unet, attention), checkpointing_mode(unet, checkpointing), \
            install_motion_routing(unet, tokens=tokens, num_frames=frames, lean=lean):
        with flash_attention(), tracker:
            # the library's own step (reenact.inversion.step) on random latents of the right shape
            amp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(autocast, "no")
            config = InversionConfig(tokens=tokens, mixed_precision=amp)
            init = torch.randn(frames + 1, tokens, 1024, device=device) * 0.1
            state = InversionState.create(init, config, frames, device, half_precision=False)
            latents = ReferenceLatents(x0=torch.randn(1, frames, 4, h, w, device=device),
                                       cond=torch.randn(1, 1, 4, h, w, device=device),
                                       cond_sigma=torch.full((1, 1), 0.02, device=device))
            loss = step(unet, state, latents, config)
            if device.type != "meta":
                assert torch.isfinite(state.param.grad).all()
            del loss
    return {"peak": tracker.peak, "seconds": time.perf_counter() - t0, "sdpa": sorted(tracker.sdpa_ops)}


def generation_step(unet, frames: int, h: int, w: int, routing: bool, tokens: int = 5,
                    attention: str = "sdpa", lean: bool = True) -> dict:
    """One CFG denoising step: the UNet at batch 2, no grad (routing, or stock with ``tokens``)."""
    device = unet.device
    dtype = unet.dtype
    previous = set_attention(unet, attention)
    handle = (install_motion_routing(unet, tokens=tokens, num_frames=frames, lean=lean)
              if routing else None)
    tracker = LiveBytes(ignore=tuple(unet.parameters()))
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), flash_attention(), tracker:
            ctx = (frames + 1) * tokens if routing else tokens
            sample = torch.randn(2, frames, 8, h, w, device=device, dtype=dtype)
            ehs = torch.randn(2, ctx, 1024, device=device, dtype=dtype)
            ids = torch.tensor([[6.0, 127.0, 0.02]] * 2, device=device, dtype=dtype)
            t = torch.full((2,), 0.5, device=device, dtype=dtype)
            out = unet(sample, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]
            del out
    finally:
        if handle is not None:
            handle.remove()
        unet.set_attn_processor(previous)
    return {"peak": tracker.peak, "seconds": time.perf_counter() - t0}


def vae_decode(vae, frames: int, h: int, w: int, chunk: int) -> dict:
    """The pipeline's ``decode_latents``: ``chunk`` frames per ``vae.decode`` call, no grad."""
    device, dtype = vae.device, vae.dtype
    tracker = LiveBytes(ignore=tuple(vae.parameters()))
    t0 = time.perf_counter()
    with torch.no_grad(), flash_attention(), tracker:
        latents = torch.randn(frames, 4, h, w, device=device, dtype=dtype)
        outs = []
        for i in range(0, frames, chunk):
            z = latents[i: i + chunk]
            outs.append(vae.decode(z, num_frames=z.shape[0]).sample)
        video = torch.cat(outs).float()
        del outs, video
    return {"peak": tracker.peak, "seconds": time.perf_counter() - t0}


# --- CPU measurement worker (one subprocess per dtype) ----------------------------------------

def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_rss(fn) -> tuple[dict, int]:
    gc.collect()
    base = _proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    result = fn()
    peak = _proc_kb("VmHWM")
    return result, (peak - base) * 1024


def worker(args) -> None:
    """Run the workloads of ``args.points`` on the CPU; print one JSON line per measurement."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    rss0 = _proc_kb("VmRSS")
    unet = build_unet("cpu", dtype)
    gc.collect()
    print(json.dumps({"event": "weights", "dtype": args.dtype, "seconds": time.perf_counter() - t0,
                      "rss_weights": (_proc_kb("VmRSS") - rss0) * 1024, "param_bytes": param_bytes(unet)}),
          flush=True)
    vae = None
    for point in args.points:
        kind, frames, h, w, flag = point.split(":")
        frames, h, w, flag = int(frames), int(h), int(w), int(flag)
        if kind == "inv":
            res, rss = _measure_rss(lambda: inversion_step(unet, frames, h, w, checkpointing=flag))
        elif kind == "vae":
            if vae is None:
                vae = build_vae("cpu", dtype)
            res, rss = _measure_rss(lambda: vae_decode(vae, frames, h, w, chunk=flag))
        else:
            res, rss = _measure_rss(lambda: generation_step(unet, frames, h, w, routing=bool(flag)))
        print(json.dumps({"event": "point", "dtype": args.dtype, "kind": kind, "frames": frames, "h": h,
                          "w": w, "flag": flag, "rss_peak_delta": rss, **res}), flush=True)


# --- reporting -------------------------------------------------------------------------------

def gb(x: float) -> str:
    return f"{x / GB:.2f}"


def fit_line(xs, ys):
    """Least squares ``y = a + b x``; returns a, b and the largest relative residual."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    resid = max(abs(a + b * x - y) / y for x, y in zip(xs, ys))
    return a, b, resid


def full_size_tables(shapes, dtypes) -> dict:
    """Method 1 at the full sizes; prints the markdown tables, returns the numbers."""
    results = {}
    unets = {d: build_unet("meta", DTYPES[d]) for d in dtypes}
    weights = {d: param_bytes(u) for d, u in unets.items()}
    vae = {d: build_vae("meta", DTYPES[d]) for d in ("fp32", "bf16")}
    clip = clip_image_encoder_params()
    n_unet = sum(p.numel() for p in unets[dtypes[0]].parameters())
    n_vae = sum(p.numel() for p in vae["fp32"].parameters())
    print(f"Parameters: UNet {n_unet / 1e9:.3f} B, VAE {n_vae / 1e6:.1f} M, CLIP image encoder "
          f"{clip / 1e6:.1f} M. Bytes at 2 B/param (fp16/bf16): UNet {gb(2 * n_unet)} GB, VAE "
          f"{gb(2 * n_vae)} GB, CLIP {gb(2 * clip)} GB; at 4 B/param: UNet {gb(4 * n_unet)} GB, "
          f"VAE {gb(4 * n_vae)} GB, CLIP {gb(4 * clip)} GB.\n")

    print("### Inversion step (batch 1, fwd + bwd to the embedding, routing, N = 5)\n")
    print("| weights dtype | grad. checkpointing | shape FxHxW | UNet weights GB | peak activations GB "
          "| peak GB (weights + activations) | fits 24 GB? |")
    print("|---|---|---|---|---|---|---|")
    for frames, hp, wp in shapes:
        for d in dtypes:
            for ckpt in (0, 1, 2):
                r = inversion_step(unets[d], frames, hp // 8, wp // 8, checkpointing=ckpt)
                tot = weights[d] + r["peak"]
                results[("inv", d, ckpt, frames, hp, wp)] = r["peak"]
                print(f"| {d} | {CKPT_NAMES[ckpt]} | {frames}x{hp}x{wp} | {gb(weights[d])} "
                      f"| {gb(r['peak'])} | {gb(tot)} | {'yes' if tot < 24 * GB else 'no'} |")

    print("\n### CFG generation step (batch 2, no grad, N = 5)\n")
    print("| weights dtype | context | shape FxHxW | peak activations GB | peak GB (UNet weights + activations) |")
    print("|---|---|---|---|---|")
    for frames, hp, wp in shapes:
        for d in dtypes:
            for routing in (False, True):
                r = generation_step(unets[d], frames, hp // 8, wp // 8, routing=routing)
                results[("gen", d, routing, frames, hp, wp)] = r["peak"]
                ctx = "routing, (F+1)N = %d tokens" % ((frames + 1) * 5) if routing else "stock, 5 tokens"
                print(f"| {d} | {ctx} | {frames}x{hp}x{wp} | {gb(r['peak'])} | {gb(weights[d] + r['peak'])} |")

    print("\n### VAE decoding (no grad; the pipeline's decode_chunk_size)\n")
    print("| VAE dtype | shape FxHxW | decode_chunk_size | peak activations GB | peak GB (VAE weights + activations) |")
    print("|---|---|---|---|---|")
    for frames, hp, wp in shapes:
        for d in ("fp32", "bf16"):
            for chunk in sorted({frames, 8, 4, 2, 1}, reverse=True):
                r = vae_decode(vae[d], frames, hp // 8, wp // 8, chunk)
                results[("vae", d, chunk, frames, hp, wp)] = r["peak"]
                print(f"| {d} | {frames}x{hp}x{wp} | {chunk}{' (all)' if chunk == frames else ''} "
                      f"| {gb(r['peak'])} | {gb(param_bytes(vae[d]) + r['peak'])} |")
    return results


def hand_over_table(shapes) -> dict:
    """Peaks of the old routing hand-over (diffusers broadcasts the embedding) and the lean one
    (``install_motion_routing(lean=True)``, the default): fp16 weights, inversion with the
    library's checkpointing and the CFG generation step, at the 576x1024 shapes."""
    results = {}
    unet = build_unet("meta", torch.float16)
    weights = param_bytes(unet)
    print("\n### Routing hand-over: old (diffusers broadcasts the embedding) vs lean (the default)\n")
    print("| workload | weights dtype | shape FxHxW | old: peak activations GB | lean: peak activations GB "
          "| saved GB | old: peak GB | lean: peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for frames, hp, wp in shapes:
        if hp != 576:
            continue
        for what in ("inversion, diffusers + temporal-block checkpointing", "inversion, no checkpointing",
                     "CFG generation"):
            peaks = {}
            for lean in (False, True):
                if what.startswith("inversion"):
                    ckpt = 2 if "temporal" in what else 0
                    peaks[lean] = inversion_step(unet, frames, hp // 8, wp // 8, checkpointing=ckpt,
                                                 lean=lean)["peak"]
                else:
                    peaks[lean] = generation_step(unet, frames, hp // 8, wp // 8, routing=True, lean=lean)["peak"]
                results[("lean" if lean else "old", what, frames, hp, wp)] = peaks[lean]
            print(f"| {what} | fp16 | {frames}x{hp}x{wp} | {gb(peaks[False])} | {gb(peaks[True])} "
                  f"| {gb(peaks[False] - peaks[True])} | {gb(weights + peaks[False])} "
                  f"| {gb(weights + peaks[True])} |", flush=True)
    return results


def validate(args, meta_results: dict) -> None:
    """Method 2: CPU subprocesses at reduced sizes, the comparison and the extrapolation."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.validate_sizes]  # F x h x w (latent)
    print("\n### CPU measurements at reduced sizes (full-size UNet, random weights, 1 thread)\n")
    print("| weights dtype | workload | latent FxhxW | F*h*w | tracker peak GB | RSS peak growth GB "
          "| meta tracker GB (method 1) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for d in args.validate_dtypes:
        points = [f"inv:{f}:{h}:{w}:{c}" for f, h, w in sizes for c in (0, 1, 2)]
        points += [f"gen:{f}:{h}:{w}:1" for f, h, w in sizes[:2]]
        points += [f"vae:{f}:{h}:{w}:{c}" for f, h, w in args.validate_vae_sizes_t for c in (f, 1)]
        cmd = [sys.executable, os.path.abspath(__file__), "_worker", "--dtype", d, "--points", *points]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        meta_unet = build_unet("meta", DTYPES[d])
        meta_vae = build_vae("meta", DTYPES[d])
        for line in proc.stdout:
            rec = json.loads(line)
            if rec["event"] == "weights":
                print(f"| {d} | load weights ({gb(rec['param_bytes'])} GB of parameters) | | | | "
                      f"{gb(rec['rss_weights'])} (RSS growth) | | {rec['seconds']:.0f} |", flush=True)
                continue
            f, h, w, flag = rec["frames"], rec["h"], rec["w"], rec["flag"]
            if rec["kind"] == "inv":
                meta = inversion_step(meta_unet, f, h, w, checkpointing=flag)["peak"]
                what = f"inversion, ckpt {CKPT_NAMES[flag]}"
            elif rec["kind"] == "vae":
                meta = vae_decode(meta_vae, f, h, w, chunk=flag)["peak"]
                what = f"VAE decode, chunk {flag}"
            else:
                meta = generation_step(meta_unet, f, h, w, routing=bool(flag))["peak"]
                what = "CFG generation (routing)"
            rows.append((d, rec["kind"], flag, f * h * w, rec["peak"], rec["rss_peak_delta"]))
            print(f"| {d} | {what} | {f}x{h}x{w} | {f * h * w} | {gb(rec['peak'])} | {gb(rec['rss_peak_delta'])} "
                  f"| {gb(meta)} | {rec['seconds']:.0f} |", flush=True)
        if proc.wait():
            raise SystemExit(f"worker for {d} failed")

    print("\n### Extrapolation of the CPU measurements: peak = a + b * F*h*w (least squares)\n")
    print("| weights dtype | grad. checkpointing | source | a (MB) | b (KB per latent voxel) | max rel. residual "
          "| 14x576x1024 GB | 25x576x1024 GB | method 1 at 14x576x1024 GB | method 1 at 25x576x1024 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in args.validate_dtypes:
        for ckpt in (0, 1, 2):
            pts = [r for r in rows if r[0] == d and r[1] == "inv" and r[2] == ckpt]
            if len(pts) < 2:
                continue
            for src, idx in (("tracker", 4), ("RSS", 5)):
                a, b, res = fit_line([p[3] for p in pts], [p[idx] for p in pts])
                e14, e25 = a + b * 14 * 72 * 128, a + b * 25 * 72 * 128
                m14 = meta_results.get(("inv", d, ckpt, 14, 576, 1024))
                m25 = meta_results.get(("inv", d, ckpt, 25, 576, 1024))
                print(f"| {d} | {CKPT_NAMES[ckpt]} | {src} | {a / 1e6:.0f} | {b / 1e3:.1f} | {100 * res:.1f}% "
                      f"| {gb(e14)} | {gb(e25)} | {gb(m14) if m14 else 'n/a'} | {gb(m25) if m25 else 'n/a'} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("_worker")
    w.add_argument("--dtype", choices=DTYPES, required=True)
    w.add_argument("--points", nargs="+", required=True)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=DTYPES)
    p.add_argument("--hand-over-only", action="store_true",
                   help="only the routing hand-over table (old vs lean, fp16), ~1 min")
    p.add_argument("--validate", action="store_true", help="also measure on the CPU at reduced sizes")
    p.add_argument("--validate-dtypes", nargs="+", default=["bf16"], choices=DTYPES,
                   help="dtypes of the CPU runs (bf16 ~5 min, fp32 another ~6 min on 1 thread)")
    p.add_argument("--validate-sizes", nargs="+", default=["4x8x16", "4x16x16", "8x16x16", "14x16x24"],
                   help="latent FxhxW (h, w multiples of 8)")
    p.add_argument("--validate-vae-sizes", nargs="+", default=["4x16x16", "4x24x24"],
                   help="latent FxhxW of the VAE decoding checks")
    args = p.parse_args(argv)
    args.validate_vae_sizes_t = [tuple(int(v) for v in s.split("x")) for s in getattr(args, "validate_vae_sizes", [])]
    if args.cmd == "_worker":
        worker(args)
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}; peak = weights + peak live tensor bytes (LiveBytes); "
          f"attention through the flash kernel\n")
    if args.hand_over_only:
        hand_over_table(FULL_SHAPES)
        print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        return 0
    results = full_size_tables(FULL_SHAPES, args.dtypes)
    hand_over_table(FULL_SHAPES)
    if args.validate:
        validate(args, results)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
