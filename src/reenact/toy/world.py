"""The toy world: one coloured object moving on a plain background, with exact ground truth.

Why a toy world: real SVD weights cannot be downloaded here and there is no GPU, yet we want to
*measure* motion transfer, not just run the plumbing. In this world every clip comes with the
object's true centre per frame, its mask, and its colours, so a generated video can be scored
(trajectory, direction, magnitude, appearance, leakage) without any learned metric.

Objects are large (a quarter to a half of the frame side) because a probe found that a small
object on a plain background leaves the motion a residual the model can average away
(shared/TOY_NOTES.md). Frames are rendered with 4x supersampling so sub-pixel motion is smooth.

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
    """Anti-aliased coverage (F, H, W) of ``shape`` of side/diameter ``size`` at each centre."""
    s = SUPERSAMPLE
    ys = (torch.arange(height * s, dtype=torch.float64) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float64) + 0.5) / s
    c = torch.as_tensor(centers, dtype=torch.float64)
    dx = xs[None, None, :] - c[:, 0, None, None]
    dy = ys[None, :, None] - c[:, 1, None, None]
    r = size / 2
    if shape == "square":
        inside = (dx.abs() <= r) & (dy.abs() <= r)
    elif shape == "disc":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "diamond":
        inside = dx.abs() + dy.abs() <= r * 1.25
    elif shape == "triangle":
        # upright triangle, base at +r, apex at -r
        v = (dy + r) / (2 * r)
        inside = (v >= 0) & (v <= 1) & (dx.abs() <= v * r * 1.1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    m = inside.float()[:, None]
    return F.avg_pool2d(m, s)[:, 0]


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
    alpha = alpha.clamp(0, 1)
    f, h, w = alpha.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    mass = alpha.sum((1, 2)).clamp_min(1e-6)
    cx = (alpha.sum(1) * xs).sum(1) / mass
    cy = (alpha.sum(2) * ys).sum(1) / mass
    return torch.stack([cx, cy], 1).numpy().astype(np.float64), mass.numpy()
