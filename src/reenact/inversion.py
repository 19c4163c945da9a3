"""Motion-textual inversion: optimise a motion-text embedding on one reference clip.

The paper's core step (METHOD.md, "Optimisation"): Stable Video Diffusion stays frozen; the
CLIP image embedding it normally attends to is replaced by a learned ``(F+1) x N x d``
embedding, and only that embedding is optimised with SVD's own EDM v-prediction loss

    x_s = x_0 + s*n,  ln s ~ N(mean, std^2)
    D(x_s) = c_skip*x_s + c_out*F(c_in*x_s; c_noise, m, cond)
    loss = w(s) * ||D(x_s) - x_0||^2,   w = (1+s^2)/s^2

where ``x_0`` are the reference video's latents and ``cond`` the (noise-augmented) latent of its
first frame. :func:`invert` is that loop and nothing else -- data, model, optimiser, step,
log, checkpoint -- in the order it runs (nanoGPT / diffusers ``textual_inversion`` style).

Decisions made here (the paper is silent on them; the knobs are fields of
:class:`InversionConfig`, whose comments say where each default comes from):

* **Everything the VAE sees is encoded once, before the loop.** The reference latents (and
  the latents of ``num_augmentations`` augmented copies of the clip) and a bank of
  ``cond_bank_size`` noise-augmented conditioning latents per copy, each with its own
  ``ln s_c ~ N(-3, 0.5^2)``, are precomputed; each step samples one copy and one bank entry.
  Re-encoding per step would cost a VAE pass per step for a signal (a ~5 % pixel noise on one
  frame) that a bank of 16 draws covers well.
* **Augmentations** (against appearance leakage; the paper's kind is open): a random
  horizontal flip of the whole clip and a random crop of side scale ``[crop_scale, 1]``,
  same crop for all frames, resized back to the optimisation size. Copy 0 is always the
  unaugmented clip; the conditioning bank of each copy is built from *that* copy's first
  frame, so the model is never told that a flipped video starts from an unflipped frame.
* **Resume**: a checkpoint (embedding, optimiser, RNG state, losses, config, a fingerprint
  of the reference) is written atomically every ``checkpoint_every`` steps; ``resume=True``
  continues from it bit-for-bit. An interrupt does *not* write a checkpoint (it may land in
  the middle of an optimiser step); at most one interval is lost. The checkpoint is kept
  until the final embedding is written, then deleted.
* **Randomness**: separate generators seeded from ``config.seed`` for the initialisation,
  the augmentations, the conditioning bank and the per-step sampling, so the precomputed
  banks are identical on resume and only the per-step generator's state needs saving.
* **Learning-rate schedule** is a pure function of the step (:func:`lr_at`), so there is no
  scheduler state to save.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


import torch
import torch.nn.functional as F_nn
from tqdm.auto import tqdm

from reenact.embedding import (
    FORMAT_VERSION,
    MotionEmbedding,
    clip_image_embeddings,
    init_from_clip,
    init_random,
    init_zeros,
    unet_fingerprint,
)
from reenact.edm import denoise, loss as edm_loss
from reenact.errors import ConfigError, InputError
from reenact.files import atomic_write
from reenact.routing import ATTENTION_KINDS, flatten_embedding, install_motion_routing, set_attention

__all__ = [
    "InversionConfig",
    "InversionResult",
    "invert",
    "lr_at",
    "checkpoint_path",
    "checkpoint_temporal_blocks",
    "gradient_checkpointing",
]

#: Decay of the loss EMA shown in the progress bar and used for early stopping (~50-step
#: window: the EDM loss is very noisy because s changes by orders of magnitude per step).
LOSS_EMA_DECAY = 0.98
#: Version of the checkpoint dict layout.
CHECKPOINT_VERSION = 1

_SCHEDULES = ("constant", "cosine", "warmup-cosine")
_OPTIMIZERS = ("adam", "adamw")
_SETS = ("per-frame", "shared")
_INITS = ("clip", "random", "zeros")
_PRECISIONS = ("no", "fp16", "bf16")
#: Config fields that may change between an interrupted run and its resumption: they do not
#: change what is optimised (``steps`` may be raised to extend a run; with a cosine schedule
#: the remaining schedule then follows the new length).
_RESUMABLE_CHANGES = frozenset({
    "steps", "checkpoint_every", "preview_every", "preview_steps", "early_stop_patience",
    "early_stop_min_delta", "gradient_checkpointing", "encode_chunk_size", "attention", "compile",
})


@dataclass
class InversionConfig:
    """Every knob of the inversion, with where its default comes from."""

    # -- optimisation (METHOD.md: Adam per the paper; lr/steps/schedule are open) --
    steps: int = 80  # toy convergence benchmark: 90% of the final score by 30, 97% by 60; paper: 200-2000 on SVD
    lr: float = 5e-2  # toy convergence benchmark: 8x fewer steps than 1e-2; 1e-1 plateaus lower
    lr_schedule: str = "constant"  # "constant" | "cosine" | "warmup-cosine"; open in the paper
    warmup_steps: int = 20  # only for "warmup-cosine": linear warm-up length (no source)
    optimizer: str = "adam"  # paper: Adam. "adamw" allowed, but weight_decay is forced to 0:
    # the public reimplementation's AdamW weight decay pulls the embedding to zero.
    batch_size: int = 1  # public reimplementation: batch 1
    seed: int = 0

    # -- the embedding (METHOD.md "The motion-text embedding") --
    tokens: int = 5  # N, paper default
    sets: str = "per-frame"  # "per-frame": F+1 distinct sets (paper); "shared": one set
    # (1, N, d) expanded to all F+1 -- the paper's F'=1 ablation
    init: str = "clip"  # "clip" (patent claim 3) | "random" (N(0, init_noise_std^2)) | "zeros"
    # ("zeros": the N tokens of a set get identical gradients and stay identical -- an ablation)
    init_noise_std: float = 0.1  # noise that makes the N copies of a CLIP token differ

    # -- EDM noise levels (METHOD.md "Optimisation") --
    log_sigma_mean: float = 0.7  # SVD fine-tuning default; public reimpl used 2.8 (open)
    log_sigma_std: float = 1.6  # SVD fine-tuning default
    cond_log_sigma_mean: float = -3.0  # conditioning-frame noise ln s_c ~ N(-3, 0.5^2)
    cond_log_sigma_std: float = 0.5  # (0 = a fixed s_c = exp(mean))
    cond_bank_size: int = 16  # noise-augmented conditioning latents precomputed per clip copy

    # -- micro-conditioning (ARCHITECTURE.md: identical in inversion and generation) --
    fps: int = 7  # SVD pipeline default; the UNet sees fps-1
    motion_bucket_id: int = 127  # SVD pipeline default
    noise_aug_strength: float = 0.02  # generation-time convention, stored in the metadata;
    # during inversion the third added-time id is the sampled s_c of the bank entry

    # -- augmentations (paper: used, kind open). Precomputed: see the module docstring --
    num_augmentations: int = 0  # K augmented copies of the clip (0 = none)
    flip_prob: float = 0.0  # probability that a copy is horizontally flipped
    crop_scale: float = 1.0  # crop side scale drawn from [crop_scale, 1] per copy

    # -- speed / memory --
    optim_size: tuple[int, int] | None = None  # (H, W) to optimise at; None = frames' size
    mixed_precision: str = "no"  # "fp16" | "bf16": torch.autocast on the device
    gradient_checkpointing: bool = False  # diffusers' + the temporal blocks (gradient_checkpointing());
    # SVD at 14x576x1024, fp16 weights: peak 54.7 -> 11.0 GB, +40% FLOPs per step (PERFORMANCE.md)
    attention: str = "sdpa"  # "sdpa" (torch's fused kernel) | "eager" (diffusers' AttnProcessor);
    # set on every attention layer for the run (other processors, e.g. xformers', are restored after)
    compile: bool = False  # torch.compile the UNet for the run (Module.compile, undone afterwards)
    encode_chunk_size: int = 8  # frames per VAE encode call

    # -- stopping, checkpoints, previews --
    early_stop_patience: int = 0  # 0 = off; else stop when the loss EMA has not improved
    early_stop_min_delta: float = 0.0  # by more than this for `patience` steps
    checkpoint_every: int = 50  # steps between checkpoints (0 = never); needs an output path
    preview_every: int = 0  # steps between preview gifs (0 = only at the end, if asked)
    preview_steps: int = 10  # Euler steps of a preview generation (SVD default 25; cheap)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first out-of-range setting."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.steps, int) and self.steps >= 1, f"steps must be >= 1 (got {self.steps})")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(isinstance(self.tokens, int) and self.tokens >= 1,
             f"tokens must be >= 1 (got {self.tokens})")
        need(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        for name, value, allowed in (
            ("lr_schedule", self.lr_schedule, _SCHEDULES),
            ("optimizer", self.optimizer, _OPTIMIZERS),
            ("sets", self.sets, _SETS),
            ("init", self.init, _INITS),
            ("mixed_precision", self.mixed_precision, _PRECISIONS),
            ("attention", self.attention, ATTENTION_KINDS),
        ):
            need(value in allowed, f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        need(self.init_noise_std >= 0, f"init_noise_std must be >= 0 (got {self.init_noise_std})")
        need(self.log_sigma_std >= 0, f"log_sigma_std must be >= 0 (got {self.log_sigma_std})")
        need(self.cond_log_sigma_std >= 0,
             f"cond_log_sigma_std must be >= 0 (got {self.cond_log_sigma_std})")
        need(self.cond_bank_size >= 1, f"cond_bank_size must be >= 1 (got {self.cond_bank_size})")
        need(self.fps >= 1, f"fps must be >= 1 (got {self.fps})")
        need(self.noise_aug_strength >= 0,
             f"noise_aug_strength must be >= 0 (got {self.noise_aug_strength})")
        need(self.num_augmentations >= 0,
             f"num_augmentations must be >= 0 (got {self.num_augmentations})")
        need(0.0 <= self.flip_prob <= 1.0, f"flip_prob must be in [0, 1] (got {self.flip_prob})")
        need(0.0 < self.crop_scale <= 1.0, f"crop_scale must be in (0, 1] (got {self.crop_scale})")
        if self.optim_size is not None:
            need(len(self.optim_size) == 2 and all(v >= 8 and v % 8 == 0 for v in self.optim_size),
                 f"optim_size must be (H, W), multiples of 8 (got {self.optim_size})")
        need(self.encode_chunk_size >= 1,
             f"encode_chunk_size must be >= 1 (got {self.encode_chunk_size})")
        for name in ("early_stop_patience", "checkpoint_every", "preview_every"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0 (got {getattr(self, name)})")
        need(self.early_stop_min_delta >= 0,
             f"early_stop_min_delta must be >= 0 (got {self.early_stop_min_delta})")
        need(self.preview_steps >= 1, f"preview_steps must be >= 1 (got {self.preview_steps})")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (``optim_size`` as a list)."""
        d = asdict(self)
        if d["optim_size"] is not None:
            d["optim_size"] = [int(v) for v in d["optim_size"]]
        return d


