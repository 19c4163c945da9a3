"""Motion-textual inversion: optimise a motion-text embedding on one reference clip.

The paper's core step (docs/METHOD.md, "The optimisation"): Stable Video Diffusion stays frozen; the
CLIP image embedding it normally attends to is replaced by a learned ``(F+1) x N x d``
embedding, and only that embedding is optimised with SVD's own EDM loss (:mod:`reenact.edm`),
where ``x_0`` are the reference video's latents and ``cond`` the (noise-augmented) latent of
its first frame. :func:`invert` is that loop and nothing else -- data, embedding and
optimiser, :func:`step`, log, checkpoint -- in the order it runs (nanoGPT style); each piece is
a small named function benchmarks can call on their own.

Decisions made here (the paper is silent on them; the knobs are fields of
:class:`InversionConfig`, whose metadata says where each default comes from):

* **Everything the VAE sees is encoded once, before the loop** (:func:`encode_reference`): the
  reference latents (and those of ``num_augmentations`` augmented copies of the clip) and a
  bank of ``cond_bank_size`` noise-augmented conditioning latents per copy, each with its own
  ``ln s_c ~ N(-3, 0.5^2)``; each step samples one copy and one bank entry. Re-encoding per
  step would cost a VAE pass per step for a signal (a ~5 % pixel noise on one frame) that a
  bank of 16 draws covers well.
* **Augmentations** (against appearance leakage; the paper's kind is open): a random
  horizontal flip of the whole clip and a random crop of side scale ``[crop_scale, 1]``,
  same crop for all frames, resized back to the optimisation size. Copy 0 is always the
  unaugmented clip; the conditioning bank of each copy is built from *that* copy's first
  frame, so the model is never told that a flipped video starts from an unflipped frame.
  A flipped copy also mirrors the motion: keep ``flip_prob`` low (or 0) for motions whose
  left/right direction matters.
* **Resume**: a checkpoint (:class:`InversionState`'s state dict, the config, a fingerprint of
  the reference and of the UNet) is written atomically every ``checkpoint_every`` steps;
  ``resume=True`` continues from it bit-for-bit. An interrupt does *not* write a checkpoint
  (it may land in the middle of an optimiser step); at most one interval is lost. The
  checkpoint is kept until the final embedding is written, then deleted. A run whose loss or
  embedding becomes non-finite stops with :class:`~reenact.errors.DivergedError`, keeping the
  last (finite) checkpoint.
* **Randomness**: separate generators seeded from ``config.seed`` for the initialisation,
  the augmentations, the conditioning bank and the per-step sampling, so the precomputed
  banks are identical on resume and only the per-step generator's state needs saving.
* **Per-frame sets as a common set plus offsets** (``frame_lr`` < 1): the offsets get their
  own Adam parameter group at ``frame_lr`` x the learning rate; 1 keeps the paper's independent
  sets (the tensor itself, one group). See docs/METHOD.md.
* **Several starts** (``starts`` > 1; the paper runs one): K starts, each with its own
  initialisation and noise stream, run in one UNet batch (:func:`step_starts`) for
  ``start_steps``; the one with the lowest :func:`probe_losses` on noise draws common to all
  (and, with ``probe="hue"``, on hue-turned copies of the clip, encoded with the rest before
  the loop) is continued alone. Checkpoints begin after the choice.
* **Learning-rate schedule** is a pure function of the step (:func:`lr_at`), so there is no
  scheduler state to save.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F_nn
from tqdm.auto import tqdm

from reenact import edm, settings
from reenact.embedding import (
    FORMAT_VERSION,
    MotionEmbedding,
    clip_image_embeddings,
    init_from_clip,
    init_random,
    init_zeros,
    unet_fingerprint,
)
from reenact.errors import ConfigError, DivergedError, InputError
from reenact.checkpointing import checkpoint_temporal_blocks, gradient_checkpointing  # noqa: F401 (re-exported)
from reenact.files import atomic_write
from reenact.pipeline import SVD_CALL_DEFAULTS
from reenact.routing import ATTENTION_KINDS, flatten_embedding, install_motion_routing, set_attention
from reenact.settings import setting

__all__ = [
    "InversionConfig",
    "InversionResult",
    "InversionState",
    "ReferenceLatents",
    "invert",
    "step",
    "step_starts",
    "probe_losses",
    "common_draw_losses",
    "create_starts",
    "encode_reference",
    "motion_loss_weight",
    "lr_at",
    "reference_fingerprint",
    "checkpoint_path",
    "checkpoint_temporal_blocks",
    "gradient_checkpointing",
]

#: Decay of the loss EMA shown in the progress bar and used for early stopping (~50-step
#: window: the EDM loss is very noisy because s changes by orders of magnitude per step).
LOSS_EMA_DECAY = 0.98
#: Version of the checkpoint dict layout.
CHECKPOINT_VERSION = 1

SCHEDULES = ("constant", "cosine", "warmup-cosine")
OPTIMIZERS = ("adam", "adamw")
SETS = ("per-frame", "shared")
INITS = ("clip", "random", "zeros")
PRECISIONS = ("no", "fp16", "bf16")
PROBES = ("plain", "hue")
#: Hue rotations of the reference that ``probe="hue"`` measures the starts on.
HUE_PROBE_ANGLES = (math.pi / 2, math.pi, 3 * math.pi / 2)
#: Config fields that may change between an interrupted run and its resumption: they do not
#: change what is optimised (``steps`` may be raised to extend a run; with a cosine schedule
#: the remaining schedule then follows the new length; ``lr`` may be lowered to continue a run
#: that diverged from its last good checkpoint).
_RESUMABLE_CHANGES = frozenset({
    "steps", "lr", "checkpoint_every", "preview_every", "preview_steps", "early_stop_patience",
    "early_stop_min_delta", "gradient_checkpointing", "encode_chunk_size", "attention", "compile",
})

# help groups of the `reenact invert` flags
_OPT = "optimisation (paper: Adam on the EDM loss; what it leaves open is set per model profile)"
_EMB = "the embedding (paper: per-frame sets, N = 5, CLIP initialisation)"
_NOISE = "noise levels of the EDM loss"
_MICRO = "micro-conditioning (SVD pipeline defaults; recorded in the embedding and reused by animate)"
_AUG = "augmentations against appearance leakage (paper: used, kind open)"
_SPEED = "speed and memory"
_CKPT = "checkpoints and previews"
_TOY = "toy benchmark (benchmarks/convergence.py, docs/PERFORMANCE.md)"


@dataclass
class InversionConfig:
    """Every knob of the inversion. The defaults are the measured ones of the toy model; the
    per-model profiles (:mod:`reenact.profiles`) replace some of them for other models. Each
    field's metadata says what it does, where its default comes from and its valid range."""

    # -- optimisation --
    steps: int = setting(
        80, "optimisation steps", low=1, high=10**6, group=_OPT,
        source=f"{_TOY}: 90% of the final transfer score by 30 steps, 97% by 60")
    lr: float = setting(
        5e-2, "Adam learning rate (Adam's step is absolute per element: it depends on the "
        "embedding's scale)", low=1e-8, high=1.0, group=_OPT,
        source=f"{_TOY}: 1e-2 needs 8x the steps, 1e-1 plateaus lower")
    lr_relative: bool = setting(
        False, "multiply --lr by the initial embedding's per-element RMS, so one lr fits models "
        "whose embeddings differ in scale", group=_OPT,
        source="off on the toy: its CLIP initialisation has RMS 0.87-1.01 (8 benchmark clips), so "
        "absolute and relative lr agree there")
    lr_schedule: str = setting("constant", "learning-rate schedule", choices=SCHEDULES,
                               group=_OPT, source="open in the paper; constant measured best on the toy")
    warmup_steps: int = setting(20, "linear warm-up length of warmup-cosine", low=0, high=10**6,
                                group=_OPT, source="no source")
    optimizer: str = setting(
        "adam", "optimiser; adamw runs without weight decay (the public reimplementation's "
        "decay pulls the embedding to zero)", choices=OPTIMIZERS, group=_OPT, source="paper: Adam")
    batch_size: int = setting(1, "noise samples per step", low=1, high=64, group=_OPT,
                              source="public reimplementation: 1")
    seed: int = setting(0, "seed of initialisation, augmentations and noise sampling",
                        low=0, high=2**63 - 1, flag=False)
    starts: int = setting(
        1, "independent starts (own initialisation and noise stream each) run together in one "
        "UNet batch for --start-steps; the one with the lowest probe loss is continued",
        low=1, high=16, group=_OPT,
        source="paper: one start; the toy-v2 profile runs 2 (measured on its benchmark, "
        "docs/RESULTS.md); K x the activation memory of a step")
    start_steps: int = setting(
        20, "steps every start runs before the choice (they count towards --steps; >= --steps: "
        "the choice is made at the end)", low=1, high=10**6, group=_OPT,
        source="no source (the toy-v2 profile: 56, its steps, measured)")
    probe: str = setting(
        "plain", "what the probe loss is measured on: plain: the reference; hue: the reference with "
        "its colours turned by 90, 180 and 270 degrees (the same motion in other colours, which an "
        "embedding that learned the motion rather than the colours still denoises)",
        choices=PROBES, group=_OPT,
        source="no source (the toy-v2 profile: plain, measured)")
    probe_draws: int = setting(
        8, "noise draws of the probe loss that picks the start: the same draws for every start, "
        "so the comparison is paired", low=1, high=256, group=_OPT, source="no source")
    early_stop_patience: int = setting(
        0, "stop when the loss EMA has not improved for this many steps (0 = off)", low=0,
        high=10**6, group=_OPT, source="off: the EDM loss is too noisy to be a convergence signal")
    early_stop_min_delta: float = setting(0.0, "improvement that counts for early stopping",
                                          low=0.0, high=1e6, group=_OPT, source="no source")

    # -- the embedding --
    tokens: int = setting(5, "N tokens per set", low=1, high=1024, group=_EMB, source="paper: N = 5")
    sets: str = setting(
        "per-frame", "per-frame: F+1 distinct sets; shared: one set for all (the paper's F'=1 "
        "ablation)", choices=SETS, group=_EMB, source="paper: per-frame")
    frame_lr: float = setting(
        1.0, "per-frame sets: learn them as a common set (at --lr) plus one offset per set at "
        "--lr x this ratio (1 = the paper's F+1 independent sets; 0 = offsets frozen at their "
        "initial values)", low=0.0, high=1.0, group=_EMB,
        source="paper: independent sets; the toy-v2 profile measures 0.1 better (Adam moves every "
        "element ~lr per step, so F+1 sets with 1/(F+1) of the signal each drift more)")
    init: str = setting(
        "clip", "clip: the frames' CLIP embeddings (the paper's); random: N(0, init-noise-std^2), "
        "i.e. the null context (zeros, SVD's unconditional embedding) plus noise that makes the N "
        "tokens differ; zeros: exactly null (the N tokens then stay identical)", choices=INITS,
        group=_EMB,
        source="patent claim 3: initialised from CLIP image embeddings of the reference frames "
        "(the toy-v2 profile uses random: its CLIP encoder is untrained)")
    init_noise_std: float = setting(
        0.1, "noise making the N copies of a token differ, relative to the CLIP embeddings' std "
        "(random: the absolute std)", low=0.0, high=10.0, group=_EMB, source="no source")

    # -- EDM noise levels --
    log_sigma_mean: float = setting(
        0.7, "mean of ln sigma of the training noise", low=-6.2, high=6.5, group=_NOISE,
        source="SVD fine-tuning default; on the toy N(2.8, 1.6^2) starts faster and ends "
        "the same (3 references), so SVD's own training distribution is kept")
    log_sigma_std: float = setting(1.6, "std of ln sigma", low=0.0, high=5.0, group=_NOISE,
                                   source="SVD fine-tuning default")
    motion_weight: float = setting(
        0.0, "raise the loss weight where the reference moves: w = 1 + this x m, m in [0, 1] each "
        "latent pixel's largest distance from its temporal median (per clip copy, relative to the "
        "copy's largest), weights normalised to mean 1 per copy (0 = the paper's uniform loss)",
        low=0.0, high=100.0, group=_NOISE,
        source="paper: uniform EDM loss. The toy models were trained with such a weight (x 5 where "
               "the frame moves); the toy-v2 profile sets 4, measured on its benchmark "
               "(docs/RESULTS.md); the toy and svd profiles keep the paper's 0 (not measured there)")
    cond_log_sigma_mean: float = setting(
        -3.0, "mean of ln sigma of the conditioning-frame noise", low=-10.0, high=2.0,
        group=_NOISE, source="SVD training")
    cond_log_sigma_std: float = setting(0.5, "its std (0 = a fixed s_c = exp(mean))", low=0.0,
                                        high=3.0, group=_NOISE, source="SVD training")
    cond_bank_size: int = setting(16, "noisy conditioning latents precomputed per clip copy",
                                  low=1, high=4096, group=_NOISE, source="no source; see module docs")

    # -- micro-conditioning (identical in inversion and generation) --
    fps: int | None = setting(
        7, "fps conditioning (the UNet sees fps-1); None: the clip's own rate over the selected "
        "frames (reenact.video's ClipInfo.fps, clamped to 5-30)", low=1, high=1000, group=_MICRO,
        optional=True, source="SVD pipeline default; the toy model was trained at fps 7 only")
    motion_bucket_id: int = setting(127, "motion-amount conditioning", low=0, high=1023,
                                    group=_MICRO, source="SVD pipeline default")
    noise_aug_strength: float = setting(
        0.02, "image-noise conditioning used at generation (during inversion the third added-"
        "time id is the sampled s_c)", low=0.0, high=10.0, group=_MICRO,
        source="SVD pipeline default")

    # -- augmentations (precomputed: see the module docstring) --
    num_augmentations: int = setting(0, "augmented copies of the clip (0 = none)", low=0,
                                     high=64, group=_AUG, source="off on the toy (no leakage measured)")
    flip_prob: float = setting(0.0, "probability that a copy is mirrored (mirrors the motion too)",
                               low=0.0, high=1.0, group=_AUG, source="off on the toy")
    crop_scale: float = setting(1.0, "a copy's crop side is drawn from [crop-scale, 1]",
                                low=0.01, high=1.0, group=_AUG, source="1 = no crop on the toy")
    hue_prob: float = setting(
        0.0, "probability that a copy's hue is rotated by a random angle (about the grey axis; "
        "every colour changes, shapes and motion do not)", low=0.0, high=1.0, group=_AUG,
        source="off: not in the paper")

    # -- speed / memory --
    optim_size: tuple[int, int] | None = setting(
        None, "optimise at this smaller HxW (default: the clip's size)", group=_SPEED)
    mixed_precision: str = setting("no", "autocast dtype of the UNet passes", choices=PRECISIONS,
                                   group=_SPEED)
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass, temporal blocks included "
        "(SVD 14x576x1024 fp16: 54.7 -> 11.0 GB, +40% FLOPs per step; docs/PERFORMANCE.md)",
        group=_SPEED, source="off on the toy: it only costs time there")
    attention: str = setting(
        "sdpa", "sdpa: torch's fused scaled_dot_product_attention (diffusers' default); eager: "
        "diffusers' classic AttnProcessor (a reference; it holds whole attention matrices)",
        choices=ATTENTION_KINDS, group=_SPEED)
    compile: bool = setting(False, "torch.compile the UNet for the run (slow to start)",
                            group=_SPEED)
    encode_chunk_size: int = setting(8, "frames per VAE encode call", low=1, high=1024,
                                     group=_SPEED, source="SVD docs' decode chunk")

    # -- stopping, checkpoints, previews --
    checkpoint_every: int = setting(50, "write FILE.safetensors.ckpt every K steps (0 = never)",
                                    low=0, high=10**6, group=_CKPT)
    preview_every: int = setting(0, "preview every K steps (0 = only at the end)", low=0,
                                 high=10**6, group=_CKPT)
    preview_steps: int = setting(10, "Euler steps of a preview (cheaper than SVD's 25)", low=1,
                                 high=1000, group=_CKPT)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first out-of-range setting."""
        settings.validate(self)
        if self.optim_size is not None:
            size = tuple(self.optim_size)
            if not (len(size) == 2 and all(isinstance(v, int) and 8 <= v <= 4096 and v % 8 == 0
                                           for v in size)):
                raise ConfigError(f"optim_size must be (H, W), multiples of 8 (got {self.optim_size})")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (``optim_size`` as a list)."""
        d = asdict(self)
        if d["optim_size"] is not None:
            d["optim_size"] = [int(v) for v in d["optim_size"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InversionConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("optim_size") is not None:
            kw["optim_size"] = tuple(kw["optim_size"])
        return cls(**kw)


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


def lr_at(step: int, config: InversionConfig) -> float:
    """Learning rate of 0-based ``step``: constant, cosine to 0, or linear warm-up then cosine."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = config.warmup_steps if config.lr_schedule == "warmup-cosine" else 0
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- the data: everything the VAE sees, encoded once -------------------------------------------

def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing ``output`` lives: ``<output>.ckpt``."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def reference_fingerprint(frames: torch.Tensor, name: str = "") -> dict:
    """Shape and SHA-256 of the reference tensor: which clip (range, size) a run was made on."""
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
    """Copy 0 = the clip resized to ``size``; copies 1..K = random flip + crop (+ hue rotation),
    resized to ``size``.

    Crops are taken from the full-resolution frames (then resized) so they stay sharp.
    """
    gen = torch.Generator().manual_seed(config.seed + 1)
    hue_gen = torch.Generator().manual_seed(config.seed + 5)
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
        if config.hue_prob > 0:  # its own stream: flip/crop draws stay as without it
            v = torch.rand(2, generator=hue_gen).tolist()
            if v[0] < config.hue_prob:
                x = rotate_hue(x, 2 * math.pi * v[1])
        copies.append(fit(x))
    return copies


def rotate_hue(frames: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate every pixel of ``frames`` (..., 3, H, W) in [-1, 1] about the grey axis by ``angle``.

    The rotation (Rodrigues' formula about (1, 1, 1)/sqrt 3) keeps each pixel's grey level and
    saturation and turns its hue: a red object on a teal ground becomes, say, green on purple,
    while every edge and every motion stays where it was. Values leaving [-1, 1] are clipped.
    """
    c, s = math.cos(angle), math.sin(angle)
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    rot = torch.eye(3) * c + s * k + (1 - c) * torch.full((3, 3), 1 / 3)
    out = torch.einsum("ij,...jhw->...ihw", rot.to(frames), frames)
    return out.clamp(-1.0, 1.0)


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


@dataclass
class ReferenceLatents:
    """The reference as the loop samples it: ``x0`` ``(V, F, C, h, w)`` scaled latents of the V
    clip copies, ``cond`` ``(V, K, C, h, w)`` unscaled latents of K noise-augmented first frames
    per copy, ``cond_sigma`` ``(V, K)`` their noise levels (the third added-time id)."""

    x0: torch.Tensor
    cond: torch.Tensor
    cond_sigma: torch.Tensor
    weight: torch.Tensor | None = None  # (V, F, 1, h, w) loss weight per copy (``motion_weight``)

    def to(self, device: torch.device) -> ReferenceLatents:
        weight = None if self.weight is None else self.weight.to(device)
        return ReferenceLatents(self.x0.to(device), self.cond.to(device), self.cond_sigma.to(device), weight)


def motion_loss_weight(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """``(V, F, 1, h, w)`` loss weights ``1 + strength * m`` of clip copies ``x0`` ``(V, F, C, h, w)``.

    ``m``: how far each latent pixel is from its temporal median (largest over channels), relative
    to the copy's largest such distance -- where the reference moves (a moving object in every
    frame it is in, the background it uncovers; everything on a pan). Normalised to mean 1 per
    copy, so a pan (everything moves) weighs as before and a small moving object counts for more
    than its area, as in the toy models' training loss. A still copy gets uniform weights.
    """
    dist = (x0 - x0.median(dim=1, keepdim=True).values).abs().amax(dim=2, keepdim=True)
    peak = dist.amax(dim=(1, 2, 3, 4), keepdim=True)
    m = torch.where(peak > 1e-6, dist / peak.clamp_min(1e-6), torch.zeros_like(dist))
    w = 1.0 + strength * m
    return w / w.mean(dim=(1, 2, 3, 4), keepdim=True)


def encode_reference(vae: torch.nn.Module, frames: torch.Tensor, config: InversionConfig) -> ReferenceLatents:
    """Augment ``frames`` (F, 3, H, W) and encode every copy and its conditioning bank, once."""
    size = tuple(config.optim_size) if config.optim_size else tuple(frames.shape[-2:])
    x0, cond, cond_sigma = _latent_banks(vae, _augmented_copies(frames, size, config), config)
    weight = motion_loss_weight(x0, config.motion_weight) if config.motion_weight > 0 else None
    return ReferenceLatents(x0, cond, cond_sigma, weight)


# --- the state: embedding, optimiser, random stream, loss log ---------------------------------

@dataclass
class LossLog:
    """Every step's loss, their bias-corrected EMA (progress bar, early stopping) and its best."""

    losses: list[float] = field(default_factory=list)
    ema: float = 0.0
    best: float = math.inf
    since_best: int = 0

    def add(self, loss: float, min_delta: float) -> float:
        """Record ``loss``; return the bias-corrected EMA."""
        self.losses.append(loss)
        self.ema = LOSS_EMA_DECAY * self.ema + (1 - LOSS_EMA_DECAY) * loss
        ema_hat = self.ema / (1 - LOSS_EMA_DECAY ** len(self.losses))
        if ema_hat < self.best - min_delta:
            self.best, self.since_best = ema_hat, 0
        else:
            self.since_best += 1
        return ema_hat

    def recent_mean(self, n: int = 10) -> float:
        tail = self.losses[-n:]
        return sum(tail) / max(1, len(tail))


@dataclass
class InversionState:
    """Everything that changes during a run; :meth:`state_dict` / :meth:`load_state_dict` are
    symmetric, and are the checkpoint (with the config and fingerprints beside them)."""

    param: torch.nn.Parameter  # (F+1, N, d); (1, N, d) for sets="shared" or as the common set of frame_lr < 1
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator | None  # the per-step sampling stream (None on "meta": no RNG there)
    num_frames: int
    lr_scale: float = 1.0  # the initial embedding's RMS with lr_relative, else 1
    offsets: torch.nn.Parameter | None = None  # (F+1, N, d) with frame_lr < 1; param is then (1, N, d)
    step: int = 0
    log: LossLog = field(default_factory=LossLog)
    start_choice: dict | None = None  # with several starts: which was kept, and every probe loss

    @classmethod
    def create(cls, init: torch.Tensor, config: InversionConfig, num_frames: int,
               device: torch.device, half_precision: bool, seed: int | None = None) -> InversionState:
        """A fresh state from the initial embedding ``init`` (see :func:`initial_embedding`);
        ``seed`` (default ``config.seed``) seeds its per-step sampling stream."""
        seed = config.seed if seed is None else seed
        init = init.detach().float().to(device)
        offsets = None
        if init.shape[0] > 1 and config.frame_lr < 1.0:  # common set + per-set offsets
            param = torch.nn.Parameter(init.mean(0, keepdim=True))
            offsets = torch.nn.Parameter(init - param.detach())
            groups = [{"params": [param]}, {"params": [offsets], "lr_ratio": config.frame_lr}]
        else:
            param = torch.nn.Parameter(init.clone())  # never alias `init`
            groups = [{"params": [param]}]
        if config.optimizer == "adamw":  # weight decay forced to 0: see InversionConfig.optimizer
            optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.0)
        else:
            optimizer = torch.optim.Adam(groups, lr=config.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=half_precision)
        generator = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed + 3)
        lr_scale = float(init.float().pow(2).mean().sqrt()) if config.lr_relative else 1.0
        return cls(param, optimizer, scaler, generator, num_frames, lr_scale, offsets)

    def sets(self) -> torch.Tensor:
        """The embedding as the model sees it, (F+1, N, d): "shared" expands its single set;
        with ``frame_lr < 1`` the sets are the common set plus their offsets."""
        if self.offsets is not None:
            return self.param + self.offsets
        if self.param.shape[0] == 1:
            return self.param.expand(self.num_frames + 1, -1, -1)
        return self.param

    def embedding(self, metadata: dict) -> MotionEmbedding:
        """A detached copy as a :class:`MotionEmbedding`, with the run's progress in its metadata."""
        meta = {**metadata, "steps_done": self.step, "final_loss": self.log.recent_mean()}
        return MotionEmbedding(self.sets().detach().float().cpu().clone(), meta)

    def is_finite(self) -> bool:
        return bool(self.log.losses) and math.isfinite(self.log.losses[-1]) and bool(
            torch.isfinite(self.sets()).all())

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "lr_scale": self.lr_scale,
            # the sets as learned so far (what a resumed run is created from), and for
            # frame_lr < 1 its two exact parts (a sum does not split back bit for bit)
            "embedding": (self.param if self.offsets is None else self.sets()).detach().cpu().clone(),
            "common": None if self.offsets is None else self.param.detach().cpu().clone(),
            "offsets": None if self.offsets is None else self.offsets.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": self.generator.get_state(),
            "losses": list(self.log.losses),
            "ema": self.log.ema, "best_ema": self.log.best, "since_best": self.log.since_best,
            "start_choice": self.start_choice,
        }

    def load_state_dict(self, d: dict) -> None:
        with torch.no_grad():
            if self.offsets is None:
                self.param.copy_(d["embedding"].to(self.param.device))
            else:
                self.param.copy_(d["common"].to(self.param.device))
                self.offsets.copy_(d["offsets"].to(self.offsets.device))
        self.optimizer.load_state_dict(copy.deepcopy(d["optimizer"]))  # never alias another state
        if self.scaler.is_enabled() and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        self.generator.set_state(d["rng"])
        self.step = int(d["step"])
        self.lr_scale = float(d.get("lr_scale", 1.0))
        self.log = LossLog(list(d["losses"]), d["ema"], d["best_ema"], d["since_best"])
        self.start_choice = d.get("start_choice")


