"""How well does the benchmark's camera measurement read rendered clips, whose camera is known?

World-v2 clips at 32x32, 8 frames (seeds 6000+i and 7000+i, i < --clips), for pan and zoom:

* the camera motion itself: the largest error of the measured shift (pixels) or log scale;
* a still camera over a texture with the object moving (line, turn, ... in turn): the largest
  camera motion read where there is none -- a measure that follows the object would score an
  object motion as a camera motion;
* the camera motion with Gaussian noise growing from 0 to std 0.25 by the last frame (a crude
  stand-in for a generated video whose texture degrades): error and trajectory cosine.

``--world FILE`` measures another version of ``reenact/toy/world.py`` (e.g. the whole-frame
searches before 97a87f0: ``git show 97a87f0~1:src/reenact/toy/world.py > old_world.py``); its
``estimate_camera(video, kind)`` is called without the object colour if it does not take one.

    python benchmarks/camera_measure.py [--clips 40] [--world old_world.py]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys

import numpy as np
import torch

from reenact.toy import world


def load_world(path: str | None):
    if path is None:
        return world
    spec = importlib.util.spec_from_file_location("other_world", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_world"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--world", default=None, metavar="FILE")
    args = p.parse_args()
    torch.set_num_threads(1)
    w = load_world(args.world)
    takes_colour = "object_color" in inspect.signature(w.estimate_camera).parameters

    def camera(video: torch.Tensor, kind: str, colour: np.ndarray) -> np.ndarray:
        return w.estimate_camera(video, kind, colour) if takes_colour else w.estimate_camera(video, kind)

    def truth(clip: world.SceneClip, kind: str) -> np.ndarray:
        return clip.camera_shift if kind == "pan" else np.log(clip.camera_scale)[:, None]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a[1:].ravel(), b[1:].ravel()
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    print(f"{args.world or 'reenact.toy.world'}, {args.clips} clips per row")
    print("| camera | measure | worst | mean |\n|---|---|---|---|")
    for kind, unit in (("pan", "px"), ("zoom", "log scale")):
        rows: dict[str, list[float]] = {f"error ({unit})": [], f"still camera: motion read ({unit})": [],
                                        f"noisy: error ({unit})": [], "noisy: trajectory cosine": []}
        for i in range(args.clips):
            c = world.make_scene_clip(6000 + i, motion=kind)
            rows[f"error ({unit})"].append(float(np.abs(camera(c.video, kind, c.object_color) - truth(c, kind)).max()))
            o = world.make_scene_clip(7000 + i, motion=world.OBJECT_MOTIONS_V2[i % len(world.OBJECT_MOTIONS_V2)],
                                      background="texture")
            rows[f"still camera: motion read ({unit})"].append(float(np.abs(camera(o.video, kind, o.object_color)).max()))
            noise = torch.randn(c.video.shape, generator=torch.Generator().manual_seed(i))
            noisy = c.video + 0.25 * torch.linspace(0, 1, c.video.shape[0])[:, None, None, None] * noise
            est = camera(noisy, kind, c.object_color)
            rows[f"noisy: error ({unit})"].append(float(np.abs(est - truth(c, kind)).max()))
            rows["noisy: trajectory cosine"].append(cosine(est, truth(c, kind)))
        for name, v in rows.items():
            worst = min(v) if "cosine" in name else max(v)
            print(f"| {kind} | {name} | {worst:.3f} | {np.mean(v):.3f} |")


if __name__ == "__main__":
    main()
