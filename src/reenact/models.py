"""Loading a model: hub id, local folder or the bundled toy, through one ``from_pretrained`` path.

Every model is a diffusers SVD folder (``model_index.json`` + components), loaded as a
:class:`~reenact.pipeline.MotionTransferPipeline`. Hub ids go through the Hugging Face cache, so
a model downloaded once works offline afterwards.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
from pathlib import Path

import torch
from diffusers.utils import deprecation_utils as _deprecation_utils

from .errors import ConfigError, ModelNotFoundError
from .pipeline import MotionTransferPipeline
from .quiet import quiet_libraries

__all__ = [
    "TOY_MODEL",
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "SVD_HUB_IDS",
    "toy_model_dir",
    "resolve_device",
    "resolve_dtype",
    "default_dtype",
    "default_threads",
    "model_source",
    "model_configs",
    "native_geometry",
    "is_svd_family",
    "bundled_name",
    "load_pipeline",
]

#: name of the small model bundled with the package (``reenact/toy/model/``)
TOY_MODEL = "toy"
#: every model bundled with the package, by name -> its folder under ``reenact/toy/``. ``toy`` is
#: the 16x16 palette-world model (the embedded default); ``toy-v2`` the 32x32 world-v2 model
#: (any colour, sizes 12-50 %, textures, camera motion; its card says why it is not the default)
BUNDLED_MODELS = {TOY_MODEL: "model", "toy-v2": "model_v2"}
#: the paper's base model (14 frames, 576x1024)
DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid"

#: Stability's SVD image-to-video checkpoints (the "svd" profile applies to them by name)
SVD_HUB_IDS = (
    "stabilityai/stable-video-diffusion-img2vid",
    "stabilityai/stable-video-diffusion-img2vid-xt",
    "stabilityai/stable-video-diffusion-img2vid-xt-1-1",
)
#: UNet config entries shared by every SVD checkpoint (img2vid, -xt, fine-tunes): a local folder
#: with these is in the SVD family whatever its name
_SVD_UNET = {"cross_attention_dim": 1024, "block_out_channels": [320, 640, 1280, 1280],
             "in_channels": 8, "out_channels": 4}
# owner/name as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")

# diffusers renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns)
_DTYPE_KWARG = "dtype" if hasattr(_deprecation_utils, "_resolve_dtype") else "torch_dtype"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def toy_model_dir(name: str = TOY_MODEL) -> Path:
    """Folder of the bundled model ``name`` (``toy`` or ``toy-v2``; it may not have been trained yet)."""
    return Path(__file__).resolve().parent / "toy" / BUNDLED_MODELS[name]


def bundled_name(model: str) -> str | None:
    """The bundled model ``model`` is (by name, or a path to its folder), else None."""
    if model in BUNDLED_MODELS:
        return model
    try:
        path = Path(model).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return next((name for name in BUNDLED_MODELS if toy_model_dir(name).resolve() == path), None)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks cuda, then mps, then cpu; otherwise a device the machine has."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' requested but MPS is not available; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``fp32`` | ``fp16`` | ``bf16`` -> torch dtype; fp16 is refused on the CPU."""
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype '{name}' (use fp32, fp16 or bf16)")
    if name == "fp16" and torch.device(device).type == "cpu":
        raise ConfigError("fp16 is not supported on the CPU; use fp32 or bf16")
    return _DTYPES[name]


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as SVD is released and as its docs run it), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def default_threads() -> int:
    """CPU threads for torch: the cores this process may use, less those other processes keep
    busy (1-minute load average), at least 1.

    torch's own default is every core; on a shared machine its threads then wait on each other
    (a measured 40 toy steps took ~100 s instead of 5 s with two busy neighbours).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, round(cores - busy) if busy < cores else 1))


def _offline() -> bool:
    """True when the hub cannot be reached: HF_HUB_OFFLINE, or no TCP connection in 3 s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return False
    except OSError:
        return True


