"""Scoring a generated toy video against the toy world's exact ground truth.

Used by the benchmark (:mod:`reenact.toy.bench`), the demo and the convergence benchmark. Each
metric is the toy stand-in for one of the paper's (docs/METHOD.md, "Evaluation"):

* **trajectory cosine** (:func:`motion_metrics`): cosine between the reference's true
  displacement sequence (frames 1..F-1, image units, flattened) and the result's tracked one --
  the paper's SSv2 feature cosine;
* **direction accuracy**: at the frame k* where the reference is displaced most, the result's
  displacement is within :data:`DIRECTION_TOLERANCE_DEG` of the reference's;
* **magnitude ratio**: |result disp(k*)| / |reference disp(k*)|;
* **first-frame PSNR** (:func:`first_frame_psnr`): is the target's appearance kept (the paper's
  first-frame CLIP similarity);
* **no leak** (:func:`leak_free`): the reference's appearance did not leak into the motion.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reenact.metrics import psnr
from reenact.toy import world

__all__ = [
    "MIN_COLOR_DISTANCE",
    "DIRECTION_TOLERANCE_DEG",
    "color_distance",
    "trajectory",
    "motion_metrics",
    "first_frame_psnr",
    "leak_free",
    "score_video",
]

#: a target's object colour must be at least this far (RGB, [-1, 1] units) from the reference's,
#: so that leakage of the reference's appearance is visible and measurable
MIN_COLOR_DISTANCE = 0.5
#: direction accuracy: angle at the reference's largest displacement within this many degrees
DIRECTION_TOLERANCE_DEG = 45.0
_EPS = 1e-9


def color_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def trajectory(video: torch.Tensor, object_color: np.ndarray, background_color: np.ndarray) -> np.ndarray:
    """Tracked displacement of the object from frame 0, ``(F, 2)`` in image units."""
    centres, _ = world.track(video, object_color, background_color)
    h, w = video.shape[-2:]
    return (centres - centres[:1]) / np.array([w, h], dtype=np.float64)


def motion_metrics(ref_disp: np.ndarray, res_disp: np.ndarray) -> dict:
    """Trajectory cosine, direction check and magnitude ratio of two ``(F, 2)`` displacements.

    A result that does not move at all gets cosine 0 and angle 180 (it has no direction).
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


def leak_free(result: torch.Tensor, target: world.Clip, reference_color: np.ndarray) -> tuple[bool, int]:
    """No appearance leakage: in every frame the object's colour is the target's, not the reference's.

    The object's pixels are those farther from the target's background colour than half the
    target's object-background distance; their mean colour must be closer to the target's object
    colour than to the reference's. A frame without such pixels (the object vanished) fails.
    Returns ``(ok, number of failing frames)``.
    """
    v = result.detach().float().cpu()
    bg = torch.as_tensor(target.background_color, dtype=torch.float32)[:, None, None]
    obj = torch.as_tensor(target.object_color, dtype=torch.float32)
    ref = torch.as_tensor(reference_color, dtype=torch.float32)
    threshold = 0.5 * float(torch.linalg.norm(obj - bg[:, 0, 0]))
    failing = 0
    for frame in v:
        mask = torch.linalg.norm(frame - bg, dim=0) > threshold
        if not bool(mask.any()):
            failing += 1
            continue
        colour = frame[:, mask].mean(1)
        if not torch.linalg.norm(colour - obj) < torch.linalg.norm(colour - ref):
            failing += 1
    return failing == 0, failing


def score_video(result: torch.Tensor, reference: world.Clip, target: world.Clip,
                target_image: torch.Tensor) -> dict:
    """All metrics of one generated video ``(F, 3, H, W)`` in [-1, 1]."""
    res_disp = trajectory(result, target.object_color, target.background_color)
    out = motion_metrics(reference.displacements, res_disp)
    ok, failing = leak_free(result, target, reference.object_color)
    out.update(first_frame_psnr=first_frame_psnr(result, target_image), no_leak=ok,
               leak_frames=failing, result_displacements=np.round(res_disp, 5).tolist())
    return out
