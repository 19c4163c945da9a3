"""What ``reenact invert``, ``animate`` and ``reconstruct`` do, as three functions.

The CLI, the web UI and the batch engine are thin layers over these; a Python user gets the same
results in a few lines, for any model, with no hard-coded sizes::

    from reenact import api

    pipe = api.load_model("toy")                       # or a hub id / SVD folder
    result = api.invert_video("walk.mp4", pipe, output="walk.safetensors")
    videos = api.animate("walk.safetensors", ["dog.png"], pipe, output_dir="out")
    report = api.reconstruct("walk.safetensors", "walk.mp4", pipe)

Every decision the commands need lives here or below: the model's native geometry
(:func:`reenact.models.native_geometry`), its defaults (:mod:`reenact.profiles`), generation
settings drawn from the embedding's metadata (:meth:`GenerationConfig.resolve`), the
reconstruction metric (:mod:`reenact.metrics`) and the reference check. Errors a user can cause
are :mod:`reenact.errors` types with one-line messages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import embedding as emb_mod
from . import inversion, models, profiles, video
from .embedding import MotionEmbedding
from .errors import ConfigError
from .metrics import frame_psnr
from .inversion import InversionConfig, InversionResult
from .pipeline import SVD_CALL_DEFAULTS, GenerationConfig, MotionTransferPipeline
from .routing import set_attention

__all__ = [
    "InversionConfig",
    "InversionResult",
    "GenerationConfig",
    "load_model",
    "load_reference",
    "invert_video",
    "animate",
    "reconstruct",
    "default_batch_size",
    "Reference",
    "Reconstruction",
]

PathLike = str | os.PathLike
#: Images per pipeline call for ``animate`` when not asked: 1 on CUDA (a UNet batch of 2 under
#: CFG: 4 images at 14x576x1024 need ~30 GB of activations, 25 frames ~53 GB; issue 8), 4
#: elsewhere (the toy model on a CPU: batching is faster and memory is no concern).
CUDA_BATCH, OTHER_BATCH = 1, 4


def default_batch_size(device: torch.device) -> int:
    """Images per ``animate`` call: see :data:`CUDA_BATCH`."""
    return CUDA_BATCH if torch.device(device).type == "cuda" else OTHER_BATCH


def load_model(model: str = models.DEFAULT_MODEL, device: str | torch.device = "auto",
               dtype: torch.dtype | str | None = None, *, vae_dtype: str | None = None,
               attention: str | None = None, compile: bool = False, cpu_offload: bool = False,
               progress: bool = False) -> MotionTransferPipeline:
    """Load ``model`` (``toy``, a hub id or an SVD folder) with the generation levers applied.

    ``dtype``: a torch dtype or ``"fp32" | "fp16" | "bf16"``; default fp16 on CUDA (as SVD is
    released), fp32 elsewhere. ``vae_dtype``: the VAE's own precision (set before the offload
    hooks). ``attention`` / ``compile``: the UNet's attention kind / torch.compile (inversion
    applies its own through :class:`~reenact.inversion.InversionConfig`, for its run only).
    """
    device = models.resolve_device(device)
    if isinstance(dtype, str):
        dtype = models.resolve_dtype(dtype, device)
    dtype = dtype or models.default_dtype(device)
    pipe = models.load_pipeline(model, "cpu" if cpu_offload else device, dtype, progress=progress)
    if vae_dtype:
        pipe.vae.to(dtype=models.resolve_dtype(vae_dtype, device))
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    if attention:
        set_attention(pipe.unet, attention)
    if compile:
        pipe.unet.compile()
    return pipe


@dataclass
class Reference:
    """A reference clip as the model sees it, and where it came from (metadata to record)."""

    frames: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    name: str  # how the embedding's metadata refers to it
    source: dict = field(default_factory=dict)  # the range asked for, the size, and the clip's
    # ClipInfo (reenact.video): source frame indices, times, span, effective fps, sizes
    notes: tuple[str, ...] = ()  # one-line remarks for the user: which frames over what span,
    # then warnings (frames far apart in time, a truncated file, ...)
    fps: int | None = None  # the rate at which the frames replay the clip, clamped (None: no timing)


def _model_name(model: str | MotionTransferPipeline) -> str:
    return model if isinstance(model, str) else getattr(model, "model_name", None) or models.DEFAULT_MODEL


def load_reference(path: PathLike, model: str | MotionTransferPipeline, *, start: int = 0,
                   end: int | None = None, stride: int = 1, height: int | None = None,
                   width: int | None = None) -> Reference:
    """Read ``path`` and bring it to ``model``'s F frames at H x W (default: its native size).

    Only the model's config files are read (not its weights), so a bad clip is refused first.
    The returned ``source`` is recorded in the embedding: ``reconstruct`` re-reads the same range.
    """
    if start < 0:
        raise ConfigError(f"start must be a frame index >= 0 (got {start})")
    if end is not None and end <= start:
        raise ConfigError(f"end must be greater than start={start} (got {end})")
    if stride < 1:
        raise ConfigError(f"stride must be >= 1 (got {stride})")
    num_frames, native_h, native_w = _geometry(model)
    if (height is None) != (width is None):  # one side given: the other is the native one
        height, width = height or native_h, width or native_w
    frames, info = video.load_reference(path, num_frames, height, width, start=start, end=end,
                                        stride=stride, native_size=(native_h, native_w))
    source = {"source_start": start, "source_end": end, "source_stride": stride,
              "source": info.to_metadata()}  # indices, times, span, effective fps, sizes
    source["source_size"] = list(frames.shape[-2:])
    name = Path(path).name
    if (start, end, stride) != (0, None, 1):
        name += f" frames {start}:{'' if end is None else end}:{stride}"
    return Reference(frames, name, source, (info.describe(), *info.notes), info.fps)


def _geometry(model: str | MotionTransferPipeline) -> tuple[int, int, int]:
    return models.native_geometry(model)


def invert_video(
    video_path: PathLike,
    model: str | MotionTransferPipeline,
    output: PathLike | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    height: int | None = None,
    width: int | None = None,
    config: InversionConfig | None = None,
    resume: bool = False,
    preview_images: Sequence[PathLike] = (),
    preview_dir: PathLike | None = None,
    frames_dir: PathLike | None = None,
    model_options: dict | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    **overrides,
) -> InversionResult:
    """``reenact invert``: learn the motion of ``video_path`` on ``model``.

    ``config``: the settings; default: ``model``'s profile (:mod:`reenact.profiles`) with
    ``overrides`` (InversionConfig field names, e.g. ``steps=200``) on top. ``frames_dir``:
    also write the frames the model saw (after selection, crop and resize) there as pngs.
    ``on_note(line)`` receives remarks about the clip: which frames over what span, then
    warnings (e.g. frames far apart in time).
    ``model`` may be a name (loaded here with ``model_options`` -- :func:`load_model`'s keywords
    -- after the clip was read, so a bad clip is refused first) or a loaded pipeline.
    """
    profile = profiles.profile_for(model)
    if config is None:
        config = profile.config(**overrides)
    elif overrides:
        raise ConfigError("give either config or keyword overrides, not both")
    config.validate()
    reference = load_reference(video_path, model, start=start, end=end, stride=stride,
                               height=height, width=width)
    notes = list(reference.notes)
    if config.fps is None:  # the clip's own rate (the svd profile), else SVD's default
        config = dataclasses.replace(config, fps=reference.fps or SVD_CALL_DEFAULTS["fps"])
    elif reference.fps is not None and reference.fps != config.fps:
        notes.append(f"fps conditioning {config.fps} ({profile.name} profile or --fps), not the "
                     f"clip's {reference.fps}")
    for note in notes:
        if on_note is not None:
            on_note(note)
    f_h, f_w = reference.frames.shape[-2:]
    previews = [video.load_image(p, f_h, f_w) for p in preview_images]
    if frames_dir is not None:
        video.write_video(reference.frames, frames_dir, fmt="png")
    pipe = _pipeline(model, model_options)
    metadata = {"profile": profile.name, **reference.source}
    if frames_dir is not None:
        metadata["frames_written_to"] = str(frames_dir)
    return inversion.invert(
        pipe, reference.frames, config, output=output, reference_name=reference.name,
        resume=resume, preview_images=previews, preview_dir=preview_dir, progress=progress,
        callback=callback, metadata=metadata,
    )


def _pipeline(model: str | MotionTransferPipeline, options: dict | None) -> MotionTransferPipeline:
    return model if not isinstance(model, str) else load_model(model, **(options or {}))


def _embedding(embedding: MotionEmbedding | PathLike) -> MotionEmbedding:
    return embedding if isinstance(embedding, MotionEmbedding) else MotionEmbedding.load(embedding)


def recorded_model(embedding: MotionEmbedding) -> str:
    """The model an embedding was learned on (its ``base_model``), else the default model."""
    base = embedding.metadata.get("base_model")
    return base if isinstance(base, str) and base and base != "unknown" else models.DEFAULT_MODEL


def generation_config(embedding: MotionEmbedding | None, model: str | MotionTransferPipeline,
                      config: GenerationConfig | None = None) -> GenerationConfig:
    """``config`` (default: SVD's) with every unset value from the embedding or the model.

    A size recorded in the file is checked against the model's native one before anything is
    sized by it.
    """
    config = config or GenerationConfig()
    config.validate()
    _, native_h, native_w = _geometry(model)
    if embedding is not None and (config.height is None or config.width is None):
        emb_mod.check_recorded_size(embedding, native_h, native_w)
    return config.resolve(embedding, (native_h, native_w))


def animate(
    embedding: MotionEmbedding | PathLike,
    images: Sequence[PathLike],
    model: str | MotionTransferPipeline | None = None,
    *,
    config: GenerationConfig | None = None,
    output_dir: PathLike | None = None,
    fmt: str = "mp4",
    batch_size: int | None = None,
    model_options: dict | None = None,
) -> list[torch.Tensor] | list[Path]:
    """``reenact animate``: one video per image with the motion of ``embedding``.

    ``model`` defaults to the one the embedding records. Returns the videos
    (``(F, 3, H, W)`` in ``[-1, 1]``), or, with ``output_dir``, the files written there
    (``<image stem>.<fmt>``). ``batch_size``: images per pipeline call (default:
    :func:`default_batch_size`). ``model_options``: :func:`load_model`'s keywords, when
    ``model`` is a name (it is loaded after the embedding and the images were checked).
    """
    emb = _embedding(embedding)
    model = model or recorded_model(emb)
    gen = generation_config(emb, model, config)
    loaded = [video.load_image(p, gen.height, gen.width) for p in images]
    pipe = _pipeline(model, model_options)
    emb_mod.check_compatible(emb, pipe.unet, _model_name(model), pipe.unet.config.num_frames)
    batch = batch_size or default_batch_size(pipe.unet.device)
    suffix = "" if fmt == "png" else f".{fmt}"
    results: list = []
    for i in range(0, len(loaded), batch):
        videos = pipe.animate(loaded[i : i + batch], emb, gen)
        for video_tensor, path in zip(videos, images[i : i + batch]):
            if output_dir is None:
                results.append(video_tensor)
            else:
                target = Path(output_dir) / f"{Path(path).stem}{suffix}"
                results.append(video.write_video(video_tensor, target, fps=gen.fps, fmt=fmt))
    return results


@dataclass
class Reconstruction:
    """The paper's diagnostic: the reference regenerated from its own first frame."""

    video: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    psnr: list[float]  # per frame, dB
    same_reference: bool  # the clip (range, size) is the one the embedding was learned on
    fps: int

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)


