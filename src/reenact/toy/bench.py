"""The motion-transfer benchmark on the toy world: the paper's ablation, measured.

``reenact bench toy [flags]`` (or ``python benchmarks/toy_transfer.py [flags]``). A fixed set of
reference clips from ``SEED_RANGES["bench"]`` (never seen in training), covering every motion of
``world.MOTIONS`` round-robin, each with a few target stills whose object colour differs from the
reference's. For each configuration the reference is inverted once and its targets animated in
one batched pipeline call; every generated video is then scored against ground truth by
:mod:`reenact.toy.metrics` (trajectory cosine, direction accuracy, magnitude ratio, first-frame
PSNR, no leak), tracking the target's object with the *target's* colours.

Configurations (``--configs``; the paper's F' x N ablation plus the stock model and an oracle):
``a`` stock image-to-video (no motion embedding: the model's CLIP embedding of the target),
``b`` one shared set N=1, ``c`` one shared set N=5, ``d`` F+1 sets N=1, ``e`` F+1 sets N=5 (the
paper's default), and optionally ``o``, the *oracle*: the toy model's own training context for the
true motion (``motion_code.safetensors`` of the model folder), one token, all sets equal -- an upper
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

from reenact import models
from reenact import video as vio
from reenact.embedding import MotionEmbedding
from reenact.errors import ConfigError
from reenact.files import atomic_write
from reenact.inversion import INITS, SCHEDULES, InversionConfig, invert
from reenact.pipeline import GenerationConfig
from reenact.settings import describe
from reenact.toy import world
from reenact.toy.metrics import MIN_COLOR_DISTANCE, color_distance, score_video

__all__ = [
    "CONFIGS",
    "pick_references",
    "pick_targets",
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


CONFIGS: dict[str, ConfigSpec] = {
    "a": ConfigSpec("no motion embedding (stock image-to-video)"),
    "b": ConfigSpec("one shared set, N=1", "shared", 1),
    "c": ConfigSpec("one shared set, N=5", "shared", 5),
    "d": ConfigSpec("F+1 sets, N=1", "per-frame", 1),
    "e": ConfigSpec("F+1 sets, N=5 (paper default)", "per-frame", 5),
    "o": ConfigSpec("oracle: the model's training context for the true motion"),
}
DEFAULT_CONFIGS = "a,b,c,d,e"

#: offsets inside the bench seed range: references at +i, targets of reference i at
#: +TARGET_OFFSET + i*TARGET_STRIDE + k (k counts skipped seeds too)
TARGET_OFFSET, TARGET_STRIDE = 100_000, 100
UPSCALE = 8  # 16x16 frames are unreadable at their own size


# --------------------------------------------------------------------------------------------
# the fixed benchmark set
# --------------------------------------------------------------------------------------------

def pick_references(count: int, seed_range: str = "bench") -> list[world.Clip]:
    """``count`` reference clips, seed ``lo + i``, motion ``MOTIONS[i % 5]`` (round-robin)."""
    lo, hi = world.SEED_RANGES[seed_range]
    if count > TARGET_OFFSET:
        raise ConfigError(f"at most {TARGET_OFFSET} references (got {count})")
    return [world.make_clip(lo + i, motion=world.MOTIONS[i % len(world.MOTIONS)]) for i in range(count)]


def pick_targets(reference: world.Clip, index: int, count: int,
                 seed_range: str = "bench") -> list[world.Clip]:
    """``count`` target stills for reference number ``index``: the first seeds of its own block
    whose object colour is >= ``MIN_COLOR_DISTANCE`` from the reference's (others are skipped).

    Shape, colours, size and position are random draws, so the targets differ among themselves.
    """
    lo, hi = world.SEED_RANGES[seed_range]
    start = lo + TARGET_OFFSET + index * TARGET_STRIDE
    targets: list[world.Clip] = []
    for seed in range(start, start + TARGET_STRIDE):
        t = world.make_target(seed)
        if color_distance(t.object_color, reference.object_color) >= MIN_COLOR_DISTANCE:
            targets.append(t)
            if len(targets) == count:
                return targets
    raise ConfigError(f"could not find {count} targets for reference {index} within "
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


def oracle_embedding(model: str, reference: world.Clip) -> MotionEmbedding:
    """The toy model's training context for the reference's true motion, as an (F+1, 1, d) embedding.

    ``tanh(feat.flatten() @ P + b)`` with ``P``, ``b`` from ``motion_code.safetensors`` (see
    ``reenact.toy.train``): one token, the same for every set, i.e. exactly what the model saw in
    training for this motion -- what no inverted embedding can be expected to beat.
    """
    from safetensors.torch import load_file

    folder = model_folder(model)
    path = folder / "motion_code.safetensors" if folder is not None else None
    if path is None or not path.is_file():
        raise ConfigError(f"config 'o' (oracle) needs motion_code.safetensors in the model folder; "
                          f"'{model}' has none (toy models only)")
    code = load_file(str(path))
    feats = torch.as_tensor(world.motion_features(reference), dtype=torch.float32)  # (F, 5)
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
    model: str = models.TOY_MODEL
    keep_videos_for: int = 3  # references whose videos are kept (for the example images)

    def inversion_config(self, spec: ConfigSpec, seed: int) -> InversionConfig:
        return dataclasses.replace(self.inversion, sets=spec.sets, tokens=spec.tokens, seed=seed)


@dataclass
class BenchRun:
    records: list[dict] = field(default_factory=list)  # one per generated video
    inversions: list[dict] = field(default_factory=list)  # one per (reference, inverted config)
    kept: dict = field(default_factory=dict)  # (ref index, config) -> (T, F, 3, H, W)


def run_benchmark(pipe, references: list[world.Clip], targets: list[list[world.Clip]],
                  settings: BenchSettings, log: Callable[[str], None] = lambda s: None,
                  after_reference: Callable[[BenchRun], None] | None = None) -> BenchRun:
    """Invert every reference once per configuration, animate its targets, score every video."""
    run = BenchRun()
    t0 = time.perf_counter()
    for i, (ref, tgts) in enumerate(zip(references, targets)):
        seed = settings.seed + i  # inversion and generation seed, shared by all configs of ref i
        images = [vio.tensor_to_images(t.video[0])[0] for t in tgts]
        image_tensors = [vio.image_to_tensor(im) for im in images]  # what the pipeline was given
        for key in settings.configs:
            spec = CONFIGS[key]
            inv_s, loss = None, None
            if key == "a":
                emb = None
            elif key == "o":
                emb = oracle_embedding(settings.model, ref)
            else:
                result = invert(pipe, ref.video, settings.inversion_config(spec, seed), progress=False,
                                reference_name=f"bench seed {ref.meta['seed']} ({ref.motion})")
                emb, inv_s, loss = result.embedding, result.seconds, result.embedding.metadata["final_loss"]
                run.inversions.append({"ref": i, "config": key, "seconds": inv_s,
                                       "steps": result.steps_done, "final_loss": loss})
            tg = time.perf_counter()
            videos = generate(pipe, images, emb, steps=settings.gen_steps, seed=seed)
            gen_s = time.perf_counter() - tg
            scores = []
            for j, (tgt, vid, img) in enumerate(zip(tgts, videos, image_tensors)):
                rec = {"ref": i, "ref_seed": ref.meta["seed"], "motion": ref.motion, "target": j,
                       "target_seed": tgt.meta["seed"], "config": key,
                       **score_video(vid, ref, tgt, img)}
                run.records.append(rec)
                scores.append(rec["trajectory_cosine"])
            if i < settings.keep_videos_for:
                run.kept[(i, key)] = videos
            inv = f"inversion {inv_s:.1f} s (loss {loss:.3g}), " if inv_s is not None else ""
            log(f"[ref {i + 1}/{len(references)} {ref.motion}] ({key}) {spec.description}: {inv}"
                f"generation {gen_s:.1f} s, trajectory cosine {np.mean(scores):+.2f} "
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

def summarise(records: list[dict], inversions: list[dict], configs: Sequence[str]) -> dict:
    """Per configuration: means, rates and medians over all its videos (and per motion)."""
    out = {}
    for key in configs:
        rows = [r for r in records if r["config"] == key]
        if not rows:
            continue
        cos = np.array([r["trajectory_cosine"] for r in rows])
        mags = np.array([r["magnitude_ratio"] for r in rows], dtype=np.float64)
        psnr = np.array([r["first_frame_psnr"] for r in rows])
        secs = [v["seconds"] for v in inversions if v["config"] == key]
        out[key] = {
            "description": CONFIGS[key].description,
            "videos": len(rows),
            "trajectory_cosine_mean": float(cos.mean()),
            "trajectory_cosine_std": float(cos.std()),
            "direction_accuracy": float(np.mean([r["direction_ok"] for r in rows])),
            "magnitude_ratio_median": float(np.nanmedian(mags)) if np.isfinite(mags).any() else None,
            "first_frame_psnr_mean": float(np.mean(np.minimum(psnr, 100.0))),
            "no_leak_rate": float(np.mean([r["no_leak"] for r in rows])),
            "seconds_per_inversion": float(np.mean(secs)) if secs else None,
            "trajectory_cosine_by_motion": {
                m: float(np.mean([r["trajectory_cosine"] for r in rows if r["motion"] == m]))
                for m in world.MOTIONS if any(r["motion"] == m for r in rows)
            },
        }
    return out


def markdown_table(summary: dict) -> str:
    """The ablation table (one row per configuration) and trajectory cosine per motion."""
    lines = [
        "| config | trajectory cosine | direction acc. | magnitude ratio (median) "
        "| first-frame PSNR (dB) | no leak | s / inversion |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        mag = "—" if s["magnitude_ratio_median"] is None else f"{s['magnitude_ratio_median']:.2f}"
        sec = "—" if s["seconds_per_inversion"] is None else f"{s['seconds_per_inversion']:.1f}"
        lines.append(
            f"| ({key}) {s['description']} | {s['trajectory_cosine_mean']:.2f} ± "
            f"{s['trajectory_cosine_std']:.2f} | {100 * s['direction_accuracy']:.0f}% | {mag} | "
            f"{s['first_frame_psnr_mean']:.1f} | {100 * s['no_leak_rate']:.0f}% | {sec} |"
        )
    motions = [m for m in world.MOTIONS if any(m in s["trajectory_cosine_by_motion"] for s in summary.values())]
    lines += ["", "Trajectory cosine by reference motion:", "",
              "| config | " + " | ".join(motions) + " |", "|---|" + "---|" * len(motions)]
    for key, s in summary.items():
        by = s["trajectory_cosine_by_motion"]
        lines.append(f"| ({key}) | " + " | ".join(f"{by[m]:.2f}" if m in by else "—" for m in motions) + " |")
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


def write_example(out_dir: Path, name: str, reference: world.Clip, targets: list[world.Clip],
                  rows: dict[str, torch.Tensor]) -> list[Path]:
    """``name.png`` (a filmstrip: reference frames, then per target one row per config in ``rows``)
    and ``name.gif`` (the same, animated: per target reference | config results), upscaled x8."""
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
    d = InversionConfig()

    def about(name: str) -> str:  # the library's own help sentence for an inversion setting
        return describe(InversionConfig, name)["help"].replace("%", "%%")

    p = argparse.ArgumentParser(
        prog="reenact bench toy", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Motion-transfer benchmark on the toy world (the paper's F' x N ablation): "
                    "invert reference clips, animate targets, score trajectory, direction, "
                    "magnitude, first-frame PSNR and appearance leakage against ground truth.",
    )
    p.add_argument("--refs", type=int, default=16, help="reference clips (motions round-robin)")
    p.add_argument("--targets", type=int, default=3, help="target images per reference")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated: " + "; ".join(f"{k}: {v.description}" for k, v in CONFIGS.items()))
    p.add_argument("--steps", type=int, default=d.steps, help="inversion " + about("steps"))
    p.add_argument("--gen-steps", type=int, default=25, help="Euler denoising steps (SVD default)")
    p.add_argument("--lr", type=float, default=d.lr, help="inversion " + about("lr"))
    p.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule,
                   help="inversion learning-rate schedule")
    p.add_argument("--log-sigma-mean", type=float, default=d.log_sigma_mean,
                   help="mean of ln sigma of the inversion's noise levels")
    p.add_argument("--log-sigma-std", type=float, default=d.log_sigma_std,
                   help="std of ln sigma of the inversion's noise levels")
    p.add_argument("--init", choices=INITS, default=d.init, help="embedding initialisation")
    p.add_argument("--seed", type=int, default=0,
                   help="inversion/generation seed of reference i is seed+i (the clips are fixed)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    p.add_argument("--model", default=models.TOY_MODEL, help="'toy' or a model folder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--examples", type=int, default=3, help="references drawn as example grids")
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
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.examples < 0:
        parser.error("--examples must be >= 0")
    torch.set_num_threads(args.threads)
    command = "reenact bench toy " + shlex.join(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    references = pick_references(args.refs)
    targets = [pick_targets(r, i, args.targets) for i, r in enumerate(references)]
    if "o" in configs:
        oracle_embedding(args.model, references[0])  # refuse early, before any work
    vio.check_writable_dir(args.out)
    dtype = torch.float32
    pipe = models.load_pipeline(args.model, args.device, dtype)
    base = dataclasses.replace(InversionConfig(), steps=args.steps, lr=args.lr,
                               log_sigma_mean=args.log_sigma_mean, log_sigma_std=args.log_sigma_std,
                               init=args.init, lr_schedule=args.lr_schedule)
    settings = BenchSettings(configs=configs, inversion=base, gen_steps=args.gen_steps, seed=args.seed,
                             model=args.model, keep_videos_for=min(args.examples, args.refs))
    info = machine_info()
    header = {
        "command": command,
        "machine": info,
        "settings": {**vars(args), "out": str(args.out), "configs": configs,
                     "inversion": settings.inversion_config(CONFIGS["e"], args.seed).to_dict()},
        "references": [{"seed": r.meta["seed"], "motion": r.motion, "shape": r.shape,
                        "targets": [t.meta["seed"] for t in ts]} for r, ts in zip(references, targets)],
    }

    def save(run: BenchRun, complete: bool) -> dict:
        summary = summarise(run.records, run.inversions, configs)
        doc = {**header, "complete": complete, "wall_seconds": time.perf_counter() - t_start,
               "summary": summary, "inversions": run.inversions, "records": run.records}
        _write_text(args.out / "results.json", json.dumps(_finite(doc), indent=1, allow_nan=False))
        return summary

    log(f"benchmark: {args.refs} references x {args.targets} targets, configs {','.join(configs)}, "
        f"{args.steps} inversion steps, {args.gen_steps} generation steps, model {args.model}, "
        f"{torch.get_num_threads()} threads")
    run = run_benchmark(pipe, references, targets, settings, log=log,
                        after_reference=lambda r: save(r, complete=False))
    summary = save(run, complete=True)
    wall = time.perf_counter() - t_start
    table = markdown_table(summary)

    shown = [k for k in ("a", "e") if k in configs] or [configs[0], configs[-1]]
    example_paths = []
    for i in range(settings.keep_videos_for):
        rows = {k: run.kept[(i, k)] for k in dict.fromkeys(shown)}
        example_paths += write_example(args.out, f"example_{i}", references[i], targets[i], rows)

    steps_total = sum(v["steps"] for v in run.inversions)
    per_step = sum(v["seconds"] for v in run.inversions) / steps_total if steps_total else None
    notes = [
        f"Command: `{command}`",
        f"Machine: {info['machine']}, {info['cpu_count']} cores, torch {info['torch']}, "
        f"{info['threads']} threads (load average at start {info['load_average_at_start']}).",
        f"Model: {args.model}. {args.refs} references x {args.targets} targets; {args.steps} inversion "
        f"steps (lr {args.lr}, {args.lr_schedule}, ln s ~ N({args.log_sigma_mean}, {args.log_sigma_std}^2), "
        f"init {args.init}); {args.gen_steps} generation steps. Wall time {_hms(wall)}"
        + (f"; {1000 * per_step:.0f} ms per inversion step (incl. setup)." if per_step else "."),
    ]
    _write_text(args.out / "table.md", "\n\n".join([table, *notes]) + "\n")
    print(table)
    print()
    print(notes[-1])
    for p in [args.out / "results.json", args.out / "table.md", *example_paths]:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