@dataclass
class InversionResult:
    """What :func:`invert` returns. ``losses`` covers all steps, resumed ones included."""

    embedding: MotionEmbedding
    losses: list[float]
    steps_done: int
    seconds: float  # wall time of this call (not of earlier, interrupted calls)
    resumed_from: int = 0  # the checkpoint's step, 0 for a fresh run
    stopped_early: bool = False
    previews: list[Path] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (F+1, N, d), see snapshot_at


# --- schedule ---------------------------------------------------------------------------------

def lr_at(step: int, config: InversionConfig) -> float:
    """Learning rate of 0-based ``step``: constant, cosine to 0, or linear warm-up then cosine."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = config.warmup_steps if config.lr_schedule == "warmup-cosine" else 0
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- one-time preparation ----------------------------------------------------------------------

def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing ``output`` lives: ``<output>.ckpt``."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def _reference_fingerprint(frames: torch.Tensor, name: str) -> dict:
    data = frames.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return {"shape": list(frames.shape), "sha256": hashlib.sha256(data).hexdigest(), "name": name}


@torch.no_grad()
def _encode(vae: torch.nn.Module, pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Unscaled ``latent_dist.mode()`` of ``pixels`` ``(n, 3, H, W)``, ``chunk`` images per call."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:  # as the SVD pipeline: the fp16 VAE encoder overflows
        vae.to(dtype=torch.float32)
    try:
        out = [
            vae.encode(pixels[i : i + chunk].to(vae.device, vae.dtype)).latent_dist.mode().float()
            for i in range(0, pixels.shape[0], chunk)
        ]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    return torch.cat(out)


def _augmented_copies(
    frames: torch.Tensor, size: tuple[int, int], config: InversionConfig
) -> list[torch.Tensor]:
    """Copy 0 = the clip resized to ``size``; copies 1..K = random flip + crop, resized to ``size``.

    Crops are taken from the full-resolution frames (then resized) so they stay sharp.
    """
    gen = torch.Generator().manual_seed(config.seed + 1)
    fh, fw = frames.shape[-2:]

    def fit(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F_nn.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    copies = [fit(frames)]
    for _ in range(config.num_augmentations):
        u = torch.rand(4, generator=gen).tolist()  # flip, scale, top, left
        scale = config.crop_scale + (1.0 - config.crop_scale) * u[1]
        ch, cw = max(1, round(fh * scale)), max(1, round(fw * scale))
        top, left = int(u[2] * (fh - ch + 1)), int(u[3] * (fw - cw + 1))
        x = frames[..., top : top + ch, left : left + cw]
        if u[0] < config.flip_prob:
            x = x.flip(-1)
        copies.append(fit(x))
    return copies


@torch.no_grad()
def _latent_banks(vae: torch.nn.Module, copies: list[torch.Tensor], config: InversionConfig):
    """Encode every clip copy and its conditioning bank once.

    Returns ``x0`` ``(V, F, C, h, w)`` (scaled), ``cond`` ``(V, K, C, h, w)`` (unscaled, of
    ``frame0 + s_c*noise`` as the pipeline's ``noise_aug_strength``) and ``s_c`` ``(V, K)``.
    """
    gen = torch.Generator().manual_seed(config.seed + 2)
    scaling = vae.config.scaling_factor
    x0s, conds, scs = [], [], []
    for clip in copies:
        x0s.append(_encode(vae, clip, config.encode_chunk_size) * scaling)
        k = config.cond_bank_size
        log_s_c = config.cond_log_sigma_mean + config.cond_log_sigma_std * torch.randn(k, generator=gen)
        s_c = torch.exp(log_s_c)
        noise = torch.randn((k, *clip.shape[1:]), generator=gen)
        conds.append(_encode(vae, clip[:1] + s_c.view(-1, 1, 1, 1) * noise, config.encode_chunk_size))
        scs.append(s_c)
    return torch.stack(x0s), torch.stack(conds), torch.stack(scs)


def _initial_embedding(pipe, frames: torch.Tensor, config: InversionConfig, dim: int) -> torch.Tensor:
    """(F+1, N, d) -- or (1, N, d) for ``sets="shared"`` -- float32 on the CPU.

    "shared" keeps the temporal set of the full initialisation, i.e. frame 0's CLIP embedding
    for ``init="clip"``: exactly what stock SVD would attend to for this clip.
    """
    num_frames = frames.shape[0]
    gen = torch.Generator().manual_seed(config.seed)
    if config.init == "clip":
        with torch.no_grad():
            clip = clip_image_embeddings(pipe, frames)
        emb = init_from_clip(clip.float().cpu(), config.tokens, config.init_noise_std, gen)
    elif config.init == "random":
        emb = init_random(num_frames, config.tokens, dim, config.init_noise_std, gen)
    else:
        emb = init_zeros(num_frames, config.tokens, dim)
    emb = emb.detach().float().cpu()
    return emb[-1:].clone() if config.sets == "shared" else emb.clone()


def _make_optimizer(param: torch.nn.Parameter, config: InversionConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW([param], lr=config.lr, weight_decay=0.0)  # see InversionConfig
    return torch.optim.Adam([param], lr=config.lr)


# --- checkpoints -------------------------------------------------------------------------------

def _load_checkpoint(path: Path, config: InversionConfig, reference: dict, fingerprint: str) -> dict:
    """Load ``path`` and refuse (ConfigError naming the difference) if it belongs to another run."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / foreign file: tell the user what to delete
        raise InputError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: not a reenact inversion checkpoint; delete it to start over")
    saved = ckpt["reference"]
    if saved["shape"] != reference["shape"] or saved["sha256"] != reference["sha256"]:
        raise ConfigError(
            f"{path} was made for a different reference clip "
            f"({saved.get('name') or 'unnamed'}, shape {saved['shape']}); "
            "use the same reference or start without resume"
        )
    if ckpt["unet_fingerprint"] != fingerprint:
        raise ConfigError(f"{path} was made with a different model; "
                          "use the same model or start without resume")
    now = config.to_dict()
    diffs = [
        f"{k}: checkpoint {ckpt['config'].get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in _RESUMABLE_CHANGES and ckpt["config"].get(k) != now[k]
    ]
    if diffs:
        raise ConfigError(f"{path} was made with other settings ({'; '.join(diffs)}); "
                          "use the same settings or start without resume")
    return ckpt


# --- the frozen model --------------------------------------------------------------------------

@contextlib.contextmanager
def checkpoint_temporal_blocks(unet: torch.nn.Module) -> Iterator[int]:
    """Checkpoint every temporal transformer block of ``unet`` too, for the duration.

    ``unet.enable_gradient_checkpointing()`` makes SVD's UNet recompute its resnets and *spatial*
    transformer blocks in the backward pass, but diffusers'
    ``TransformerSpatioTemporalModel.forward`` calls its ``temporal_transformer_blocks`` outside
    any checkpoint, so their activations stay saved: at 14x576x1024 with fp16 weights an inversion
    step then still peaks at 32.3 GB, 11.0 GB with this (docs/PERFORMANCE.md). Each block's
    ``forward`` is wrapped in ``torch.utils.checkpoint`` (non-reentrant, as diffusers does) while
    grad is enabled; the gradients are unchanged. Yields the number of blocks wrapped; on exit
    every block gets its own ``forward`` back.
    """
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    blocks = [b for m in unet.modules() if isinstance(m, TransformerSpatioTemporalModel)
              for b in m.temporal_transformer_blocks]
    saved = [b.__dict__.get("forward") for b in blocks]  # None: the class's forward

    def checkpointed(forward):
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)
        return run

    for b in blocks:
        b.forward = checkpointed(b.forward)
    try:
        yield len(blocks)
    finally:
        for b, forward in zip(blocks, saved):
            if forward is None:
                del b.forward
            else:
                b.forward = forward


