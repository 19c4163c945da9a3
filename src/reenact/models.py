"""Loading a model: hub id, local folder or the bundled toy, through one ``from_pretrained`` path.

Every model is a diffusers SVD folder (``model_index.json`` + components), loaded as a
:class:`~reenact.pipeline.MotionTransferPipeline`. Hub ids go through the Hugging Face cache, so
a model downloaded once works offline afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers.utils import deprecation_utils as _deprecation_utils

from .errors import ConfigError, ModelNotFoundError
from .pipeline import MotionTransferPipeline
from .quiet import quiet_libraries

__all__ = [
    "TOY_MODEL",
    "DEFAULT_MODEL",
    "toy_model_dir",
    "resolve_device",
    "resolve_dtype",
    "load_pipeline",
]

#: name of the small model bundled with the package (``reenact/toy/model/``)
TOY_MODEL = "toy"
#: the paper's base model (14 frames, 576x1024)
DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid"

# diffusers renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns)
_DTYPE_KWARG = "dtype" if hasattr(_deprecation_utils, "_resolve_dtype") else "torch_dtype"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def toy_model_dir() -> Path:
    """Folder of the bundled toy model (it may not have been trained yet)."""
    return Path(__file__).resolve().parent / "toy" / "model"


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
    if model == TOY_MODEL:
        folder = toy_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the bundled toy model is missing ({folder}); build it with "
                "`python -m reenact.toy.train --out src/reenact/toy/model`"
            )
        source = str(folder)
        variant = None
    else:
        local = Path(model).expanduser()
        if local.is_dir():
            if not (local / "model_index.json").is_file():
                raise ModelNotFoundError(
                    f"'{model}' is a folder but not a diffusers model (no model_index.json)"
                )
            source = str(local)
        elif _looks_like_path(model) or local.exists():
            raise ModelNotFoundError(f"model folder '{model}' does not exist")
        else:
            source = model

    try:
        with quiet_libraries():  # their loading bars and notes would bury our messages
            pipe = MotionTransferPipeline.from_pretrained(source, variant=variant, **{_DTYPE_KWARG: dtype})
    except (OSError, ValueError) as exc:  # offline, unknown repo, missing weights, bad id
        if source != model:  # a local folder: its own problem, say so
            raise ModelNotFoundError(f"could not load model from '{model}': {_first_line(exc)}") from None
        raise ModelNotFoundError(
            f"model '{model}' not found locally and could not be downloaded; download it "
            f"(huggingface-cli download {model} --local-dir DIR) and pass --model DIR"
        ) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress)
    pipe.model_name = model
    return pipe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
