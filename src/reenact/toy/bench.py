"""The motion-transfer benchmark on the toy world: the paper's ablation, measured, and sliced.

``reenact bench toy [flags]`` (or ``python benchmarks/toy_transfer.py [flags]``). A fixed set of
world-v2 reference clips (``world.make_scene_clip``) from ``SEED_RANGES["bench"]`` (never seen in
training) at the model's F x H x W (read from the model), planned by :func:`reference_plan` so that
the slices the training distribution does not favour are all there: every motion class of
``world.MOTIONS_V2`` (camera pan and zoom included), small (12-20 %), medium and large (35-50 %)
objects, plain / gradient / textured backgrounds, extreme colours (the RGB cube's corners: world v2
draws colours uniformly, so "far from training-frequent colours" has no other honest meaning), and
references given as users give them (64x64, 16-24 frames, H.264 mp4 read back through
``reenact.video``). Each has a few target stills of its size class, background kind and colour
class, whose object the reference's motion keeps in the picture (:func:`pick_targets`). For each
configuration the reference is inverted once and its targets animated in one batched pipeline
call; every generated video is scored against ground truth:

* **trajectory cosine**: cosine between the reference's true motion signal (frames 1..F-1,
  flattened) and the result's measured one -- the object's displacement (tracked by its colour,
  ``world.track_by_color``) for object motions; for camera motions (``world.estimate_camera``)
  the pan's shift, anchored on the object (a point of the scene) and counted only where the
  background moves with it, or the zoom's log scale, by brute-force search against frame 0, kept
  where the background zooms too (the toy stand-in for the paper's SSv2 feature cosine);
* **direction accuracy**: at the frame k* where the reference moves most, the result's motion is
  within 45 degrees of the reference's (a zoom: in vs out);
* **magnitude ratio**: |result(k*)| / |reference(k*)| (median over videos);
* **first-frame PSNR**: the result's frame 0 against the target image (pixels in [0, 1]) -- is the
  target's appearance kept (the paper's first-frame CLIP similarity);
* **no leak**: every frame shows the target's object colour, and fewer pixels of the reference's
  object colour than of it -- the reference's appearance did not leak into the embedding;
* **reconstruction** (per reference and inverted configuration, ``reenact reconstruct``'s
  diagnostic): the reference redone from its own first frame; first-frame PSNR and trajectory.

Every summary reports each slice and names the worst, not only the mean.

Configurations (``--configs``; the paper's F' x N ablation plus the stock model and an oracle):
``a`` stock image-to-video (no motion embedding: the model's CLIP embedding of the target),
``b`` one shared set N=1, ``c`` one shared set N=5, ``d`` F+1 sets N=1, ``e`` F+1 sets N=5 (the
paper's default embedding, optimised with the library's default ``frame_lr``), ``p`` F+1 sets N=5
optimised as the paper does, as independent sets (``frame_lr=1``; issue 7 item 4), and optionally
``o``, the *oracle*: the toy model's own training context for the true motion (``motion_code.safetensors`` of the model folder), one token, all sets equal -- an upper
bound on what the model can do with any embedding. ``a`` and ``o`` need no inversion.

Pairing: within a reference every configuration uses the same inversion seed and the same
generation noise, so configurations differ only in the embedding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from reenact import models, profiles
from reenact import video as vio
from reenact.embedding import MotionEmbedding
from reenact.errors import ConfigError
from reenact.files import atomic_write
from reenact.inversion import InversionConfig, invert
from reenact.pipeline import GenerationConfig
from reenact.settings import describe
from reenact.toy import world
from reenact.metrics import psnr
from reenact.toy.metrics import (MIN_COLOR_DISTANCE, color_distance, first_frame_psnr, measured_motion,
                                 motion_kind, motion_metrics, score_video, true_motion)

__all__ = [
    "CONFIGS",
    "pick_references",
    "pick_targets",
    "transferred_motion",
    "keeps_object_in_picture",
    "oracle_embedding",
    "generate",
    "summarise",
    "markdown_table",
    "main",
]


@dataclass(frozen=True)
class ConfigSpec:
    """One row of the ablation: ``sets``/``tokens`` of the inverted embedding (None: no inversion)."""

    description: str
    sets: str | None = None
    tokens: int | None = None
    frame_lr: float | None = None  # InversionConfig.frame_lr (None: the default)


CONFIGS: dict[str, ConfigSpec] = {
    "a": ConfigSpec("no motion embedding (stock image-to-video)"),
    "b": ConfigSpec("one shared set, N=1", "shared", 1),
    "c": ConfigSpec("one shared set, N=5", "shared", 5),
    "d": ConfigSpec("F+1 sets, N=1", "per-frame", 1),
    "e": ConfigSpec("F+1 sets, N=5, the model's default inversion (its profile)", "per-frame", 5),
    "p": ConfigSpec("F+1 independent sets, N=5 (the paper's optimisation: --frame-lr 1)", "per-frame", 5, 1.0),
    "o": ConfigSpec("oracle: the model's training context for the true motion"),
}
DEFAULT_CONFIGS = "a,b,c,d,e"

#: The inversion settings the benchmark takes as flags (``--steps`` ... ``--batch-size``); each
#: left out is the model's profile value, as in ``reenact invert``.
INVERSION_FLAGS = ("steps", "lr", "lr_schedule", "log_sigma_mean", "log_sigma_std", "init", "frame_lr",
                   "starts", "start_steps", "probe", "probe_draws", "motion_weight", "batch_size")

#: offsets inside the bench seed range: references at +i, targets of reference i at
#: +TARGET_OFFSET + i*TARGET_STRIDE + k (k counts skipped seeds too)
TARGET_OFFSET, TARGET_STRIDE = 100_000, 100
UPSCALE = 4  # 32x32 frames are small at their own size

#: object side / frame side of the size slices (world v2 draws 12-50 %)
SIZE_CLASSES = {"small": (0.12, 0.20), "medium": (0.20, 0.35), "large": (0.35, 0.50)}
#: world v2 draws object colours uniformly in the RGB cube (subject to contrast), so no colour is
#: "training-frequent"; the colour slice takes the cube's corners instead -- every channel at
#: least this far from 0 (saturated primaries, secondaries, black and white), 0.3 % of draws
EXTREME_COLOR = 0.85
#: references given as users give them: this size, 16-24 frames, H.264 mp4 read by reenact.video
USER_SIZE, USER_FRAMES, USER_FPS = 64, (16, 24), 8


# --------------------------------------------------------------------------------------------
# the fixed benchmark set
# --------------------------------------------------------------------------------------------

def _extreme_color(rng: np.random.Generator) -> np.ndarray:
    return rng.choice([-1.0, 1.0], 3) * rng.uniform(EXTREME_COLOR, 1.0, 3)


@dataclass
class Reference:
    """One benchmark reference: the clip as rendered, what the inversion is given, the truth.

    ``video``: (F, 3, H, W) at the model's size, either the clip itself or (``source`` ``mp4``)
    the clip written as a larger, longer H.264 file and read back by ``reenact.video`` as a
    user's file is; ``truth``: :func:`true_motion` at the frames that reading chose.
    """

    index: int
    clip: world.SceneClip
    video: torch.Tensor
    truth: np.ndarray
    size_class: str
    extreme_color: bool
    source: str  # "rendered" or "mp4 WxH, N frames"
    indices: tuple[int, ...] | None = None  # the clip's frames that ``video`` shows (None: all)

    @property
    def motion(self) -> str:
        return self.clip.motion

    @property
    def kind(self) -> str:
        return motion_kind(self.clip.motion)

    @property
    def seed(self) -> int:
        return self.clip.meta["seed"]

    def slices(self) -> list[str]:
        """The slices this reference (and its targets, which share its size class, background
        kind and colour class) belongs to."""
        out = [f"motion: {self.motion}", f"size: {self.size_class}", f"background: {self.clip.background}"]
        out.append("camera motion" if self.kind != "object" else "object motion")
        if self.extreme_color:
            out.append("colour: extreme (cube corners)")
        out.append("reference: user mp4" if self.source.startswith("mp4") else "reference: rendered at model size")
        return out


def reference_plan(i: int) -> dict:
    """What reference ``i`` is: motion round-robin over ``world.MOTIONS_V2``; size class and
    background cycle so that every motion meets each of them (27 references: all); every 4th
    (i % 4 == 2) has an extreme colour; odd ones come as user mp4 files."""
    motions = world.MOTIONS_V2
    rnd = i // len(motions)
    motion = motions[i % len(motions)]
    sizes = list(SIZE_CLASSES)
    background = "texture" if motion in world.CAMERA_MOTIONS else world.BACKGROUNDS[(i + rnd) % len(world.BACKGROUNDS)]
    return {"motion": motion, "size_class": sizes[rnd % len(sizes)], "background": background,
            "extreme_color": i % 4 == 2, "user_file": i % 2 == 1}


def pick_references(count: int, num_frames: int = 8, height: int = 32, width: int = 32, *,
                    seed_range: str = "bench", work_dir: Path | None = None,
                    keep: Callable[[int], bool] | None = None) -> list[Reference]:
    """``count`` references (see :func:`reference_plan`), seed ``lo + i`` of ``seed_range``;
    with ``keep``, only the plan indices it accepts are made (a ``--shard`` or ``--only`` run).

    User-file references are rendered at ``USER_SIZE`` with 16-24 frames, written as H.264 mp4
    into ``work_dir`` (a temporary folder if None) and read back with
    :func:`reenact.video.load_reference` at the model's ``num_frames x height x width``.
    """
    import tempfile

    lo, hi = world.SEED_RANGES[seed_range]
    if count > TARGET_OFFSET:
        raise ConfigError(f"at most {TARGET_OFFSET} references (got {count})")
    refs = []
    tmp = None
    for i in range(count):
        if keep is not None and not keep(i):
            continue
        plan = reference_plan(i)
        seed = lo + i
        rng = np.random.default_rng(seed + 7)
        color = _extreme_color(rng) if plan["extreme_color"] else None
        if plan["user_file"]:
            frames = USER_FRAMES[0] + i % (USER_FRAMES[1] - USER_FRAMES[0] + 1)
            clip = world.make_scene_clip(seed, frames, USER_SIZE, USER_SIZE, motion=plan["motion"],
                                         background=plan["background"],
                                         size_range=SIZE_CLASSES[plan["size_class"]], object_color=color)
            if work_dir is None and tmp is None:
                tmp = tempfile.TemporaryDirectory(prefix="reenact-bench-")
            folder = Path(work_dir or tmp.name)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"ref_{i}_{plan['motion']}.mp4"
            vio.write_video(clip.video, path, fps=USER_FPS)
            video, info = vio.load_reference(path, num_frames, height, width)
            indices = list(info.source_indices)
            source = f"mp4 {USER_SIZE}x{USER_SIZE}, {frames} frames"
        else:
            clip = world.make_scene_clip(seed, num_frames, height, width, motion=plan["motion"],
                                         background=plan["background"],
                                         size_range=SIZE_CLASSES[plan["size_class"]], object_color=color)
            video, indices, source = clip.video, None, "rendered"
        refs.append(Reference(i, clip, video, true_motion(clip, indices), plan["size_class"],
                              plan["extreme_color"], source, None if indices is None else tuple(indices)))
    if tmp is not None:
        tmp.cleanup()
    return refs


def transferred_motion(reference: Reference, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's true motion as it should play in a ``height x width`` target: object path
    and camera shift in pixels, camera scale (``world.stays_in_frame``'s arguments)."""
    truth = reference.truth
    n = truth.shape[0]
    path, shift, scale = np.zeros((n, 2)), np.zeros((n, 2)), np.ones(n)
    if reference.kind == "pan":
        shift = truth * np.array([width, height])
    elif reference.kind == "zoom":
        scale = np.exp(truth[:, 0])
    else:
        path = truth * np.array([width, height])
    return path, shift, scale