@contextlib.contextmanager
def gradient_checkpointing(unet: torch.nn.Module) -> Iterator[None]:
    """diffusers' gradient checkpointing plus :func:`checkpoint_temporal_blocks`, undone on exit.

    What ``InversionConfig.gradient_checkpointing`` turns on. Leaves diffusers' flag on if it was
    on before.
    """
    had = getattr(unet, "is_gradient_checkpointing", False)
    if not had:
        unet.enable_gradient_checkpointing()
    try:
        with checkpoint_temporal_blocks(unet):
            yield
    finally:
        if not had:
            unet.disable_gradient_checkpointing()


@contextlib.contextmanager
def _frozen(pipe, config: InversionConfig) -> Iterator[None]:
    """Freeze unet/vae/image encoder and apply the speed levers of ``config`` for the duration.

    Levers: gradient checkpointing (:func:`gradient_checkpointing`), the attention kind
    (:func:`reenact.routing.set_attention`) and ``torch.compile`` (``Module.compile``). Flags,
    modes, processors and the compiled call are restored afterwards.
    """
    unet = pipe.unet
    modules = [m for m in (unet, pipe.vae, getattr(pipe, "image_encoder", None)) if m is not None]
    trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
    was_training = unet.training
    for m in modules:
        m.requires_grad_(False)
    unet.eval()
    processors = set_attention(unet, config.attention)
    compiled = config.compile and getattr(unet, "_compiled_call_impl", None) is None
    if compiled:
        unet.compile()
    try:
        with gradient_checkpointing(unet) if config.gradient_checkpointing else contextlib.nullcontext():
            yield
    finally:
        if compiled:
            unet._compiled_call_impl = None
        unet.set_attn_processor(processors)
        unet.train(was_training)
        for p in trainable:
            p.requires_grad_(True)


