"""Train the bundled toy image-to-video model: ``python -m reenact.toy.train --out DIR``.

The result is a diffusers folder with exactly SVD's components (UNetSpatioTemporalConditionModel,
AutoencoderKLTemporalDecoder, CLIPVisionModelWithProjection, EulerDiscreteScheduler with SVD's
settings, CLIPImageProcessor), loaded by ``--model toy`` through the same ``from_pretrained``
path as real SVD.

It is trained SVD-style so that motion-textual inversion is tested honestly:
- the VAE latent of the (noise-augmented) first frame, concatenated on channels, carries
  appearance;
- ONE context token per clip, repeated over frames by the UNet exactly as SVD repeats its CLIP
  embedding, carries the motion. The token is a *fixed* random encoding of the clip's
  displacement sequence, ``tanh(disp @ P + b)`` — informative from step 0, nothing to collapse
  (a jointly learned encoder collapsed in a probe, docs/METHOD.md "The toy model"). The model never sees
  per-frame tokens: the inflation must earn its keep at inversion time, as in the paper;
- the context is zeroed for 15% of samples and, for 10%, the image latent too — the exact
  negative branch of SVD's classifier-free guidance;
- the EDM v-prediction loss of SVD, with the per-pixel weight raised (x ``1 + motion_weight``)
  where the object is in frame f or frame 0, so that the motion is not a residual the model
  can average away (the probe's failure mode).

Two stages: the VAE (reconstruction + a small KL term) then the UNet on its frozen latents,
with ``scaling_factor`` set so the scaled latents have unit standard deviation. Everything is
seeded: data of step k is a pure function of (seed, k), so training is reproducible and a
``--resume`` continues the same stream. Checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reenact import edm
from reenact.files import atomic_write
from reenact.metrics import psnr
from reenact.toy.world import make_batch, make_clip

NUM_FRAMES = 8
RESOLUTION = 16
CONTEXT_DIM = 32
FPS_ID, BUCKET_ID = 6, 127  # SVD's defaults fps 7 -> 6, motion bucket 127, used throughout

SVD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="v_prediction", interpolation_type="linear", sigma_min=0.002, sigma_max=700.0,
    timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True, steps_offset=1,
)


def build_components(seed: int):
    """Fresh, seeded SVD-architecture components at toy size.

    Widths are set by diffusers' fixed GroupNorm(32 groups): with one channel per group the last
    norm before an output conv removes each channel's spatial mean - on a plain background, the
    colour. Hence 96 channels (3 per group, see ``construct_vae``) in the VAE, which has one level
    (latents = pixels, 16x16), and 64 (2 per group) at the UNet's first level.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=RESOLUTION, in_channels=8, out_channels=4, block_out_channels=(64, 64),
        down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
        layers_per_block=1, num_attention_heads=(2, 4), cross_attention_dim=CONTEXT_DIM,
        addition_time_embed_dim=32, projection_class_embeddings_input_dim=96, num_frames=NUM_FRAMES,
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), block_out_channels=(96,),
        layers_per_block=1, latent_channels=4, sample_size=RESOLUTION, scaling_factor=1.0,
    )
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=CONTEXT_DIM,
    ))
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    processor = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    return unet, vae, clip, scheduler, processor


def motion_code(seed: int) -> dict[str, torch.Tensor]:
    """The fixed random projection from a displacement sequence to a context token."""
    g = torch.Generator().manual_seed(seed + 7)
    return {"P": torch.randn(2 * NUM_FRAMES, CONTEXT_DIM, generator=g) * 2.0,
            "b": torch.randn(CONTEXT_DIM, generator=g) * 0.5}