def keeps_object_in_picture(reference: Reference, target: world.SceneClip, height: int, width: int) -> bool:
    """The picture rule of the benchmark's (and the demo's) targets: would the reference's true
    motion, played in the ``height x width`` target, keep the target's object in every frame
    (``world.stays_in_frame``: the margin the world keeps its own clips in)?"""
    return world.stays_in_frame(target.centers[0], target.size, *transferred_motion(reference, height, width),
                                height, width)


def pick_targets(reference: Reference, count: int, num_frames: int = 8, height: int = 32, width: int = 32,
                 seed_range: str = "bench") -> list[world.SceneClip]:
    """``count`` target stills for ``reference``: the first seeds of its own block, of its size
    class, background kind and colour class, whose object colour and every background pixel
    are at least ``MIN_COLOR_DISTANCE`` from the reference's object colour, and whose object the
    reference's motion keeps in the picture (:func:`keeps_object_in_picture`; others are skipped).

    Shape, colours, size and position are random draws, so the targets differ among themselves.
    Only frame 0 of a target is used (the still); the rest is its own, unrelated motion.

    Why the picture rule: a target placed where the reference's motion carries its object out
    of the frame has no measurable right answer (the object is gone, so tracking it fails a
    correct result: the model's own training context scored -0.87 on one such target), and the
    leak check counts its frames as lost. Before this rule, 41 of the 81 targets did not keep
    their object in frame by the world's margin; docs/RESULTS.md, "The benchmark's targets keep
    their object in the picture".
    """
    lo, hi = world.SEED_RANGES[seed_range]
    start = lo + TARGET_OFFSET + reference.index * TARGET_STRIDE
    ref_color = torch.as_tensor(reference.clip.object_color, dtype=torch.float32)[:, None, None]
    targets: list[world.SceneClip] = []
    for seed in range(start, start + TARGET_STRIDE):
        rng = np.random.default_rng(seed + 7)
        color = _extreme_color(rng) if reference.extreme_color else None
        if color is not None and color_distance(color, reference.clip.object_color) < MIN_COLOR_DISTANCE:
            continue
        t = world.make_scene_clip(seed, num_frames, height, width, motion="line",
                                  background=reference.clip.background,
                                  size_range=SIZE_CLASSES[reference.size_class], object_color=color)
        still = t.video[0]
        background = t.masks[0] < 1e-3
        near = torch.linalg.norm(still - ref_color, dim=0)[background]
        if (color_distance(t.object_color, reference.clip.object_color) >= MIN_COLOR_DISTANCE
                and (near.numel() == 0 or float(near.min()) >= MIN_COLOR_DISTANCE)
                and keeps_object_in_picture(reference, t, height, width)):
            targets.append(t)
            if len(targets) == count:
                return targets
    raise ConfigError(f"could not find {count} targets for reference {reference.index} within "
                      f"{TARGET_STRIDE} seeds; ask for fewer --targets")


