"""FLOPs of one inversion step and one CFG generation step of the full-size SVD UNet.

Counts with ``torch.utils.flop_counter.FlopCounterMode`` on the *meta* device: the UNet is built
with the configuration of ``stabilityai/stable-video-diffusion-img2vid`` (diffusers' defaults of
``UNetSpatioTemporalConditionModel``) but holds no weights, so the count needs no download, no GPU
and a few seconds of CPU per configuration.

What is counted (FlopCounterMode's convention: matmuls, convolutions and attention, 2 FLOPs per
multiply-add; norms, activations and element-wise ops are not counted):

* **inversion step** = one UNet forward at batch 1 + the backward to the embedding only (all UNet
  parameters ``requires_grad=False``, the context ``requires_grad=True``): no weight gradients, but
  the gradient w.r.t. activations flows back through almost the whole UNet (the context enters in
  the first down block). The forward and the backward are counted in two separate modes, so the
  split is exact (FlopCounterMode's per-*module* attribution of backward ops is unreliable --
  ModTracker credits them to the wrong modules -- so the per-module shares are taken from the
  forward; without weight gradients a linear layer's backward costs what its forward does).
  ``--checkpointing`` adds columns with ``unet.enable_gradient_checkpointing()`` and with
  ``reenact.inversion.gradient_checkpointing`` (that plus the temporal transformer blocks: what
  ``invert --gradient-checkpointing`` runs; the checkpointed parts of the forward are recomputed
  during the backward).
* **CFG generation step** = one UNet forward at batch 2 (negative + positive branch), no grad.

Configurations:

* ``a stock N=5``: diffusers' default processors, context ``(B, N, d)``: the temporal context is
  broadcast to every spatial position and its K/V projected once per position (stock SVD with N
  tokens instead of CLIP's one).
* ``b stock (F+1)N``: the same processors fed the flattened ``(B, (F+1)*N, d)`` embedding naively:
  every spatial and temporal ``attn2`` attends to all ``(F+1)*N`` tokens (reference only; it is
  not even the right model).
* ``c routing``: ``reenact.routing.install_motion_routing(unet, tokens=N, num_frames=F)``,
  ``kv_once=True``, with the flattened embedding.
* ``c' routing kv_once=False``: the routing with per-position temporal K/V (must equal ``a``; a
  check of the counting, not a configuration anyone would run).

On meta tensors ``F.scaled_dot_product_attention`` decomposes into ``bmm`` + softmax, so attention
is counted through ``aten.bmm`` (forward and backward). NB: on *CPU* tensors torch dispatches SDPA
to ``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode does not register
(it counts 0 FLOPs for it) -- another reason to count on meta. ``--verify-sdpa`` shows both.

Usage::

    python benchmarks/flops.py                    # the tables of docs/PERFORMANCE.md
    python benchmarks/flops.py --checkpointing    # + fwd+bwd with gradient checkpointing
    python benchmarks/flops.py --tokens 1 --shapes 14x576x1024
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from reenact.routing import install_motion_routing

from memory import checkpointing_mode  # benchmarks/memory.py (this script's folder)

#: K/V projections of the temporal cross-attention (leaf modules in FlopCounterMode's hierarchy)
TEMPORAL_KV = re.compile(r"\.temporal_transformer_blocks\.\d+\.attn2\.to_[kv]$")
TEMPORAL_ATTN2 = re.compile(r"\.temporal_transformer_blocks\.\d+\.attn2$")
SPATIAL_ATTN2 = re.compile(r"\.transformer_blocks\.\d+\.attn2$")

CONFIGS = ("a", "b", "c", "c'")
CONFIG_NAMES = {
    "a": "a stock, N tokens",
    "b": "b stock fed (F+1)N tokens",
    "c": "c routing (kv_once)",
    "c'": "c' routing, kv_once=False",
}


def build_unet(num_frames: int) -> UNetSpatioTemporalConditionModel:
    """The full-size SVD UNet (img2vid config) on the meta device, frozen, stock processors."""
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(
            in_channels=8,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=1024,
            num_attention_heads=(5, 10, 20, 20),
            layers_per_block=2,
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=768,
            num_frames=num_frames,
        )
    # a few parameters are made with the legacy torch.Tensor([...]) constructor, which ignores the
    # device context (AlphaBlender.mix_factor): move them to meta as well
    unet.to("meta")
    unet.requires_grad_(False).eval()
    unet.set_attn_processor(AttnProcessor2_0())  # diffusers' default for torch >= 2
    return unet


def leaf_sum(counts: dict, pattern: re.Pattern) -> int:
    return sum(sum(ops.values()) for name, ops in counts.items() if pattern.search(name))


@dataclass
class Count:
    total: int
    by_pattern: dict = field(default_factory=dict)


def counted(fn) -> Count:
    with FlopCounterMode(display=False) as mode:
        fn()
    counts = mode.get_flop_counts()
    return Count(
        total=mode.get_total_flops(),
        by_pattern={
            "temporal_kv": leaf_sum(counts, TEMPORAL_KV),
            "temporal_attn2": leaf_sum(counts, TEMPORAL_ATTN2),
            "spatial_attn2": leaf_sum(counts, SPATIAL_ATTN2),
        },
    )


def inputs(batch: int, frames: int, h: int, w: int, ctx_tokens: int, grad: bool):
    sample = torch.empty(batch, frames, 8, h, w, device="meta")
    timestep = torch.empty(batch, device="meta")
    ehs = torch.empty(batch, ctx_tokens, 1024, device="meta", requires_grad=grad)
    ids = torch.empty(batch, 3, device="meta")
    return sample, timestep, ehs, ids


def measure(unet, config: str, frames: int, h: int, w: int, tokens: int, checkpointing: bool) -> dict:
    """FLOPs of one inversion step (B=1, fwd + bwd to the context) and one CFG step (B=2, fwd)."""
    ctx_tokens = tokens if config == "a" else (frames + 1) * tokens
    handle = None
    if config in ("c", "c'"):
        handle = install_motion_routing(unet, tokens=tokens, num_frames=frames, kv_once=(config == "c"))
    try:
        # inversion step
        sample, t, ehs, ids = inputs(1, frames, h, w, ctx_tokens, grad=True)
        out = {}

        def fwd():
            out["y"] = unet(sample, t, encoder_hidden_states=ehs, added_time_ids=ids, return_dict=False)[0]

        fwd_c = counted(fwd)
        loss = out.pop("y").float().pow(2).mean()
        bwd_c = counted(lambda: loss.backward())
        assert ehs.grad is not None and ehs.grad.shape == ehs.shape, "no gradient reached the context"

        ckpt_total = {}
        for mode in (1, 2) if checkpointing else ():
            # diffusers checkpoints whenever torch.is_grad_enabled(); eval mode as in reenact.inversion
            with checkpointing_mode(unet, mode):
                sample, t, ehs, ids = inputs(1, frames, h, w, ctx_tokens, grad=True)
                f2 = counted(fwd)
                loss = out.pop("y").float().pow(2).mean()
                b2 = counted(lambda: loss.backward())
            ckpt_total[mode] = f2.total + b2.total

        # CFG generation step
        sample, t, ehs, ids = inputs(2, frames, h, w, ctx_tokens, grad=False)
        with torch.no_grad():
            gen_c = counted(fwd)
        out.clear()
    finally:
        if handle is not None:
            handle.remove()
    return {"fwd": fwd_c, "bwd": bwd_c, "gen": gen_c, "ckpt": ckpt_total}


def verify_sdpa() -> None:
    """Show what FlopCounterMode counts for SDPA on CPU vs meta (forward and backward)."""
    b, heads, lq, lk, dh = 2, 4, 64, 16, 32
    expect = 2 * 2 * b * heads * lq * lk * dh  # QK^T and PV, 2 FLOPs per MAC
    print(f"SDPA q={b}x{heads}x{lq}x{dh}, k/v={b}x{heads}x{lk}x{dh}; expected forward {expect}, backward {2 * expect}")
    for dev in ("cpu", "meta"):
        q = torch.randn(b, heads, lq, dh, device=dev, requires_grad=True)
        k = torch.randn(b, heads, lk, dh, device=dev, requires_grad=True)
        with FlopCounterMode(display=False) as m:
            o = F.scaled_dot_product_attention(q, k, k)
        fwd = m.get_total_flops()
        with FlopCounterMode(display=False) as m:
            o.sum().backward()
        ops = {str(op): n for op, n in m.get_flop_counts().get("Global", {}).items()}
        print(f"  {dev:4s}: forward {fwd}, backward {m.get_total_flops()} {ops}")


def parse_shape(s: str) -> tuple[int, int, int]:
    f, h, w = (int(x) for x in s.lower().split("x"))
    if h % 64 or w % 64:
        raise argparse.ArgumentTypeError(f"{s}: height and width must be multiples of 64")
    return f, h, w


def tf(x: float) -> str:
    return f"{x / 1e12:.2f}"


def pct(x: float) -> str:
    return f"{x:+.1f}%"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", type=parse_shape,
                   default=[(14, 576, 1024), (14, 320, 576), (25, 576, 1024)],
                   help="FxHxW in pixels (latent = pixels/8)")
    p.add_argument("--tokens", type=int, default=5, help="N tokens per set")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--checkpointing", action="store_true", help="also count fwd+bwd with gradient checkpointing")
    p.add_argument("--verify-sdpa", action="store_true", help="show how SDPA is counted on cpu vs meta")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if args.verify_sdpa:
        verify_sdpa()
        print()

    t0 = time.perf_counter()
    results = {}
    unets = {}
    for frames, hp, wp in args.shapes:
        h, w = hp // 8, wp // 8
        unet = unets.get(frames) or unets.setdefault(frames, build_unet(frames))
        for cfg in args.configs:
            s = time.perf_counter()
            results[(frames, hp, wp, cfg)] = measure(unet, cfg, frames, h, w, args.tokens, args.checkpointing)
            print(f"# {cfg:3s} {frames}x{hp}x{wp}: {time.perf_counter() - s:.1f} s", file=sys.stderr)

    n = args.tokens
    params = sum(p.numel() for p in next(iter(unets.values())).parameters())
    print(f"UNet parameters: {params / 1e9:.3f} B; N = {n} tokens per set; "
          f"torch {torch.__version__}; FLOPs counted on the meta device\n")

    print("### FLOPs per step (TFLOP)\n")
    print("| config | shape FxHxW (latent) | TFLOP inversion step (B=1, fwd+bwd to emb) "
          "| TFLOP CFG generation step (B=2, fwd) | saving vs (a), inversion | saving vs (a), generation "
          "| saving vs (b), inversion | saving vs (b), generation |")
    print("|---|---|---|---|---|---|---|---|")
    for frames, hp, wp in args.shapes:
        for cfg in args.configs:
            r = results[(frames, hp, wp, cfg)]
            inv = r["fwd"].total + r["bwd"].total
            gen = r["gen"].total
            savings = []
            for ref in ("a", "b"):
                base = results.get((frames, hp, wp, ref))
                if base is None:
                    savings += ["n/a", "n/a"]
                    continue
                binv = base["fwd"].total + base["bwd"].total
                savings += [pct(100 * (binv - inv) / binv), pct(100 * (base["gen"].total - gen) / base["gen"].total)]
            print(f"| {CONFIG_NAMES[cfg].replace('N', str(n), 1) if cfg == 'a' else CONFIG_NAMES[cfg]} "
                  f"| {frames}x{hp}x{wp} ({hp // 8}x{wp // 8}) | {tf(inv)} | {tf(gen)} | " + " | ".join(savings) + " |")

    print("\n### Breakdown (TFLOP; shares of the B=1 forward, module-attributed)\n")
    head = ("| config | shape | fwd B=1 | bwd to emb B=1 | bwd/fwd |"
            + (" fwd+bwd, diffusers checkpointing | fwd+bwd, diffusers + temporal-block checkpointing |"
               if args.checkpointing else "")
            + " temporal attn2 K/V projections | all of temporal attn2 | all of spatial attn2 |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for frames, hp, wp in args.shapes:
        for cfg in args.configs:
            r = results[(frames, hp, wp, cfg)]
            fwd = r["fwd"]

            def share(key):
                return f"{100 * fwd.by_pattern[key] / fwd.total:.1f}% ({tf(fwd.by_pattern[key])})"

            ck = f" {tf(r['ckpt'][1])} | {tf(r['ckpt'][2])} |" if args.checkpointing else ""
            print(f"| {cfg} | {frames}x{hp}x{wp} | {tf(fwd.total)} | {tf(r['bwd'].total)} "
                  f"| {r['bwd'].total / fwd.total:.2f} |{ck} {share('temporal_kv')} "
                  f"| {share('temporal_attn2')} | {share('spatial_attn2')} |")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
