"""Train the bundled toy image-to-video model: ``python -m reenact.toy.train --out DIR``.

The result is a diffusers folder with exactly SVD's components (UNetSpatioTemporalConditionModel,
AutoencoderKLTemporalDecoder, CLIPVisionModelWithProjection, EulerDiscreteScheduler with SVD's
settings, CLIPImageProcessor), loaded by ``--model toy`` through the same ``from_pretrained``
path as real SVD.

It is trained SVD-style so that motion-textual inversion is tested honestly:
- the VAE latent of the (noise-augmented) first frame, concatenated on channels, carries
  appearance;
- ONE context token per clip, repeated over frames by the UNet exactly as SVD repeats its CLIP
  embedding, carries the motion. The token is a *fixed* random encoding of the clip's motion
  features (object path, camera shift, log camera scale per frame: ``world.motion_features``),
  ``tanh(feat @ P + b)`` — informative from step 0, nothing to collapse (a jointly learned
  encoder collapsed in a probe, docs/METHOD.md "The toy model"). The model never sees per-frame tokens: the
  inflation must earn its keep at inversion time, as in the paper;
- the context is zeroed for 15% of samples and, for 10%, the image latent too — the exact
  negative branch of SVD's classifier-free guidance;
- the EDM v-prediction loss of SVD, with the per-pixel weight raised (x ``1 + motion_weight``)
  where the frame moves (object in frame f or 0, or any changed pixel: a pan moves them all),
  normalised per clip, so that the motion is not a residual the model can average away.

Data: the v2 world (``world.make_scene_clip``, 32x32, 8 frames). The VAE is constructed (a
near-identity, ``construct_vae``), the UNet trained on its frozen latents, with
``scaling_factor`` set so the scaled latents have unit standard deviation. Everything is
seeded: data of step k is a pure function of (seed, k) - whether rendered in-process or by
``--workers`` DataLoader processes - so training is reproducible and a ``--resume`` continues
the same stream. On a GPU (``--device cuda``), ``--time-budget MIN`` resolves the step count from
the measured speed and the run always ends with the model folder, log and card written (also on
SIGTERM or an error: what there is, with the status in the card). Checkpoints are atomic.
``--init-from DIR`` fine-tunes a folder this script exported (its UNet; fresh optimiser, own
schedule), and its card keeps the folder's commands, so shipped weights stay traceable.
Imports neither ``av`` nor ``reenact.video``: it runs where only torch, diffusers, transformers,
numpy and safetensors are installed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reenact import edm
from reenact.files import atomic_write
from reenact.metrics import psnr
from reenact.toy import world

NUM_FRAMES = 8
RESOLUTION = 32
CONTEXT_DIM = 32
#: UNet widths per level (32x32, 16x16, 8x8). Attention only at 8x8: at 32x32 it would dominate
#: the cost of an inversion step on a CPU (issue 7 asks <= 30 s per default inversion on 2 cores).
UNET_CHANNELS = (64, 64, 96)
UNET_HEADS = (2, 2, 4)
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
    (latents = pixels), and 64 (2 per group) at the UNet's first level.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    levels = len(UNET_CHANNELS)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=RESOLUTION, in_channels=8, out_channels=4, block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlockSpatioTemporal",) * (levels - 1) + ("CrossAttnDownBlockSpatioTemporal",),
        up_block_types=("CrossAttnUpBlockSpatioTemporal",) + ("UpBlockSpatioTemporal",) * (levels - 1),
        layers_per_block=1, num_attention_heads=UNET_HEADS, cross_attention_dim=CONTEXT_DIM,
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
    """The fixed random projection from a clip's motion features to a context token.

    Features per frame (``world.MOTION_FEATURES``): object path (2), camera shift (2), log camera
    scale (1), image units - so a zoom and a pan are encoded, and kept apart from object motion.
    """
    g = torch.Generator().manual_seed(seed + 7)
    return {"P": torch.randn(world.MOTION_FEATURES * NUM_FRAMES, CONTEXT_DIM, generator=g) * 2.0,
            "b": torch.randn(CONTEXT_DIM, generator=g) * 0.5}


def encode_motion(features: torch.Tensor, code: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, F, k) motion features -> (B, 1, d) context tokens, ``tanh(features @ P + b)``.

    ``k`` is whatever the code was made for: 5 (``world.motion_features``) for this trainer,
    2 (displacements only) for the first bundled model; pass ``features[..., :k]``.
    """
    return torch.tanh(features.flatten(1) @ code["P"] + code["b"])[:, None]