def initial_embedding(pipe, frames: torch.Tensor, config: InversionConfig, dim: int,
                      seed: int | None = None) -> torch.Tensor:
    """(F+1, N, d) -- or (1, N, d) for ``sets="shared"`` -- float32 on the CPU.

    "shared" keeps the temporal set of the full initialisation, i.e. frame 0's CLIP embedding
    for ``init="clip"``: exactly what stock SVD would attend to for this clip. ``seed``
    (default ``config.seed``) draws the noise that makes the N tokens differ.
    """
    num_frames = frames.shape[0]
    gen = torch.Generator().manual_seed(config.seed if seed is None else seed)
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


# --- one step ---------------------------------------------------------------------------------

def sample_batch(latents: ReferenceLatents, config: InversionConfig, gen: torch.Generator):
    """Draw a clip copy, a conditioning draw, a noise level and the noise, per batch element.

    Returns ``x0``, ``sigma``, ``x_s``, ``cond`` (repeated over frames), ``added_time_ids`` and
    the loss weight of each element's copy (None: uniform, the paper's).
    """
    b, device = config.batch_size, latents.x0.device
    num_copies, bank_size = latents.cond.shape[:2]
    num_frames = latents.x0.shape[1]
    copy = torch.randint(num_copies, (b,), generator=gen, device=device)
    draw = torch.randint(bank_size, (b,), generator=gen, device=device)
    sigma = edm.sample_sigma(b, config.log_sigma_mean, config.log_sigma_std, gen, device)
    x0 = latents.x0[copy]
    x_s = x0 + edm.append_dims(sigma, x0.ndim) * torch.randn(x0.shape, generator=gen, device=device)
    cond = latents.cond[copy, draw].unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
    time_ids = torch.stack([torch.full((b,), float(config.fps - 1), device=device),
                            torch.full((b,), float(config.motion_bucket_id), device=device),
                            latents.cond_sigma[copy, draw]], dim=1)
    weight = None if latents.weight is None else latents.weight[copy]
    return x0, sigma, x_s, cond, time_ids, weight


