"""The motion-text embedding ``(F+1) x N x d``: the only thing motion-textual inversion learns.

Set ``f < F`` conditions the spatial cross-attention of frame ``f``; set ``F`` the temporal
cross-attention (see :mod:`reenact.routing`). It is stored as one ``.safetensors`` tensor named
``motion_embedding`` plus string metadata (the model it was learned on, the micro-conditioning
used, the optimisation settings), so a file says what it needs to be reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import EmbeddingError, InputError
from .files import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "TENSOR_NAME",
    "MotionEmbedding",
    "unet_fingerprint",
    "check_compatible",
    "check_recorded_size",
    "LIMITS",
    "clip_image_embeddings",
    "init_from_clip",
    "init_random",
    "init_zeros",
]

#: version of the file layout written by :meth:`MotionEmbedding.save`
FORMAT_VERSION = 1
#: name of the tensor inside the ``.safetensors`` file
TENSOR_NAME = "motion_embedding"

# file-level metadata keys: written by save(), not part of MotionEmbedding.metadata
_VERSION_KEY = "format_version"
_JSON_KEYS = "json_keys"  # JSON list of the keys whose values are JSON-encoded
# metadata that restates the tensor's shape; always set from the tensor
_SHAPE_KEYS = ("num_frames", "tokens", "dim")

#: What a file may claim, checked on load before the tensor is read (nothing is allocated from
#: an unchecked number). Generous for every SVD-family model (SVD: F = 14 or 25, d = 1024,
#: 576x1024; the paper uses N <= 16 tokens) while keeping a hostile or corrupt header from
#: making ``animate`` allocate without bound: 4096 px per side is 28x SVD's pixel count.
LIMITS: dict[str, int] = {
    "num_frames": 256,  # F
    "tokens": 1024,  # N
    "dim": 16384,  # d
    "side": 4096,  # recorded height / width, pixels
}
#: A recorded generation size may exceed the model's native side by at most this factor
#: (checked against the model by :func:`check_recorded_size`).
MAX_SIZE_FACTOR = 2
# metadata that drives generation: must be finite numbers in these (inclusive) ranges when
# present. Other metadata is informational and kept as recorded.
_NUMERIC_META = {
    "fps": (1, 1000),
    "motion_bucket_id": (0, 1023),
    "noise_aug_strength": (0.0, 10.0),
}

# UNet config keys that decide whether an embedding learned on one UNet fits another
_FINGERPRINT_KEYS = (
    "cross_attention_dim",
    "block_out_channels",
    "num_attention_heads",
    "layers_per_block",
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "transformer_layers_per_block",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


@dataclass
class MotionEmbedding:
    """A learned motion: ``tensor`` ``(F+1, N, d)`` (float32, CPU) and its ``metadata``.

    ``metadata`` holds whatever describes how it was made (``base_model``, ``unet_fingerprint``,
    ``height``, ``width``, ``fps``, ``motion_bucket_id``, ``noise_aug_strength``, ``optimisation``,
    ``steps_done``, ``final_loss``, ``seed``, ``reference``, ...); ``num_frames``, ``tokens`` and
    ``dim`` are filled in from the tensor. ``path`` is the file it was loaded from, if any.
    """

    tensor: torch.Tensor
    metadata: dict[str, object] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.tensor.ndim != 3:
            raise ValueError(f"motion embedding must be (F+1, N, d), got {tuple(self.tensor.shape)}")
        if self.tensor.shape[0] < 2:
            raise ValueError("motion embedding needs F+1 >= 2 sets (F frames + temporal)")
        self.tensor = self.tensor.detach().to("cpu", torch.float32).contiguous()
        shape = {"num_frames": self.num_frames, "tokens": self.tokens, "dim": self.dim}
        for key, value in shape.items():
            if key in self.metadata and self.metadata[key] != value:
                raise ValueError(f"metadata {key}={self.metadata[key]!r} but the tensor has {value}")
        self.metadata = {**self.metadata, **shape}

    @property
    def num_frames(self) -> int:
        """F: frames of the model the embedding was learned for."""
        return self.tensor.shape[0] - 1

    @property
    def tokens(self) -> int:
        """N: tokens per set."""
        return self.tensor.shape[1]

    @property
    def dim(self) -> int:
        """d: the UNet's cross-attention width."""
        return self.tensor.shape[2]

    @property
    def name(self) -> str:
        """How messages refer to this embedding: its file name, if it has one."""
        return self.path.name if self.path is not None else "the motion embedding"

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.safetensors`` file atomically (:func:`reenact.files.atomic_write`).

        Metadata values are strings; non-strings are JSON-encoded and listed under
        ``json_keys`` so :meth:`load` decodes exactly those.
        """
        path = Path(path)
        meta: dict[str, str] = {}
        encoded = []
        for key, value in {**self.metadata, _VERSION_KEY: FORMAT_VERSION}.items():
            if isinstance(value, str):
                meta[str(key)] = value
            else:
                meta[str(key)] = json.dumps(value)
                encoded.append(str(key))
        meta[_JSON_KEYS] = json.dumps(encoded)
        data = safetensors_bytes({TENSOR_NAME: self.tensor}, metadata=meta)
        with atomic_write(path) as tmp:  # a full disk: WriteError, no partial file
            tmp.write_bytes(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MotionEmbedding:
        """Read a file written by :meth:`save`; user-facing errors name the file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"motion embedding file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = dict(fh.metadata() or {})
                if TENSOR_NAME not in fh.keys():
                    raise EmbeddingError(f"{path} has no tensor named '{TENSOR_NAME}'")
                tensor_slice = fh.get_slice(TENSOR_NAME)
                _check_shape(tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()), path)
                tensor = fh.get_tensor(TENSOR_NAME)  # only now: the shape is bounded
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EmbeddingError(f"{path} is not a motion embedding (.safetensors) file: {reason}") from None
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise EmbeddingError(
                f"{path} contains {bad} non-finite values (NaN or inf): the inversion that wrote "
                "it diverged; invert again (e.g. with a lower --lr)"
            )
        metadata = _decode_metadata(raw, path)
        version = metadata.pop(_VERSION_KEY, 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise EmbeddingError(
                f"{path} has format version {version}, this reenact reads up to {FORMAT_VERSION}; "
                "upgrade reenact"
            )
        for key in _SHAPE_KEYS:
            metadata.pop(key, None)  # restated from the tensor by __post_init__
        _check_generation_metadata(metadata, path)
        if isinstance(metadata.get("optimisation"), str):  # files written before 2026-11-26
            with contextlib.suppress(json.JSONDecodeError):  # stored the settings JSON-encoded twice
                metadata["optimisation"] = json.loads(metadata["optimisation"])
        return cls(tensor=tensor, metadata=metadata, path=path)


def _check_shape(shape: tuple[int, ...], dtype: str, path: Path) -> None:
    """Refuse a tensor header that is not ``(F+1, N, d)`` of floats within :data:`LIMITS`."""
    if len(shape) != 3 or shape[0] < 2:
        raise EmbeddingError(f"{path}: motion embedding must be (F+1, N, d), got {shape}")
    if dtype.upper() not in ("F16", "BF16", "F32", "F64"):
        raise EmbeddingError(f"{path}: motion embedding must be floating point, got {dtype}")
    claimed = {"num_frames": shape[0] - 1, "tokens": shape[1], "dim": shape[2]}
    for key, value in claimed.items():
        if not 1 <= value <= LIMITS[key]:
            raise EmbeddingError(
                f"{path} claims {key}={value}, outside 1..{LIMITS[key]}; the file is corrupt "
                "or not a motion embedding"
            )


def _check_generation_metadata(metadata: dict[str, object], path: Path) -> None:
    """Refuse recorded sizes and micro-conditioning that no generation could use.

    ``height``/``width`` must be multiples of 8 in ``8..LIMITS['side']``; ``fps``,
    ``motion_bucket_id`` and ``noise_aug_strength`` finite numbers in their ranges. Checked on
    load, so nothing downstream sizes a buffer from an unchecked number.
    """
    for key in ("height", "width"):
        if key not in metadata:
            continue
        value = metadata[key]
        if (not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= LIMITS["side"]
                or value % 8):
            raise EmbeddingError(
                f"{path} records {key}={value!r}; a size must be a multiple of 8 in "
                f"8..{LIMITS['side']}: the file is corrupt (pass --height and --width, or invert again)"
            )
    for key, (low, high) in _NUMERIC_META.items():
        if key not in metadata:
            continue
        value = metadata[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            raise EmbeddingError(
                f"{path} records {key}={value!r}, outside {low}..{high}: the file is corrupt "
                f"(pass --{key.replace('_', '-')}, or invert again)"
            )


def check_recorded_size(emb: MotionEmbedding, native_height: int, native_width: int) -> None:
    """Refuse a recorded generation size far beyond the model's native ``H x W``.

    A size from a file is only used when the user gave none, so a file learned (or forged) at
    a size the model was never meant for would silently make generation allocate many times
    the model's memory. Each side may be at most :data:`MAX_SIZE_FACTOR` times the model's
    larger native side; call this before any buffer is sized from the recorded values.
    """
    limit = MAX_SIZE_FACTOR * max(native_height, native_width)
    height, width = emb.metadata.get("height"), emb.metadata.get("width")
    sides = [v for v in (height, width) if isinstance(v, int)]
    if sides and max(sides) > limit:
        raise EmbeddingError(
            f"{emb.name} records a size {height}x{width}, more than {MAX_SIZE_FACTOR}x this "
            f"model's native {native_height}x{native_width}; pass --height and --width"
        )


def _decode_metadata(raw: dict[str, str], path: Path) -> dict[str, object]:
    try:
        encoded = set(json.loads(raw.pop(_JSON_KEYS))) if _JSON_KEYS in raw else None
    except json.JSONDecodeError:
        raise EmbeddingError(f"{path}: corrupt metadata key '{_JSON_KEYS}'") from None
    out: dict[str, object] = {}
    for key, value in raw.items():
        if encoded is None or key in encoded:
            try:
                out[key] = json.loads(value)
                continue
            except json.JSONDecodeError:
                if encoded is not None:
                    raise EmbeddingError(f"{path}: corrupt metadata value for '{key}'") from None
        out[key] = value
    return out


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """Short hash of the UNet config entries that decide whether an embedding fits it.

    Two checkpoints of the same architecture (e.g. img2vid and a fine-tune of it) share a
    fingerprint; an embedding is then *loadable*, though it was learned against other weights.
    """
    config = unet.config
    picked = {key: config.get(key) for key in _FINGERPRINT_KEYS}
    blob = json.dumps(picked, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_compatible(emb: MotionEmbedding, unet: torch.nn.Module, model_name: str, num_frames: int) -> None:
    """Refuse (``EmbeddingError``) an embedding that does not fit ``unet`` at ``num_frames``.

    Checked: d equals the cross-attention width, F equals the number of frames generated, and
    the UNet fingerprint recorded at inversion (if any) equals this UNet's.
    """
    dim = unet.config.cross_attention_dim
    fingerprint = unet_fingerprint(unet)
    recorded = emb.metadata.get("unet_fingerprint")
    problems = []
    if emb.dim != dim:
        problems.append("d")
    if emb.num_frames != num_frames:
        problems.append("F")
    if recorded is not None and recorded != fingerprint:
        problems.append("unet")
    if not problems:
        return
    base = emb.metadata.get("base_model", "an unknown model")
    raise EmbeddingError(
        f"{emb.name} was learned on '{base}' (F={emb.num_frames}, d={emb.dim}, "
        f"unet {recorded or 'unrecorded'}) but the model is '{model_name}' (F={num_frames}, "
        f"d={dim}, unet {fingerprint}); invert again with --model {model_name}"
    )


@torch.no_grad()
def clip_image_embeddings(pipe, frames: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings ``(F, d)`` of ``frames`` ``(F, 3, H, W)`` in ``[-1, 1]``.

    The same preprocessing as ``StableVideoDiffusionPipeline._encode_image`` applies to a user's
    image (antialiased resize to 224 in ``[-1, 1]``, back to ``[0, 1]``, CLIP normalisation), so
    an embedding initialised from them starts where SVD's own conditioning would be.
    Returned as float32 on the CPU.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W), got {tuple(frames.shape)}")
    encoder = pipe.image_encoder
    param = next(encoder.parameters())
    images = _resize_with_antialiasing(frames.float(), (224, 224))
    images = (images + 1.0) / 2.0  # no clamp: SVD does not clamp the bicubic overshoot
    pixels = pipe.feature_extractor(
        images=images,
        do_normalize=True,
        do_center_crop=False,
        do_resize=False,
        do_rescale=False,
        return_tensors="pt",
    ).pixel_values
    pixels = pixels.to(device=param.device, dtype=param.dtype)
    return encoder(pixels).image_embeds.float().cpu()


def init_from_clip(
    clip_embeds: torch.Tensor,
    tokens: int,
    noise_std: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initial embedding ``(F+1, N, d)`` from the reference frames' CLIP embeddings ``(F, d)``.

    Set ``f`` = CLIP(frame f) repeated N times; the temporal set ``F`` = CLIP(frame 0) repeated
    N times (what SVD's temporal attention sees for that clip); plus Gaussian noise of std
    ``noise_std * clip_embeds.std()`` so the N copies differ (identical tokens get identical
    gradients and would stay identical). This is our reading of the patent's claim 3 ("initialised
    from CLIP image embeddings of the reference frames"); the exact scheme is open
    (docs/METHOD.md, "The motion-text embedding").
    """
    if clip_embeds.ndim != 2:
        raise ValueError(f"clip_embeds must be (F, d), got {tuple(clip_embeds.shape)}")
    clip = clip_embeds.detach().to("cpu", torch.float32)
    sets = torch.cat([clip, clip[:1]], dim=0)  # (F+1, d)
    emb = sets[:, None, :].expand(-1, tokens, -1).clone()
    if noise_std > 0:
        scale = noise_std * clip.std()
        emb += scale * torch.randn(emb.shape, generator=generator, dtype=emb.dtype)
    return emb


def init_random(
    num_frames: int, tokens: int, dim: int, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian ``(F+1, N, d)`` with standard deviation ``std`` (an ablation baseline)."""
    return std * torch.randn(num_frames + 1, tokens, dim, generator=generator)


def init_zeros(num_frames: int, tokens: int, dim: int) -> torch.Tensor:
    """All-zero ``(F+1, N, d)``: SVD's unconditional (CFG negative) context."""
    return torch.zeros(num_frames + 1, tokens, dim)