# --------------------------------------------------------------------------------------------
# embeddings and generation
# --------------------------------------------------------------------------------------------

def model_folder(model: str) -> Path | None:
    """The local folder of ``model`` (``toy``, ``toy-v2`` = the bundled ones), or None for a hub id."""
    if model in models.BUNDLED_MODELS:
        return models.toy_model_dir(model)
    p = Path(model).expanduser()
    return p if p.is_dir() else None


def oracle_embedding(model: str, reference: world.Clip | Reference) -> MotionEmbedding:
    """The toy model's training context for the reference's true motion, as an (F+1, 1, d) embedding.

    ``tanh(feat.flatten() @ P + b)`` with ``P``, ``b`` from ``motion_code.safetensors`` (see
    ``reenact.toy.train``): one token, the same for every set, i.e. exactly what the model saw in
    training for this motion -- what no inverted embedding can be expected to beat.
    """
    from safetensors.torch import load_file

    indices = None
    if isinstance(reference, Reference):
        reference, indices = reference.clip, reference.indices
    folder = model_folder(model)
    path = folder / "motion_code.safetensors" if folder is not None else None
    if path is None or not path.is_file():
        raise ConfigError(f"config 'o' (oracle) needs motion_code.safetensors in the model folder; "
                          f"'{model}' has none (toy models only)")
    code = load_file(str(path))
    feats = world.motion_features(reference)  # (F, 5), image units: the same at any resolution
    if indices is not None:  # a user file: the frames the reader chose, relative to the first
        feats = feats[list(indices)] - feats[indices[0]]
    feats = torch.as_tensor(feats, dtype=torch.float32)
    frames = feats.shape[0]
    per_frame = code["P"].shape[0] // frames  # 2 (displacements: the first model) or 5
    if code["P"].shape[0] != per_frame * frames or per_frame not in (2, world.MOTION_FEATURES):
        raise ConfigError(f"{path}: a code for {code['P'].shape[0]} inputs does not fit a clip of {frames} frames")
    token = torch.tanh(feats[:, :per_frame].flatten() @ code["P"] + code["b"])
    return MotionEmbedding(token[None, None].expand(frames + 1, 1, -1).clone(),
                           {"base_model": model, "oracle": True})