# --- previews --------------------------------------------------------------------------------

def _write_previews(pipe, embedding: MotionEmbedding, images: list, folder: Path, step: int,
                    config: InversionConfig, size: tuple[int, int]) -> list[Path]:
    """Animate ``images`` with the current embedding in one batched pipeline call; gifs to ``folder``."""
    from reenact.pipeline import MotionTransferPipeline
    from reenact.video import write_video

    if isinstance(pipe, MotionTransferPipeline):
        gen_pipe = pipe
    else:
        gen_pipe = MotionTransferPipeline(**pipe.components)
        gen_pipe.set_progress_bar_config(disable=True)
    videos = gen_pipe(
        images,
        motion_embedding=embedding,
        height=size[0],
        width=size[1],
        num_frames=embedding.tensor.shape[0] - 1,
        num_inference_steps=config.preview_steps,
        fps=config.fps,
        motion_bucket_id=config.motion_bucket_id,
        noise_aug_strength=config.noise_aug_strength,
        generator=torch.Generator().manual_seed(config.seed),  # never the training stream
        output_type="pil",
    ).frames
    return [
        write_video(frames, Path(folder) / f"step_{step:06d}_{i}.gif", fps=config.fps, fmt="gif")
        for i, frames in enumerate(videos)
    ]


# --- the loop --------------------------------------------------------------------------------

