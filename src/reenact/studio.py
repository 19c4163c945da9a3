"""What the web UI does, without the web: a motion library over one loaded model.

:class:`Studio` holds the loaded model and the share folder. Each method is one action of the
page (:mod:`reenact.app`): it validates what the user gave, calls the library
(:func:`reenact.video.load_video`, :func:`reenact.inversion.invert`, the pipeline,
:meth:`MotionEmbedding.load`) and writes its result atomically. Problems the user can cause are
:class:`~reenact.errors.ReenactError`, exactly as in the CLI. No gradio in here, so all of it is
tested without a browser.

The share folder (``reenact ui --share-dir``) holds everything the UI writes::

    motions/NAME.safetensors        the learned embedding (what `reenact animate` takes)
    motions/NAME.reference/         the F frames the model saw, lossless pngs (for Reconstruct)
    motions/NAME.gif                a thumbnail of them, enlarged for small models
    outputs/NAME-<time>/            each Animate / Reconstruct run: mp4 + gif per result
    examples/                       reference clips from the toy world, to try the UI with

Uploads are untrusted: a motion is accepted only as a ``.safetensors`` that parses as a motion
embedding fitting the loaded model (it is re-serialised, never copied byte for byte), files are
size-limited, and library names are plain words, so nothing can be written outside the library.
F, H and W always come from the loaded model.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

from reenact import api, embedding, models, profiles, video
from reenact.embedding import MotionEmbedding
from reenact.errors import ConfigError, InputError, ReenactError
from reenact.files import atomic_write
from reenact.inversion import InversionConfig
from reenact.pipeline import GenerationConfig

__all__ = ["Studio", "Motion", "generation", "AnimateResult", "ReconstructResult", "Stopped",
           "check_name", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_SHARE_DIR"]

#: How ``reenact ui`` is served and where it writes, unless told otherwise.
DEFAULT_HOST = "127.0.0.1"  # this machine only: other machines need --host, deliberately
DEFAULT_PORT = 7860  # gradio's own default
DEFAULT_SHARE_DIR = "reenact-ui"

#: Size limits on uploads. An SVD-xt embedding (26 x 5 x 1024 float32) is 0.5 MB; a minute of
#: 1080p phone video is ~150 MB; a 4K still ~30 MB.
MAX_EMBEDDING_BYTES = 16 * 2**20
MAX_VIDEO_BYTES = 512 * 2**20
MAX_IMAGE_BYTES = 64 * 2**20
MAX_TARGETS = 8  # images per Animate run: more is a batch job (`reenact animate`)
#: Frames of small models are enlarged (nearest neighbour: the model's own pixels) to at least
#: this side for viewing; downloads keep the model's size.
VIEW_SIDE = 192
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

class Stopped(Exception):
    """The user pressed Stop; the run ends and nothing is written."""


# --------------------------------------------------------------------------------------------
# small pieces
# --------------------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """A library name: letters, digits, ``-`` and ``_`` (so it can never be a path)."""
    name = (name or "").strip()
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"motion name {name!r} is not allowed; use up to 64 letters, digits, '-' or '_'"
        )
    return name


def _upload(path: str | os.PathLike | None, what: str, limit: int, suffixes=None) -> Path:
    """An uploaded file: present, a plain file, not larger than ``limit`` bytes."""
    if not path:
        raise InputError(f"no {what} given; upload one first")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p.name}: the upload is gone; upload it again")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise InputError(f"{p.name}: a {what} must be one of {', '.join(sorted(suffixes))}")
    size = p.stat().st_size
    if size > limit:
        raise InputError(f"{p.name}: {size / 2**20:.0f} MB is more than the {limit // 2**20} MB "
                         f"allowed for a {what}")
    return p


def _form_number(value, name: str, optional: bool, kind: str) -> float | None:
    """A number from a form field (gradio gives floats, strings, or None when emptied)."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if optional:
            return None
        raise ConfigError(f"{name} must be given")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind} (got {value!r})") from None
    return number


def _as_int(value, name: str, minimum: int, optional: bool = False) -> int | None:
    """A whole number >= ``minimum`` from a form field."""
    number = _form_number(value, name, optional, "a whole number")
    if number is None:
        return None
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{name} must be a whole number (got {value!r})")
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {int(number)})")
    return int(number)


def _as_float(value, name: str, minimum: float = 0.0, optional: bool = False) -> float | None:
    """A number >= ``minimum`` from a form field."""
    number = _form_number(value, name, optional, "a number")
    if number is None:
        return None
    if not math.isfinite(number) or number < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum} (got {value!r})")
    return number


