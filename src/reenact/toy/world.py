"""The toy world: one coloured object moving on a plain background, with exact ground truth.

Why a toy world: real SVD weights cannot be downloaded here and there is no GPU, yet we want to
*measure* motion transfer, not just run the plumbing. In this world every clip comes with the
object's true centre per frame, its mask, and its colours, so a generated video can be scored
(trajectory, direction, magnitude, appearance, leakage) without any learned metric.

Objects are large (a quarter to a half of the frame side) because a probe found that a small
object on a plain background leaves the motion a residual the model can average away
(docs/METHOD.md, "The toy model"). Frames are rendered with 4x supersampling so sub-pixel motion is smooth.

All randomness flows through a ``numpy.random.Generator`` so a clip is a pure function of its
seed; the benchmark's seeds are disjoint from training's by construction (see ``SEED_RANGES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = ("square", "disc", "triangle", "diamond")
MOTIONS = ("line", "turn", "back-and-forth", "arc", "zigzag")

# Seeds are partitioned so that nothing the benchmark or the demo uses was seen in training.
SEED_RANGES = {"train": (0, 10**9), "bench": (2 * 10**9, 2 * 10**9 + 10**6), "demo": (3 * 10**9, 3 * 10**9 + 10**6)}

SUPERSAMPLE = 4


@dataclass
class Clip:
    """One toy clip and its ground truth.

    ``video``: (F, 3, H, W) in [-1, 1]. ``centers``: (F, 2) object centre in pixels (x, y).
    ``masks``: (F, H, W) object coverage in [0, 1]. Colours are RGB in [-1, 1].
    """

    video: torch.Tensor
    centers: np.ndarray
    masks: torch.Tensor
    shape: str
    size: float
    object_color: np.ndarray
    background_color: np.ndarray
    motion: str
    meta: dict = field(default_factory=dict)

    @property
    def displacements(self) -> np.ndarray:
        """(F, 2) displacement of the centre from frame 0, in units of the image size."""
        h, w = self.video.shape[-2:]
        return (self.centers - self.centers[:1]) / np.array([w, h], dtype=np.float64)


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def sample_trajectory(rng: np.random.Generator, num_frames: int, motion: str, extent: float) -> np.ndarray:
    """Relative path (F, 2) starting at 0, in pixels, whose largest excursion is about ``extent``.

    Motions: ``line`` (constant speed, any direction), ``turn`` (an L: 90 degrees halfway),
    ``back-and-forth`` (out and back along a line), ``arc`` (part of a circle), ``zigzag``
    (three legs). Time is uniform over frames, so speed = extent / frames.
    """
    t = np.linspace(0.0, 1.0, num_frames)
    theta = rng.uniform(0, 2 * math.pi)
    if motion == "line":
        path = t[:, None] * _unit(theta) * extent
    elif motion == "turn":
        turn = theta + rng.choice([-1, 1]) * math.pi / 2
        half = extent / math.sqrt(2)
        a = np.clip(t * 2, 0, 1)[:, None]
        b = np.clip(t * 2 - 1, 0, 1)[:, None]
        path = a * _unit(theta) * half + b * _unit(turn) * half
    elif motion == "back-and-forth":
        tri = 1 - np.abs(2 * t - 1)
        path = tri[:, None] * _unit(theta) * extent
    elif motion == "arc":
        sweep = rng.uniform(0.6, 1.0) * math.pi * rng.choice([-1, 1])
        radius = extent / (2 * abs(math.sin(sweep / 2)))
        # circle through the origin; start on the circle at angle theta + pi from its centre
        centre = _unit(theta) * radius
        ang = theta + math.pi + sweep * t
        path = centre + radius * np.stack([np.cos(ang), np.sin(ang)], 1)
        path -= path[0]
    elif motion == "zigzag":
        turn = theta + rng.choice([-1, 1]) * rng.uniform(0.5, 0.8) * math.pi
        leg = extent / 2
        pts = [np.zeros(2), _unit(theta) * leg, _unit(theta) * leg + _unit(turn) * leg]
        pts.append(pts[2] + _unit(theta) * leg)
        seg = np.clip(t * 3, 0, 3)
        idx = np.minimum(seg.astype(int), 2)
        frac = (seg - idx)[:, None]
        path = np.stack([pts[i] for i in idx]) * (1 - frac) + np.stack([pts[i + 1] for i in idx]) * frac
    else:
        raise ValueError(f"unknown motion {motion!r}; choose from {MOTIONS}")
    return path


def _shape_mask(shape: str, size: float, centers: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Anti-aliased coverage (F, H, W) of ``shape`` of side/diameter ``size`` at each centre: the
    supersampled coverage of :func:`_shape_masks` (one size for every frame), averaged per pixel."""
    inside = _shape_masks(shape, np.full(len(centers), float(size)), centers, height, width)
    return F.avg_pool2d(inside[:, None], SUPERSAMPLE)[:, 0]


