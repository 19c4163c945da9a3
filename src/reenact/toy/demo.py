"""``reenact demo``: the whole method end to end on the bundled toy model, in about a minute on a CPU.

One reference clip from the toy world (world v2: an L-turn or an arc, so that the per-frame motion
matters) is inverted into a motion embedding with the default
:class:`~reenact.inversion.InversionConfig`; three target stills -- one on a textured background,
one with a small object (12-20 % of the side) on a gradient, one large object on a plain background,
each in another colour and shape -- are animated with it, and, as the baseline, with no embedding
(the stock image-to-video model). Both are scored by the benchmark's trajectory cosine against the
reference's true motion (:mod:`reenact.toy.metrics`). Clips are made at the model's F x H x W, read
from the model.

Everything the demo writes is toy footage shown **upscaled x4 with nearest-neighbour sampling**
(128x128 per 32x32 video), so what you see is exactly the model's pixels:

* ``reference.mp4`` / ``reference.gif`` -- the motion reference;
* ``target_<i>.png`` -- the target stills;
* ``result_<i>.mp4`` / ``result_<i>.gif`` -- the targets animated with the learned motion;
* ``baseline_<i>.gif`` -- the same targets animated by the stock model (no embedding);
* ``motion.safetensors`` -- the learned embedding (usable with ``reenact animate --model toy``);
* ``grid.gif`` -- one row per target: reference | stock baseline | result; ``grid.png`` -- the same
  as a filmstrip (one row per video, one column per frame, labelled).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from reenact import models, profiles
from reenact import video as vio
from reenact.files import atomic_write
from reenact.inversion import invert
from reenact.pipeline import GenerationConfig
from reenact.toy import bench, metrics, world

__all__ = ["run_demo", "pick_demo_clips"]

UPSCALE = bench.UPSCALE
FPS = 4  # 8 frames: slow enough to follow the turn
DEMO_MOTIONS = ("turn", "arc")  # composite motions: one direction per frame would not do
#: the targets: (background, size class); a textured background and a small object (issue 7)
DEMO_TARGETS = (("texture", "medium"), ("gradient", "small"), ("plain", "large"))
NUM_TARGETS = len(DEMO_TARGETS)
GEN_STEPS = GenerationConfig().steps  # Euler steps per generation: SVD's 25, as `reenact animate`


def pick_demo_clips(seed: int = 0, num_frames: int = 8, height: int = 32,
                    width: int = 32) -> tuple[bench.Reference, list[world.SceneClip]]:
    """The reference (demo seed ``lo + seed``; turn for even seeds, arc for odd; medium object on
    a plain background) and one target per ``DEMO_TARGETS`` entry.

    Targets are the first demo seeds (from ``lo + 1000 + 100*seed``) of that background and size
    whose shape differs from the reference's and the other targets', whose object colour and
    every background pixel are at least ``metrics.MIN_COLOR_DISTANCE`` from the reference's object
    colour and the other targets' (so the scores can tell the colours apart), and whose object
    the reference's motion keeps in the picture (``bench.keeps_object_in_picture``, the benchmark's rule).
    """
    lo, hi = world.SEED_RANGES["demo"]
    clip = world.make_scene_clip(lo + seed, num_frames, height, width, motion=DEMO_MOTIONS[seed % len(DEMO_MOTIONS)],
                                 background="plain", size_range=bench.SIZE_CLASSES["medium"])
    reference = bench.Reference(0, clip, clip.video, metrics.true_motion(clip), "medium", False, "rendered")
    targets: list[world.SceneClip] = []
    start = lo + 1000 + 100 * seed
    for background, size in DEMO_TARGETS:
        for s in range(start, min(hi, start + 10_000)):
            t = world.make_scene_clip(s, num_frames, height, width, motion="line", background=background,
                                      size_range=bench.SIZE_CLASSES[size])
            others = [clip, *targets]
            still = t.video[0][:, t.masks[0] < 1e-3]  # the target's background pixels
            if (all(t.shape != o.shape for o in others)
                    and bench.keeps_object_in_picture(reference, t, height, width)
                    and all(metrics.color_distance(t.object_color, o.object_color) >= metrics.MIN_COLOR_DISTANCE
                            and float(torch.linalg.norm(still - torch.as_tensor(o.object_color, dtype=torch.float32)[:, None],
                                                        dim=0).min()) >= metrics.MIN_COLOR_DISTANCE
                            for o in others)):
                targets.append(t)
                start = s + 1
                break
        else:
            raise RuntimeError("no demo target found")  # not reached: shapes and colours abound
    return reference, targets


def _write_both(frames, path_mp4: Path) -> Path:
    vio.write_video(frames, path_mp4, fps=FPS)
    vio.write_video(frames, path_mp4.with_suffix(".gif"), fps=FPS)
    return path_mp4


def run_demo(out_dir: str | os.PathLike, steps: int | None = None, seed: int = 0,
             model: str = "toy-v2", progress: bool = True, gen_steps: int = GEN_STEPS) -> dict:
    """Invert a toy reference, animate three targets, write the files above into ``out_dir``.

    ``steps`` overrides the inversion's default number of steps; ``seed`` picks the clips and
    seeds inversion and generation; ``gen_steps`` the Euler steps of each generation (fewer
    only for a quick check); ``model`` is ``toy`` (the bundled model) or a toy-model
    folder (default ``toy-v2``, the world-v2 model the demo's clips come from). Returns the paths written (mp4s; gifs sit beside them), the motion score (mean
    trajectory cosine of the results vs the reference's true motion), the same score without
    an embedding, per-target scores and the seconds spent; a human-readable line
    ``motion score (trajectory cosine)`` summarises both scores.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = models.load_pipeline(model, "cpu", torch.float32)
    reference, targets = pick_demo_clips(seed, *models.native_geometry(pipe))
    num_frames = reference.video.shape[0]
    t_loaded = time.perf_counter()

    # the model's own defaults (reenact.profiles: toy-v2 has measured ones), as `reenact invert`
    config = profiles.inversion_config(model, seed=seed, **({} if steps is None else {"steps": steps}))
    embedding_path = out / "motion.safetensors"
    result = invert(pipe, reference.video, config, output=embedding_path, progress=progress,
                    reference_name=f"toy demo clip (seed {reference.seed}, {reference.motion})")
    t_inverted = time.perf_counter()

    images = [vio.tensor_to_images(t.video[0])[0] for t in targets]
    image_tensors = [vio.image_to_tensor(im) for im in images]
    videos = bench.generate(pipe, images, result.embedding, steps=gen_steps, seed=seed)
    baseline = bench.generate(pipe, images, None, steps=gen_steps, seed=seed)
    t_generated = time.perf_counter()

    scores = [metrics.score_video(v, reference, t, img) for v, t, img in zip(videos, targets, image_tensors)]
    base_scores = [metrics.score_video(v, reference, t, img) for v, t, img in zip(baseline, targets, image_tensors)]
    score = float(np.mean([s["trajectory_cosine"] for s in scores]))
    base = float(np.mean([s["trajectory_cosine"] for s in base_scores]))

    summary: dict = {"out_dir": out}
    up_ref = vio.upscale_nearest(vio.tensor_to_images(reference.video), UPSCALE)
    summary["reference"] = _write_both(up_ref, out / "reference.mp4")
    up_results, up_base = [], []
    for i, (img, vid, bvid) in enumerate(zip(images, videos, baseline)):
        path = out / f"target_{i}.png"
        with atomic_write(path) as tmp:
            vio.upscale_nearest([img], UPSCALE)[0].save(tmp)
        summary[f"target_{i}"] = path
        up_results.append(vio.upscale_nearest(vio.tensor_to_images(vid), UPSCALE))
        summary[f"result_{i}"] = _write_both(up_results[-1], out / f"result_{i}.mp4")
        up_base.append(vio.upscale_nearest(vio.tensor_to_images(bvid), UPSCALE))
        summary[f"baseline_{i}"] = vio.write_video(up_base[-1], out / f"baseline_{i}.gif", fps=FPS)
    cells = [v for b, r in zip(up_base, up_results) for v in (up_ref, b, r)]
    grid_gif = vio.write_video(vio.make_grid(cells, columns=3), out / "grid.gif", fps=FPS)
    cell = up_ref[0].width
    strip_rows = [[bench._label(f"reference\n{reference.motion}", cell), *up_ref]]
    for i, (b, r) in enumerate(zip(up_base, up_results)):
        strip_rows.append([bench._label(f"target {i}\nstock model", cell), *b])
        strip_rows.append([bench._label(f"target {i}\nlearned", cell), *r])
    strip = vio.make_grid([[im] for row in strip_rows for im in row], columns=num_frames + 1)[0]
    grid_png = out / "grid.png"
    with atomic_write(grid_png) as tmp:
        strip.save(tmp)
    summary.update(grid=grid_gif, grid_png=grid_png, embedding=embedding_path)
    summary["motion score (trajectory cosine)"] = f"{score:.2f} (no embedding: {base:.2f})"
    summary.update(
        motion_score=score,
        baseline_score=base,
        target_scores=[round(s["trajectory_cosine"], 3) for s in scores],
        baseline_target_scores=[round(s["trajectory_cosine"], 3) for s in base_scores],
        seconds=round(time.perf_counter() - t0, 1),
        seconds_inversion=round(t_inverted - t_loaded, 1),
        seconds_generation=round(t_generated - t_inverted, 1),
    )
    return summary
