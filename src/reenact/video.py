"""Video and image I/O: the paper's "reference clips are resampled to F frames and resized".

The motion embedding has one token set per frame, so a reference clip must become exactly the
model's ``F`` frames at the model's resolution before inversion. This module does that in three
independent, testable steps -- *read* every frame (:func:`read_frames`), *choose* ``F`` of them
(:func:`select_frames`), *fit* each to ``H x W`` (:func:`resize_center_crop`) -- and
:func:`load_video` chains them. It also writes results (mp4 / gif / folder of pngs) atomically,
so an interrupted or failed run never leaves a half-written file that looks like a result.

Conventions (see ``docs/ARCHITECTURE.md``): pixel tensors are float32 in ``[-1, 1]``, a video
is ``(F, 3, H, W)`` and an image ``(3, H, W)``. Every problem the *user* can cause (missing or
unreadable file, too-short clip, unwritable output) raises :class:`~reenact.errors.InputError`
or :class:`~reenact.errors.ConfigError` with a one-line message that names the file; anything
else is a bug and propagates unchanged.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import struct
import uuid
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from reenact.errors import ConfigError, InputError
from reenact.files import atomic_write

__all__ = [
    "VIDEO_SUFFIXES",
    "ANIMATED_SUFFIXES",
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
    "read_frames",
    "select_frames",
    "resize_center_crop",
    "load_video",
    "load_image",
    "image_to_tensor",
    "tensor_to_images",
    "output_format",
    "write_video",
    "check_writable_dir",
    "check_writable_file",
    "check_writable_output",
    "upscale_nearest",
    "make_grid",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Containers decoded with PyAV. Unknown suffixes are also tried with PyAV (ffmpeg sniffs the
#: content), so e.g. ``.m4v`` or ``.mpg`` work too.
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"})
#: Animated images decoded with PIL.
ANIMATED_SUFFIXES = frozenset({".gif", ".webp"})
#: Still images (single images and the members of a frame folder).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
#: What :func:`write_video` can write.
OUTPUT_FORMATS = ("mp4", "gif", "png")

_FOLDER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_HINT_VIDEO = "give an mp4/mov/webm/gif file or a folder of frames"
_HINT_IMAGE = "give a png/jpg/webp/bmp image"

# PIL raises a zoo of exception types on bad data; all of them mean "not a readable image".
_PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
               struct.error, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _natural_key(name: str) -> tuple:
    """Sort key so ``frame_2`` comes before ``frame_10`` (plain sorting gets this wrong)."""
    parts = re.split(r"(\d+)", name.lower())
    # re.split with a capture group alternates str, digits, str, ... so types line up per slot.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _short_reason(err: BaseException, path: Path | None = None) -> str:
    """One-line, bounded description of a library exception for a user-facing message.

    PyAV/OSError carry a clean ``strerror``; the full ``str()`` repeats errno and the path,
    which the message already starts with.
    """
    text = getattr(err, "strerror", None) or str(err).strip()
    text = text.splitlines()[0].strip() if text else ""
    if path is not None:
        for form in (f": '{path}'", f" '{path}'", f": {path}", str(path)):
            text = text.replace(form, "")
    text = text.strip() or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _to_rgb(img: Image.Image) -> Image.Image:
    """Return an RGB copy; transparency is flattened onto WHITE, greyscale is expanded.

    White (not black) because the SVD-style models were trained on photos/renders whose
    "empty" background is usually light; a black fill would invent dark borders around cut-out
    subjects. High-bit-depth greyscale (``I;16`` / ``I`` / ``F``) is rescaled to 8 bit rather
    than clipped, which is what PIL's plain ``convert("RGB")`` would do.
    """
    mode = img.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

def _require_min_frames(path: Path, frames: list[Image.Image]) -> list[Image.Image]:
    if len(frames) < 2:
        n = len(frames)
        raise InputError(
            f"{path}: has {n} frame{'' if n == 1 else 's'}; a motion reference needs at least 2"
        )
    return frames


def _read_folder(path: Path, limit: int | None) -> list[Image.Image]:
    files = sorted(
        (p for p in path.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _FOLDER_SUFFIXES),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise InputError(
            f"{path}: folder has no frame images (png/jpg/jpeg/webp); {_HINT_VIDEO}"
        )
    if limit is not None:
        files = files[:limit]
    frames = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                frames.append(_to_rgb(ImageOps.exif_transpose(im)))
        except _PIL_ERRORS as e:
            raise InputError(
                f"{f}: not a readable image ({_short_reason(e, f)}); "
                "fix or remove it from the frame folder"
            ) from None
    return frames


def _read_animated(path: Path, limit: int | None) -> list[Image.Image]:
    frames = []
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            for i in range(n if limit is None else min(n, limit)):
                im.seek(i)
                # Pillow composites GIF/WebP deltas for us; copy because seek() mutates ``im``.
                frames.append(_to_rgb(im))
    except _PIL_ERRORS as e:
        raise InputError(
            f"{path}: not a readable animated image ({_short_reason(e, path)}); {_HINT_VIDEO}"
        ) from None
    return frames


def _read_av(path: Path, limit: int | None) -> list[Image.Image]:
    import av  # local: keeps `import reenact.video` cheap for code that only handles images

    frames: list[Image.Image] = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video stream; {_HINT_VIDEO}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                img = frame.to_image()  # RGB24
                rot = frame.rotation
                # Phone clips are stored sideways with a display matrix; show them upright.
                if rot and rot % 360:
                    img = img.rotate(rot, expand=True)
                frames.append(img)
                if limit is not None and len(frames) >= limit:
                    break
    except av.FFmpegError as e:
        raise InputError(
            f"{path}: not a readable video ({_short_reason(e, path)}); {_HINT_VIDEO}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"{path}: cannot read ({_short_reason(e, path)}); {_HINT_VIDEO}"
        ) from None
    return frames


def read_frames(path: PathLike, limit: int | None = None) -> list[Image.Image]:
    """Decode every frame of a motion reference into RGB PIL images.

    Accepts a video file (mp4/mov/webm/mkv/avi via PyAV; other suffixes are tried with PyAV
    too), an animated gif/webp (via PIL, which composites delta frames), or a folder of frame
    images (png/jpg/jpeg/webp, natural-sorted so ``frame_2`` precedes ``frame_10``; hidden
    files and other files are ignored). Transparency is flattened on white; a display-matrix
    rotation (phone videos) is applied so frames are upright.

    ``limit`` stops decoding after that many frames: long clips are decoded to PIL images in
    memory, so callers that only use the first ``end`` frames (see :func:`load_video`) should
    pass it. At least 2 frames must be read -- one frame carries no motion.

    Note that GIF writers (PIL's included) merge consecutive identical frames into one longer
    frame; frames are returned as stored, not expanded by their durations.

    Raises :class:`InputError` (one line, naming the file) for a missing path, a folder with no
    images, an undecodable file, or a clip with fewer than 2 frames.
    """
    p = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; {_HINT_VIDEO}")
    if p.is_dir():
        frames = _read_folder(p, limit)
    else:
        suffix = p.suffix.lower()
        if suffix in ANIMATED_SUFFIXES:
            frames = _read_animated(p, limit)
        elif suffix in IMAGE_SUFFIXES:
            raise InputError(
                f"{p}: is a still image; a motion reference needs a video, an animated gif "
                "or a folder of frames"
            )
        else:
            frames = _read_av(p, limit)
    if limit is None or limit >= 2:
        _require_min_frames(p, frames)
    return frames


# --------------------------------------------------------------------------------------------
# temporal resampling and spatial fitting
# --------------------------------------------------------------------------------------------

def select_frames(
    frames: Sequence[Image.Image] | Sequence,
    num_frames: int,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
) -> list:
    """Choose exactly ``num_frames`` frames from the clip's range ``frames[start:end:stride]``.

    ``start`` and ``end`` are *frame indices* (``end`` exclusive, ``None`` = to the last frame),
    not seconds: frame rates of user clips vary and are often wrong in the container, whereas
    indices are what the user sees when scrubbing frame folders. ``stride`` keeps every k-th
    frame of that range (a cheap way to speed up slow motion before resampling).

    The kept frames are then resampled uniformly in time to ``num_frames`` by nearest-index
    sampling over ``linspace(0, len(kept) - 1, num_frames)``: the first and last kept frames
    are always included, so the whole motion fits the model's F frames; a clip shorter than
    ``num_frames`` is upsampled by repeating frames (never interpolated, so no blur is invented).

    Raises :class:`ConfigError` for inconsistent arguments (``num_frames < 1``, ``stride < 1``,
    ``start < 0``, ``end <= start``) and :class:`InputError` when the clip is too short for the
    requested range or the range keeps fewer than 2 frames. Messages do not name a file;
    :func:`load_video` prefixes them with the path.
    """
    if not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ConfigError(f"number of frames must be a positive integer (got {num_frames!r})")
    if not isinstance(stride, numbers.Integral) or stride < 1:
        raise ConfigError(f"stride must be an integer >= 1 (got {stride!r})")
    if not isinstance(start, numbers.Integral) or start < 0:
        raise ConfigError(f"start must be a frame index >= 0 (got {start!r})")
    if end is not None and (not isinstance(end, numbers.Integral) or end <= start):
        raise ConfigError(f"end must be a frame index greater than start={start} (got {end!r})")
    n = len(frames)
    if start >= n:
        raise InputError(f"start={start} is past the clip's last frame (it has {n} frames)")
    if end is not None and end > n:
        raise InputError(f"end={end} is past the clip's end (it has {n} frames)")
    kept = list(frames)[int(start):None if end is None else int(end):int(stride)]
    if len(kept) < 2:
        raise InputError(
            f"the range start={start} end={end} stride={stride} keeps {len(kept)} frame of "
            f"{n}; a motion reference needs at least 2"
        )
    positions = np.linspace(0.0, len(kept) - 1, num_frames)
    # floor(x + 0.5): round half up, deterministic (numpy's round is half-to-even).
    idx = np.floor(positions + 0.5).astype(np.int64)
    return [kept[i] for i in idx]


def resize_center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Scale ``img`` to *cover* ``height x width`` (aspect ratio kept), then centre-crop.

    Covering-then-cropping never distorts shapes (stretching would change the motion's
    geometry) and never adds borders (padding would be learned as content). The subject is
    assumed to be roughly central, which is where the crop keeps pixels. LANCZOS is used
    because it is the best PIL filter for both down- and up-scaling of natural images.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"resolution must be positive (got {height}x{width})")
    w, h = img.size
    if (w, h) == (width, height):
        return img.copy()
    scale = max(width / w, height / h)
    new_w = max(width, int(math.ceil(w * scale - 1e-6)))
    new_h = max(height, int(math.ceil(h * scale - 1e-6)))
    resized = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float32 tensor ``(3, H, W)`` in ``[-1, 1]`` (the VAE's input range)."""
    arr = np.asarray(_to_rgb(img) if img.mode != "RGB" else img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32)
    return t / 127.5 - 1.0


def tensor_to_images(video: torch.Tensor) -> list[Image.Image]:
    """Float tensor ``(F, 3, H, W)`` (or one image ``(3, H, W)``) in ``[-1, 1]`` -> RGB images.

    Values are clamped (decoders overshoot slightly) and rounded, not truncated, so a
    tensor produced by :func:`image_to_tensor` round-trips exactly.
    """
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(video).__name__}")
    if video.ndim == 3:
        video = video.unsqueeze(0)
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected shape (F, 3, H, W) or (3, H, W), got {tuple(video.shape)}")
    x = video.detach().to("cpu", torch.float32)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