def _palette() -> np.ndarray:
    """16 well-separated colours in [-1, 1]: the RGB cube's corners and face centres, shrunk.

    A palette rather than a continuum: the toy VAE (with diffusers' fixed 32-group GroupNorm at
    toy widths) learns a continuum of flat colours very slowly on 2 cores, and 16 colours give
    240 object/background pairs - plenty for shape, position and motion to vary.
    """
    corners = np.array([[x, y, z] for x in (-0.8, 0.8) for y in (-0.8, 0.8) for z in (-0.8, 0.8)])
    faces = np.array([[0.8, 0, 0], [-0.8, 0, 0], [0, 0.8, 0], [0, -0.8, 0], [0, 0, 0.8], [0, 0, -0.8],
                      [0.1, 0.1, 0.1], [0.4, -0.4, 0.4]])
    return np.concatenate([corners, faces])


PALETTE = _palette()


def _contrasting_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Object and background colours from ``PALETTE`` that differ clearly (RGB distance >= 0.9)."""
    while True:
        obj, bg = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
        if np.linalg.norm(obj - bg) >= 0.9:
            return obj.copy(), bg.copy()


def render(shape: str, size: float, centers: np.ndarray, object_color: np.ndarray, background_color: np.ndarray,
           height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Video (F, 3, H, W) in [-1, 1] and masks (F, H, W) of one object over a plain background."""
    masks = _shape_mask(shape, size, centers, height, width)
    obj = torch.as_tensor(object_color, dtype=torch.float32)[None, :, None, None]
    bg = torch.as_tensor(background_color, dtype=torch.float32)[None, :, None, None]
    video = bg + (obj - bg) * masks[:, None]
    return video, masks