def invert(
    pipe,
    frames: torch.Tensor,
    config: InversionConfig | None = None,
    *,
    output: str | os.PathLike | None = None,
    reference_name: str = "",
    resume: bool = False,
    preview_images: list | None = None,
    preview_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    snapshot_at: Collection[int] = (),
) -> InversionResult:
    """Optimise a motion embedding so the frozen SVD in ``pipe`` reconstructs ``frames``.

    ``frames``: the reference, ``(F, 3, H, W)`` float in ``[-1, 1]``, already resampled to the
    model's F frames and resized to the generation size H x W (see :mod:`reenact.video`).
    ``output``: where the final embedding (``.safetensors``) is written; checkpoints go to
    ``<output>.ckpt``. ``resume=True`` continues from that checkpoint (or starts fresh if
    there is none), refusing with :class:`ConfigError` if it was made for another reference,
    model or settings. ``callback(step, loss)`` runs after every step (``step`` counts from 1).
    Previews of ``preview_images`` (PIL images) are written to ``preview_dir`` every
    ``config.preview_every`` steps and at the end. ``snapshot_at``: steps after which a copy of
    the embedding is kept in ``result.snapshots`` (the convergence benchmark scores them).
    """
    config = config or InversionConfig()
    config.validate()
    if not (isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3):
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"reference must be a (F, 3, H, W) tensor (got {got})")
    num_frames, _, height, width = frames.shape
    if height % 8 or width % 8:
        raise InputError(f"reference size {height}x{width} must be a multiple of 8 (resize it)")
    if resume and output is None:
        raise ConfigError("resume needs an output path (the checkpoint is <output>.ckpt)")
    output = Path(output) if output is not None else None
    ckpt_file = checkpoint_path(output) if output is not None else None
    preview = bool(preview_images) and preview_dir is not None
    t_start = time.perf_counter()

    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    dim = unet.config.cross_attention_dim
    frames = frames.detach().float().cpu()
    reference = _reference_fingerprint(frames, reference_name)
    fingerprint = unet_fingerprint(unet)
    ckpt = None
    if resume and ckpt_file.exists():
        ckpt = _load_checkpoint(ckpt_file, config, reference, fingerprint)
    base_model = getattr(pipe, "model_name", None) or getattr(pipe, "name_or_path", "") or "unknown"
    metadata = {  # of the saved embedding; steps_done / final_loss are added at the end
        "format_version": FORMAT_VERSION,
        "base_model": base_model,
        "unet_fingerprint": fingerprint,
        "num_frames": num_frames,
        "tokens": config.tokens,
        "dim": dim,
        "height": height,  # the generation size = the reference's size
        "width": width,
        "fps": config.fps,
        "motion_bucket_id": config.motion_bucket_id,
        "noise_aug_strength": config.noise_aug_strength,
        "optimisation": json.dumps(config.to_dict(), sort_keys=True),
        "seed": config.seed,
        "reference": reference_name,
        "reference_sha256": reference["sha256"],
    }

    with _frozen(pipe, config):
        # 1. data: every VAE pass happens here, once
        size = tuple(config.optim_size) if config.optim_size else (height, width)
        banks = _latent_banks(vae, _augmented_copies(frames, size, config), config)
        x0_bank, cond_bank, sc_bank = (t.to(device) for t in banks)
        num_copies, bank_size = cond_bank.shape[:2]

        # 2. the embedding, its optimiser, the random stream (all from the checkpoint on resume)
        init = ckpt["embedding"] if ckpt else _initial_embedding(pipe, frames, config, dim)
        param = torch.nn.Parameter(init.float().to(device))
        optimizer = _make_optimizer(param, config)
        use_scaler = config.mixed_precision == "fp16" or unet.dtype == torch.float16
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        gen = torch.Generator(device=device).manual_seed(config.seed + 3)
        losses: list[float] = []
        ema, best, since_best, step = 0.0, math.inf, 0, 0
        if ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            if use_scaler and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            gen.set_state(ckpt["rng"])
            losses, step = list(ckpt["losses"]), int(ckpt["step"])
            ema, best, since_best = ckpt["ema"], ckpt["best_ema"], ckpt["since_best"]
        resumed_from = step

        def current() -> torch.Tensor:  # (F+1, N, d); "shared" expands its single set
            return param.expand(num_frames + 1, -1, -1) if config.sets == "shared" else param

        def snapshot(**extra) -> MotionEmbedding:
            final_loss = sum(losses[-10:]) / max(1, len(losses[-10:]))
            meta = {**metadata, "steps_done": step, "final_loss": final_loss, **extra}
            return MotionEmbedding(current().detach().float().cpu().clone(), meta)

        def due(every: int) -> bool:  # periodic work; the last step is handled after the loop
            return bool(every) and step % every == 0 and step < config.steps

        amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        fps_id = torch.full((config.batch_size,), float(config.fps - 1), device=device)
        bucket_id = torch.full((config.batch_size,), float(config.motion_bucket_id), device=device)
        previews: list[Path] = []
        snapshots: dict[int, torch.Tensor] = {}
        stopped_early = False
        bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="inverting", unit="step")

        routing = install_motion_routing(unet, config.tokens, num_frames)
        try:
            while step < config.steps:
                # sample a clip copy, a conditioning draw, a noise level and the noise
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, config)
                copy = torch.randint(num_copies, (config.batch_size,), generator=gen, device=device)
                draw = torch.randint(bank_size, (config.batch_size,), generator=gen, device=device)
                log_sigma = torch.randn(config.batch_size, generator=gen, device=device)
                sigma = torch.exp(config.log_sigma_mean + config.log_sigma_std * log_sigma)
                x0 = x0_bank[copy]
                noise = torch.randn(x0.shape, generator=gen, device=device)
                x_s = x0 + sigma.view(-1, 1, 1, 1, 1) * noise
                cond = cond_bank[copy, draw].unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
                time_ids = torch.stack([fps_id, bucket_id, sc_bank[copy, draw]], dim=1)
                emb_flat = flatten_embedding(current()).expand(config.batch_size, -1, -1)

                # forward, backward (to the embedding only), step
                with autocast:
                    denoised = denoise(unet, x_s, sigma, cond, emb_flat, time_ids)
                loss = edm_loss(denoised, x0, sigma)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1

                # log (the only host-device sync of a step)
                losses.append(loss.item())
                ema = LOSS_EMA_DECAY * ema + (1 - LOSS_EMA_DECAY) * losses[-1]
                ema_hat = ema / (1 - LOSS_EMA_DECAY ** len(losses))  # bias-corrected
                if ema_hat < best - config.early_stop_min_delta:
                    best, since_best = ema_hat, 0
                else:
                    since_best += 1
                bar.update(1)
                bar.set_postfix(loss=f"{ema_hat:.4f}", lr=f"{lr_at(step - 1, config):.2g}")

                # checkpoint, preview, callback, early stop
                if ckpt_file is not None and due(config.checkpoint_every):
                    with atomic_write(ckpt_file) as tmp:
                        torch.save({
                            "version": CHECKPOINT_VERSION,
                            "step": step,
                            "embedding": param.detach().cpu().clone(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if use_scaler else None,
                            "rng": gen.get_state(),
                            "losses": list(losses),
                            "ema": ema, "best_ema": best, "since_best": since_best,
                            "config": config.to_dict(),
                            "reference": reference,
                            "unet_fingerprint": fingerprint,
                        }, tmp)
                if preview and due(config.preview_every):
                    routing.remove()  # the generation pipeline routes the embedding itself
                    try:
                        previews += _write_previews(pipe, snapshot(), preview_images, Path(preview_dir),
                                                    step, config, (height, width))
                    finally:
                        routing = install_motion_routing(unet, config.tokens, num_frames)
                if step in snapshot_at:
                    snapshots[step] = current().detach().float().cpu().clone()
                if callback is not None:
                    callback(step, losses[-1])
                if config.early_stop_patience and since_best >= config.early_stop_patience:
                    stopped_early = True
                    break
        finally:
            routing.remove()
            bar.close()

        # 3. the result: the final file first, then drop the checkpoint
        result = snapshot(stopped_early=stopped_early)
        if output is not None:
            result.save(output)
            if ckpt_file.exists():
                ckpt_file.unlink()
        if preview:
            previews += _write_previews(pipe, result, preview_images, Path(preview_dir), step,
                                        config, (height, width))

    seconds = time.perf_counter() - t_start
    return InversionResult(result, losses, step, seconds, resumed_from, stopped_early, previews, snapshots)