def load_video(
    path: PathLike,
    num_frames: int,
    height: int,
    width: int,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Read a motion reference and bring it to the model's shape: ``(num_frames, 3, H, W)``.

    Chains :func:`read_frames` (decoding stops at ``end``), :func:`select_frames` and
    :func:`resize_center_crop`; returns float32 in ``[-1, 1]``. ``start``/``end`` are frame
    indices (end exclusive), ``stride`` keeps every k-th frame. Every user-caused problem
    raises :class:`InputError`/:class:`ConfigError` whose message starts with the path.
    """
    p = Path(path)
    if height < 1 or width < 1:
        raise ConfigError(f"resolution must be positive (got {height}x{width})")
    frames = read_frames(p, limit=end if (end is not None and end >= 2) else None)
    try:
        chosen = select_frames(frames, num_frames, start=start, end=end, stride=stride)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
    return torch.stack([image_to_tensor(resize_center_crop(f, height, width)) for f in chosen])


def load_image(path: PathLike, height: int | None = None, width: int | None = None) -> Image.Image:
    """Open a still image (png/jpg/jpeg/webp/bmp) as RGB, optionally resized + centre-cropped.

    The EXIF orientation is applied (phone photos are stored sideways), transparency is
    flattened on white and greyscale expanded to RGB, so every later step can assume plain
    RGB. For an animated file the first frame is used. Give both ``height`` and ``width`` to
    fit the image with :func:`resize_center_crop`, or neither.

    Raises :class:`InputError` naming the file when it is missing, a folder, or not decodable.
    """
    p = Path(path)
    if (height is None) != (width is None):
        raise ConfigError("give both height and width, or neither")
    if not p.exists():
        raise InputError(f"{p}: no such file; {_HINT_IMAGE}")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an image; {_HINT_IMAGE}")
    try:
        with Image.open(p) as im:
            im.load()
            img = _to_rgb(ImageOps.exif_transpose(im))
    except _PIL_ERRORS as e:
        raise InputError(f"{p}: not a readable image ({_short_reason(e, p)}); {_HINT_IMAGE}") from None
    if height is not None and width is not None:
        img = resize_center_crop(img, height, width)
    return img


# --------------------------------------------------------------------------------------------
# writability checks
# --------------------------------------------------------------------------------------------

def _unwritable(path: Path, err: BaseException | str) -> InputError:
    reason = err if isinstance(err, str) else _short_reason(err, path)
    return InputError(f"{path}: cannot write here ({reason}); choose a writable output path")


def _make_dirs(folder: Path, target: Path) -> None:
    """Create ``folder`` (and parents); convert failures into :class:`InputError` on ``target``."""
    if folder.is_dir():
        return
    # Find the nearest existing ancestor: a regular file there is the usual user mistake.
    for anc in [folder, *folder.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise _unwritable(target, f"{anc} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(target, e) from None


def _probe_dir(folder: Path, target: Path) -> None:
    """Prove ``folder`` accepts new files by creating and removing one (``os.access`` lies
    under root, ACLs and read-only mounts)."""
    probe = folder / f".reenact-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except OSError as e:
        raise _unwritable(target, e) from None
    try:
        os.unlink(probe)
    except OSError:
        pass


def check_writable_dir(path: PathLike) -> Path:
    """Fail fast (before a long run) unless ``path`` is, or can be created as, a writable folder.

    Creates the folder (and its parents) if missing, then creates and removes a probe file.
    Returns the path. Raises :class:`InputError` naming the path otherwise.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise _unwritable(p, "it exists and is a file, not a folder")
    _make_dirs(p, p)
    _probe_dir(p, p)
    return p


def check_writable_file(path: PathLike) -> Path:
    """Fail fast unless a file can be (re)written at ``path``.

    Only the *folder* must accept new files: results are written to a temporary name there and
    renamed over ``path``, so an existing read-only file at ``path`` is replaced, not opened.
    Creates missing parent folders. Raises :class:`InputError` if ``path`` is an existing
    folder or the parent cannot be created/written.
    """
    p = Path(path)
    if p.is_dir():
        raise _unwritable(p, "it is an existing folder")
    parent = p.parent if str(p.parent) else Path(".")
    _make_dirs(parent, p)
    _probe_dir(parent, p)
    return p


def output_format(path: PathLike, fmt: str | None = None) -> str:
    """Resolve the format :func:`write_video` will use: ``fmt`` if given, else from the suffix.

    ``.mp4`` -> ``"mp4"``, ``.gif`` -> ``"gif"``, no suffix -> ``"png"`` (a folder of
    ``frame_0000.png`` ...). Other suffixes raise :class:`InputError` rather than guessing.
    """
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        if f not in OUTPUT_FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
        return f
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return "mp4"
    if suffix == ".gif":
        return "gif"
    if suffix == "":
        return "png"
    raise InputError(
        f"{path}: unknown output type {suffix!r}; name it .mp4 or .gif, or give a folder name "
        "(no suffix) for png frames"
    )


def check_writable_output(path: PathLike, fmt: str | None = None) -> Path:
    """Fail fast for whatever :func:`write_video` would write at ``path`` (file or png folder)."""
    p = Path(path)
    f = output_format(p, fmt)
    if f == "png":
        if p.exists() and not p.is_dir():
            raise _unwritable(p, "it exists and is a file; png output is a folder")
        parent = p.parent if str(p.parent) else Path(".")
        _make_dirs(parent, p)
        _probe_dir(parent, p)
        return p
    return check_writable_file(p)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

def _as_images(frames: Sequence[Image.Image] | torch.Tensor) -> list[Image.Image]:
    if isinstance(frames, torch.Tensor):
        images = tensor_to_images(frames)
    else:
        images = [f if f.mode == "RGB" else _to_rgb(f) for f in frames]
    if not images:
        raise ValueError("write_video: no frames to write")
    size = images[0].size
    for i, im in enumerate(images):
        if im.size != size:
            raise ValueError(f"write_video: frame {i} is {im.size}, frame 0 is {size}")
    return images


def _even_pad(img: Image.Image) -> Image.Image:
    """Pad to even width/height by repeating the last row/column (yuv420p needs even sizes;
    edge replication instead of black avoids a visible line)."""
    w, h = img.size
    if w % 2 == 0 and h % 2 == 0:
        return img
    arr = np.asarray(img)
    arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return Image.fromarray(arr, mode="RGB")


def _encode_mp4(images: list[Image.Image], path: Path, fps: float) -> None:
    import av

    rate = Fraction(fps).limit_denominator(1001)
    first = _even_pad(images[0])
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = first.size
        stream.pix_fmt = "yuv420p"
        # crf 18: visually lossless-ish; outputs are small (F frames) so size does not matter.
        stream.options = {"crf": "18", "preset": "medium"}
        for img in images:
            frame = av.VideoFrame.from_image(_even_pad(img))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _encode_gif(images: list[Image.Image], path: Path, fps: float) -> None:
    duration = max(1, int(round(1000.0 / fps)))
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        loop=0,
        duration=duration,
        disposal=1,
        optimize=False,
    )


