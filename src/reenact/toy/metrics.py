"""Scoring a generated toy video against the toy world's exact ground truth.

Used by the benchmark (:mod:`reenact.toy.bench`), the demo and the convergence benchmark. Each
metric is the toy stand-in for one of the paper's (docs/METHOD.md, "Evaluation"):

* **trajectory cosine** (:func:`motion_metrics`): cosine between the reference's true motion
  signal (:func:`true_motion`, frames 1..F-1, flattened) and the result's measured one
  (:func:`measured_motion`): the object's displacement tracked by its colour for object motions,
  for a pan the camera shift anchored on the object where the background moves with it
  (``world.estimate_pan``), for a zoom the log scale found by brute-force search against frame 0
  where the background zooms too (``world.estimate_zoom``) -- the paper's SSv2 feature cosine;
* **direction accuracy**: at the frame k* where the reference moves most, the result's motion is
  within :data:`DIRECTION_TOLERANCE_DEG` of the reference's (a zoom: in vs out);
* **magnitude ratio**: |result disp(k*)| / |reference disp(k*)|;
* **first-frame PSNR** (:func:`first_frame_psnr`): is the target's appearance kept (the paper's
  first-frame CLIP similarity);
* **no leak** (:func:`leak_free`): the reference's appearance did not leak into the motion;
  :func:`leak_count` splits the failures into colour leaks and frames where the object was lost.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np
import torch

from reenact.metrics import psnr
from reenact.toy import world

__all__ = [
    "MIN_COLOR_DISTANCE",
    "MIN_OBJECT_MASS",
    "DIRECTION_TOLERANCE_DEG",
    "color_distance",
    "motion_kind",
    "true_motion",
    "measured_motion",
    "trajectory",
    "motion_metrics",
    "first_frame_psnr",
    "leak_count",
    "leak_free",
    "score_video",
]

#: a target's object colour must be at least this far (RGB, [-1, 1] units) from the reference's,
#: and every pixel of the target's background too, so that leakage of the reference's appearance
#: is visible and measurable (the world's own contrast, ``world.MIN_CONTRAST``)
MIN_COLOR_DISTANCE = world.MIN_CONTRAST
#: an object frame with less object colour than this (pixels, ``world.track_by_color``'s mass)
#: has no object to measure (its home is the world's tracker)
MIN_OBJECT_MASS = world.MIN_OBJECT_MASS
#: direction accuracy: angle at the reference's largest displacement within this many degrees
DIRECTION_TOLERANCE_DEG = 45.0
_EPS = 1e-9


def color_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def motion_kind(motion: str) -> str:
    """What a motion moves: ``object`` (tracked by colour), or the camera (``pan``, ``zoom``)."""
    return motion if motion in world.CAMERA_MOTIONS else "object"


def true_motion(clip: world.Clip, indices: Sequence[int] | None = None) -> np.ndarray:
    """The motion signal of a clip at frames ``indices``, relative to the first of them.

    Object motions: the object's image displacement (F, 2) in image units; pan: the camera
    shift (F, 2) in image units; zoom: the log camera scale (F, 1). Image units make a 64x64
    clip and its 32x32 reading comparable.
    """
    idx = np.arange(clip.video.shape[0]) if indices is None else np.asarray(indices)
    h, w = clip.video.shape[-2:]
    unit = np.array([w, h], dtype=np.float64)
    kind = motion_kind(clip.motion)
    if kind == "pan":
        sig = clip.camera_shift[idx] / unit
    elif kind == "zoom":
        sig = np.log(clip.camera_scale[idx])[:, None]
    else:
        sig = clip.centers[idx] / unit
    return sig - sig[:1]


def measured_motion(video: torch.Tensor, kind: str, object_color: np.ndarray) -> np.ndarray:
    """The same signal as :func:`true_motion`, measured on a generated video ``(F, 3, H, W)``.

    An object frame where the object is not found (less than :data:`MIN_OBJECT_MASS` pixels of
    its colour) measures no displacement, and if frame 0 is such a frame, no frame does: an
    absent object has no position. (The colour tracker's centre of an empty frame is the image
    corner, which once scored a vanished object as a jump to the top left.) Lost frames are
    failures all the same: the cosine lacks their share of the true motion, and the leak check
    counts them.
    """
    h, w = video.shape[-2:]
    unit = np.array([w, h], dtype=np.float64)
    if kind == "pan":
        return world.estimate_camera(video, "pan", object_color) / unit
    if kind == "zoom":
        return world.estimate_camera(video, "zoom", object_color)
    centres, mass = world.track_by_color(video, object_color)
    found = mass >= MIN_OBJECT_MASS
    if not found[0]:
        return np.zeros_like(centres)
    disp = (centres - centres[:1]) / unit
    disp[~found] = 0.0
    return disp


def trajectory(video: torch.Tensor, object_color: np.ndarray, background_color: np.ndarray | None = None) -> np.ndarray:
    """Tracked displacement of the object from frame 0, ``(F, 2)`` in image units (by its colour;
    ``background_color`` is not needed any more and ignored)."""
    return measured_motion(video, "object", object_color)


def motion_metrics(ref_disp: np.ndarray, res_disp: np.ndarray) -> dict:
    """Trajectory cosine, direction check and magnitude ratio of two ``(F, k)`` motion signals.

    A result that does not move at all gets cosine 0 and angle 180 (it has no direction). For a
    zoom (k = 1) the direction is in or out: angle 0 or 180.
    """
    a, b = ref_disp[1:].ravel(), res_disp[1:].ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = float(a @ b / (na * nb)) if na > _EPS and nb > _EPS else 0.0
    k = 1 + int(np.argmax(np.linalg.norm(ref_disp[1:], axis=1)))
    r, g = ref_disp[k], res_disp[k]
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    if nr > _EPS and ng > _EPS:
        angle = math.degrees(math.acos(float(np.clip(r @ g / (nr * ng), -1.0, 1.0))))
    else:
        angle = 180.0
    return {
        "trajectory_cosine": cosine,
        "peak_frame": k,
        "angle_deg": angle,
        "direction_ok": angle <= DIRECTION_TOLERANCE_DEG,
        "magnitude_ratio": float(ng / nr) if nr > _EPS else float("nan"),
    }


def first_frame_psnr(result: torch.Tensor, image: torch.Tensor) -> float:
    """PSNR (dB) of the result's frame 0 to the target image, both in [-1, 1], measured on [0, 1]."""
    return psnr(result[0], image)