def step(unet: torch.nn.Module, state: InversionState, latents: ReferenceLatents,
         config: InversionConfig) -> torch.Tensor:
    """One optimisation step: sample, denoise, EDM loss, backward to the embedding, Adam.

    The motion routing must be installed on ``unet`` (``invert`` does it). Returns the loss
    tensor (not synchronised; ``.item()`` it to log).
    """
    return step_starts(unet, [state], latents, config)[0]


def step_starts(unet: torch.nn.Module, states: Sequence[InversionState], latents: ReferenceLatents,
                config: InversionConfig) -> torch.Tensor:
    """One step of each of ``states`` -- independent starts -- in one UNet batch; ``(K,)`` losses.

    Each start draws its own samples from its own stream and has its own optimiser; the UNet
    treats batch elements independently (group norm, attention and the frozen weights are per
    sample), so the summed loss gives every start exactly its own gradient: K starts batched
    are K single runs, at the cost of one larger batch (on 2 CPU cores 3 starts cost 2.3x one).
    """
    draws = []
    for state in states:
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(state.step, config) * state.lr_scale * group.get("lr_ratio", 1.0)
        draws.append(sample_batch(latents, config, state.generator))
    *parts, weights = zip(*draws)
    x0, sigma, x_s, cond, time_ids = (torch.cat(p) for p in parts)
    weight = None if latents.weight is None else torch.cat(weights)
    context = torch.cat([flatten_embedding(s.sets()).expand(config.batch_size, -1, -1) for s in states])
    with _autocast(config, latents.x0.device.type):
        denoised = edm.denoise(unet, x_s, sigma, cond, context, time_ids)
    b = config.batch_size
    part = lambda t, k: None if t is None else t[k * b:(k + 1) * b]  # noqa: E731
    losses = [edm.loss(part(denoised, k), part(x0, k), part(sigma, k), weight=part(weight, k))
              for k in range(len(states))]
    total = None
    for state, loss in zip(states, losses):
        state.optimizer.zero_grad(set_to_none=True)
        scaled = state.scaler.scale(loss)
        total = scaled if total is None else total + scaled
    total.backward()
    for state in states:
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.step += 1
    return torch.stack([loss.detach() for loss in losses])


