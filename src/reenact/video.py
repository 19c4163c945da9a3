"""Video and image I/O: the paper's "reference clips are resampled to F frames and resized".

The motion embedding has one token set per frame, so a reference clip must become exactly the
model's ``F`` frames at the model's resolution before inversion. :func:`load_reference` does that
in three independent, testable steps without ever holding the clip: a *timeline* of every
frame's presentation time (from the container's packets, no decoding), *choose* ``F`` positions
evenly spaced in time (:func:`choose_indices`), then one decoding pass that *fits* only the
chosen frames to ``H x W`` (:func:`resize_center_crop`) as they come out of the decoder. It
returns the frames and a :class:`ClipInfo` saying what was used (indices, times, span, effective
fps, sizes, notes for the user). :func:`read_frames` decodes whole short clips (tests,
inspection). The module also writes results (mp4 / gif / folder of pngs) atomically, so an
interrupted or failed run never leaves a half-written file that looks like a result.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
    "FPS_RANGE",
    "ClipInfo",
    "read_frames",
    "choose_indices",
    "select_frames",
    "oriented_size",
    "load_reference",
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
# reading: a timeline first (cheap), then only the frames that will be used
# --------------------------------------------------------------------------------------------

#: SVD's fps micro-conditioning range: Stability AI's reference sampling script
#: (generative-models, scripts/sampling/simple_video_sample.py) warns below 5 and above 30 fps.
#: The clip's effective rate is clamped to it for the conditioning and the written fps.
FPS_RANGE = (5, 30)


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`load_reference` took from a clip, for the user and the embedding's metadata.

    ``source_indices``: the F frames' positions in the source, in presentation order (what a
    player shows as frame numbers). ``timestamps``: their presentation times in seconds
    (``None`` for a frame folder, which has no timing). ``span_seconds``: last minus first of
    those times. ``effective_fps`` = ``(F - 1) / span_seconds``: the rate at which the F frames
    replay the motion in real time (a constant-rate clip used frame by frame gives its own
    rate). ``fps``: that rate rounded and clamped to ``fps_range`` -- the fps micro-conditioning
    and the fps to write results at (``None`` when the clip has no timing). ``source_frames``:
    frames the source really holds (decoded or listed); ``header_frames``: what the container
    header promised (``None`` if it says nothing). ``stored_size`` / ``display_size``:
    ``(width, height)`` as stored and as displayed (non-square pixels and rotation applied).
    ``size``: ``(height, width)`` the frames were fitted to. ``notes``: one-line remarks the
    user should see (frames far apart in time, a truncated file, ...).
    """

    source: str
    kind: str  # "video" | "animated" | "folder"
    source_indices: tuple[int, ...]
    timestamps: tuple[float, ...] | None
    span_seconds: float | None
    effective_fps: float | None
    fps: int | None
    fps_range: tuple[int, int]
    source_frames: int
    header_frames: int | None
    source_fps: float | None
    stored_size: tuple[int, int]
    display_size: tuple[int, int]
    size: tuple[int, int]
    notes: tuple[str, ...] = ()

    @property
    def display_aspect(self) -> float:
        """Width / height as displayed."""
        return self.display_size[0] / self.display_size[1]

    def describe(self) -> str:
        """One line: which frames, over how much time, at what size."""
        first, last = self.source_indices[0], self.source_indices[-1]
        text = (f"{self.source}: frames {first}..{last} of {self.source_frames}, "
                f"{len(self.source_indices)} used")
        if self.span_seconds is not None:
            text += (f", {self.timestamps[0]:.2f}-{self.timestamps[-1]:.2f} s (span "
                     f"{self.span_seconds:.2f} s, effective {self.effective_fps:.1f} fps)")
        return text + f", fitted to {self.size[0]}x{self.size[1]}"

    def to_metadata(self) -> dict[str, object]:
        """JSON-ready record for an embedding's metadata (floats rounded to the microsecond)."""
        out = asdict(self)
        if self.timestamps is not None:
            out["timestamps"] = [round(t, 6) for t in self.timestamps]
        for key in ("span_seconds", "effective_fps", "source_fps"):
            if out[key] is not None:
                out[key] = round(out[key], 6)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["display_aspect"] = round(self.display_aspect, 6)
        # notes name the file as the user gave it; a shared embedding should not carry their paths
        out["notes"] = [_name_only(note) for note in self.notes]
        return out


