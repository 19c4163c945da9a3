"""``reenact demo``: the whole method end to end on the bundled toy model, in about a minute on a CPU.

One reference clip from the toy world (an L-turn or an arc, so that the per-frame motion matters)
is inverted into a motion embedding with the default :class:`~reenact.inversion.InversionConfig`;
three target stills that differ from it and from each other in shape, colour, background and
position are animated with it, and -- as the baseline -- with no embedding (the stock
image-to-video model). Both are scored by the benchmark's trajectory cosine against the
reference's true motion (:mod:`reenact.toy.metrics`).

Everything the demo writes is 16x16 toy footage shown **upscaled x8 with nearest-neighbour
sampling** (128x128 per video), so what you see is exactly the model's pixels:

* ``reference.mp4`` / ``reference.gif`` -- the motion reference;
* ``target_<i>.png`` -- the target stills (x8);
* ``result_<i>.mp4`` / ``result_<i>.gif`` -- the targets animated with the learned motion;
* ``motion.safetensors`` -- the learned embedding (usable with ``reenact animate --model toy``);
* ``grid.gif`` -- reference | the three results side by side; ``grid.png`` -- the same as a
  filmstrip (one row per video, one column per frame).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from reenact import models
from reenact import video as vio
from reenact.files import atomic_write
from reenact.inversion import InversionConfig, invert
from reenact.pipeline import GenerationConfig
from reenact.toy import bench, metrics, world

__all__ = ["run_demo", "pick_demo_clips"]

UPSCALE = bench.UPSCALE
FPS = 4  # 8 frames: slow enough to follow the turn
NUM_TARGETS = 3
DEMO_MOTIONS = ("turn", "arc")  # composite motions: one direction per frame would not do
_COLORS_DIFFER = metrics.MIN_COLOR_DISTANCE  # RGB distance that counts as "another colour"


def pick_demo_clips(seed: int = 0) -> tuple[world.Clip, list[world.Clip]]:
    """The reference (demo seed ``lo + seed``; turn for even seeds, arc for odd) and three targets.

    Targets are the first demo seeds (from ``lo + 1000 + 100*seed``) whose shape differs from the
    reference's and from the other targets', whose object colour differs from the reference's and
    the other targets' object colours, and whose background differs from the other targets'.
    """
    lo, hi = world.SEED_RANGES["demo"]
    reference = world.make_clip(lo + seed, motion=DEMO_MOTIONS[seed % len(DEMO_MOTIONS)])
    targets: list[world.Clip] = []
    start = lo + 1000 + 100 * seed
    for s in range(start, min(hi, start + 10_000)):
        t = world.make_target(s)
        others = [reference, *targets]
        if (all(t.shape != o.shape for o in others)
                and all(metrics.color_distance(t.object_color, o.object_color) >= _COLORS_DIFFER for o in others)
                and all(metrics.color_distance(t.background_color, o.background_color) >= _COLORS_DIFFER
                        for o in targets)):
            targets.append(t)
            if len(targets) == NUM_TARGETS:
                return reference, targets
    raise RuntimeError("no demo targets found")  # not reached for any seed: shapes and colours abound


def _write_both(frames, path_mp4: Path) -> Path:
    vio.write_video(frames, path_mp4, fps=FPS)
    vio.write_video(frames, path_mp4.with_suffix(".gif"), fps=FPS)
    return path_mp4


def run_demo(out_dir: str | os.PathLike, steps: int | None = None, seed: int = 0,
             model: str = models.TOY_MODEL, progress: bool = True) -> dict:
    """Invert a toy reference, animate three targets, write the files above into ``out_dir``.

    ``steps`` overrides the inversion's default number of steps; ``seed`` picks the clips and
    seeds inversion and generation; ``model`` is ``toy`` (the bundled model) or a toy-model
    folder. Returns the paths written (mp4s; gifs sit beside them), the motion score (mean
    trajectory cosine of the results vs the reference's true motion), the same score without
    an embedding, per-target scores and the seconds spent; a human-readable line
    ``motion score (trajectory cosine)`` summarises both scores.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference, targets = pick_demo_clips(seed)
    num_frames = reference.video.shape[0]
    pipe = models.load_pipeline(model, "cpu", torch.float32)
    t_loaded = time.perf_counter()

    config = InversionConfig(seed=seed) if steps is None else InversionConfig(steps=steps, seed=seed)
    embedding_path = out / "motion.safetensors"
    result = invert(pipe, reference.video, config, output=embedding_path, progress=progress,
                    reference_name=f"toy demo clip (seed {reference.meta['seed']}, {reference.motion})")
    t_inverted = time.perf_counter()

    images = [vio.tensor_to_images(t.video[0])[0] for t in targets]
    image_tensors = [vio.image_to_tensor(im) for im in images]
    steps_gen = GenerationConfig().steps  # SVD's 25
    videos = bench.generate(pipe, images, result.embedding, steps=steps_gen, seed=seed)
    baseline = bench.generate(pipe, images, None, steps=steps_gen, seed=seed)
    t_generated = time.perf_counter()

    scores = [metrics.score_video(v, reference, t, img) for v, t, img in zip(videos, targets, image_tensors)]
    base_scores = [metrics.score_video(v, reference, t, img) for v, t, img in zip(baseline, targets, image_tensors)]
    score = float(np.mean([s["trajectory_cosine"] for s in scores]))
    base = float(np.mean([s["trajectory_cosine"] for s in base_scores]))

    summary: dict = {"out_dir": out}
    up_ref = vio.upscale_nearest(vio.tensor_to_images(reference.video), UPSCALE)
    summary["reference"] = _write_both(up_ref, out / "reference.mp4")
    up_results = []
    for i, (img, vid) in enumerate(zip(images, videos)):
        path = out / f"target_{i}.png"
        with atomic_write(path) as tmp:
            vio.upscale_nearest([img], UPSCALE)[0].save(tmp)
        summary[f"target_{i}"] = path
        up_results.append(vio.upscale_nearest(vio.tensor_to_images(vid), UPSCALE))
        summary[f"result_{i}"] = _write_both(up_results[-1], out / f"result_{i}.mp4")
    rows = [up_ref, *up_results]
    grid_gif = vio.write_video(vio.make_grid(rows), out / "grid.gif", fps=FPS)
    strip = vio.make_grid([[im] for row in rows for im in row], columns=num_frames)[0]
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