def reconstruct(
    embedding: MotionEmbedding | PathLike,
    video_path: PathLike,
    model: str | MotionTransferPipeline | None = None,
    *,
    config: GenerationConfig | None = None,
    start: int | None = None,
    end: int | None = None,
    stride: int | None = None,
    output: PathLike | None = None,
    model_options: dict | None = None,
) -> Reconstruction:
    """``reenact reconstruct``: regenerate ``video_path`` from its first frame, score per-frame PSNR.

    ``model`` and the frame range default to what the embedding records. ``output``: also
    write the reconstruction. ``model_options``: as for :func:`animate`.
    """
    emb = _embedding(embedding)
    model = model or recorded_model(emb)
    gen = generation_config(emb, model, config)
    meta = emb.metadata
    start = start if start is not None else int(meta.get("source_start") or 0)
    end = end if end is not None else meta.get("source_end")
    stride = stride if stride is not None else int(meta.get("source_stride") or 1)
    reference = video.load_video(video_path, emb.num_frames, gen.height, gen.width, start, end, stride)
    recorded = meta.get("reference_sha256")
    same = not recorded or recorded == inversion.reference_fingerprint(reference)["sha256"]
    pipe = _pipeline(model, model_options)
    emb_mod.check_compatible(emb, pipe.unet, _model_name(model), pipe.unet.config.num_frames)
    first = video.tensor_to_images(reference[:1])[0]
    result = pipe.animate([first], emb, gen)[0]
    if output is not None:
        video.write_video(result, output, fps=gen.fps)
    return Reconstruction(result, frame_psnr(result, reference), same, gen.fps)