def probe_losses(unet: torch.nn.Module, states: Sequence[InversionState], latents: ReferenceLatents,
                 config: InversionConfig) -> list[float]:
    """Each start's EDM loss on the same ``config.probe_draws`` samples (no gradient).

    The training losses of different starts come from different noise draws, and the EDM loss
    of one draw varies by orders of magnitude with its noise level, so they cannot rank the
    starts; common draws (a generator seeded ``config.seed + 5``, the training distribution of
    noise levels) make the comparison paired: :func:`common_draw_losses` of their sets.
    """
    return common_draw_losses(unet, [s.sets() for s in states], latents, config, config.seed + 5)


def common_draw_losses(unet: torch.nn.Module, embeddings: Sequence[torch.Tensor], latents: ReferenceLatents,
                       config: InversionConfig, seed: int) -> list[float]:
    """The mean EDM loss of each ``(F+1, N, d)`` embedding on the same ``config.probe_draws``
    samples of the training distribution (a generator seeded ``seed``; no gradient): a paired
    comparison of embeddings (the starts' probe; the oracle against inverted embeddings in
    ``benchmarks/toy_basins.py``). One draw at a time for all embeddings, under the step's
    autocast: never a larger batch than a training step of that many starts (no memory surprise
    on a real card). Needs the motion routing installed.
    """
    gen = torch.Generator(device=latents.x0.device).manual_seed(seed)
    x0, sigma, x_s, cond, time_ids, weight = sample_batch(
        latents, dataclasses.replace(config, batch_size=config.probe_draws), gen)
    k = len(embeddings)
    totals = [0.0] * k
    with torch.no_grad(), _autocast(config, latents.x0.device.type):
        context = torch.cat([flatten_embedding(e.to(latents.x0.device)) for e in embeddings])
        for d in range(config.probe_draws):
            one = slice(d, d + 1)
            denoised = edm.denoise(unet, x_s[one].expand(k, *x_s.shape[1:]), sigma[one].expand(k),
                                   cond[one].expand(k, *cond.shape[1:]), context,
                                   time_ids[one].expand(k, -1))
            for i in range(k):
                totals[i] += float(edm.loss(denoised[i:i + 1], x0[one], sigma[one],
                                            weight=None if weight is None else weight[one]))
    return [t / config.probe_draws for t in totals]