def _encode_png_folder(images: list[Image.Image], folder: Path) -> None:
    folder.mkdir()
    for i, img in enumerate(images):
        img.save(folder / f"frame_{i:04d}.png", format="PNG")


def write_video(
    frames: Sequence[Image.Image] | torch.Tensor,
    path: PathLike,
    fps: float = 7,
    fmt: str | None = None,
) -> Path:
    """Write frames as an mp4, a gif or a folder of pngs -- atomically.

    ``frames`` is a list of PIL images of one size, or a tensor ``(F, 3, H, W)`` in ``[-1, 1]``.
    ``fmt`` is ``"mp4"``, ``"gif"`` or ``"png"``; ``None`` picks it from the suffix (see
    :func:`output_format`; no suffix = png folder ``path/frame_0000.png`` ...).

    * mp4: H.264 (libx264, yuv420p, crf 18) via PyAV at ``fps``; odd sizes are padded to even
      by edge replication, because yuv420p cannot encode them.
    * gif: PIL, ``loop=0`` (forever), ``duration = 1000/fps`` ms per frame. GIF stores
      durations in 10 ms units, and identical consecutive frames are merged into one longer
      frame by PIL (timing is preserved, frame count is not).
    * png: lossless frames in a folder, replaced as a whole only after all frames are written.

    Everything is written under a hidden temporary name in the destination folder and renamed
    into place, so a crash or an encoder failure never leaves a partial result (the temp is
    removed) and an existing output is only replaced by a complete one. Missing parent folders
    are created. An unwritable destination raises :class:`InputError` naming the path; encoder
    bugs propagate unchanged (after cleanup). Returns the path written.
    """
    p = Path(path)
    kind = output_format(p, fmt)
    if not (isinstance(fps, numbers.Real) and fps > 0 and math.isfinite(fps)):
        raise ConfigError(f"fps must be a positive number (got {fps!r})")
    images = _as_images(frames)

    parent = p.parent if str(p.parent) else Path(".")
    _make_dirs(parent, p)
    if kind != "png" and p.is_dir():
        raise _unwritable(p, "it is an existing folder")
    if kind == "png" and p.exists() and not p.is_dir():
        raise _unwritable(p, "it exists and is a file; png output is a folder")

    with atomic_write(p) as tmp:  # complete or not at all (reenact.files)
        if kind == "png":
            _encode_png_folder(images, tmp)
        elif kind == "mp4":
            _encode_mp4(images, tmp, float(fps))
        else:
            _encode_gif(images, tmp, float(fps))
    return p