def generate(pipe, images: Sequence[Image.Image], embedding: MotionEmbedding | None, *,
             steps: int, seed: int) -> torch.Tensor:
    """Animate ``images`` (all of one size) in ONE batched call: ``(B, F, 3, H, W)`` in [-1, 1].

    ``embedding=None`` is the stock image-to-video pipeline (the model's CLIP embedding of each
    image). Every image gets its own generator seeded ``seed`` (``MotionTransferPipeline.animate``),
    so configurations compared on one reference share their noise.
    """
    size = (images[0].height, images[0].width)
    config = GenerationConfig(steps=steps, seed=seed).resolve(embedding, size)
    return pipe.animate(images, embedding, config)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

@dataclass
class BenchSettings:
    """What a run varies: the configurations, the base inversion settings (a plain
    :class:`InversionConfig`, so its defaults are the library's), the generation steps."""

    configs: list[str]
    inversion: InversionConfig
    gen_steps: int
    seed: int = 0
    model: str = "toy-v2"  # the world-v2 model: the benchmark's clips are world v2
    keep_videos_for: int = 3  # references whose videos are kept (for the example images)
    reconstruct: bool = True  # the reconstruct diagnostic per reference and inverted config

    def inversion_config(self, spec: ConfigSpec, seed: int) -> InversionConfig:
        frame_lr = self.inversion.frame_lr if spec.frame_lr is None else spec.frame_lr
        return dataclasses.replace(self.inversion, sets=spec.sets, tokens=spec.tokens, seed=seed,
                                   frame_lr=frame_lr)


@dataclass
class BenchRun:
    records: list[dict] = field(default_factory=list)  # one per generated video
    inversions: list[dict] = field(default_factory=list)  # one per (reference, inverted config)
    kept: dict = field(default_factory=dict)  # (ref index, config) -> (T, F, 3, H, W)


def reconstruct(pipe, reference: Reference, embedding: MotionEmbedding, *, steps: int, seed: int) -> dict:
    """``reenact reconstruct``'s diagnostic: the reference redone from its own first frame.

    First-frame PSNR (and mean PSNR over frames) to the reference as the model saw it, and the
    reconstruction's motion scored against the reference's true motion: an embedding that cannot
    redo its own clip has not learned the motion (the paper's check).
    """
    first = vio.tensor_to_images(reference.video[:1])[0]
    video = generate(pipe, [first], embedding, steps=steps, seed=seed)[0]
    m = motion_metrics(reference.truth, measured_motion(video, reference.kind, reference.clip.object_color))
    return {"first_frame_psnr": first_frame_psnr(video, reference.video[0]),
            "mean_psnr": float(np.mean([psnr(a, b) for a, b in zip(video, reference.video)])),
            "trajectory_cosine": m["trajectory_cosine"], "direction_ok": m["direction_ok"]}


def run_benchmark(pipe, references: list[Reference], targets: list[list[world.Clip]],
                  settings: BenchSettings, log: Callable[[str], None] = lambda s: None,
                  after_reference: Callable[[BenchRun], None] | None = None) -> BenchRun:
    """Invert every reference once per configuration, animate its targets, score every video;
    reconstruct each reference with every inverted embedding (``settings.reconstruct``)."""
    run = BenchRun()
    t0 = time.perf_counter()
    for n, (ref, tgts) in enumerate(zip(references, targets)):
        i = ref.index  # the plan's index (a --shard runs some of the plan)
        seed = settings.seed + i  # inversion and generation seed, shared by all configs of ref i
        images = [vio.tensor_to_images(t.video[0])[0] for t in tgts]
        image_tensors = [vio.image_to_tensor(im) for im in images]  # what the pipeline was given
        for key in settings.configs:
            spec = CONFIGS[key]
            inv_s, loss, recon = None, None, None
            if key == "a":
                emb = None
            elif key == "o":
                emb = oracle_embedding(settings.model, ref)
            else:
                result = invert(pipe, ref.video, settings.inversion_config(spec, seed), progress=False,
                                reference_name=f"bench seed {ref.seed} ({ref.motion})")
                emb, inv_s, loss = result.embedding, result.seconds, result.embedding.metadata["final_loss"]
                entry = {"ref": i, "config": key, "seconds": inv_s, "steps": result.steps_done, "final_loss": loss}
                if "start_choice" in result.embedding.metadata:  # with --starts K: which start was kept
                    entry["start_choice"] = result.embedding.metadata["start_choice"]
                if settings.reconstruct:
                    recon = reconstruct(pipe, ref, emb, steps=settings.gen_steps, seed=seed)
                    entry["reconstruction"] = recon
                run.inversions.append(entry)
            tg = time.perf_counter()
            videos = generate(pipe, images, emb, steps=settings.gen_steps, seed=seed)
            gen_s = time.perf_counter() - tg
            scores = []
            for j, (tgt, vid, img) in enumerate(zip(tgts, videos, image_tensors)):
                rec = {"ref": i, "ref_seed": ref.seed, "motion": ref.motion, "target": j,
                       "target_seed": tgt.meta["seed"], "config": key, "slices": ref.slices(),
                       **score_video(vid, ref, tgt, img)}
                run.records.append(rec)
                scores.append(rec["trajectory_cosine"])
            if i < settings.keep_videos_for:  # the plan's first references, whichever shard runs them
                run.kept[(i, key)] = videos
            inv = f"inversion {inv_s:.1f} s (loss {loss:.3g}), " if inv_s is not None else ""
            rc = (f", reconstruction PSNR {recon['first_frame_psnr']:.1f} dB cosine {recon['trajectory_cosine']:+.2f}"
                  if recon else "")
            log(f"[ref {i} ({n + 1}/{len(references)}) {ref.motion}, {ref.size_class}, {ref.clip.background}, "
                f"{ref.source}] ({key}) {spec.description}: {inv}"
                f"generation {gen_s:.1f} s, trajectory cosine {np.mean(scores):+.2f}{rc} "
                f"(elapsed {_hms(time.perf_counter() - t0)})")
        if after_reference is not None:
            after_reference(run)
    return run


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --------------------------------------------------------------------------------------------
# summary and reports
# --------------------------------------------------------------------------------------------