def _autocast(config: InversionConfig, device_type: str):
    """The autocast context of ``config.mixed_precision`` (a no-op for "no")."""
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
    return torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


def start_seed(seed: int, k: int) -> int:
    """The seed of start ``k`` (start 0 is the run's own seed: ``starts=1`` is the plain run)."""
    return seed + 1_000_003 * k


def create_starts(pipe, frames: torch.Tensor, config: InversionConfig, device: torch.device,
                  half_precision: bool) -> list[InversionState]:
    """The ``config.starts`` fresh states of a run: start k initialised and streamed from
    :func:`start_seed` ``(config.seed, k)``."""
    dim = pipe.unet.config.cross_attention_dim
    seeds = [start_seed(config.seed, k) for k in range(config.starts)]
    return [InversionState.create(initial_embedding(pipe, frames, config, dim, seed), config, frames.shape[0],
                                  device, half_precision, seed) for seed in seeds]


# --- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path: Path, state: InversionState, config: InversionConfig, reference: dict,
                    fingerprint: str) -> None:
    """The state plus what identifies the run, written atomically (a full disk: WriteError)."""
    ckpt = {**state.state_dict(), "version": CHECKPOINT_VERSION, "config": config.to_dict(),
            "reference": reference, "unet_fingerprint": fingerprint}
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)


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
    """Animate ``images`` with the current embedding in one batched pipeline call; gifs to ``folder``.

    Generated with the embedding's own micro-conditioning, ``config.preview_steps`` Euler steps
    and a generator seeded ``config.seed`` (never the training stream).
    """
    from reenact.pipeline import GenerationConfig, MotionTransferPipeline
    from reenact.video import write_video

    if isinstance(pipe, MotionTransferPipeline):
        gen_pipe = pipe
    else:
        gen_pipe = MotionTransferPipeline(**pipe.components)
        gen_pipe.set_progress_bar_config(disable=True)
    gen = GenerationConfig(steps=config.preview_steps, seed=config.seed).resolve(embedding, size)
    videos = gen_pipe.animate(images, embedding, gen)
    return [
        write_video(frames, Path(folder) / f"step_{step:06d}_{i}.gif", fps=gen.fps, fmt="gif")
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
    metadata: dict | None = None,
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
    ``metadata``: extra entries recorded in the embedding (e.g. where the frames came from).
    """
    config = _checked(config or InversionConfig(), frames, output, resume)
    t_start = time.perf_counter()
    unet, num_frames, device = pipe.unet, frames.shape[0], pipe.unet.device
    frames = frames.detach().float().cpu()
    reference = reference_fingerprint(frames, reference_name)
    fingerprint = unet_fingerprint(unet)
    ckpt_file = checkpoint_path(output) if output is not None else None
    ckpt = _load_checkpoint(ckpt_file, config, reference, fingerprint) if resume and ckpt_file.exists() else None
    meta = _embedding_metadata(pipe, frames, config, reference_name, reference["sha256"], metadata)
    preview = bool(preview_images) and preview_dir is not None
    previews: list[Path] = []
    snapshots: dict[int, torch.Tensor] = {}
    stopped_early = False

    with _frozen(pipe, config):
        # 1. data (every VAE pass happens here, once), 2. the embedding(s) and optimiser(s)
        latents = encode_reference(pipe.vae, frames, config).to(device)
        several = config.starts > 1 and not ckpt
        probe_on = [latents] if not several or config.probe == "plain" else [
            encode_reference(pipe.vae, rotate_hue(frames, a), config).to(device) for a in HUE_PROBE_ANGLES]
        half = config.mixed_precision == "fp16" or unet.dtype == torch.float16
        if ckpt:
            state = InversionState.create(ckpt["embedding"], config, num_frames, device, half)
            state.load_state_dict(ckpt)
            starts = [state]
        else:
            starts = create_starts(pipe, frames, config, device, half)
            state = starts[0]
        resumed_from = state.step
        bar = tqdm(total=config.steps, initial=state.step, disable=not progress, desc="inverting", unit="step")
        routing = install_motion_routing(unet, config.tokens, num_frames)
        try:
            if several:  # 2'. several starts, one batch; keep the best by the probe loss
                state = _explore_starts(unet, starts, latents, probe_on, config, bar, callback)
            while state.step < config.steps:
                # 3. one step, 4. log (the only host-device sync of a step)
                loss = step(unet, state, latents, config).item()
                ema = state.log.add(loss, config.early_stop_min_delta)
                if not state.is_finite():
                    raise _diverged(state, config, ckpt_file)
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr_at(state.step - 1, config) * state.lr_scale:.2g}")

                # 5. checkpoint, preview, snapshot, callback, early stop
                if ckpt_file is not None and _due(state.step, config.checkpoint_every, config):
                    save_checkpoint(ckpt_file, state, config, reference, fingerprint)
                if preview and _due(state.step, config.preview_every, config):
                    routing.remove()  # the generation pipeline routes the embedding itself
                    previews += _write_previews(pipe, state.embedding(meta), preview_images, Path(preview_dir),
                                                state.step, config, tuple(frames.shape[-2:]))
                    routing = install_motion_routing(unet, config.tokens, num_frames)
                if state.step in snapshot_at:
                    snapshots[state.step] = state.sets().detach().float().cpu().clone()
                if callback is not None:
                    callback(state.step, loss)
                if config.early_stop_patience and state.log.since_best >= config.early_stop_patience:
                    stopped_early = True
                    break
        finally:
            routing.remove()
            bar.close()

        # 6. the result: the final file first, then drop the checkpoint
        extra = {"start_choice": state.start_choice} if state.start_choice else {}
        result = state.embedding({**meta, "stopped_early": stopped_early, **extra})
        if output is not None:
            result.save(output)
            ckpt_file.unlink(missing_ok=True)
        if preview:
            previews += _write_previews(pipe, result, preview_images, Path(preview_dir), state.step,
                                        config, tuple(frames.shape[-2:]))

    seconds = time.perf_counter() - t_start
    return InversionResult(result, list(state.log.losses), state.step, seconds, resumed_from,
                           stopped_early, previews, snapshots)


def _explore_starts(unet, starts: list[InversionState], latents: ReferenceLatents,
                    probe_on: list[ReferenceLatents], config: InversionConfig, bar, callback) -> InversionState:
    """Run every start for ``config.start_steps`` steps in one batch and return the one with the
    lowest :func:`probe_losses`, averaged over ``probe_on`` (the reference's latents, or those of
    its hue-turned copies), recording the choice on it.

    There is no single embedding before the choice, so checkpoints, previews, snapshots and
    early stopping begin after it; ``callback`` gets the lowest of the starts' losses. A start
    whose loss or embedding is no longer finite is never chosen; if none is finite, the run
    stops with :class:`DivergedError`.
    """
    while starts[0].step < min(config.start_steps, config.steps):
        losses = step_starts(unet, starts, latents, config).tolist()
        for state, loss in zip(starts, losses):
            state.log.add(loss, config.early_stop_min_delta)
        finite = [loss for state, loss in zip(starts, losses) if state.is_finite()]
        if not finite:
            raise _diverged(starts[0], config, None)
        bar.update(1)
        bar.set_postfix(loss=f"{min(finite):.4f}", starts=len(starts))
        if callback is not None:
            callback(starts[0].step, min(finite))
    per_clip = [probe_losses(unet, starts, clip, config) for clip in probe_on]
    probes = [p if state.is_finite() and math.isfinite(p) else math.inf
              for state, p in zip(starts, (sum(ps) / len(ps) for ps in zip(*per_clip)))]
    best = min(range(len(starts)), key=probes.__getitem__)
    chosen = starts[best]
    chosen.start_choice = {"chosen": best, "seed": start_seed(config.seed, best), "after_steps": chosen.step,
                           "probe_losses": [round(p, 6) if math.isfinite(p) else None for p in probes]}
    return chosen


def _checked(config: InversionConfig, frames, output, resume: bool) -> InversionConfig:
    """Validate the settings and the reference before any work (ConfigError / InputError)."""
    config.validate()
    if not (isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3):
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"reference must be a (F, 3, H, W) tensor (got {got})")
    if frames.shape[-2] % 8 or frames.shape[-1] % 8:
        raise InputError(f"reference size {frames.shape[-2]}x{frames.shape[-1]} must be a multiple "
                         "of 8 (resize it)")
    if resume and output is None:
        raise ConfigError("resume needs an output path (the checkpoint is <output>.ckpt)")
    if config.fps is None:  # "the clip's" without a clip to ask (api.invert_video asks): SVD's
        config = dataclasses.replace(config, fps=SVD_CALL_DEFAULTS["fps"])
    return config


def _due(step: int, every: int, config: InversionConfig) -> bool:
    """Periodic work after ``step``; the last step is handled after the loop."""
    return bool(every) and step % every == 0 and step < config.steps


def _embedding_metadata(pipe, frames: torch.Tensor, config: InversionConfig, reference_name: str,
                        reference_sha256: str, extra: dict | None) -> dict:
    """What the saved embedding records (steps_done / final_loss are added at the end)."""
    num_frames, _, height, width = frames.shape
    return {
        "format_version": FORMAT_VERSION,
        "base_model": getattr(pipe, "model_name", None) or getattr(pipe, "name_or_path", "") or "unknown",
        "unet_fingerprint": unet_fingerprint(pipe.unet),
        "num_frames": num_frames,
        "tokens": config.tokens,
        "dim": pipe.unet.config.cross_attention_dim,
        "height": height,  # the generation size = the reference's size
        "width": width,
        "fps": config.fps,
        "motion_bucket_id": config.motion_bucket_id,
        "noise_aug_strength": config.noise_aug_strength,
        "optimisation": config.to_dict(),
        "seed": config.seed,
        "reference": reference_name,
        "reference_sha256": reference_sha256,
        **(extra or {}),
    }


def _diverged(state: InversionState, config: InversionConfig, ckpt_file: Path | None) -> DivergedError:
    kept = "nothing was saved"
    if ckpt_file is not None and ckpt_file.exists():
        saved = torch.load(ckpt_file, map_location="cpu", weights_only=True)["step"]
        kept = f"the last good checkpoint (step {saved}) is kept: resume it with a lower --lr and --resume"
    return DivergedError(
        f"the inversion diverged at step {state.step} (loss {state.log.losses[-1]:.4g}, lr "
        f"{lr_at(state.step - 1, config) * state.lr_scale:.3g}); {kept}; otherwise lower --lr and start again"
    )