def make_clip(seed: int, num_frames: int = 8, height: int = 16, width: int = 16, *, motion: str | None = None,
              shape: str | None = None, extent_range: tuple[float, float] = (0.2, 0.45),
              size_range: tuple[float, float] = (0.25, 0.45), path: np.ndarray | None = None) -> Clip:
    """A clip drawn from the world, fully determined by ``seed`` (and any fixed choices).

    ``extent_range`` is the largest excursion of the object as a fraction of the image side, so
    motion always explains a good share of the pixels. ``path`` (F, 2, pixels) overrides the
    sampled trajectory: the benchmark uses it to give a target the reference's motion.
    """
    rng = np.random.default_rng(seed)
    motion = motion or MOTIONS[rng.integers(len(MOTIONS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    side = min(height, width)
    size = rng.uniform(*size_range) * side
    if path is None:
        extent = rng.uniform(*extent_range) * side
        path = sample_trajectory(rng, num_frames, motion, extent)
    else:
        rng.uniform()  # keep the stream aligned with the sampled case
    margin = size / 2 * 1.3
    lo = margin - path.min(0)
    hi = np.array([width, height]) - margin - path.max(0)
    if np.any(hi < lo):  # path too long for this object: shrink it to fit
        span = path.max(0) - path.min(0)
        room = np.array([width, height]) - 2 * margin
        path = path * float(np.min(room / np.maximum(span, 1e-6)))
        lo = margin - path.min(0)
        hi = np.array([width, height]) - margin - path.max(0)
    start = rng.uniform(lo, np.maximum(hi, lo))
    centers = start[None] + path
    obj, bg = _contrasting_colors(rng)
    video, masks = render(shape, size, centers, obj, bg, height, width)
    return Clip(video, centers, masks, shape, size, obj, bg, motion, {"seed": seed})


def make_target(seed: int, height: int = 16, width: int = 16) -> Clip:
    """A still target (one frame): a new object, colour, background and position."""
    return make_clip(seed, num_frames=1, height=height, width=width, path=np.zeros((1, 2)))


def make_batch(seed: int, batch: int, num_frames: int = 8, height: int = 16, width: int = 16) -> list[Clip]:
    """``batch`` independent training clips from one step's seed (the step's seeds never repeat)."""
    return [make_clip(seed * 1000 + i, num_frames, height, width) for i in range(batch)]


def track(video: torch.Tensor, object_color: np.ndarray, background_color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object centre (F, 2, pixels) and coverage (F,) of a generated video, by colour unmixing.

    Each pixel's share of the object colour is its projection onto the object-background
    colour axis, clamped to [0, 1]; the centre is the coverage-weighted mean position. This
    needs no learned tracker and is exact on rendered clips.
    """
    v = video.detach().float().cpu()
    obj = torch.as_tensor(object_color, dtype=torch.float32)[:, None, None]
    bg = torch.as_tensor(background_color, dtype=torch.float32)[:, None, None]
    axis = obj - bg
    alpha = ((v - bg) * axis).sum(1) / (axis * axis).sum().clamp_min(1e-6)
    return _weighted_centres(alpha.clamp(0, 1))


def _weighted_centres(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``weight`` (F, H, W): the weighted mean pixel-centre position (x, y) and the
    total weight (the tracked object's mass)."""
    _, h, w = weight.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    mass = weight.sum((1, 2)).clamp_min(1e-6)
    cx = (weight.sum(1) * xs).sum(1) / mass
    cy = (weight.sum(2) * ys).sum(1) / mass
    return torch.stack([cx, cy], 1).numpy().astype(np.float64), mass.numpy()


# ==============================================================================================
# World v2: any colour, any size from 12 % to 50 % of the side, plain / gradient / textured
# backgrounds, and camera motion (pan, zoom) of a textured scene.
#
# Why a second world beside the first: the bundled 16x16 model was trained on the palette world
# above and its tests, benchmark and demo measure it there; the v2 world (32x32 by default) is
# what the next model trains on (issue 7). Both stay until that model is bundled.
#
# Geometry, exact for every clip: a *scene* in frame-0 pixel coordinates holds a background and
# one object whose centre follows ``object_path`` (scene pixels, relative to frame 0). A camera
# maps scene point x to image point ``s_f * (x - m) + m + d_f`` in frame f (``m`` the frame
# centre, ``s_f`` = ``camera_scale``, ``d_f`` = ``camera_shift``; s_0 = 1, d_0 = 0), so a
# pan is d_f != 0 and a zoom about the frame centre is s_f != 1. ``centers`` is the object's
# image centre per frame and ``sizes`` its image size, both derived from these exactly.
# ==============================================================================================

OBJECT_MOTIONS_V2 = MOTIONS + ("circle", "stop-and-go")
CAMERA_MOTIONS = ("pan", "zoom")
MOTIONS_V2 = OBJECT_MOTIONS_V2 + CAMERA_MOTIONS
BACKGROUNDS = ("plain", "gradient", "texture")

#: every background pixel of a v2 clip is at least this far (Euclidean RGB in [-1, 1]) from the
#: object colour: any colour may be drawn, but the object must stay visible.
MIN_CONTRAST = 0.6
SIZE_RANGE_V2 = (0.12, 0.5)  # object side / frame side
ZOOM_RANGE = (1.3, 1.8)  # final scale of a zoom-in; a zoom-out ends at the inverse
MOTION_FEATURES = 5  # per frame: object path (2), camera shift (2), log camera scale (1)


@dataclass
class SceneClip(Clip):
    """A v2 clip: ``Clip`` plus the scene's exact geometry (see the block comment above).

    ``object_path`` (F, 2) scene pixels; ``camera_shift`` (F, 2) pixels; ``camera_scale`` (F,);
    ``sizes`` (F,) the object's image size; ``background`` one of ``BACKGROUNDS``.
    """

    object_path: np.ndarray = None  # type: ignore[assignment]
    camera_shift: np.ndarray = None  # type: ignore[assignment]
    camera_scale: np.ndarray = None  # type: ignore[assignment]
    sizes: np.ndarray = None  # type: ignore[assignment]
    background: str = "plain"

    def motion_features(self) -> np.ndarray:
        """(F, 5) what the motion is, in image units: object path, camera shift, log scale.

        Object motion and camera motion are kept apart (on a textured scene they look different,
        and a pan must not be confused with the object moving the other way).
        """
        h, w = self.video.shape[-2:]
        unit = np.array([w, h], dtype=np.float64)
        return np.concatenate([self.object_path / unit, self.camera_shift / unit,
                               np.log(self.camera_scale)[:, None]], axis=1)


def motion_features(clip: Clip) -> np.ndarray:
    """(F, 5) motion features of any clip; a v1 clip has a still camera."""
    if isinstance(clip, SceneClip):
        return clip.motion_features()
    f = clip.centers.shape[0]
    return np.concatenate([clip.displacements, np.zeros((f, 3))], axis=1)


def sample_trajectory_v2(rng: np.random.Generator, num_frames: int, motion: str, extent: float) -> np.ndarray:
    """``sample_trajectory`` plus ``circle`` (a full turn back to the start, diameter ``extent``)
    and ``stop-and-go`` (a line whose speed changes, with at least one stop)."""
    if motion in MOTIONS:
        return sample_trajectory(rng, num_frames, motion, extent)
    t = np.linspace(0.0, 1.0, num_frames)
    theta = rng.uniform(0, 2 * math.pi)
    if motion == "circle":
        r = extent / 2
        turn = rng.choice([-1, 1]) * 2 * math.pi
        centre = _unit(theta) * r
        ang = theta + math.pi + turn * t
        path = centre + r * np.stack([np.cos(ang), np.sin(ang)], 1)
        return path - path[0]
    if motion == "stop-and-go":
        while True:  # per-interval speeds; at least one stop and one full-speed interval
            speed = rng.choice([0.0, 0.5, 1.0, 2.0], num_frames - 1)
            if (speed == 0).any() and (speed >= 1).any():
                break
        progress = np.concatenate([[0.0], np.cumsum(speed)]) / speed.sum()
        return progress[:, None] * _unit(theta) * extent
    raise ValueError(f"unknown motion {motion!r}; choose from {MOTIONS_V2}")


def _texture(rng: np.random.Generator, base: np.ndarray, side: int, res: int) -> torch.Tensor:
    """A smooth random colour texture (3, 3*side*res, 3*side*res) covering scene [-side, 2*side)^2.

    Bicubic-upsampled noise through tanh around ``base``: features a few pixels wide, so pans
    and zooms move visible structure everywhere in the frame.
    """
    cell = rng.uniform(2.5, 8.0)  # feature size, pixels
    n = max(2, int(round(3 * side / cell)))
    noise = torch.as_tensor(rng.standard_normal((1, 3, n, n)), dtype=torch.float32)
    up = F.interpolate(noise, size=(3 * side * res, 3 * side * res), mode="bicubic", align_corners=False)[0]
    amp = torch.as_tensor(rng.uniform(0.15, 0.45, 3), dtype=torch.float32)[:, None, None]
    return (torch.as_tensor(base, dtype=torch.float32)[:, None, None] + amp * torch.tanh(1.5 * up)).clamp(-1, 1)


def _background_frames(rng: np.random.Generator, kind: str, shift: np.ndarray, scale: np.ndarray,
                       height: int, width: int) -> torch.Tensor:
    """Background (F, 3, H*S, W*S) at the supersampled resolution, seen through the camera."""
    s = SUPERSAMPLE
    base = rng.uniform(-0.8, 0.8, 3)
    f = len(scale)
    if kind == "plain":
        return torch.as_tensor(base, dtype=torch.float32)[None, :, None, None].expand(f, 3, height * s, width * s).clone()
    ys = (torch.arange(height * s, dtype=torch.float64) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float64) + 0.5) / s
    m = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    d = torch.as_tensor(shift, dtype=torch.float64)
    sc = torch.as_tensor(scale, dtype=torch.float64)
    # scene coordinates seen by each image sample: x_s = (x_img - m - d_f) / s_f + m
    sx = (xs[None, None, :] - m[0] - d[:, 0, None, None]) / sc[:, None, None] + m[0]
    sy = (ys[None, :, None] - m[1] - d[:, 1, None, None]) / sc[:, None, None] + m[1]
    sx, sy = sx.expand(f, height * s, width * s), sy.expand(f, height * s, width * s)
    if kind == "gradient":
        other = np.clip(base + rng.uniform(-0.8, 0.8, 3), -1, 1)
        theta = rng.uniform(0, 2 * math.pi)
        side = min(height, width)
        u = ((sx - m[0]) * math.cos(theta) + (sy - m[1]) * math.sin(theta)) / side + 0.5
        u = u.clamp(0, 1).float()[:, None]
        a = torch.as_tensor(base, dtype=torch.float32)[None, :, None, None]
        b = torch.as_tensor(other, dtype=torch.float32)[None, :, None, None]
        return a + (b - a) * u
    if kind == "texture":
        side = min(height, width)
        res = 2  # texture samples per scene pixel
        tex = _texture(rng, base, side, res)
        # grid_sample coordinates: the texture spans scene [-side, 2*side) on both axes
        gx = (sx + side) / (3 * side) * 2 - 1
        gy = (sy + side) / (3 * side) * 2 - 1
        grid = torch.stack([gx, gy], -1).float()
        return F.grid_sample(tex[None].expand(f, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
    raise ValueError(f"unknown background {kind!r}; choose from {BACKGROUNDS}")


def _object_color(rng: np.random.Generator, background: torch.Tensor) -> np.ndarray | None:
    """Any RGB colour at least ``MIN_CONTRAST`` from every background pixel, or None after 64 tries."""
    pixels = background.permute(1, 0, 2, 3).reshape(3, -1).T.double()
    lo, hi = pixels.min(0).values, pixels.max(0).values
    for _ in range(64):
        c = rng.uniform(-1, 1, 3)
        ct = torch.as_tensor(c)
        # quick reject by the bounding box, then the exact test
        gap = torch.maximum(lo - ct, ct - hi).clamp_min(0).norm()
        if gap < MIN_CONTRAST and (pixels - ct).norm(dim=1).min() < MIN_CONTRAST:
            continue
        return c
    return None


def _shape_masks(shape: str, sizes: np.ndarray, centers: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Supersampled coverage (F, H*S, W*S) in {0, 1}, one size per frame."""
    s = SUPERSAMPLE
    ys = (torch.arange(height * s, dtype=torch.float64) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float64) + 0.5) / s
    c = torch.as_tensor(centers, dtype=torch.float64)
    dx = xs[None, None, :] - c[:, 0, None, None]
    dy = ys[None, :, None] - c[:, 1, None, None]
    r = torch.as_tensor(sizes, dtype=torch.float64)[:, None, None] / 2
    if shape == "square":
        inside = (dx.abs() <= r) & (dy.abs() <= r)
    elif shape == "disc":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "diamond":
        inside = dx.abs() + dy.abs() <= r * 1.25
    elif shape == "triangle":
        v = (dy + r) / (2 * r)
        inside = (v >= 0) & (v <= 1) & (dx.abs() <= v * r * 1.1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return inside.float()


def _fit_object(path: np.ndarray, shift: np.ndarray, scale: np.ndarray, size: float, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Interval [lo, hi] of frame-0 object centres keeping the object in frame in every frame."""
    m = np.array([width / 2, height / 2])
    wh = np.array([width, height])
    margin = (scale * size / 2 * 1.3)[:, None]
    # image centre_f = s_f * (p0 + path_f - m) + m + d_f  must lie in [margin_f, wh - margin_f]
    lo = ((margin - m - shift) / scale[:, None] + m - path).max(0)
    hi = ((wh - margin - m - shift) / scale[:, None] + m - path).min(0)
    return (lo, hi) if np.all(hi >= lo) else None


def stays_in_frame(center0: np.ndarray, size: float, path: np.ndarray, shift: np.ndarray, scale: np.ndarray,
                   height: int, width: int) -> bool:
    """Would an object of ``size`` px centred at ``center0`` in frame 0 stay in every frame of this
    motion (object ``path`` and camera ``shift`` in pixels, camera ``scale``; ``(F, 2)``, ``(F, 2)``,
    ``(F,)``), with the margin :func:`make_scene_clip` keeps its own clips in?

    The benchmark asks it of a target still and the reference's motion: where the transferred
    motion would carry the object out of the picture, a correct result cannot be told from a
    wrong one by tracking the object.
    """
    box = _fit_object(np.asarray(path, np.float64), np.asarray(shift, np.float64),
                      np.asarray(scale, np.float64), size, height, width)
    return box is not None and bool(np.all(center0 >= box[0]) and np.all(center0 <= box[1]))


def make_scene_clip(seed: int, num_frames: int = 8, height: int = 32, width: int = 32, *, motion: str | None = None,
                    shape: str | None = None, background: str | None = None,
                    extent_range: tuple[float, float] = (0.2, 0.45),
                    size_range: tuple[float, float] = SIZE_RANGE_V2,
                    object_color: np.ndarray | None = None) -> SceneClip:
    """A v2 clip, fully determined by ``seed`` (and any fixed choices).

    Object motions move the object over a still camera; camera motions (``pan``, ``zoom``, always
    on a textured scene, where they are visible) move the camera over a still object. A path or
    camera motion too large for the object is shrunk until the object stays in every frame, and
    the clip records what was rendered. A fixed ``object_color`` redraws the background until
    every background pixel is at least ``MIN_CONTRAST`` from it (the benchmark's colour slice).
    """
    rng = np.random.default_rng(seed)
    motion = motion or MOTIONS_V2[rng.integers(len(MOTIONS_V2))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    if motion in CAMERA_MOTIONS:
        background = "texture"
    background = background or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    side = min(height, width)
    size = rng.uniform(*size_range) * side
    extent = rng.uniform(*extent_range) * side
    t = np.linspace(0.0, 1.0, num_frames)
    path = np.zeros((num_frames, 2))
    shift = np.zeros((num_frames, 2))
    log_scale = np.zeros(num_frames)
    if motion == "pan":
        shift = t[:, None] * _unit(rng.uniform(0, 2 * math.pi)) * extent
    elif motion == "zoom":
        log_scale = t * math.log(rng.uniform(*ZOOM_RANGE)) * rng.choice([-1, 1])
    elif motion in OBJECT_MOTIONS_V2:
        path = sample_trajectory_v2(rng, num_frames, motion, extent)
    else:
        raise ValueError(f"unknown motion {motion!r}; choose from {MOTIONS_V2}")
    while (box := _fit_object(path, shift, np.exp(log_scale), size, height, width)) is None:
        path, shift, log_scale = path * 0.9, shift * 0.9, log_scale * 0.9  # too large: shrink to fit
    scale = np.exp(log_scale)
    p0 = rng.uniform(*box)
    m = np.array([width / 2, height / 2])
    centers = scale[:, None] * (p0 + path - m) + m + shift
    sizes = size * scale
    while True:  # the object colour must contrast with every background pixel
        bg_ss = _background_frames(rng, background, shift, scale, height, width)
        bg = F.avg_pool2d(bg_ss, SUPERSAMPLE)
        if object_color is None:
            obj = _object_color(rng, bg)
        else:
            near = (bg.permute(1, 0, 2, 3).reshape(3, -1).T.double() - torch.as_tensor(object_color)).norm(dim=1)
            obj = np.asarray(object_color, dtype=np.float64) if float(near.min()) >= MIN_CONTRAST else None
        if obj is not None:
            break
    inside = _shape_masks(shape, sizes, centers, height, width)
    masks = F.avg_pool2d(inside[:, None], SUPERSAMPLE)[:, 0]
    video = F.avg_pool2d(bg_ss * (1 - inside[:, None]), SUPERSAMPLE) + torch.as_tensor(
        obj, dtype=torch.float32)[None, :, None, None] * masks[:, None]
    bg_color = bg.mean((0, 2, 3)).double().numpy()
    return SceneClip(video.clamp(-1, 1), centers, masks, shape, size, obj, bg_color, motion, {"seed": seed},
                     object_path=path, camera_shift=shift, camera_scale=scale, sizes=sizes, background=background)


def make_scene_batch(seed: int, batch: int, num_frames: int = 8, height: int = 32, width: int = 32) -> list[SceneClip]:
    """``batch`` independent v2 training clips from one step's seed."""
    return [make_scene_clip(seed * 1000 + i, num_frames, height, width) for i in range(batch)]


# ==============================================================================================
# Measuring motion in generated v2 videos. The background is not one colour any more (gradients,
# textures), so the object is found by its own colour: every background pixel is at least
# MIN_CONTRAST from it by construction. A zoom is measured as the scale that best maps frame 0
# onto each frame, a pan on the object, a point of the scene that moves with the camera; both
# count only where the background moves with them (estimate_pan and estimate_zoom say why).
# ==============================================================================================

def track_by_color(video: torch.Tensor, object_color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object centre (F, 2, pixels) and coverage (F,) by distance to the known object colour.

    A pixel's weight falls linearly from 1 at the object colour to 0 at ``MIN_CONTRAST`` from it
    (where no background pixel is closer), so edge pixels count partly and the background not at
    all; the centre is the weighted mean position.
    """
    v = video.detach().float().cpu()
    obj = torch.as_tensor(object_color, dtype=torch.float32)[:, None, None]
    return _weighted_centres((1 - torch.linalg.norm(v - obj, dim=1) / MIN_CONTRAST).clamp(0, 1))


#: a frame with less object colour than this (pixels, :func:`track_by_color`'s coverage) has no
#: object to measure
MIN_OBJECT_MASS = 0.5
#: a pan's shift is searched within this many pixels of the object's displacement (the colour
#: tracker's worst error on rendered clips is 1.13 px; tests/test_toy_world_v2.py)
PAN_SEARCH_RADIUS = 1.5


def background_mask(video: torch.Tensor, object_color: np.ndarray) -> torch.Tensor:
    """(F, H, W) 1 where a pixel is background: neither it nor any of its 8 neighbours is closer
    than ``MIN_CONTRAST`` to the object colour (no background pixel of a v2 clip is, by
    construction; the neighbours leave out the object's anti-aliased rim, a blend of both)."""
    obj = torch.as_tensor(object_color, dtype=torch.float32)[:, None, None]
    near = (torch.linalg.norm(video.detach().float().cpu() - obj, dim=1) < MIN_CONTRAST).float()
    return 1 - F.max_pool2d(near[:, None], 3, stride=1, padding=1)[:, 0]


def _warp_errors(video: torch.Tensor, shifts: torch.Tensor, log_scales: torch.Tensor,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """(F, K) mean squared error between each frame and frame 0 seen through K cameras.

    Camera k maps frame-0 point x to ``exp(log_scales[k]) * (x - m) + m + shifts[k]``; pixels that
    come from outside frame 0 are left out of the mean, and with ``keep`` ((F, H, W), 1 = counts)
    so is every pixel that ``keep`` leaves out in its own frame or, seen through the camera, in
    frame 0.
    """
    v = video.detach().float().cpu()
    f, _, h, w = v.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    m = torch.tensor([w / 2, h / 2])
    sc = torch.exp(log_scales)[:, None, None]
    sx = (xs[None, None, :] - m[0] - shifts[:, 0, None, None]) / sc + m[0]  # (K, 1, W)
    sy = (ys[None, :, None] - m[1] - shifts[:, 1, None, None]) / sc + m[1]  # (K, H, 1)
    k = len(shifts)
    sx, sy = sx.expand(k, h, w), sy.expand(k, h, w)
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], -1)
    valid = ((sx > 0.5) & (sx < w - 0.5) & (sy > 0.5) & (sy < h - 0.5)).float()[None]  # (1, K, H, W)
    src = v[:1] if keep is None else torch.cat([v[:1], keep[:1, None].float()], 1)
    warped = F.grid_sample(src.expand(k, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)  # (K, 3 or 4, H, W)
    if keep is not None:  # a frame-0 pixel counts only if it and all its bilinear neighbours count
        valid = valid * (warped[:, 3] > 0.999).float()[None] * keep.float()[:, None]  # (F, K, H, W)
    diff = ((v[:, None] - warped[None, :, :3]) ** 2).sum(2)  # (F, K, H, W)
    return (diff * valid).sum((2, 3)) / valid.sum((2, 3)).clamp_min(1.0)


def _beats_a_still_camera(video: torch.Tensor, keep: torch.Tensor, i: int, shifts: torch.Tensor,
                          log_scales: torch.Tensor) -> int | None:
    """The rule both camera motions share: of K candidate cameras for frame ``i``, the one whose
    background (``keep``, the object left out) matches frame 0 best, if it matches better than a
    still camera does; None if none does (the background did not move with the camera)."""
    err = _warp_errors(video[[0, i]], torch.cat([shifts, torch.zeros(1, 2)]),
                       torch.cat([log_scales, torch.zeros(1)]), keep[[0, i]])[1]  # the last: still
    k = int(err[:-1].argmin())
    return k if err[k] < err[-1] else None


def estimate_pan(video: torch.Tensor, object_color: np.ndarray) -> np.ndarray:
    """The camera shift (F, 2, pixels) of a pan relative to frame 0, anchored on the object.

    In a pan the object stands still in the scene, so it is a scene point the colour tracker
    finds exactly, and the camera shift is its displacement, refined by the background's best
    match (object pixels left out) within ``PAN_SEARCH_RADIUS`` of it. A frame counts as panned
    only if its background matches frame 0 better moved with the object than left still;
    otherwise what moved was the object, not the camera, and the frame measures no shift (as
    does a frame where the object is lost, and every frame if frame 0 has none).

    A pan is visible only against a textured scene, which the world's pans (and so the
    benchmark's pan targets) always have; over a plain background the comparison cannot tell.

    Why not a search of the whole frame, as before: the object, the frame's most contrasting
    thing, dominates its error, so over a still camera the search followed a moving object (a
    "pan" of up to 21 px on 40 rendered clips, ``benchmarks/camera_measure.py``); and where a 32-px
    model redraws a busy texture over the clip, nothing matches frame 0 and the search returned
    chance shifts of a third of the frame.
    """
    v = video.detach().float().cpu()
    f = v.shape[0]
    out = np.zeros((f, 2))
    centres, mass = track_by_color(v, object_color)
    if mass[0] < MIN_OBJECT_MASS:
        return out
    keep = background_mask(v, object_color)
    n = int(round(PAN_SEARCH_RADIUS * 8))
    fine = torch.cartesian_prod(*(torch.arange(-n, n + 1, dtype=torch.float32) / 8,) * 2)
    for i in range(1, f):
        if mass[i] < MIN_OBJECT_MASS:
            continue
        cand = torch.as_tensor(centres[i] - centres[0], dtype=torch.float32) + fine
        k = _beats_a_still_camera(v, keep, i, cand, torch.zeros(len(cand)))
        if k is not None:
            out[i] = cand[k].numpy()
    return out


def estimate_zoom(video: torch.Tensor, object_color: np.ndarray) -> np.ndarray:
    """The camera's log scale (F, 1) about the frame centre relative to frame 0, by brute-force
    search of the scale that maps frame 0 onto each frame best (a 0.01 grid over +-0.8), kept only
    in frames whose background (``background_mask``: the object left out) matches frame 0 better
    at that scale than unzoomed; other frames measure no zoom.

    Why the check: the search runs over the whole frame, object included, which measures a zoom
    precisely (the object is part of the scene and scales with it), but over a still camera a
    moving object alone moved it (up to 0.13 on 40 rendered clips, where true zooms end at
    0.26-0.59); with the check, none. Leaving the object out of the search itself lost rendered
    zooms of a large object (errors up to 1.3).
    """
    v = video.detach().float().cpu()
    grid = torch.arange(-80, 81, dtype=torch.float32) / 100
    err = _warp_errors(v, torch.zeros(len(grid), 2), grid)
    out = grid[err.argmin(1)].numpy().astype(np.float64)[:, None]
    out[0] = 0.0
    keep = background_mask(v, object_color)
    for i in range(1, len(v)):
        if out[i, 0] != 0.0 and _beats_a_still_camera(v, keep, i, torch.zeros(1, 2),
                                                       torch.tensor([out[i, 0]], dtype=torch.float32)) is None:
            out[i] = 0.0
    return out


def estimate_camera(video: torch.Tensor, kind: str, object_color: np.ndarray | None = None) -> np.ndarray:
    """The camera motion of a video relative to frame 0, counted only where the background moves
    with it: ``kind="pan"``, (F, 2) shift in pixels (:func:`estimate_pan`); ``kind="zoom"``, (F, 1)
    natural log of the scale (:func:`estimate_zoom`). Both need the object's colour: the object
    anchors a pan, and both leave it out to see whether the background moved. Frame 0 is the
    identity."""
    if kind not in CAMERA_MOTIONS:
        raise ValueError(f"unknown camera motion {kind!r}; choose from {CAMERA_MOTIONS}")
    if object_color is None:
        raise ValueError(f"a {kind} is measured with the object's colour: pass object_color")
    return estimate_pan(video, object_color) if kind == "pan" else estimate_zoom(video, object_color)