def _name_only(note: str) -> str:
    """A note with its leading ``/path/to/clip.mp4:`` reduced to ``clip.mp4:``."""
    head, sep, rest = note.partition(": ")
    return f"{Path(head).name}{sep}{rest}" if sep else note


@dataclass
class _Timeline:
    """Every frame of a source in presentation order, before any pixel is decoded."""

    kind: str
    count: int
    times: list[Fraction] | None  # seconds, ascending; None: no timing (frame folder)
    header_frames: int | None = None
    source_fps: float | None = None
    pts: list[int] | None = None  # video: the stream's pts of each frame (to match decoded frames)
    stream_index: int = 0
    sar: Fraction = Fraction(1)
    files: list[Path] = field(default_factory=list)  # folder
    stored_size: tuple[int, int] | None = None  # video: (width, height) as coded


def _require_min_frames(path: Path, count: int) -> None:
    if count < 2:
        raise InputError(
            f"{path}: has {count} frame{'' if count == 1 else 's'}; a motion reference needs at least 2"
        )


def _folder_timeline(path: Path) -> _Timeline:
    files = sorted(
        (p for p in path.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _FOLDER_SUFFIXES),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise InputError(f"{path}: folder has no frame images (png/jpg/jpeg/webp); {_HINT_VIDEO}")
    return _Timeline(kind="folder", count=len(files), times=None, files=files)


def _open_folder_frame(f: Path) -> Image.Image:
    try:
        with Image.open(f) as im:
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except _PIL_ERRORS as e:
        raise InputError(
            f"{f}: not a readable image ({_short_reason(e, f)}); fix or remove it from the frame folder"
        ) from None


def _animated_timeline(path: Path) -> _Timeline:
    """Frame times of a gif / webp / apng from the per-frame durations (milliseconds)."""
    try:
        with Image.open(path) as im:
            count = getattr(im, "n_frames", 1)
            times, t = [], Fraction(0)
            for i in range(count):
                im.seek(i)
                times.append(t)
                duration = im.info.get("duration") or 0
                t += Fraction(duration).limit_denominator(1000) / 1000
    except _PIL_ERRORS as e:
        raise InputError(
            f"{path}: not a readable animated image ({_short_reason(e, path)}); {_HINT_VIDEO}"
        ) from None
    if count > 1 and times[-1] == 0:  # no durations stored: no timing
        times = None
    return _Timeline(kind="animated", count=count, times=times)


def _pick_stream(streams: list, packets: dict[int, int]):
    """The real video stream: never a cover picture; then one with frames to move; then the
    default-flagged one; then the one with the most packets (first listed on a tie).

    An mkv / mp4 may carry cover art as a one-frame video stream listed first (flagged
    ``attached_pic``, or only short; Matroska marks every track "default" unless told otherwise),
    while players show the real video track. ``packets`` counts each stream's packets, from the
    same demuxing pass that reads the times.
    """
    attached = av_disposition("attached_pic")
    default = av_disposition("default")
    return max(streams, key=lambda s: (not s.disposition & attached, packets.get(s.index, 0) >= 2,
                                       bool(s.disposition & default), packets.get(s.index, 0),
                                       -s.index))


def av_disposition(name: str) -> int:
    """A stream-disposition flag of PyAV (``av.stream.Disposition``), as an int."""
    from av.stream import Disposition

    return int(getattr(Disposition, name))


def _open_av(path: Path):
    import av  # local: keeps `import reenact.video` cheap for code that only handles images

    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise InputError(f"{path}: not a readable video ({_short_reason(e, path)}); {_HINT_VIDEO}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({_short_reason(e, path)}); {_HINT_VIDEO}") from None


def _av_timeline(path: Path) -> _Timeline:
    """Presentation times of every frame from the packets alone (demuxing, no decoding)."""
    import av

    container = _open_av(path)
    try:
        streams = list(container.streams.video)
        if not streams:
            raise InputError(f"{path}: has no video stream; {_HINT_VIDEO}")
        # one pass over the packets of every video stream (the file is read whole either way)
        pts_of: dict[int, list[int]] = {s.index: [] for s in streams}
        unknown_of: dict[int, int] = {s.index: 0 for s in streams}
        try:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                if packet.pts is None:
                    unknown_of[packet.stream.index] += 1
                else:
                    pts_of[packet.stream.index].append(int(packet.pts))
        except av.FFmpegError as e:
            if not any(pts_of.values()) and not any(unknown_of.values()):
                raise InputError(
                    f"{path}: not a readable video ({_short_reason(e, path)}); {_HINT_VIDEO}"
                ) from None
        counts = {i: len(pts_of[i]) + unknown_of[i] for i in pts_of}
        stream = _pick_stream(streams, counts)
        tb = stream.time_base or Fraction(1, 1_000_000)
        pts, unknown = pts_of[stream.index], unknown_of[stream.index]
        sar = stream.sample_aspect_ratio
        rate = stream.average_rate or stream.guessed_rate
        timeline = _Timeline(
            kind="video", count=len(pts) + unknown, times=None,
            header_frames=int(stream.frames) or None,
            source_fps=float(rate) if rate else None,
            stream_index=stream.index,
            sar=Fraction(sar) if sar and sar > 0 else Fraction(1),
            stored_size=(stream.codec_context.width, stream.codec_context.height) or None,
        )
    except av.FFmpegError as e:
        raise InputError(f"{path}: not a readable video ({_short_reason(e, path)}); {_HINT_VIDEO}") from None
    finally:
        container.close()
    if unknown == 0 and len(set(pts)) == len(pts):
        pts.sort()  # packets come in decode order; frames are shown in pts order
        timeline.pts = pts
        timeline.times = [Fraction(p - pts[0]) * tb for p in pts] if pts else []
    return timeline


def _timeline(path: Path) -> _Timeline:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; {_HINT_VIDEO}")
    if path.is_dir():
        return _folder_timeline(path)
    suffix = path.suffix.lower()
    if suffix in ANIMATED_SUFFIXES or suffix == ".apng":
        return _animated_timeline(path)
    if suffix in IMAGE_SUFFIXES:
        frames = _image_frame_count(path)
        if frames > 1:  # an animated png (or a multi-frame image): a clip
            return _animated_timeline(path)
        raise InputError(
            f"{path}: is a still image; a motion reference needs a video, an animated gif/png "
            "or a folder of frames"
        )
    return _av_timeline(path)


def _image_frame_count(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except _PIL_ERRORS as e:
        raise InputError(f"{path}: not a readable image ({_short_reason(e, path)}); {_HINT_IMAGE}") from None


Fit = Callable[[Image.Image], Image.Image]


def _decode(path: Path, timeline: _Timeline, wanted: Sequence[int], fit: Fit) -> dict[int, Image.Image]:
    """The frames at positions ``wanted`` (ascending), each passed through ``fit`` as soon as it
    is decoded, so at most one full-resolution frame is alive at a time."""
    want = set(wanted)
    out: dict[int, Image.Image] = {}
    if timeline.kind == "folder":
        for i in sorted(want):
            out[i] = fit(_open_folder_frame(timeline.files[i]))
        return out
    if timeline.kind == "animated":
        try:
            with Image.open(path) as im:
                for i in sorted(want):
                    im.seek(i)  # Pillow composites gif/webp/apng deltas while seeking
                    out[i] = fit(_to_rgb(im))
        except _PIL_ERRORS as e:
            raise InputError(
                f"{path}: not a readable animated image ({_short_reason(e, path)}); {_HINT_VIDEO}"
            ) from None
        return out
    return _decode_av(path, timeline, want, fit)


def _decode_av(path: Path, timeline: _Timeline, want: set[int], fit: Fit) -> dict[int, Image.Image]:
    """Decode the stream in order, keeping (fitted) only the wanted frames; stop after the last.

    Frames are matched to positions by their pts when the timeline has them, else by the order
    they come out of the decoder. Wanted frames that never decode are simply missing from the
    result (the caller handles a truncated file).
    """
    index_of = {p: i for i, p in enumerate(timeline.pts)} if timeline.pts is not None else None
    out: dict[int, Image.Image] = {}
    container = _open_av(path)
    try:
        stream = container.streams[timeline.stream_index]
        stream.thread_type = "AUTO"
        position = -1
        for frame in _decoded_frames(container, stream):
            position = index_of.get(frame.pts, -1) if index_of is not None else position + 1
            if position in want:
                out[position] = fit(_upright(frame, timeline.sar))
                if len(out) == len(want):
                    break  # nothing after the last chosen frame is decoded
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({_short_reason(e, path)}); {_HINT_VIDEO}") from None
    finally:
        container.close()
    return out


def _decoded_frames(container, stream) -> Iterator:
    """Every frame of ``stream`` that decodes, in presentation order; a packet that fails to
    decode (a damaged or truncated file) is skipped instead of ending the clip."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            return  # the container itself ends badly: nothing more can be demuxed
        try:
            frames = packet.decode()  # the flush packet at the end drains the decoder
        except av.FFmpegError:
            continue
        yield from frames


def _upright(frame, sar: Fraction) -> Image.Image:
    """An RGB image as a player shows the frame: square pixels, display rotation applied."""
    img = frame.to_image()  # RGB24
    if sar != 1:
        img = img.resize((max(1, round(img.width * sar)), img.height), Image.Resampling.LANCZOS)
    rot = frame.rotation
    if rot and rot % 360:  # phone clips are stored sideways with a display matrix
        img = img.rotate(rot, expand=True)
    return img


def _all_decoded_times(path: Path, timeline: _Timeline) -> None:
    """Replace ``timeline``'s frames by those that really decode (one full decoding pass, no
    pixels kept): for a truncated or damaged file whose packets promise more than it holds."""
    tb = None
    pts: list[int] = []
    container = _open_av(path)
    try:
        stream = container.streams[timeline.stream_index]
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 1_000_000)
        for frame in _decoded_frames(container, stream):
            pts.append(frame.pts if frame.pts is not None else len(pts))
    finally:
        container.close()
    pts = sorted(set(pts))
    timeline.count = len(pts)
    timeline.pts = pts
    timeline.times = [Fraction(p - pts[0]) * tb for p in pts] if pts else []


# --------------------------------------------------------------------------------------------
# temporal resampling and spatial fitting
# --------------------------------------------------------------------------------------------

def choose_indices(
    count: int,
    num_frames: int,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    times: Sequence[Fraction | int | float] | None = None,
) -> list[int]:
    """Positions of ``num_frames`` frames of a ``count``-frame clip, evenly spaced in *time*.

    The range ``[start:end:stride]`` is in frame indices (``end`` exclusive, ``None`` = to the
    last frame): frame numbers are what the user sees when scrubbing, while container rates are
    often wrong. Within the kept frames, ``num_frames`` target times are spaced evenly from the
    first kept frame's time to the last's, and each takes the kept frame nearest to it (a tie
    takes the later one). With ``times=None`` (or a constant frame rate) time is the index, so
    this is nearest-index sampling over ``linspace``; with the real presentation times of a
    variable-frame-rate phone clip, bursts of frames do not get more samples than pauses.
    The first and last kept frames are always included; a clip shorter than ``num_frames`` is
    upsampled by repeating frames (never interpolated, so no blur is invented).

    Raises :class:`ConfigError` for inconsistent arguments and :class:`InputError` when the
    clip is too short for the range or the range keeps fewer than 2 frames (messages do not
    name a file; callers prefix the path).
    """
    if not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ConfigError(f"number of frames must be a positive integer (got {num_frames!r})")
    if not isinstance(stride, numbers.Integral) or stride < 1:
        raise ConfigError(f"stride must be an integer >= 1 (got {stride!r})")
    if not isinstance(start, numbers.Integral) or start < 0:
        raise ConfigError(f"start must be a frame index >= 0 (got {start!r})")
    if end is not None and (not isinstance(end, numbers.Integral) or end <= start):
        raise ConfigError(f"end must be a frame index greater than start={start} (got {end!r})")
    n = count
    if start >= n:
        raise InputError(f"start={start} is past the clip's last frame (it has {n} frames)")
    if end is not None and end > n:
        raise InputError(f"end={end} is past the clip's end (it has {n} frames)")
    kept = list(range(n))[int(start):None if end is None else int(end):int(stride)]
    if len(kept) < 2:
        raise InputError(
            f"the range start={start} end={end} stride={stride} keeps {len(kept)} frame of "
            f"{n}; a motion reference needs at least 2"
        )
    t = [Fraction(i) for i in kept] if times is None else [Fraction(times[i]) for i in kept]
    if num_frames == 1:
        return [kept[0]]
    first, total = t[0], t[-1] - t[0]
    chosen = []
    j = 0
    for k in range(num_frames):
        target = first + total * k / (num_frames - 1)  # exact: Fractions
        while j + 1 < len(t) and t[j + 1] <= target:
            j += 1
        # t[j] <= target < t[j + 1] (or j is the last); a tie goes to the later frame
        if j + 1 < len(t) and t[j + 1] - target <= target - t[j]:
            chosen.append(kept[j + 1])
        else:
            chosen.append(kept[j])
    return chosen


def select_frames(
    frames: Sequence[Image.Image] | Sequence,
    num_frames: int,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    times: Sequence[Fraction | int | float] | None = None,
) -> list:
    """``[frames[i] for i in choose_indices(len(frames), ...)]``: see :func:`choose_indices`."""
    idx = choose_indices(len(frames), num_frames, start=start, end=end, stride=stride, times=times)
    return [frames[i] for i in idx]


def oriented_size(height: int, width: int, aspect: float) -> tuple[int, int]:
    """``(height, width)`` turned to the source's orientation: a portrait source (aspect < 1)
    gets ``max x min`` (e.g. 1024x576 for SVD's 576x1024), a landscape one ``min x max``, a
    square one the size as given. For sizes the user did *not* choose: a standing person in a
    portrait clip keeps most of the frame instead of a centre strip."""
    lo, hi = sorted((height, width))
    if aspect < 1:
        return hi, lo
    if aspect > 1:
        return lo, hi
    return height, width


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


def read_frames(path: PathLike, limit: int | None = None) -> list[Image.Image]:
    """Decode the frames of a motion reference (the first ``limit``, or all) into RGB images.

    Accepts a video file (mp4/mov/webm/mkv/avi via PyAV; other suffixes are tried with PyAV
    too; the real video stream is used, never a cover picture), an animated gif/webp/png (via
    PIL, which composites delta frames), or a folder of frame images (png/jpg/jpeg/webp,
    natural-sorted so ``frame_2`` precedes ``frame_10``; hidden and other files are ignored).
    Transparency is flattened on white; non-square pixels are resampled to the display aspect
    and a display-matrix rotation (phone videos) is applied, so frames look as a player shows
    them. At least 2 frames must be read -- one frame carries no motion.

    This holds every returned frame at full resolution: for inspecting short clips and tests.
    To feed a model use :func:`load_reference`, which decodes only the frames it uses.

    Note that GIF writers (PIL's included) merge consecutive identical frames into one longer
    frame; frames are returned as stored, not expanded by their durations.

    Raises :class:`InputError` (one line, naming the file) for a missing path, a folder with no
    images, an undecodable file, a still image, or a clip with fewer than 2 frames.
    """
    p = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")
    timeline = _timeline(p)
    n = timeline.count if limit is None else min(limit, timeline.count)
    decoded = _decode(p, timeline, list(range(n)), fit=lambda img: img) if n else {}
    frames = [decoded[i] for i in sorted(decoded)]
    if limit is None or limit >= 2:
        _require_min_frames(p, len(frames))
    return frames


def load_reference(
    path: PathLike,
    num_frames: int,
    height: int | None = None,
    width: int | None = None,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    native_size: tuple[int, int] | None = None,
    fps_range: tuple[int, int] = FPS_RANGE,
) -> tuple[torch.Tensor, ClipInfo]:
    """Read a motion reference as the model sees it: ``(num_frames, 3, H, W)`` and a :class:`ClipInfo`.

    Streams: the container's packets give every frame's presentation time first (no decoding);
    :func:`choose_indices` picks ``num_frames`` of the range ``[start:end:stride]`` (frame
    indices) evenly spaced in time; then the stream is decoded once, up to the last chosen
    frame, and only the chosen frames are converted and fitted (:func:`resize_center_crop`)
    as they come out of the decoder -- so memory holds one full-resolution frame plus F small
    ones, whatever the clip's length and resolution.

    Size: ``height`` x ``width`` if both are given; otherwise ``native_size`` (the model's
    ``(H, W)``) turned to the clip's display orientation by :func:`oriented_size` (a portrait
    clip gets a portrait size). Returns float32 in ``[-1, 1]``.

    The info's ``notes`` say what the user should know: frames far apart in time (effective
    rate below ``fps_range``; the default is to use the whole range given, and the note says
    which ``end`` would keep the model's pace), frames closer than the range allows, and a file
    that holds fewer frames than its header promises (a truncated download): then the frames
    that do decode are used. Every user-caused problem raises :class:`InputError` /
    :class:`ConfigError` whose message starts with the path.
    """
    p = Path(path)
    if (height is None) != (width is None):
        raise ConfigError("give both height and width, or neither")
    if height is None and native_size is None:
        raise ConfigError("give height and width, or the model's native_size")
    if height is not None and (height < 1 or width < 1):
        raise ConfigError(f"resolution must be positive (got {height}x{width})")
    timeline = _timeline(p)
    _require_min_frames(p, timeline.count)
    notes: list[str] = []
    seen: dict[str, tuple[int, int]] = {}

    def fit(img: Image.Image) -> Image.Image:
        if "target" not in seen:  # the first chosen frame decides (all frames share a size)
            seen["display"] = img.size
            if height is not None:
                seen["target"] = (height, width)
            else:
                seen["target"] = oriented_size(*native_size, img.width / img.height)
        return resize_center_crop(img, *seen["target"])

    def choose() -> list[int]:
        try:
            return choose_indices(timeline.count, num_frames, start, end, stride, timeline.times)
        except InputError as e:
            raise InputError(f"{p}: {e}") from None

    idx = choose()
    chosen = _decode(p, timeline, sorted(set(idx)), fit)
    promised = timeline.header_frames
    if len(chosen) < len(set(idx)):  # packets that do not decode: a damaged or truncated tail
        listed = timeline.count
        _all_decoded_times(p, timeline)
        _require_min_frames(p, timeline.count)
        promised = max(promised or 0, listed)
        idx = choose()
        chosen = _decode(p, timeline, sorted(set(idx)), fit)
        if len(chosen) < len(set(idx)):
            raise InputError(f"{p}: frames that decoded once failed to decode again; the file is damaged")
    if promised and promised - timeline.count > max(2, promised // 20):
        notes.append(f"{p}: the header promises {promised} frames but only {timeline.count} can be "
                     f"read (a truncated or damaged file?); using those {timeline.count}")

    times = None if timeline.times is None else tuple(float(timeline.times[i]) for i in idx)
    span = effective = fps = None
    lo, hi = fps_range
    if times is not None and num_frames > 1 and times[-1] > times[0]:
        span = times[-1] - times[0]
        effective = (num_frames - 1) / span
        fps = int(round(min(max(effective, lo), hi)))
        gap = span / (num_frames - 1)
        if effective < lo:
            window = Fraction(num_frames - 1, lo)  # the longest span that keeps the rate >= lo
            first = timeline.times[idx[0]]
            end_at = next((i for i, t in enumerate(timeline.times) if t - first > window), timeline.count)
            notes.append(
                f"{p}: the {num_frames} frames span {span:.1f} s ({gap:.2f} s apart, "
                f"{effective:.1f} fps) -- slower than the model's {lo}-{hi} fps, so fast motion is "
                f"sampled coarsely and the fps conditioning is clamped to {lo}; for the model's pace "
                f"use a shorter range, e.g. end={end_at}"
            )
        elif effective > hi:
            notes.append(
                f"{p}: the {num_frames} frames are only {gap * 1000:.0f} ms apart ({effective:.0f} "
                f"fps, above the model's {lo}-{hi} fps): the motion plays slowed down; the fps "
                f"conditioning is clamped to {hi} (a stride > 1 spreads the frames)"
            )
    first = chosen[min(chosen)]
    display = seen.get("display", first.size)
    stored = timeline.stored_size or display
    info = ClipInfo(
        source=p.name,
        kind=timeline.kind,
        source_indices=tuple(int(i) for i in idx),
        timestamps=times,
        span_seconds=span,
        effective_fps=effective,
        fps=fps,
        fps_range=(lo, hi),
        source_frames=timeline.count,
        header_frames=timeline.header_frames,
        source_fps=timeline.source_fps,
        stored_size=tuple(stored),
        display_size=tuple(display),
        size=tuple(seen["target"]),
        notes=tuple(notes),
    )
    return torch.stack([image_to_tensor(chosen[i]) for i in idx]), info


def load_video(
    path: PathLike,
    num_frames: int,
    height: int,
    width: int,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """:func:`load_reference` at a given size, frames only: ``(num_frames, 3, H, W)`` in ``[-1, 1]``."""
    return load_reference(path, num_frames, height, width, start=start, end=end, stride=stride)[0]


def load_image(path: PathLike, height: int | None = None, width: int | None = None,
               native_size: tuple[int, int] | None = None) -> Image.Image:
    """Open a still image (png/jpg/jpeg/webp/bmp) as RGB, optionally resized + centre-cropped.

    The EXIF orientation is applied (phone photos are stored sideways), transparency is
    flattened on white and greyscale expanded to RGB, so every later step can assume plain
    RGB. An animated gif/png/webp is refused (which of its frames is "the image" is the user's
    choice; it can serve as a motion reference instead). Give both ``height`` and ``width`` to
    fit the image with :func:`resize_center_crop`; or, for a size the user did not choose, the
    model's ``native_size`` ``(H, W)``, turned to the image's orientation by
    :func:`oriented_size` (a portrait photo gets e.g. 1024x576 for SVD); or neither.

    Raises :class:`InputError` naming the file when it is missing, a folder, animated or not
    decodable.
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
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1 and im.format in ("GIF", "PNG", "WEBP"):  # not MPO: a camera jpeg's preview
                raise InputError(
                    f"{p}: is animated ({frames} frames), not a still image; export the frame to "
                    "animate as a png/jpg (an animated file can be a motion reference)"
                )
            im.load()
            img = _to_rgb(ImageOps.exif_transpose(im))
    except _PIL_ERRORS as e:
        raise InputError(f"{p}: not a readable image ({_short_reason(e, p)}); {_HINT_IMAGE}") from None
    if height is not None and width is not None:
        img = resize_center_crop(img, height, width)
    elif native_size is not None:
        img = resize_center_crop(img, *oriented_size(*native_size, img.width / img.height))
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
        # asm=0: x264's SIMD routines made the same frames encode differently from write to
        # write (toy-world clips: the benchmark's user-file references 19 and 23 at every write,
        # 25 now and then, even with one thread and no lookahead threads); its plain-C paths are
        # deterministic and CPU-independent, at ~2.5x the encode time (0.6 s for 16 frames of
        # 576x1024).
        stream.options = {"crf": "18", "preset": "medium", "x264-params": "asm=0"}
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