def leak_count(result: torch.Tensor, target_color: np.ndarray, reference_color: np.ndarray) -> tuple[int, int]:
    """Frames that fail the leak check, by kind: ``(colour, lost)``.

    Pixels within half the world's contrast of a colour count as that colour (the two colours
    and every target background pixel are at least ``MIN_COLOR_DISTANCE`` apart, so the counts
    do not overlap). A *colour* frame has reference-coloured pixels and no more target-coloured
    ones (the reference's appearance came along); a *lost* frame has neither colour (the object
    vanished, blurred or left the frame). Both fail :func:`leak_free`; telling them apart says
    whether a failure is appearance leakage at all.
    """
    v = result.detach().float().cpu()
    radius = MIN_COLOR_DISTANCE / 2
    tgt = torch.as_tensor(target_color, dtype=torch.float32)[:, None, None]
    ref = torch.as_tensor(reference_color, dtype=torch.float32)[:, None, None]
    colour = lost = 0
    for frame in v:
        n_tgt = int((torch.linalg.norm(frame - tgt, dim=0) < radius).sum())
        n_ref = int((torch.linalg.norm(frame - ref, dim=0) < radius).sum())
        if n_ref > 0 and n_ref >= n_tgt:
            colour += 1
        elif n_tgt == 0:
            lost += 1
    return colour, lost


def leak_free(result: torch.Tensor, target_color: np.ndarray, reference_color: np.ndarray) -> tuple[bool, int]:
    """No appearance leakage: in every frame the object is drawn in the target's colour.

    A frame fails when it has no target-coloured pixel (the object vanished) or at least as
    many reference-coloured ones (:func:`leak_count` tells the two apart). Returns ``(ok,
    number of failing frames)``.
    """
    colour, lost = leak_count(result, target_color, reference_color)
    return colour + lost == 0, colour + lost


class ScoredReference(Protocol):
    """What scoring needs of a reference (``bench.Reference``): its true motion signal, the kind
    of motion, and the clip (for its object colour)."""

    truth: np.ndarray
    clip: world.Clip

    @property
    def kind(self) -> str: ...


def score_video(result: torch.Tensor, reference: ScoredReference, target: world.Clip,
                target_image: torch.Tensor) -> dict:
    """All metrics of one generated video ``(F, 3, H, W)`` in [-1, 1]."""
    res = measured_motion(result, reference.kind, target.object_color)
    out = motion_metrics(reference.truth, res)
    colour, lost = leak_count(result, target.object_color, reference.clip.object_color)
    out.update(first_frame_psnr=first_frame_psnr(result, target_image), no_leak=colour + lost == 0,
               leak_frames=colour + lost, colour_leak_frames=colour, lost_frames=lost,
               result_motion=np.round(res, 5).tolist())
    return out