# --------------------------------------------------------------------------------------------
# viewing helpers
# --------------------------------------------------------------------------------------------

def upscale_nearest(images: Sequence[Image.Image], factor: int) -> list[Image.Image]:
    """Enlarge frames by an integer ``factor`` with nearest-neighbour sampling.

    For looking at tiny toy-model outputs (e.g. 32x32): nearest keeps pixels crisp, so what
    you see is exactly what the model produced, not a smoothed guess.
    """
    if not isinstance(factor, int) or factor < 1:
        raise ConfigError(f"upscale factor must be an integer >= 1 (got {factor!r})")
    if factor == 1:
        return [im.copy() for im in images]
    return [im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
            for im in images]


def make_grid(
    videos: Sequence[Sequence[Image.Image]],
    columns: int | None = None,
    gap: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> list[Image.Image]:
    """Tile several videos frame by frame into one video (e.g. reference | result | baseline).

    ``videos`` is a list of videos, each a list of frames; all must have the same number of
    frames (tiling different lengths would silently desynchronise the comparison). They are
    laid out left to right, ``columns`` per row (``None`` = all in one row), separated by
    ``gap`` pixels of ``background``. Videos of different sizes are centred in equal cells.
    Returns a list of RGB frames, ready for :func:`write_video`.
    """
    if not videos:
        raise ValueError("make_grid: no videos given")
    counts = {len(v) for v in videos}
    if len(counts) != 1:
        raise ValueError(f"make_grid: videos have different frame counts {sorted(counts)}")
    n_frames = counts.pop()
    if n_frames == 0:
        raise ValueError("make_grid: videos have no frames")
    if gap < 0:
        raise ValueError("make_grid: gap must be >= 0")
    cols = len(videos) if columns is None else max(1, min(columns, len(videos)))
    rows = math.ceil(len(videos) / cols)
    cell_w = max(im.width for v in videos for im in v)
    cell_h = max(im.height for v in videos for im in v)
    width = cols * cell_w + (cols - 1) * gap
    height = rows * cell_h + (rows - 1) * gap
    out = []
    for t in range(n_frames):
        canvas = Image.new("RGB", (width, height), background)
        for k, video in enumerate(videos):
            im = video[t]
            if im.mode != "RGB":
                im = _to_rgb(im)
            r, c = divmod(k, cols)
            x = c * (cell_w + gap) + (cell_w - im.width) // 2
            y = r * (cell_h + gap) + (cell_h - im.height) // 2
            canvas.paste(im, (x, y))
        out.append(canvas)
    return out