def model_source(model: str) -> str:
    """What ``from_pretrained`` gets for ``model``: a local folder, or a plausible hub id.

    Fails fast (:class:`ModelNotFoundError`, one line) for the usual mistakes: a missing or
    incomplete folder, a name that is neither ``toy``, a folder nor ``owner/name`` (a typo like
    ``toyy``), and a hub id that is not in the local cache while the hub cannot be reached.
    """
    if model in BUNDLED_MODELS:
        folder = toy_model_dir(model)
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the bundled model '{model}' is missing ({folder}); build it with "
                f"`python -m reenact.toy.train --out src/reenact/toy/{BUNDLED_MODELS[model]}` (see its model card)"
            )
        return str(folder)
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelNotFoundError(f"'{model}' is a folder but not a diffusers model (no model_index.json)")
        return str(local)
    if _looks_like_path(model) or local.exists():
        raise ModelNotFoundError(f"model folder '{model}' does not exist")
    if not _HUB_ID.match(model):
        raise ModelNotFoundError(
            f"unknown model '{model}': use '{TOY_MODEL}' (or 'toy-v2'), a diffusers SVD folder, or a hub id "
            f"like {DEFAULT_MODEL}"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if not isinstance(cached, str) and _offline():  # fail now, not after the hub's retries
        raise _not_loadable(model, model, OSError("offline"))
    return model


def model_configs(model: str) -> tuple[dict, dict]:
    """The UNet's and the VAE's config dicts of ``model``, from its config files alone."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    source = model_source(model)
    try:
        with quiet_libraries():
            unet = UNetSpatioTemporalConditionModel.load_config(source, subfolder="unet")
            vae = AutoencoderKLTemporalDecoder.load_config(source, subfolder="vae")
    except (OSError, ValueError) as e:
        raise _not_loadable(model, source, e) from None
    return dict(unet), dict(vae)


def native_geometry(model: str | MotionTransferPipeline) -> tuple[int, int, int]:
    """``(F, H, W)`` that ``model`` (a name, or a loaded pipeline) generates by default; for a
    name, from its config files alone.

    So a reference clip can be loaded (and rejected) before the weights. ``F`` is the UNet's
    ``num_frames``. ``H x W`` is the pipeline's own rule, ``sample_size * vae_scale_factor``,
    with one exception: SVD's checkpoints say ``sample_size`` 96 (768x768) but were trained
    at 576x1024, the pipeline's default -- the same latent area (72*128 = 96*96). So when the
    pipeline's default size has the model's native area we use it.
    """
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    if isinstance(model, str):
        unet, vae = model_configs(model)
    else:
        unet, vae = dict(model.unet.config), dict(model.vae.config)
    unet_init = inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters
    call = inspect.signature(StableVideoDiffusionPipeline.__call__).parameters
    frames = unet.get("num_frames", unet_init["num_frames"].default)
    height, width = call["height"].default, call["width"].default
    if unet.get("sample_size"):
        blocks = vae.get("block_out_channels")
        scale = 2 ** (len(blocks) - 1) if blocks else 8  # the pipeline's vae_scale_factor
        side = unet["sample_size"] * scale
        if side * side != height * width:
            height = width = side
    return int(frames), int(height), int(width)


def is_svd_family(model: str | MotionTransferPipeline) -> bool:
    """``model`` (a name or a loaded pipeline) is one of Stability's SVD checkpoints, or has
    SVD's UNet layout whatever its name."""
    if not isinstance(model, str):
        unet = dict(model.unet.config)
    elif model in SVD_HUB_IDS:
        return True
    elif model in BUNDLED_MODELS:
        return False
    else:
        unet, _ = model_configs(model)
    return all(unet.get(k) == v or (isinstance(v, list) and list(unet.get(k) or []) == v)
               for k, v in _SVD_UNET.items())


def _looks_like_path(model: str) -> bool:
    """A path, not a hub id: hub ids are ``owner/name`` (one ``/``, no leading ``/ . ~``)."""
    if model.startswith((".", "~", os.sep)) or model.endswith(os.sep):
        return True
    if os.altsep and os.altsep in model or os.sep != "/" and os.sep in model:
        return True
    return model.count("/") > 1


def load_pipeline(
    model: str,
    device: torch.device | str | None = "auto",
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    progress: bool = False,
) -> MotionTransferPipeline:
    """Load ``model`` (``toy``, a local SVD folder, or a hub id) onto ``device`` in ``dtype``.

    Raises :class:`ModelNotFoundError` with one line saying what to do when the weights are
    missing. ``pipe.model_name`` records ``model`` for the embedding's metadata.
    """
    device = resolve_device(device)
    source = model_source(model)
    if model in BUNDLED_MODELS:
        variant = None
    try:
        with quiet_libraries():  # their loading bars and notes would bury our messages
            pipe = MotionTransferPipeline.from_pretrained(source, variant=variant, **{_DTYPE_KWARG: dtype})
    except (OSError, ValueError) as exc:  # offline, unknown repo, missing weights, bad id
        raise _not_loadable(model, source, exc) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress)
    pipe.model_name = model
    return pipe


def _not_loadable(model: str, source: str, exc: BaseException) -> ModelNotFoundError:
    """The one-line error for a model whose files could not be read or downloaded."""
    if source != model or Path(source).is_dir():  # a local folder: its own problem, say so
        return ModelNotFoundError(f"could not load model from '{model}': {_first_line(exc)}")
    return ModelNotFoundError(
        f"model '{model}' not found locally and could not be downloaded; download it "
        f"(huggingface-cli download {model} --local-dir DIR) and pass --model DIR"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