def _stats(rows: list[dict]) -> dict:
    cos = np.array([r["trajectory_cosine"] for r in rows])
    return {"videos": len(rows), "trajectory_cosine_mean": float(cos.mean()),
            "direction_accuracy": float(np.mean([r["direction_ok"] for r in rows]))}


def summarise(records: list[dict], inversions: list[dict], configs: Sequence[str]) -> dict:
    """Per configuration: means, rates and medians over all its videos; the same per slice
    (motion class, size, background, camera, colour, user file) and the worst slice; the
    reconstruction diagnostic's means over references."""
    out = {}
    for key in configs:
        rows = [r for r in records if r["config"] == key]
        if not rows:
            continue
        cos = np.array([r["trajectory_cosine"] for r in rows])
        mags = np.array([r["magnitude_ratio"] for r in rows], dtype=np.float64)
        psnr_ = np.array([r["first_frame_psnr"] for r in rows])
        invs = [v for v in inversions if v["config"] == key]
        secs = [v["seconds"] for v in invs]
        names = sorted({sl for r in rows for sl in r.get("slices", [f"motion: {r['motion']}"])})
        slices = {n: _stats([r for r in rows if n in r.get("slices", [f"motion: {r['motion']}"])]) for n in names}
        worst = min(slices, key=lambda n: slices[n]["trajectory_cosine_mean"]) if slices else None
        recon = [v["reconstruction"] for v in invs if "reconstruction" in v]
        out[key] = {
            "description": CONFIGS[key].description,
            "videos": len(rows),
            "trajectory_cosine_mean": float(cos.mean()),
            "trajectory_cosine_std": float(cos.std()),
            "direction_accuracy": float(np.mean([r["direction_ok"] for r in rows])),
            "magnitude_ratio_median": float(np.nanmedian(mags)) if np.isfinite(mags).any() else None,
            "first_frame_psnr_mean": float(np.mean(np.minimum(psnr_, 100.0))),
            "no_leak_rate": float(np.mean([r["no_leak"] for r in rows])),
            # the failures by kind (records made before leak_count have no split: None)
            "leak_kinds": None if any("colour_leak_frames" not in r for r in rows) else {
                "colour": int(sum(r["colour_leak_frames"] > 0 for r in rows)),
                "object_lost_only": int(sum(r["colour_leak_frames"] == 0 and r["lost_frames"] > 0 for r in rows)),
            },
            "seconds_per_inversion": float(np.mean(secs)) if secs else None,
            "trajectory_cosine_by_motion": {
                m: float(np.mean([r["trajectory_cosine"] for r in rows if r["motion"] == m]))
                for m in world.MOTIONS_V2 if any(r["motion"] == m for r in rows)
            },
            "slices": slices,
            "worst_slice": worst,
            "reconstruction": None if not recon else {
                "references": len(recon),
                "first_frame_psnr_mean": float(np.mean([min(r["first_frame_psnr"], 100.0) for r in recon])),
                "mean_psnr_mean": float(np.mean([min(r["mean_psnr"], 100.0) for r in recon])),
                "trajectory_cosine_mean": float(np.mean([r["trajectory_cosine"] for r in recon])),
                "direction_accuracy": float(np.mean([r["direction_ok"] for r in recon])),
            },
        }
    return out