def _trim(start, end, stride) -> tuple[int, int | None, int]:
    """``(start, end, stride)`` of a reference from the form; end 0 or empty: the clip's end."""
    start = _as_int(start, "start", 0)
    end = _as_int(end or None, "end", 1, optional=True)
    stride = _as_int(stride, "stride", 1)
    if end is not None and end <= start:
        raise ConfigError(f"end must be greater than start={start} (got {end})")
    return start, end, stride


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def generation(steps=None, min_guidance=None, max_guidance=None, seed=None, fps=None,
               motion_bucket_id=None, noise_aug_strength=None,
               decode_chunk_size=None) -> GenerationConfig:
    """A :class:`GenerationConfig` from form values (empty: its default, i.e. for the optional
    knobs the motion's recorded value, else SVD's); errors name the field."""
    base = GenerationConfig()
    config = GenerationConfig(
        steps=_as_int(steps, "steps", 1, optional=True) or base.steps,
        min_guidance=_or(_as_float(min_guidance, "min guidance", optional=True), base.min_guidance),
        max_guidance=_or(_as_float(max_guidance, "max guidance", optional=True), base.max_guidance),
        seed=_or(_as_int(seed, "seed", 0, optional=True), base.seed),
        fps=_as_int(fps, "fps", 1, optional=True),
        motion_bucket_id=_as_int(motion_bucket_id, "motion bucket id", 0, optional=True),
        noise_aug_strength=_as_float(noise_aug_strength, "noise aug strength", optional=True),
        decode_chunk_size=_as_int(decode_chunk_size, "decode chunk size", 1, optional=True)
        or base.decode_chunk_size,
    )
    config.validate()
    return config


def _or(value, default):
    return default if value is None else value