def encode_motion(disp: torch.Tensor, code: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, F, 2) displacements (image units) -> (B, 1, d) context tokens."""
    return torch.tanh(disp.flatten(1) @ code["P"] + code["b"])[:, None]


def batch_tensors(seed: int, step: int, batch: int):
    clips = make_batch(seed * 100_003 + step, batch, NUM_FRAMES, RESOLUTION, RESOLUTION)
    video = torch.stack([c.video for c in clips])
    masks = torch.stack([c.masks for c in clips])
    disp = torch.tensor(np.stack([c.displacements for c in clips]), dtype=torch.float32)
    return video, masks, disp


PILOT = 10.0  # the constant "pilot" channel of each GroupNorm group (see construct_vae)


def _identity_branches(module: torch.nn.Module) -> None:
    """Zero every residual branch (resnet conv2, attention output) so each block is the identity."""
    from diffusers.models.attention_processor import Attention

    for m in module.modules():
        if hasattr(m, "conv2") and hasattr(m, "norm2"):  # ResnetBlock2D / TemporalResnetBlock
            torch.nn.init.zeros_(m.conv2.weight)
            torch.nn.init.zeros_(m.conv2.bias)
        if isinstance(m, Attention):
            torch.nn.init.zeros_(m.to_out[0].weight)
            torch.nn.init.zeros_(m.to_out[0].bias)


def _pilot_in(conv: torch.nn.Conv2d, n_signals: int) -> None:
    """conv_in writes, per GroupNorm group of 3 channels, (PILOT, +x_c, -x_c) from input channel c.

    A GroupNorm over such a group keeps x_c linearly (its mean P/3 and std ~0.471 P do not
    depend on x_c, to first order), where a plain group would subtract x_c's own spatial mean -
    which is the whole signal on a plain background.
    """
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    k = conv.kernel_size[0] // 2
    for g in range(conv.out_channels // 3):
        conv.bias[3 * g] = PILOT
        if g < n_signals:
            conv.weight[3 * g + 1, g, k, k] = 1.0
            conv.weight[3 * g + 2, g, k, k] = -1.0


def _pilot_out(conv: torch.nn.Conv2d, n_signals: int) -> None:
    """conv_out after GroupNorm + SiLU reads x_c back as K * (SiLU(n+) - SiLU(n-)).

    n+- = -1/sqrt(2) +- x_c / (0.471 P); the odd part of SiLU around -1/sqrt(2) has slope
    SiLU'(a), so the difference is linear in x_c up to a cubic term (< 1% for |x| <= 1).
    """
    a = -1 / math.sqrt(2)
    sig = 1 / (1 + math.exp(-a))
    slope = sig * (1 + a * (1 - sig))
    gain = (math.sqrt(2) / 3 * PILOT) / (2 * slope)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    k = conv.kernel_size[0] // 2
    for g in range(n_signals):
        conv.weight[g, 3 * g + 1, k, k] = gain
        conv.weight[g, 3 * g + 2, k, k] = -gain


@torch.no_grad()
def construct_vae(vae) -> None:
    """Make the toy VAE an (almost exact) identity between pixels and the first 3 latent channels.

    Why constructed, not trained: with diffusers' fixed 32-group GroupNorm at toy widths, the
    final norms of encoder and decoder subtract each group's spatial mean, which on a plain
    background *is* the colour; a trained toy VAE stayed below 15 dB after hundreds of steps on
    2 cores. Built this way - every residual branch zero, conv_in/conv_out through a pilot
    channel per group, time_conv_out the identity - it reconstructs to > 40 dB, is still an
    ``AutoencoderKLTemporalDecoder`` loaded by ``from_pretrained``, and leaves all the learning
    (and all the motion) to the UNet. Latent channel 3 is unused (always 0).
    """
    _identity_branches(vae)
    _pilot_in(vae.encoder.conv_in, 3)
    _pilot_out(vae.encoder.conv_out, 3)
    torch.nn.init.constant_(vae.encoder.conv_out.bias[4:], -20.0)  # log-variance: ~deterministic
    torch.nn.init.zeros_(vae.quant_conv.weight)
    torch.nn.init.zeros_(vae.quant_conv.bias)
    for c in range(8):
        vae.quant_conv.weight[c, c, 0, 0] = 1.0
    vae.quant_conv.bias[4:] = 0.0
    _pilot_in(vae.decoder.conv_in, 3)
    _pilot_out(vae.decoder.conv_out, 3)
    torch.nn.init.zeros_(vae.decoder.time_conv_out.weight)
    torch.nn.init.zeros_(vae.decoder.time_conv_out.bias)
    for c in range(3):
        vae.decoder.time_conv_out.weight[c, c, 1, 0, 0] = 1.0


@torch.no_grad()
def latents_of(vae, video: torch.Tensor) -> torch.Tensor:
    b, f = video.shape[:2]
    z = vae.encode(video.flatten(0, 1)).latent_dist.mode() * vae.config.scaling_factor
    return z.unflatten(0, (b, f))


@torch.no_grad()
def cond_of(vae, frame0: torch.Tensor, gen: torch.Generator):
    """Unscaled mode() latent of the noise-augmented first frame, and the noise level (SVD's convention)."""
    s_c = torch.exp(torch.randn(frame0.shape[0], generator=gen) * 0.5 - 3.0)
    noisy = frame0 + s_c[:, None, None, None] * torch.randn(frame0.shape, generator=gen)
    return vae.encode(noisy).latent_dist.mode(), s_c


def unet_loss(unet, vae, code, video, masks, disp, gen, args, drop: bool = True):
    b = video.shape[0]
    x0 = latents_of(vae, video)
    cond, s_c = cond_of(vae, video[:, 0], gen)
    ctx = encode_motion(disp, code)
    if drop:
        u = torch.rand(b, generator=gen)
        ctx = ctx * (u >= args.p_drop_context)[:, None, None]
        cond = cond * (u >= args.p_drop_both)[:, None, None, None]
    sigma = edm.sample_sigma(b, args.log_sigma_mean, args.log_sigma_std, gen)
    x_s = x0 + edm.append_dims(sigma, x0.ndim) * torch.randn(x0.shape, generator=gen)
    ids = torch.stack([torch.full((b,), float(FPS_ID)), torch.full((b,), float(BUCKET_ID)), s_c], 1)
    denoised = edm.denoise(unet, x_s, sigma, cond[:, None].expand(-1, NUM_FRAMES, -1, -1, -1), ctx, ids)
    # object in frame f or frame 0, at latent resolution: where the motion is
    m = F.adaptive_max_pool2d(torch.maximum(masks, masks[:, :1]).flatten(0, 1)[:, None], x0.shape[-2:])
    m = m.unflatten(0, (b, NUM_FRAMES))
    return edm.loss(denoised, x0, sigma, weight=1 + args.motion_weight * m)


@torch.no_grad()
def context_swap_check(unet, vae, code, args, sigmas=(2.0, 5.0, 20.0, 80.0)) -> dict[str, float]:
    """Does the context matter? Denoiser error with the true context vs another clip's context.

    The probe's lesson: a toy model is useful only when swapping its context visibly changes
    its output. Reported per noise level: error (true ctx), error (swapped ctx), mean |change|.
    """
    video, masks, disp = batch_tensors(args.seed + 2, 10**6, 8)
    gen = torch.Generator().manual_seed(0)
    x0 = latents_of(vae, video)
    cond, s_c = cond_of(vae, video[:, 0], gen)
    cond = cond[:, None].expand(-1, NUM_FRAMES, -1, -1, -1)
    ids = torch.stack([torch.full((8,), float(FPS_ID)), torch.full((8,), float(BUCKET_ID)), s_c], 1)
    ctx = encode_motion(disp, code)
    res = {}
    for s in sigmas:
        sigma = torch.full((8,), s)
        x_s = x0 + s * torch.randn(x0.shape, generator=gen)
        d = [edm.denoise(unet, x_s, sigma, cond, c, ids) for c in (ctx, ctx.roll(1, 0))]
        res[f"s{s:g}"] = ((d[0] - x0).abs().mean().item(), (d[1] - x0).abs().mean().item(), (d[0] - d[1]).abs().mean().item())
    return res


def write_model_card(out: Path, args, history: dict, wall: dict) -> None:
    """README.md beside the weights: data, architecture, steps, loss curve, wall time, seed, command."""
    losses = history["loss"]
    curve = []
    for k in range(0, len(losses), max(1, len(losses) // 20)):
        chunk = losses[k:k + max(1, len(losses) // 20)]
        curve.append(f"| {k} | {np.mean(chunk):.4f} |")
    swaps = "\n".join(
        f"| {st} | " + " | ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in r.values()) + " |"
        for st, r in history["swap"]
    )
    sig_head = " | ".join(history["swap"][0][1].keys()) if history["swap"] else ""
    text = f"""# reenact toy model (bundled default, `--model toy`)

An image-to-video model with Stable Video Diffusion's architecture at toy size, trained on the
toy world of `reenact.toy.world` so that motion-textual inversion runs and is measured on a CPU.
It is **not** a general video model.

## Command (these weights are its output)
```
{chr(10).join(history['commands'])}
```
(A command with `--resume` continued the previous one's checkpoint; the learning-rate schedule
is a function of the step and `--steps`, so the continued run follows the new, longer schedule.)
Machine: {wall['machine']}. Wall time: VAE {wall['vae_s']:.0f} s, UNet {wall['unet_s']:.0f} s
(total {(wall['vae_s'] + wall['unet_s']) / 60:.1f} min). Seed {args.seed}. torch {torch.__version__}.

## Data
Clips of {NUM_FRAMES} frames at {RESOLUTION}x{RESOLUTION} px: one object (square, disc, triangle,
diamond; side 25-45% of the frame; one of a 16-colour palette) on a plain background of another
palette colour,
moving in a line, an L-turn, back-and-forth, an arc or a zigzag, with the largest excursion
20-45% of the frame. Generated on the fly from seeds in `SEED_RANGES['train']`; the benchmark and
the demo draw from disjoint seed ranges.

## Architecture (diffusers classes, SVD's layout)
- `UNetSpatioTemporalConditionModel`: block_out_channels (64, 64), layers_per_block 1, spatio-temporal
  cross-attention at the 8x8 level (down, mid, up; none at 16x16, for speed on 2 cores), heads (2, 4), cross_attention_dim {CONTEXT_DIM},
  addition_time_embed_dim 32, {NUM_FRAMES} frames, latent {RESOLUTION}x{RESOLUTION} — {history['params']['unet'] / 1e6:.2f} M parameters.
- `AutoencoderKLTemporalDecoder`: block_out_channels (96,) (one level: latents = pixels), 4 latent channels,
  scaling_factor {history['scaling_factor']:.4f} (set so scaled latents have unit std) — {history['params']['vae'] / 1e6:.2f} M parameters.
- `CLIPVisionModelWithProjection`: 1 layer, hidden 32, projection {CONTEXT_DIM}, **random (untrained)**;
  it only serves the stock image-to-video baseline and the CLIP initialisation of the embedding.
- `EulerDiscreteScheduler` with SVD's settings (v-prediction, continuous timesteps, Karras sigmas 0.002-700).

## Conditioning (how it stands in for SVD's CLIP token)
One context token per clip, repeated over frames by the UNet as SVD repeats its CLIP embedding:
`tanh(disp @ P + b)`, with `disp` the clip's {NUM_FRAMES}x2 displacement sequence (image units) and
`P` ({2 * NUM_FRAMES}x{CONTEXT_DIM}, N(0, 2^2)), `b` (N(0, 0.5^2)) fixed and stored in `motion_code.safetensors`.
The model never sees per-frame tokens. Context zeroed for {args.p_drop_context:.0%} of samples
(the image latent too for {args.p_drop_both:.0%}) so that SVD's CFG works. Micro-conditioning:
fps id {FPS_ID}, motion bucket {BUCKET_ID}, noise_aug = the sampled conditioning noise.

## Training
VAE: constructed, not trained (`construct_vae`: a near-identity between pixels and latent channels
0-2 through a pilot channel per GroupNorm group); reconstruction PSNR {history.get('vae_psnr', float('nan')):.1f} dB.
UNet: {args.steps} steps, batch {args.batch}, AdamW {args.lr} (warm-up {args.warmup}, cosine to 10%),
EDM v-prediction loss, `ln s ~ N({args.log_sigma_mean}, {args.log_sigma_std}^2)`, conditioning noise
`ln s_c ~ N(-3, 0.5^2)`, motion weight {args.motion_weight}.

### Loss curve (mean over windows of steps)
| from step | loss |
|---|---|
{chr(10).join(curve)}

### Context-swap check (denoiser mean |error| with true / swapped context / mean |change|)
| step | {sig_head} |
|---|{'---|' * len(history['swap'][0][1]) if history['swap'] else ''}
{swaps}
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output diffusers folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500, help="UNet steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--log-sigma-mean", type=float, default=0.7)
    p.add_argument("--log-sigma-std", type=float, default=1.6)
    p.add_argument("--motion-weight", type=float, default=4.0, help="extra loss weight where the object is")
    p.add_argument("--p-drop-context", type=float, default=0.15)
    p.add_argument("--p-drop-both", type=float, default=0.10)
    p.add_argument("--check-every", type=int, default=250)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="end after this UNet step, leaving only the checkpoint (continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/../<name>.train-ckpt")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m reenact.toy.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.parent / f"{out.name}.train-ckpt"
    log_path = out.parent / f"{out.name}.train-log"
    logf = open(log_path, "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    unet, vae, clip, scheduler, processor = build_components(args.seed)
    code = motion_code(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 3)
    history = {"loss": [], "swap": [], "commands": [command],
               "params": {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters())}}
    wall = {"vae_s": 0.0, "unet_s": 0.0, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"}
    start_step = 0
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["vae"])
        vae.register_to_config(scaling_factor=ck["scaling_factor"])
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        history, wall, start_step = ck["history"], ck["wall"], ck["step"]
        history.setdefault("commands", [history.pop("command", "")]).append(command)
        log(f"resumed at UNet step {start_step}")
    else:
        t0 = time.time()
        construct_vae(vae)
        vae.eval()
        with torch.no_grad():
            video, _, _ = batch_tensors(args.seed + 2, 0, 8)
            z = vae.encode(video.flatten(0, 1)).latent_dist.mode()
            rec = vae.decode(z, num_frames=NUM_FRAMES).sample
            history["vae_psnr"] = psnr(rec, video.flatten(0, 1))
            sf = 1.0 / z.std().item()
        vae.register_to_config(scaling_factor=sf)
        history["scaling_factor"] = sf
        wall["vae_s"] = time.time() - t0
        log(f"vae constructed: psnr {history['vae_psnr']:.1f} dB, scaling_factor {sf:.4f}, {wall['vae_s']:.0f}s")
    vae.requires_grad_(False)
    vae.eval()
    unet.train()
    t0 = time.time() - wall["unet_s"]
    for step in range(start_step, args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        video, masks, disp = batch_tensors(args.seed, step, args.batch)
        loss = unet_loss(unet, vae, code, video, masks, disp, gen, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        history["loss"].append(loss.item())
        if step % 25 == 0:
            log(f"step {step} loss {np.mean(history['loss'][-25:]):.4f} lr {lr:.2e} ({time.time() - t0:.0f}s)")
        if (step + 1) % args.check_every == 0 or step + 1 == args.steps:
            unet.eval()
            res = context_swap_check(unet, vae, code, args)
            unet.train()
            history["swap"].append((step + 1, res))
            log(f"swap check @ {step + 1}: " + ", ".join(f"{k}: err {a:.3f} vs {b:.3f}, change {c:.3f}" for k, (a, b, c) in res.items()))
        stopping = bool(args.stop_after) and step + 1 >= args.stop_after
        if (step + 1) % args.ckpt_every == 0 or stopping:
            wall["unet_s"] = time.time() - t0
            with atomic_write(ckpt_path) as tmp:
                torch.save({"unet": unet.state_dict(), "vae": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "scaling_factor": vae.config.scaling_factor, "history": history, "wall": wall, "step": step + 1}, tmp)
        if stopping:
            log(f"stopped after step {step + 1}; continue with --resume")
            return
    wall["unet_s"] = time.time() - t0

    from diffusers import StableVideoDiffusionPipeline
    from safetensors.torch import save as safetensors_bytes

    unet.eval()
    # stored in fp16 to keep the package small (<= 20 MB); loading upcasts to the asked dtype
    unet.to(torch.float16), vae.to(torch.float16), clip.to(torch.float16)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=clip, unet=unet, scheduler=scheduler, feature_extractor=processor)
    with atomic_write(out) as tmp:  # the folder appears complete or not at all
        pipe.save_pretrained(tmp)
        (tmp / "motion_code.safetensors").write_bytes(safetensors_bytes(code))
        (tmp / "training_log.json").write_text(json.dumps({"loss": history["loss"], "swap": history["swap"], "commands": history["commands"],
                                                           "wall": wall, "vae_psnr": history.get("vae_psnr")}, indent=1))
        write_model_card(tmp, args, history, wall)
    log(f"saved {out} ({wall['unet_s'] / 60:.1f} min UNet)")


if __name__ == "__main__":
    main()