def markdown_table(summary: dict) -> str:
    """The ablation table (one row per configuration), the slices (trajectory cosine / direction
    accuracy per configuration, worst slice marked) and the reconstruction diagnostic."""
    lines = [
        "| config | trajectory cosine | direction acc. | magnitude ratio (median) "
        "| first-frame PSNR (dB) | no leak | s / inversion | worst slice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        mag = "—" if s["magnitude_ratio_median"] is None else f"{s['magnitude_ratio_median']:.2f}"
        sec = "—" if s["seconds_per_inversion"] is None else f"{s['seconds_per_inversion']:.1f}"
        w = s.get("worst_slice")
        worst = "—" if w is None else f"{w} ({s['slices'][w]['trajectory_cosine_mean']:.2f})"
        lines.append(
            f"| ({key}) {s['description']} | {s['trajectory_cosine_mean']:.3f} ± "
            f"{s['trajectory_cosine_std']:.2f} | {100 * s['direction_accuracy']:.1f}% | {mag} | "
            f"{s['first_frame_psnr_mean']:.1f} | {100 * s['no_leak_rate']:.1f}% | {sec} | {worst} |"
        )
    kinds = {k: s["leak_kinds"] for k, s in summary.items() if s.get("leak_kinds")}
    if kinds:
        lines += ["", "Videos failing the leak check, by kind (colour: the reference's colour in some frame; "
                  "object lost: only frames without either colour): " + "; ".join(
                      f"({k}) {v['colour']} colour, {v['object_lost_only']} object lost" for k, v in kinds.items())]
    names = sorted({n for s in summary.values() for n in s.get("slices", {})},
                   key=lambda n: (not n.startswith("motion"), n))
    keys = list(summary)
    lines += ["", "Slices: trajectory cosine / direction accuracy (videos):", "",
              "| slice | " + " | ".join(f"({k})" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for n in names:
        cells = []
        for k in keys:
            st = summary[k].get("slices", {}).get(n)
            cells.append("—" if st is None else
                         f"{st['trajectory_cosine_mean']:.2f} / {100 * st['direction_accuracy']:.0f}% ({st['videos']})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    rec = {k: s["reconstruction"] for k, s in summary.items() if s.get("reconstruction")}
    if rec:
        lines += ["", "Reconstruction diagnostic (each reference redone from its own first frame):", "",
                  "| config | references | first-frame PSNR (dB) | mean PSNR (dB) | trajectory cosine | direction acc. |",
                  "|---|---|---|---|---|---|"]
        for k, r in rec.items():
            lines.append(f"| ({k}) | {r['references']} | {r['first_frame_psnr_mean']:.1f} | {r['mean_psnr_mean']:.1f} "
                         f"| {r['trajectory_cosine_mean']:.3f} | {100 * r['direction_accuracy']:.0f}% |")
    return "\n".join(lines)


def _label(text: str, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    y = 4
    for line in text.split("\n"):
        draw.text((4, y), line, fill=(0, 0, 0))
        y += 12
    return im


def _up(video: torch.Tensor) -> list[Image.Image]:
    return vio.upscale_nearest(vio.tensor_to_images(video), UPSCALE)


def write_example(out_dir: Path, name: str, reference: Reference, targets: list[world.Clip],
                  rows: dict[str, torch.Tensor]) -> list[Path]:
    """``name.png`` (a filmstrip: reference frames, then per target one row per config in ``rows``)
    and ``name.gif`` (the same, animated: per target reference | config results), upscaled."""
    ref = _up(reference.video)
    cell = ref[0].width
    strip = [[_label(f"reference\n{reference.motion}", cell), *ref]]
    for j in range(len(targets)):
        for key, videos in rows.items():
            strip.append([_label(f"target {j}\n({key})", cell), *_up(videos[j])])
    cols = len(strip[0])
    png = vio.make_grid([[im] for row in strip for im in row], columns=cols)[0]
    png_path = out_dir / f"{name}.png"
    with atomic_write(png_path) as tmp:
        png.save(tmp)

    frames = len(ref)
    header = [[_label(t, cell)] * frames for t in ["reference", *(f"({k})" for k in rows)]]
    cells = list(header)
    for j in range(len(targets)):
        cells.append(ref)
        cells += [_up(videos[j]) for videos in rows.values()]
    gif = vio.make_grid(cells, columns=1 + len(rows))
    return [png_path, vio.write_video(gif, out_dir / f"{name}.gif", fps=4)]


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def _finite(obj):
    """JSON has no NaN/inf: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def machine_info() -> dict:
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(
        prog="reenact bench toy", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Motion-transfer benchmark on the toy world (the paper's F' x N ablation): "
                    "invert reference clips, animate targets, score trajectory, direction, "
                    "magnitude, first-frame PSNR and appearance leakage against ground truth.",
    )
    p.add_argument("--refs", type=int, default=27,
                   help="reference clips (motions round-robin; 27 = every motion at every size and background)")
    p.add_argument("--targets", type=int, default=3, help="target images per reference")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="skip the reconstruct diagnostic (one more generation per reference and config)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated: " + "; ".join(f"{k}: {v.description}" for k, v in CONFIGS.items()))
    p.add_argument("--gen-steps", type=int, default=25, help="Euler denoising steps (SVD default)")
    for name in INVERSION_FLAGS:  # help, type and choices from the library's InversionConfig
        meta = describe(InversionConfig, name)
        kwargs = {"choices": meta["choices"]} if meta.get("choices") else {"type": type(meta["default"])}
        p.add_argument("--" + name.replace("_", "-"), **kwargs,
                       help="inversion " + meta["help"].replace("%", "%%")
                       + " (default: the model's profile, reenact.profiles)")
    p.add_argument("--seed", type=int, default=0,
                   help="inversion/generation seed of reference i is seed+i (the clips are fixed)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    p.add_argument("--model", default="toy-v2",
                   help="'toy-v2' (the world-v2 model the benchmark is made for), 'toy' or a model folder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--examples", type=int, default=3, help="references drawn as example grids")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only the references whose plan index is K modulo N (N processes or "
                        "machines in parallel, each with its own --out; then --merge)")
    p.add_argument("--only", default=None, metavar="I,J,...",
                   help="run only these plan indices (e.g. to rerun references after a fix; merge "
                        "their folder last)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                   help="no run: combine the results.json of complete shards of one benchmark into "
                        "--out; a reference found in several folders is taken from the last one")
    p.add_argument("--pool", action="store_true",
                   help="with --merge: the folders may hold runs at different --seed s (independent "
                        "draws of the inversion's randomness); pool their videos into one table, "
                        "with each draw's figures beside it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write results.json, table.md and example images."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = list(dict.fromkeys(c.strip() for c in args.configs.split(",") if c.strip()))
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(f"--configs: unknown {unknown or 'empty'}; choose from {','.join(CONFIGS)}")
    for flag in ("refs", "targets", "steps", "gen_steps", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.examples < 0:
        parser.error("--examples must be >= 0")
    shard = _parse_shard(parser, args.shard)
    only = _parse_only(parser, args.only, args.refs)
    command = "reenact bench toy " + shlex.join(argv)
    if args.pool and not args.merge:
        parser.error("--pool combines finished runs: use it with --merge DIR ...")
    if args.merge:
        return _merge(parser, args.merge, args.out, command, pool=args.pool)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    vio.check_writable_dir(args.out)
    if "o" in configs:
        oracle_embedding(args.model, world.make_scene_clip(world.SEED_RANGES["bench"][0]))  # refuse early
    dtype = torch.float32
    pipe = models.load_pipeline(args.model, args.device, dtype)
    geometry = models.native_geometry(pipe)  # the clips are made at the model's F x H x W
    references = pick_references(args.refs, *geometry, work_dir=args.out / "references",
                                 keep=lambda i: (shard is None or i % shard[1] == shard[0])
                                 and (only is None or i in only))
    targets = [pick_targets(r, args.targets, *geometry) for r in references]
    given = {k: getattr(args, k) for k in INVERSION_FLAGS if getattr(args, k) is not None}
    try:
        base = profiles.inversion_config(args.model, **given)  # `reenact invert`'s defaults for the model
        base.validate()
    except ConfigError as e:
        parser.error(str(e))
    settings = BenchSettings(configs=configs, inversion=base, gen_steps=args.gen_steps, seed=args.seed,
                             model=args.model, keep_videos_for=min(args.examples, args.refs),
                             reconstruct=not args.no_reconstruct)
    info = machine_info()
    header = {
        "command": command,
        "machine": info,
        "settings": {**vars(args), "out": str(args.out), "configs": configs,
                     "inversion": settings.inversion_config(CONFIGS["e"], args.seed).to_dict()},
        "geometry": {"frames": geometry[0], "height": geometry[1], "width": geometry[2]},
        "references": [{"seed": r.seed, "motion": r.motion, "shape": r.clip.shape, "source": r.source,
                        "slices": r.slices(), "object_color": np.round(r.clip.object_color, 3).tolist(),
                        "targets": [t.meta["seed"] for t in ts]} for r, ts in zip(references, targets)],
    }

    def save(run: BenchRun, complete: bool) -> dict:
        summary = summarise(run.records, run.inversions, configs)
        doc = {**header, "complete": complete, "wall_seconds": time.perf_counter() - t_start,
               "summary": summary, "inversions": run.inversions, "records": run.records}
        _write_text(args.out / "results.json", json.dumps(_finite(doc), indent=1, allow_nan=False))
        return summary

    log(f"benchmark: {args.refs} references x {args.targets} targets, configs {','.join(configs)}, "
        f"{base.steps} inversion steps, {args.gen_steps} generation steps, model {args.model}, "
        f"{torch.get_num_threads()} threads")
    run = run_benchmark(pipe, references, targets, settings, log=log,
                        after_reference=lambda r: save(r, complete=False))
    summary = save(run, complete=True)
    wall = time.perf_counter() - t_start
    table = markdown_table(summary)

    shown = [k for k in ("a", "e") if k in configs] or [configs[0], configs[-1]]
    example_paths = []
    for ref, tgts in zip(references, targets):
        if (ref.index, shown[0]) in run.kept:
            rows = {k: run.kept[(ref.index, k)] for k in dict.fromkeys(shown)}
            example_paths += write_example(args.out, f"example_{ref.index}", ref, tgts, rows)

    steps_total = sum(v["steps"] for v in run.inversions)
    per_step = sum(v["seconds"] for v in run.inversions) / steps_total if steps_total else None
    starts = f"{base.starts} start(s)" + (f" chosen after {base.start_steps} steps by the {base.probe} probe"
                                          if base.starts > 1 else "")
    notes = [
        f"Command: `{command}`",
        f"Machine: {info['machine']}, {info['cpu_count']} cores, torch {info['torch']}, "
        f"{info['threads']} threads (load average at start {info['load_average_at_start']}).",
        f"Model: {args.model} (profile {profiles.profile_for(args.model).name}). {args.refs} references x "
        f"{args.targets} targets; {base.steps} inversion steps (lr {base.lr}, {base.lr_schedule}, ln s ~ "
        f"N({base.log_sigma_mean}, {base.log_sigma_std}^2), init {base.init}, frame-lr {base.frame_lr}, "
        f"{starts}); "
        f"{args.gen_steps} generation steps. Wall time {_hms(wall)}"
        + (f"; {1000 * per_step:.0f} ms per inversion step (incl. setup)." if per_step else "."),
    ]
    _write_text(args.out / "table.md", "\n\n".join([table, *notes]) + "\n")
    print(table)
    print()
    print(notes[-1])
    for p in [args.out / "results.json", args.out / "table.md", *example_paths]:
        print(p)
    return 0


def _parse_shard(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        parser.error(f"--shard must be K/N with 0 <= K < N (got {text!r})")
    return k, n


def _parse_only(parser: argparse.ArgumentParser, text: str | None, refs: int) -> set[int] | None:
    if text is None:
        return None
    try:
        only = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        only = set()
    if not only or not all(0 <= i < refs for i in only):
        parser.error(f"--only must list plan indices between 0 and {refs - 1} (got {text!r})")
    return only


#: settings that must agree for shards to be one benchmark
_SHARD_KEYS = ("refs", "targets", "configs", "gen_steps", "seed", "model", "inversion", "no_reconstruct")
#: what may differ between the draws that --pool combines (the draw's seed; which configurations
#: and diagnostics each draw ran: the pooled table keeps the configurations every draw has)
_POOL_FREE = ("seed", "configs", "no_reconstruct")


def _shard_entries(doc: dict) -> list[dict]:
    """The runs behind a results.json: itself, or the shards a merge combined."""
    if "shards" in doc:
        return doc["shards"]
    return [{"command": doc["command"], "machine": doc["machine"], "wall_seconds": doc["wall_seconds"]}]


def _merge(parser: argparse.ArgumentParser, folders: list[Path], out: Path, command: str,
           pool: bool = False) -> int:
    """Combine shards of one benchmark (same settings) into ``out``: results.json (every record,
    the shards' headers) and table.md, as one run would have written them. A reference in several
    folders is taken from the last (``--only`` reruns it after a fix); a shard stopped early
    contributes the references it finished, and the merge is complete when every planned
    reference is there.

    ``pool``: the folders may be runs (or merges) at different ``--seed`` s -- independent draws
    of the inversion's and generation's randomness on the same references and targets -- and
    their videos are pooled: one run of the benchmark is one draw, and single references flip
    between draws (docs/RESULTS.md), so the pooled table is the steadier figure. Each draw is
    merged as above; results.json also holds each draw's own summary (``draws``)."""
    vio.check_writable_dir(out)
    docs = []
    for folder in folders:
        path = folder / "results.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            parser.error(f"{path}: not a readable benchmark result ({e}); run the shard first")
        docs.append(doc)  # an unfinished shard holds whole references only (saved after each)
    first = {k: docs[0]["settings"].get(k) for k in _SHARD_KEYS}
    keys = [k for k in _SHARD_KEYS if not (pool and k in _POOL_FREE)]
    inv_keys = [set(d["settings"]["inversion"]) for d in docs]
    # pooled draws may differ in the inversion's seed, and in settings an older run predates
    common = set.intersection(*inv_keys) - {"seed"}
    only_some = set.union(*inv_keys) - common - {"seed"} if pool else set()

    def view(doc: dict) -> dict:
        """What must agree: the settings in ``keys``, of the inversion's only those compared."""
        out = {k: doc["settings"].get(k) for k in keys}
        if pool:
            out["inversion"] = {k: doc["settings"]["inversion"][k] for k in common}
        return out

    ref_view = view(docs[0])
    for folder, doc in zip(folders, docs):
        other = view(doc)
        if other != ref_view:
            diff = [k for k in other if other[k] != ref_view[k]]
            hint = "; runs at other --seed s are other draws: add --pool to pool them" if "seed" in diff else ""
            parser.error(f"{folder}: a shard of another benchmark (differs in {', '.join(diff)}){hint}")
    seeds = list(dict.fromkeys(d["settings"]["seed"] for d in docs))
    configs = [c for c in first["configs"] if all(c in d["settings"]["configs"] for d in docs)]
    records, inversions, replaced, have = [], [], [], {}
    for seed in seeds:
        mine = [(n, d) for n, d in enumerate(docs) if d["settings"]["seed"] == seed]
        # a reference's records come from the last folder (of this draw) that has it (a rerun after a fix)
        source = {r["ref"]: n for n, d in mine for r in d["records"]}
        have[seed] = len(source)
        replaced += sorted({r["ref"] for n, d in mine for r in d["records"] if source[r["ref"]] != n})
        tag = {"draw_seed": seed} if pool else {}
        records += [{**r, **tag} for n, d in mine for r in d["records"]
                    if source[r["ref"]] == n and r["config"] in configs]
        inversions += [{**v, **tag} for n, d in mine for v in d["inversions"]
                       if source[v["ref"]] == n and v["config"] in configs]
    summary = summarise(records, inversions, configs)
    shards = [e for d in docs for e in _shard_entries(d)]
    wall = [round(e["wall_seconds"], 1) for e in shards]
    complete = all(n == first["refs"] for n in have.values())
    doc = {"command": command, "shards": shards, "settings": docs[0]["settings"], "complete": complete,
           "replaced_references": sorted(set(replaced)),
           "wall_seconds_per_folder": wall, "summary": summary, "inversions": inversions, "records": records}
    if pool:
        doc["draws"] = {str(seed): summarise([r for r in records if r["draw_seed"] == seed],
                                             [v for v in inversions if v["draw_seed"] == seed], configs)
                        for seed in seeds}
    _write_text(out / "results.json", json.dumps(_finite(doc), indent=1, allow_nan=False))
    notes = [f"Command: `{command}`, merging:"] + [
        f"- `{e['command']}` on {e['machine']['machine']}, {e['machine']['cpu_count']} cores, "
        f"{e['machine']['threads']} threads (load average at start {e['machine']['load_average_at_start']}): "
        f"wall time {_hms(e['wall_seconds'])}" for e in shards]
    unfinished = [str(f) for f, d in zip(folders, docs) if not d.get("complete")]
    counts = ", ".join(f"{have[s]} at seed {s}" for s in seeds) if pool else str(have[seeds[0]])
    if only_some:
        notes.append(f"Inversion settings recorded by only some draws (runs made before the setting "
                     f"existed): {', '.join(sorted(only_some))}")
    notes.append(f"{counts} of {first['refs']} references"
                 + (f"; stopped early, finished references used: {', '.join(unfinished)}" if unfinished else "")
                 + (f"; references {sorted(set(replaced))} taken from the later folder that reran them" if replaced else ""))
    parts = [markdown_table(summary)]
    if pool:
        parts.insert(0, f"Pooled over {len(seeds)} draws (--seed {', '.join(map(str, seeds))}); "
                        f"configurations every draw ran: {','.join(configs)}.\n\n" + _draws_table(doc["draws"], summary))
    _write_text(out / "table.md", "\n\n".join(parts + ["\n".join(notes)]) + "\n")
    print("\n\n".join(parts))
    print()
    print(notes[-1])
    return 0


def _draws_table(draws: dict, pooled: dict) -> str:
    """Mean trajectory cosine / direction accuracy / no-leak rate of each configuration per draw and pooled."""
    lines = ["| config | " + " | ".join(f"seed {s}" for s in draws) + " | pooled |",
             "|---|" + "---|" * (len(draws) + 1)]
    cell = lambda s: (f"{s['trajectory_cosine_mean']:.3f} / {100 * s['direction_accuracy']:.1f}% / "  # noqa: E731
                      f"{100 * s['no_leak_rate']:.1f}%")
    for key, s in pooled.items():
        lines.append(f"| ({key}) | " + " | ".join(cell(d[key]) for d in draws.values()) + f" | {cell(s)} |")
    return "\n".join(["Trajectory cosine / direction accuracy / no leak:", ""] + lines)


if __name__ == "__main__":
    sys.exit(main())