@dataclass
class Motion:
    """One entry of the motion library."""

    name: str
    path: Path
    embedding: MotionEmbedding
    thumbnail: Path | None
    reference: Path | None  # folder of the F reference frames, if the UI learned it

    @property
    def row(self) -> list:
        meta = self.embedding.metadata
        loss = meta.get("final_loss")
        created = meta.get("created") or datetime.fromtimestamp(
            self.path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M")
        return [self.name, str(meta.get("base_model", "?")), self.embedding.num_frames,
                self.embedding.tokens, meta.get("steps_done", ""),
                f"{loss:.4g}" if isinstance(loss, (int, float)) else "", str(created),
                str(meta.get("reference", ""))]


ROW_HEADERS = ["name", "model", "F", "N", "steps", "loss", "date (UTC)", "reference"]


# --------------------------------------------------------------------------------------------
# the studio: the model, the library folder, and one method per thing the page does
# --------------------------------------------------------------------------------------------

class Studio:
    """The loaded model and the share folder; each method is one action of the page."""

    def __init__(self, model: str = models.TOY_MODEL, share_dir: str | os.PathLike = DEFAULT_SHARE_DIR,
                 device: str = "auto", pipe=None) -> None:
        self.model = model
        # the denoising bar on: the page shows it (gradio tracks tqdm), the server log too
        self.pipe = pipe if pipe is not None else api.load_model(model, device, progress=True)
        self.num_frames, self.height, self.width = models.native_geometry(model)
        self.profile = profiles.profile_for(self.pipe)  # the inversion's defaults for this model
        self.share = Path(share_dir).expanduser().resolve()
        self.library = self.share / "motions"
        self.outputs = self.share / "outputs"
        self.examples_dir = self.share / "examples"
        for folder in (self.library, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # one job on the model at a time (gradio's queue, too)
        self.stop_event = threading.Event()
        side = min(self.height, self.width)
        self.view_factor = max(1, math.ceil(VIEW_SIDE / side))

    # -- looking ---------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        return (f"model **{self.model}**: F = {self.num_frames} frames at "
                f"{self.height}x{self.width}, d = {self.pipe.unet.config.cross_attention_dim}, "
                f"on {self.pipe.device.type}")

    def view(self, frames: torch.Tensor | Sequence[Image.Image]) -> list[Image.Image]:
        """Frames enlarged for the screen (nearest neighbour: exactly the model's pixels)."""
        images = video.tensor_to_images(frames) if isinstance(frames, torch.Tensor) else list(frames)
        return video.upscale_nearest(images, self.view_factor)

    def examples(self) -> dict[str, Path]:
        """Reference clips from the toy world (one per motion), written once into examples/.

        Longer and larger than the model's F x H x W (2F frames at 4x the size), as users' clips
        are, so trimming and the frame preview have something to do.
        """
        try:
            from reenact.toy import world
        except ImportError:  # a trimmed installation: no examples
            return {}
        found = {}
        for i, motion in enumerate(world.MOTIONS):
            path = self.examples_dir / f"toy-{motion}.mp4"
            if not path.is_file():
                clip = world.make_clip(world.SEED_RANGES["demo"][0] + 500 + i,
                                       num_frames=2 * self.num_frames, height=4 * self.height,
                                       width=4 * self.width, motion=motion)
                video.write_video(clip.video, path, fps=16)  # F frames span ~0.5 s: in SVD's fps range
            found[f"toy {motion}"] = path
        return found

    # -- Learn a motion ----------------------------------------------------------------------

    def reference(self, path, start=0, end=None, stride=1) -> api.Reference:
        """The trimmed clip exactly as the inversion will get it (:func:`reenact.api.load_reference`):
        ``.frames`` ``(F, 3, H, W)`` at the model's size, ``.source`` (source frame indices and
        times), ``.notes`` (which frames over what span, then warnings)."""
        p = _upload(path, "reference video", MAX_VIDEO_BYTES)
        start, end, stride = _trim(start, end, stride)
        return api.load_reference(p, self.pipe, start=start, end=end, stride=stride)

    @property
    def defaults(self) -> InversionConfig:
        """The inversion's defaults for the loaded model (its profile): the form starts there."""
        return self.profile.config()

    def config(self, steps, tokens, seed, lr=None, sets=None, log_sigma_mean=None) -> InversionConfig:
        """The model's profile with the form's values on top; empty fields keep the profile's."""
        changes = {"steps": _as_int(steps, "steps", 1), "tokens": _as_int(tokens, "tokens", 1),
                   "seed": _as_int(seed, "seed", 0),
                   "checkpoint_every": 0}  # the UI writes only finished motions
        if lr not in (None, ""):
            changes["lr"] = _as_float(lr, "learning rate", 0.0)
        if sets:
            changes["sets"] = sets
        if log_sigma_mean not in (None, ""):
            changes["log_sigma_mean"] = _as_float(log_sigma_mean, "mean of ln sigma",
                                                  minimum=-math.inf)
        config = self.profile.config(**changes)
        config.validate()
        return config

    def learn(self, path, name: str, start=0, end=None, stride=1,
              config: InversionConfig | None = None,
              on_step: Callable[[int, float], None] | None = None) -> Motion:
        """Invert the trimmed reference into ``motions/NAME.safetensors`` (+ its frames and gif).

        The name is checked and the reference loaded before any compute. ``on_step(step, loss)``
        runs after every step; :meth:`stop` ends the run with :class:`Stopped` and nothing is
        written. The embedding file is written last, so a library entry is always complete.
        """
        name = check_name(name)
        target = self.library / f"{name}.safetensors"
        if target.exists():
            raise ConfigError(f"a motion named '{name}' is already in the library; pick another name")
        config = config or self.profile.config(checkpoint_every=0)
        frames = self.reference(path, start, end, stride).frames  # refused before any compute
        start, end, stride = _trim(start, end, stride)

        def step(k: int, loss: float) -> None:
            if self.stop_event.is_set():
                raise Stopped(f"Stopped at step {k} of {config.steps}; nothing was saved")
            if on_step is not None:
                on_step(k, loss)

        with self.lock:
            self.stop_event.clear()
            result = api.invert_video(Path(path), self.pipe, start=start, end=end, stride=stride,
                                      config=config, progress=False, callback=step)
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
        emb = MotionEmbedding(result.embedding.tensor, {**result.embedding.metadata, "created": created})
        return self._add(name, emb, frames)

    def stop(self) -> None:
        """Ask the running inversion to stop after its current step."""
        self.stop_event.set()

    def _add(self, name: str, emb: MotionEmbedding, frames: torch.Tensor | None) -> Motion:
        """Write a library entry: sidecars first, the embedding last (each atomically)."""
        target = self.library / f"{name}.safetensors"
        written: list[Path] = []
        try:
            if frames is not None:
                images = video.tensor_to_images(frames)
                written.append(video.write_video(images, self.library / f"{name}.reference", fmt="png"))
                written.append(video.write_video(self.view(images), self.library / f"{name}.gif",
                                                 fps=int(emb.metadata.get("fps", 7) or 7)))
            emb.save(target)
        except BaseException:
            for p in written:
                _remove(p)
            raise
        return self.motion(name)

    # -- Motion library ----------------------------------------------------------------------

    def motions(self) -> list[Motion]:
        """Every readable entry of the library, by name (unreadable files are skipped)."""
        found = []
        for path in sorted(self.library.glob("*.safetensors")):
            if path.name.startswith(".") or not _NAME.fullmatch(path.stem):
                continue
            try:
                found.append(self.motion(path.stem))
            except ReenactError:
                continue
        return found

    def motion(self, name: str) -> Motion:
        """The library entry ``name`` (a name from the list, never a path)."""
        if not name:
            raise InputError("no motion chosen; learn one or pick one from the library")
        name = check_name(name)
        path = self.library / f"{name}.safetensors"
        if not path.is_file():
            raise InputError(f"there is no motion named '{name}' in the library")
        emb = MotionEmbedding.load(path)
        thumb = self.library / f"{name}.gif"
        ref = self.library / f"{name}.reference"
        return Motion(name, path, emb, thumb if thumb.is_file() else None,
                      ref if ref.is_dir() else None)

    def import_motion(self, upload, name: str | None = None) -> Motion:
        """Add an embedding learned elsewhere, if it is a motion embedding that fits the model."""
        p = _upload(upload, "motion embedding", MAX_EMBEDDING_BYTES, {".safetensors"})
        name = check_name(name or p.stem)
        if (self.library / f"{name}.safetensors").exists():
            raise ConfigError(f"a motion named '{name}' is already in the library; give another name")
        emb = MotionEmbedding.load(p)
        emb.path = Path(p.name)  # messages name the file the user gave, not the upload's temp path
        embedding.check_compatible(emb, self.pipe.unet, self.model, self.num_frames)
        api.generation_config(emb, self.pipe)  # its recorded size and conditioning fit the model
        emb = MotionEmbedding(emb.tensor, dict(emb.metadata))  # re-serialised, never copied
        return self._add(name, emb, None)

    # -- Animate, Reconstruct ----------------------------------------------------------------

    def _generate(self, emb: MotionEmbedding, images: list[Image.Image], gen: GenerationConfig,
                  on_step: Callable[[int, int], None] | None) -> list[torch.Tensor]:
        """One video per image (``(F, 3, H, W)`` in ``[-1, 1]``), one call each so progress
        shows; the same seed for every image, as ``reenact animate`` does."""
        out = []
        with self.lock:
            for i, image in enumerate(images):
                out.append(self.pipe.animate([image], emb, gen)[0])
                if on_step is not None:
                    on_step(i + 1, len(images))
        return out

    def _run_folder(self, label: str) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return self.outputs / f"{label}-{stamp}-{uuid.uuid4().hex[:4]}"

    def _motion_for_model(self, name: str) -> Motion:
        motion = self.motion(name)
        embedding.check_compatible(motion.embedding, self.pipe.unet, self.model, self.num_frames)
        return motion

    def animate(self, name: str, images: Sequence, knobs: GenerationConfig | None = None,
                on_step: Callable[[int, int], None] | None = None) -> AnimateResult:
        """Animate each image with motion ``name``: ``outputs/NAME-<time>/`` gets, per image,
        ``<i>_<stem>.mp4`` and ``.gif`` at the model's size, and ``compare.mp4`` (reference |
        results, enlarged for viewing). Every image is read before any compute; the folder
        appears only when complete. ``knobs``: unset values come from the motion, else SVD's."""
        motion = self._motion_for_model(name)
        paths = [_upload(p, "target image", MAX_IMAGE_BYTES) for p in (images or [])]
        if not paths:
            raise InputError("no target image given; upload one or several images")
        if len(paths) > MAX_TARGETS:
            raise InputError(f"{len(paths)} images given; animate at most {MAX_TARGETS} at a time "
                             "here (`reenact animate` has no limit)")
        gen = api.generation_config(motion.embedding, self.pipe, knobs)
        targets = [self._image(p, gen) for p in paths]
        results = self._generate(motion.embedding, targets, gen, on_step)
        final = self._run_folder(name)
        with atomic_write(final) as tmp:  # the run's folder appears complete or not at all
            files = []
            for i, (p, frames) in enumerate(zip(paths, results)):
                stem = f"{i + 1}_{re.sub(r'[^A-Za-z0-9_-]', '_', p.stem)[:40]}"
                files.append(video.write_video(frames, tmp / f"{stem}.mp4", fps=gen.fps))
                files.append(video.write_video(frames, tmp / f"{stem}.gif", fps=gen.fps))
            columns = [self.view(r) for r in results]
            if motion.reference is not None:
                columns.insert(0, self.view(self._library_reference(motion, gen)))
            video.write_video(video.make_grid(columns, columns=4, gap=4), tmp / "compare.mp4",
                              fps=gen.fps)
        return AnimateResult(final / "compare.mp4", [final / f.name for f in files],
                             motion.reference is not None, gen)

    def _image(self, path: Path, gen: GenerationConfig) -> Image.Image:
        try:
            return video.load_image(path, gen.height, gen.width)
        except InputError as e:
            raise InputError(str(e).replace(str(path), path.name)) from None

    def _library_reference(self, motion: Motion, gen: GenerationConfig) -> torch.Tensor:
        """The F frames a motion learned here was learned on (kept in the library)."""
        return video.load_video(motion.reference, motion.embedding.num_frames, gen.height, gen.width)

    def reconstruct(self, name: str, knobs: GenerationConfig | None = None, reference=None,
                    on_step: Callable[[int, int], None] | None = None) -> ReconstructResult:
        """The paper's diagnostic (:func:`reenact.api.reconstruct`): animate the reference's own
        first frame with its motion and compare with the reference, frame by frame (PSNR).
        ``reference``: an uploaded clip, for motions learned elsewhere (read over the range the
        motion records); those learned here use the frames kept in the library."""
        motion = self._motion_for_model(name)
        gen = api.generation_config(motion.embedding, self.pipe, knobs)
        if reference:
            clip = _upload(reference, "reference video", MAX_VIDEO_BYTES)
            where: dict = {}
        elif motion.reference is not None:  # exactly the F frames it was learned on
            clip, where = motion.reference, {"start": 0, "end": motion.embedding.num_frames,
                                             "stride": 1}
        else:
            raise InputError(f"'{motion.name}' was not learned here, so its reference is not in "
                             "the library; upload the reference video to reconstruct it")
        with self.lock:
            result = api.reconstruct(motion.embedding, clip, self.pipe, config=gen, **where)
        if on_step is not None:
            on_step(1, 1)
        meta = motion.embedding.metadata
        frames = video.load_video(clip, motion.embedding.num_frames, gen.height, gen.width,
                                  where.get("start", int(meta.get("source_start") or 0)),
                                  where.get("end", meta.get("source_end")),
                                  where.get("stride", int(meta.get("source_stride") or 1)))
        final = self._run_folder(f"{name}-reconstruction")
        with atomic_write(final) as tmp:
            video.write_video(result.video, tmp / "reconstruction.mp4", fps=result.fps)
            video.write_video(result.video, tmp / "reconstruction.gif", fps=result.fps)
            video.write_video(video.make_grid([self.view(frames), self.view(result.video)], gap=4),
                              tmp / "compare.mp4", fps=result.fps)
        return ReconstructResult(final / "compare.mp4", final / "reconstruction.mp4", result.psnr,
                                 result.same_reference)


@dataclass
class AnimateResult:
    compare: Path  # reference | results, enlarged, mp4
    files: list[Path]  # per image: mp4 and gif at the model's size
    with_reference: bool
    settings: GenerationConfig  # resolved: every value the generation used


@dataclass
class ReconstructResult:
    compare: Path
    video: Path
    psnr: list[float]
    same_reference: bool = True  # the clip is the one the motion was learned on

    @property
    def report(self) -> str:
        """PSNR, and what a poor value means (the paper's reading of the diagnostic)."""
        first, rest = self.psnr[0], self.psnr[1:]
        later = sum(rest) / len(rest)
        mean = sum(self.psnr) / len(self.psnr)
        lines = [f"**PSNR of the reconstruction to the reference: {mean:.2f} dB** (mean of "
                 f"{len(self.psnr)} frames; frame 0: {first:.2f} dB, later frames: {later:.2f} dB)",
                 "",
                 "Per frame: " + ", ".join(f"{s:.1f}" for s in self.psnr),
                 "",
                 "How to read it: the motion was learned to regenerate exactly this clip from its "
                 "first frame. Frame 0 shows how well the model reproduces the picture at all (a "
                 "limit of the model, not of the motion). If the later frames fall far below "
                 "frame 0, the embedding has not captured the reference's motion, and animating "
                 "other images with it usually fails too: learn it with more steps, or trim the "
                 "clip to the motion you want."]
        if not self.same_reference:
            lines += ["", "Note: this clip (range, size) is not the one the motion was learned on, "
                          "so the PSNR measures transfer, not reconstruction."]
        return "\n".join(lines)