def batch_tensors(seed: int, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s training batch, a pure function of (seed, step).

    Returns video (B, F, 3, H, W), the *moving* region (B, F, H, W) - object in frame f or 0, or
    any pixel that changed from frame 0 (the whole frame in a pan or zoom) - and motion features
    (B, F, 5).
    """
    clips = world.make_scene_batch(seed * 100_003 + step, batch, NUM_FRAMES, RESOLUTION, RESOLUTION)
    video = torch.stack([c.video for c in clips])
    masks = torch.stack([c.masks for c in clips])
    changed = ((video - video[:, :1]).norm(dim=2) > 0.1).float()
    moving = torch.maximum(torch.maximum(masks, masks[:, :1]), changed)
    feats = torch.tensor(np.stack([c.motion_features() for c in clips]), dtype=torch.float32)
    return video, moving, feats


class StepBatches(torch.utils.data.Dataset):
    """Item k = step k's batch: lets DataLoader workers render ahead without changing the data."""

    def __init__(self, seed: int, batch: int):
        self.seed, self.batch = seed, batch

    def __len__(self) -> int:
        return 10**8

    def __getitem__(self, step: int):
        return batch_tensors(self.seed, step, self.batch)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # many workers, one core each


def _fit_workers(workers: int, batch: int, prefetch: int, log) -> int:
    """Fewer workers when /dev/shm (tensors cross processes through it) cannot hold their batches.

    A container's /dev/shm is often 64 MB; running out kills a worker with a bus error.
    """
    import shutil

    per_batch = batch * NUM_FRAMES * RESOLUTION * RESOLUTION * 4 * 4  # video (3 ch) + moving (1 ch), float32
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return workers
    fit = max(1, int(free * 0.5 // (per_batch * prefetch)))
    if fit < workers:
        log(f"/dev/shm has {free / 2**20:.0f} MB free: {fit} data workers instead of {workers}")
        return fit
    return workers


PREFETCH = 2  # batches each data worker renders ahead


def batch_stream(seed: int, batch: int, start: int, workers: int, pin: bool, log=print):
    """Batches of steps start, start+1, ... (rendered by ``workers`` processes when > 0).

    If the workers fail (e.g. no shared memory), the stream goes on in-process from the same
    step: slower, same data.
    """
    data = StepBatches(seed, batch)
    step = start
    if workers > 0:
        prefetch = PREFETCH
        workers = _fit_workers(workers, batch, prefetch, log)
        try:
            loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, len(data)),
                                                 num_workers=workers, worker_init_fn=_worker_init, pin_memory=pin,
                                                 prefetch_factor=prefetch)
            for item in loader:
                yield item
                step += 1
        except Exception as e:  # noqa: BLE001 - keep training, without workers
            log(f"data workers failed ({type(e).__name__}: {e}); rendering in-process from step {step}")
    while True:
        yield data[step]
        step += 1


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
    dev = frame0.device
    s_c = torch.exp(torch.randn(frame0.shape[0], generator=gen, device=dev) * 0.5 - 3.0)
    noisy = frame0 + s_c[:, None, None, None] * torch.randn(frame0.shape, generator=gen, device=dev)
    return vae.encode(noisy).latent_dist.mode(), s_c


def _ids(s_c: torch.Tensor) -> torch.Tensor:
    """SVD's added time ids (fps id, motion bucket, conditioning noise) per sample."""
    return torch.stack([torch.full_like(s_c, float(FPS_ID)), torch.full_like(s_c, float(BUCKET_ID)), s_c], 1)


def unet_loss(unet, vae, code, video, moving, feats, gen, args, drop: bool = True):
    """SVD's EDM v-prediction loss, weighted up (x ``1 + motion_weight``) where the frame moves.

    The weights are normalised per clip, so a pan (everything moves) and a small object (little
    moves) count alike, while inside a clip the moving pixels dominate.

    ``--context-noise s`` adds N(0, s^2) to each kept context token: the model then learns the
    motion for a whole neighbourhood of every training token, not only for the token itself.
    Why: the inversion searches the context space from the null context, and on the shipped
    weights it stops in basins where the model's response to off-training contexts is arbitrary
    (docs/RESULTS.md, "Why the inversion fails where the model does not"). 0 (the default) draws
    nothing, so the noise stream, and the training, are exactly those of the shipped commands.
    """
    b, dev = video.shape[0], video.device
    x0 = latents_of(vae, video)
    cond, s_c = cond_of(vae, video[:, 0], gen)
    ctx = encode_motion(feats, code)
    if args.context_noise > 0:  # before the drop: a dropped context stays exactly null
        ctx = ctx + args.context_noise * torch.randn(ctx.shape, generator=gen, device=dev)
    if drop:
        u = torch.rand(b, generator=gen, device=dev)
        ctx = ctx * (u >= args.p_drop_context)[:, None, None]
        cond = cond * (u >= args.p_drop_both)[:, None, None, None]
    sigma = edm.sample_sigma(b, args.log_sigma_mean, args.log_sigma_std, gen, device=dev)
    x_s = x0 + edm.append_dims(sigma, x0.ndim) * torch.randn(x0.shape, generator=gen, device=dev)
    denoised = edm.denoise(unet, x_s, sigma, cond[:, None].expand(-1, NUM_FRAMES, -1, -1, -1), ctx, _ids(s_c))
    m = F.adaptive_max_pool2d(moving.flatten(0, 1)[:, None], x0.shape[-2:]).unflatten(0, (b, NUM_FRAMES))
    w = 1 + args.motion_weight * m
    return edm.loss(denoised, x0, sigma, weight=w / w.mean((1, 2, 3, 4), keepdim=True))


SWAP_SIGMAS = (2.0, 5.0, 20.0, 80.0)


@torch.no_grad()
def context_swap_check(unet, vae, code, args, device, sigmas=SWAP_SIGMAS) -> dict[str, tuple[float, float, float]]:
    """Does the context matter? Denoiser error with the true context vs another clip's context.

    The probe's lesson: a toy model is useful only when swapping its context visibly changes
    its output. Reported per noise level: error (true ctx), error (swapped ctx), mean |change|,
    on ``--check-clips`` fixed clips (motion classes in turn; seeds no training step uses).
    """
    clips = [world.make_scene_clip((args.seed + 2) * 1000 + i, NUM_FRAMES, RESOLUTION, RESOLUTION,
                                   motion=world.MOTIONS_V2[i % len(world.MOTIONS_V2)])
             for i in range(args.check_clips)]
    video = torch.stack([c.video for c in clips]).to(device)
    feats = torch.tensor(np.stack([c.motion_features() for c in clips]), dtype=torch.float32, device=device)
    n = video.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = latents_of(vae, video)
    cond, s_c = cond_of(vae, video[:, 0], gen)
    cond = cond[:, None].expand(-1, NUM_FRAMES, -1, -1, -1)
    ctx = encode_motion(feats, code)
    res = {}
    for s in sigmas:
        sigma = torch.full((n,), s, device=device)
        x_s = x0 + s * torch.randn(x0.shape, generator=gen, device=device)
        d = [edm.denoise(unet, x_s, sigma, cond, c, _ids(s_c)) for c in (ctx, ctx.roll(1, 0))]
        res[f"s{s:g}"] = ((d[0] - x0).abs().mean().item(), (d[1] - x0).abs().mean().item(),
                          (d[0] - d[1]).abs().mean().item())
    return res


def learning_rate(step: int, args) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to 10 % at ``steps``.

    The warm-up does not depend on ``steps``, so a ``--time-budget`` run, which resolves
    ``steps`` during its warm-up, is reproduced exactly by ``--steps`` set to the resolved value.
    """
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _noise_line(args) -> str:
    s = args.context_noise
    return f" Each kept token was jittered by N(0, {s:g}^2) noise in training (`--context-noise`)." if s > 0 else ""


def write_model_card(out: Path, args, history: dict, wall: dict) -> None:
    """README.md beside the weights: data, architecture, steps, loss curve, wall time, seed, command."""
    losses = history["loss"]
    curve = []
    win = max(1, len(losses) // 20)
    for k in range(0, len(losses), win):
        curve.append(f"| {k} | {np.mean(losses[k:k + win]):.4f} |")
    swaps = "\n".join(
        f"| {st} | " + " | ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in r.values()) + " |"
        for st, r in history["swap"]
    )
    sig_head = " | ".join(history["swap"][0][1].keys()) if history["swap"] else ""
    status = history.get("status", "complete")
    resolved = history.get("resolved")
    resolved_line = (f"`--time-budget` resolved the step count to **{resolved['steps']}** at step {resolved['at_step']} "
                     f"({resolved['s_per_step']:.3f} s/step measured); to reproduce, run the same command with "
                     f"`--steps {resolved['steps']}` instead of `--time-budget`.\n" if resolved else "")
    for earlier in history.get("earlier_resolutions", []):
        resolved_line += (f"(An earlier command's `--time-budget` resolved `--steps {earlier['steps']}` at step "
                          f"{earlier['at_step']}.)\n")
    init = history.get("init")
    if init:
        resolved_line += (f"The last command started from the UNet of `{init['folder']}` ({init['steps']} UNet steps, "
                          f"{init['unet_s'] / 60:.1f} min), which the commands above it produced, with a fresh optimiser "
                          f"and its own learning-rate schedule; the loss curve and the swap table below are the last "
                          f"command's (its step 0 is the starting point).\n")
    text = f"""# reenact toy model v2 (`--model toy-v2`)

An image-to-video model with Stable Video Diffusion's architecture at toy size, trained on the
v2 toy world of `reenact.toy.world` (`make_scene_clip`) so that motion-textual inversion runs and
is measured on a CPU. It is **not** a general video model.

## Command (these weights are its output)
```
{chr(10).join(history['commands'])}
```
{resolved_line}Status: {status}; {len(losses)} UNet steps run.
(A command with `--resume` continued the previous one's checkpoint; the learning-rate schedule
is a function of the step and `--steps`, so a continued run follows the new schedule.)
Machine: {wall['machine']}. Wall time: VAE {wall['vae_s']:.0f} s, UNet {wall['unet_s']:.0f} s
(total {(wall['vae_s'] + wall['unet_s']) / 60:.1f} min). Seed {args.seed}. torch {torch.__version__}.

## Data
Clips of {NUM_FRAMES} frames at {RESOLUTION}x{RESOLUTION} px (`world.make_scene_clip`): one object
(square, disc, triangle, diamond; side 12-50% of the frame; any RGB colour at least
{world.MIN_CONTRAST} (RGB distance in [-1, 1]) from every background pixel) on a plain, gradient
or textured background. Motions, drawn uniformly: {', '.join(world.MOTIONS_V2)} - the object moves
over a still camera, or (pan, zoom) the camera moves over a textured scene with a still object;
largest excursion 20-45% of the frame, zoom to 1.3-1.8x or its inverse. Generated on the fly from
seeds in `SEED_RANGES['train']`; the benchmark and the demo draw from disjoint seed ranges.

## Architecture (diffusers classes, SVD's layout)
- `UNetSpatioTemporalConditionModel`: block_out_channels {UNET_CHANNELS}, layers_per_block 1,
  spatio-temporal cross-attention only at the coarsest level ({RESOLUTION // 2 ** (len(UNET_CHANNELS) - 1)}x{RESOLUTION // 2 ** (len(UNET_CHANNELS) - 1)}: down, mid, up), heads
  {UNET_HEADS}, cross_attention_dim {CONTEXT_DIM}, addition_time_embed_dim 32, {NUM_FRAMES} frames,
  latent {RESOLUTION}x{RESOLUTION} - {history['params']['unet'] / 1e6:.2f} M parameters.
- `AutoencoderKLTemporalDecoder`: block_out_channels (96,) (one level: latents = pixels), 4 latent channels,
  scaling_factor {history['scaling_factor']:.4f} (set so scaled latents have unit std) - {history['params']['vae'] / 1e6:.2f} M parameters.
- `CLIPVisionModelWithProjection`: 1 layer, hidden 32, projection {CONTEXT_DIM}, **random (untrained)**;
  it only serves the stock image-to-video baseline and the CLIP initialisation of the embedding.
- `EulerDiscreteScheduler` with SVD's settings (v-prediction, continuous timesteps, Karras sigmas 0.002-700).

## Conditioning (how it stands in for SVD's CLIP token)
One context token per clip, repeated over frames by the UNet as SVD repeats its CLIP embedding:
`tanh(feat @ P + b)`, with `feat` the clip's {NUM_FRAMES}x{world.MOTION_FEATURES} motion features
(`world.motion_features`: object path, camera shift, log camera scale; image units) and
`P` ({world.MOTION_FEATURES * NUM_FRAMES}x{CONTEXT_DIM}, N(0, 2^2)), `b` (N(0, 0.5^2)) fixed and stored in `motion_code.safetensors`.
The model never sees per-frame tokens.{_noise_line(args)} Context zeroed for {args.p_drop_context:.0%} of samples
(the image latent too for {args.p_drop_both:.0%}) so that SVD's CFG works. Micro-conditioning:
fps id {FPS_ID}, motion bucket {BUCKET_ID}, noise_aug = the sampled conditioning noise.

## Training
VAE: constructed, not trained (`construct_vae`: a near-identity between pixels and latent channels
0-2 through a pilot channel per GroupNorm group); reconstruction PSNR {history.get('vae_psnr', float('nan')):.1f} dB.
UNet: {args.steps} steps planned, batch {args.batch}, AdamW {args.lr} (warm-up {args.warmup}, cosine to 10%),
EDM v-prediction loss, `ln s ~ N({args.log_sigma_mean}, {args.log_sigma_std}^2)`, conditioning noise
`ln s_c ~ N(-3, 0.5^2)`, motion weight {args.motion_weight} (weights normalised per clip).

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


def export_model(out: Path, unet, vae, clip, scheduler, processor, code, args, history: dict, wall: dict) -> None:
    """Write the diffusers folder + motion code + training log + card to ``out``, atomically.

    Works on fp16 CPU copies (<= 20 MB in all), so it can run mid-training without touching the
    weights being trained.
    """
    from diffusers import StableVideoDiffusionPipeline
    from safetensors.torch import save as safetensors_bytes

    parts = [copy.deepcopy(m).to("cpu", torch.float16).eval() for m in (unet, vae, clip)]
    pipe = StableVideoDiffusionPipeline(vae=parts[1], image_encoder=parts[2], unet=parts[0], scheduler=scheduler,
                                        feature_extractor=processor)
    with atomic_write(out) as tmp:  # the folder appears complete or not at all
        pipe.save_pretrained(tmp)
        (tmp / "motion_code.safetensors").write_bytes(
            safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in code.items()}))
        (tmp / "training_log.json").write_text(json.dumps(
            {"loss": history["loss"], "swap": history["swap"], "commands": history["commands"], "wall": wall,
             "vae_psnr": history.get("vae_psnr"), "status": history.get("status", "complete"),
             "resolved": history.get("resolved")}, indent=1))
        write_model_card(tmp, args, history, wall)


class _Terminated(BaseException):
    """SIGTERM arrived: stop training, save what there is (a BaseException, so that no
    ``except Exception`` on the way swallows it)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated("SIGTERM")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    return dev


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="output diffusers folder; its checkpoint and log go beside it (OUT.train-ckpt, OUT.train-log)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500, help="UNet steps (resolved from --time-budget when given)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                   help="wall minutes for the whole run, start to saved model: the step count is resolved from the "
                        "speed measured over the first steps (recorded in the card), and the run stops early rather "
                        "than overrun")
    p.add_argument("--reserve", type=float, default=40.0,
                   help="seconds of --time-budget kept for the final check and save")
    p.add_argument("--calibrate-steps", type=int, default=20, help="steps timed to resolve --time-budget")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--log-sigma-mean", type=float, default=0.7)
    p.add_argument("--log-sigma-std", type=float, default=1.6)
    p.add_argument("--motion-weight", type=float, default=4.0, help="extra loss weight where the frame moves")
    p.add_argument("--context-noise", type=float, default=0.0, metavar="STD",
                   help="std of Gaussian noise added to each kept context token (0 = none, the shipped weights')")
    p.add_argument("--p-drop-context", type=float, default=0.15)
    p.add_argument("--p-drop-both", type=float, default=0.10)
    p.add_argument("--check-every", type=int, default=250, help="context-swap check (and model export) every N steps")
    p.add_argument("--check-clips", type=int, default=2 * len(world.MOTIONS_V2),
                   help="clips in the context-swap check (motion classes in turn)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes rendering batches (0 = in-process)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="end after this UNet step, leaving only the checkpoint (continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.train-ckpt")
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="start from the UNet of a model folder this script exported, same seed (fine-tune: fresh "
                        "optimiser, this command's own schedule); the card keeps that folder's commands")
    return p


def check_init_folder(folder: Path, seed: int) -> None:
    """Refuse, in one line and before anything is written, a ``--init-from`` folder that is not
    an export of this script or was trained with another seed.

    The motion code is a function of the seed; a folder made with another seed encodes motion
    differently, so continuing it under this seed would silently retrain the conditioning.
    """
    from safetensors.torch import load_file

    needed = [folder / "motion_code.safetensors", folder / "unet" / "config.json", folder / "vae" / "config.json",
              folder / "training_log.json"]
    missing = [str(f.relative_to(folder)) for f in needed if not f.is_file()]
    if missing:
        raise SystemExit(f"--init-from {folder}: not a model folder this script exported (no {', '.join(missing)}); "
                         "pass the folder given as --out to an earlier run")
    stored = load_file(str(folder / "motion_code.safetensors"))
    mine = motion_code(seed)
    if set(stored) != set(mine) or any(not torch.equal(stored[k], mine[k]) for k in mine):
        raise SystemExit(f"--init-from {folder}: its motion code is not seed {seed}'s; pass the seed it was trained with")


def load_init(folder: Path, unet) -> tuple[dict, float]:
    """Load an exported model folder's UNet into the fresh one (for ``--init-from``).

    The VAE is not loaded: it is constructed, deterministically, exactly as the folder's was
    (``construct_vae``), in full precision rather than from the folder's fp16 copy; only its
    stored scaling factor is kept (the scale the UNet was trained with, not a re-measure on this
    device). Returns the folder's training log (its commands, loss and wall time carry into the
    new card, so the weights' whole provenance stays recorded) and that scaling factor.
    """
    from diffusers import UNetSpatioTemporalConditionModel

    src_unet = UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    unet.load_state_dict(src_unet.state_dict())
    scaling_factor = json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]
    return json.loads((folder / "training_log.json").read_text()), scaling_factor


def main(argv: list[str] | None = None) -> None:
    t_start = time.time()
    args = build_parser().parse_args(argv)
    if args.context_noise < 0:
        raise SystemExit(f"--context-noise {args.context_noise:g}: a standard deviation must be >= 0 (0 = no noise)")
    if args.init_from is not None:
        check_init_folder(args.init_from, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    budget = args.time_budget * 60.0
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
    history = {"loss": [], "swap": [], "commands": [command],
               "params": {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters())}}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, device {dev}"
    if dev.type == "cuda":
        machine += f" ({torch.cuda.get_device_name(dev)}), {args.workers} data workers"
    wall = {"vae_s": 0.0, "unet_s": 0.0, "machine": machine}
    start_step = 0
    unet.to(dev)
    vae.to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 3)
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        vae.load_state_dict(ck["vae"])
        vae.register_to_config(scaling_factor=ck["scaling_factor"])
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        history, start_step = ck["history"], ck["step"]
        wall.update({k: ck["wall"][k] for k in ("vae_s", "unet_s")})
        if ck.get("device_type", "cpu") == dev.type:
            gen.set_state(ck["gen"])
        else:  # a generator's state is per device type: reseed, deterministically
            gen.manual_seed(args.seed + 3 + start_step)
            log(f"checkpoint from device {ck.get('device_type')}: noise stream reseeded at step {start_step}")
        history.setdefault("commands", [history.pop("command", "")]).append(command)
        history.pop("status", None)
        if "resolved" in history:  # a new --time-budget resolves again; the card keeps the earlier ones
            history.setdefault("earlier_resolutions", []).append(history.pop("resolved"))
        log(f"resumed at UNet step {start_step}")
    else:
        if args.init_from is not None:
            earlier, init_scale = load_init(args.init_from, unet)
            history["commands"] = list(earlier.get("commands", [])) + [command]
            history["init"] = {"folder": str(args.init_from), "steps": len(earlier.get("loss", [])),
                               "unet_s": (earlier.get("wall") or {}).get("unet_s", 0.0)}
            log(f"UNet initialised from {args.init_from} ({history['init']['steps']} UNet steps); fresh optimiser")
        t0 = time.time()
        construct_vae(vae)
        vae.eval()
        with torch.no_grad():
            video, _, _ = batch_tensors(args.seed + 2, 0, 8)
            video = video.to(dev)
            z = vae.encode(video.flatten(0, 1)).latent_dist.mode()
            rec = vae.decode(z, num_frames=NUM_FRAMES).sample
            history["vae_psnr"] = psnr(rec, video.flatten(0, 1))
            sf = 1.0 / z.std().item()
        if args.init_from is not None:  # the scale the UNet was trained with, not this device's re-measure
            sf = init_scale
        vae.register_to_config(scaling_factor=sf)
        history["scaling_factor"] = sf
        wall["vae_s"] = time.time() - t0
        log(f"vae constructed: psnr {history['vae_psnr']:.1f} dB, scaling_factor {sf:.4f}, {wall['vae_s']:.0f}s")
    code = {k: v.to(dev) for k, v in code.items()}
    vae.requires_grad_(False)
    vae.eval()
    unet.train()

    def checkpoint(step_done: int) -> None:
        with atomic_write(ckpt_path) as tmp:
            torch.save({"unet": unet.state_dict(), "vae": vae.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "device_type": dev.type, "scaling_factor": vae.config.scaling_factor,
                        "history": history, "wall": wall, "step": step_done}, tmp)

    def swap_check(step_done: int) -> None:
        unet.eval()
        res = context_swap_check(unet, vae, code, args, dev)
        unet.train()
        history["swap"].append((step_done, res))
        log(f"swap check @ {step_done}: " + ", ".join(f"{k}: err {a:.3f} vs {b:.3f}, change {c:.3f}" for k, (a, b, c) in res.items()))

    if "init" in history and start_step == 0:
        swap_check(0)  # the starting point, for the card
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    t0 = time.time() - wall["unet_s"]
    step = start_step
    # the first steps include CUDA warm-up and are served from the workers' prefetched batches:
    # time the steps after those, when the speed is the sustained one
    cal_from = start_step + 3 + (args.workers * PREFETCH if args.workers > 0 else 0)
    cal_t = None
    error: BaseException | None = None
    stream = batch_stream(args.seed, args.batch, start_step, args.workers, pin=dev.type == "cuda", log=log)
    try:
        while step < args.steps:
            if budget:
                if step == cal_from:
                    cal_t = time.time()
                elif cal_t is not None and "resolved" not in history and step == cal_from + args.calibrate_steps:
                    rate = (time.time() - cal_t) / args.calibrate_steps
                    # what the periodic check + export and checkpoint cost, measured (and a
                    # first model folder on disk, should the run be killed outright)
                    t1 = time.time()
                    swap_check(step)
                    wall["unet_s"] = time.time() - t0
                    history["status"] = f"in progress (exported at step {step})"
                    export_model(out, unet, vae, clip, scheduler, processor, code, args, history, wall)
                    history.pop("status")
                    t2 = time.time()
                    checkpoint(step)
                    t3 = time.time()
                    per_step = rate + (t2 - t1) / args.check_every + (t3 - t2) / args.ckpt_every
                    # the end needs one more check + export + checkpoint: keep at least twice that
                    args.reserve = max(args.reserve, 2 * (t3 - t1))
                    left = budget - (time.time() - t_start) - args.reserve
                    args.steps = max(step + 1, step + int(0.95 * left / per_step))
                    history["resolved"] = {"steps": args.steps, "at_step": step, "s_per_step": rate,
                                           "check_s": t2 - t1, "ckpt_s": t3 - t2, "reserve_s": args.reserve}
                    log(f"time budget: {rate:.3f} s/step (+ check {t2 - t1:.1f} s, checkpoint {t3 - t2:.1f} s), "
                        f"resolved --steps {args.steps}")
                if time.time() - t_start > budget - args.reserve:
                    history["status"] = f"stopped by the time budget after step {step} of {args.steps}"
                    log(history["status"])
                    break
            lr = learning_rate(step, args)
            for g in opt.param_groups:
                g["lr"] = lr
            video, moving, feats = (t.to(dev, non_blocking=True) for t in next(stream))
            loss = unet_loss(unet, vae, code, video, moving, feats, gen, args)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                opt.step()
            else:
                log(f"step {step}: non-finite loss, update skipped")
            history["loss"].append(loss.item())
            step += 1
            if (step - 1) % 25 == 0:
                log(f"step {step - 1} loss {np.mean(history['loss'][-25:]):.4f} lr {lr:.2e} ({time.time() - t0:.0f}s)")
            if step % args.check_every == 0 or step == args.steps:
                swap_check(step)
                wall["unet_s"] = time.time() - t0
                history["status"] = f"in progress (exported at step {step})"
                export_model(out, unet, vae, clip, scheduler, processor, code, args, history, wall)
                history.pop("status")
            stopping = bool(args.stop_after) and step >= args.stop_after
            if step % args.ckpt_every == 0 or stopping:
                wall["unet_s"] = time.time() - t0
                checkpoint(step)
            if stopping:
                log(f"stopped after step {step}; continue with --resume")
                return
    except (_Terminated, KeyboardInterrupt) as e:
        history["status"] = f"interrupted ({type(e).__name__}) after step {step} of {args.steps}"
        log(history["status"])
    except Exception as e:  # save what there is, then fail loudly
        error = e
        history["status"] = f"failed after step {step} of {args.steps}: {type(e).__name__}: {e}"
        log(history["status"])
    finally:
        if previous is not None:  # a second SIGTERM must not cut the final save short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if args.workers > 0:  # nor DataLoader's SIGCHLD handler, should a worker die now
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        del stream
    wall["unet_s"] = time.time() - t0
    if step > start_step and "status" in history:  # ended early: keep the place for --resume
        try:
            checkpoint(step)
        except Exception as e:  # noqa: BLE001 - the model folder matters more
            log(f"final checkpoint failed: {type(e).__name__}: {e}")
    if not history["swap"] or history["swap"][-1][0] != step:
        try:
            swap_check(step)
        except Exception as e:  # noqa: BLE001 - the model must still be written
            log(f"final swap check failed: {type(e).__name__}: {e}")
    unet.eval()
    for attempt in (1, 2):
        try:
            export_model(out, unet, vae, clip, scheduler, processor, code, args, history, wall)
            break
        except Exception as e:  # noqa: BLE001 - one retry: this folder is the run's result
            log(f"export failed ({type(e).__name__}: {e})" + ("; retrying" if attempt == 1 else ""))
            if attempt == 2:
                raise
    log(f"saved {out} at step {step} (UNet {wall['unet_s'] / 60:.1f} min over all runs; this run {(time.time() - t_start) / 60:.1f} min)")
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    if error is not None:
        raise error


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
