"""Batch benchmark: the 3x4 toy plan with 1 and 2 workers, and what Ray adds per job.

Four measurements, in one process, on a local Ray instance with ``--cpus`` CPUs:

1. **direct**: a :class:`reenact.batch.Worker` in this process (the library, no Ray) loads the
   model and runs the plan's jobs -- 3 inversions, then one generation job of 4 targets per
   motion -- one after the other, one torch thread;
2. **per-job overhead**: the same jobs sent one at a time to one Ray actor running the same
   Worker; for each, the driver's round trip minus the seconds measured inside the worker is
   what Ray adds (serialising the job and the records, scheduling, fetching the result);
3. **batch, 1 worker** and 4. **batch, 2 workers**: ``run_batch`` on the whole plan into a fresh
   folder (Ray already up), wall time; speed-up = (3) / (4).

    PYTHONPATH=src python benchmarks/batch.py --out bench-out/batch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from reenact import batch, video
from reenact.models import native_geometry
from reenact.toy import world


def write_plan(folder: Path, steps: int, gen_steps: int, motions: int = 3, targets: int = 4) -> Path:
    """``motions`` toy reference clips and ``targets`` toy stills, and a plan pairing all of them."""
    frames, height, width = native_geometry("toy")
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    lo = world.SEED_RANGES["demo"][0]
    kinds = ("line", "turn", "arc", "zigzag", "back-and-forth")
    for i in range(motions):
        clip = world.make_clip(lo + i, num_frames=frames, height=height, width=width,
                               motion=kinds[i % len(kinds)])
        video.write_video(clip.video, folder / "clips" / f"motion{i}.gif", fps=4)
    for i in range(targets):
        still = world.make_target(lo + 100 + i, height=height, width=width)
        video.tensor_to_images(still.video[:1])[0].save(folder / "images" / f"target{i}.png")
    plan = folder / "plan.json"
    plan.write_text(json.dumps({
        "defaults": {"model": "toy", "seed": 0, "invert": {"steps": steps},
                     "animate": {"steps": gen_steps, "format": "gif", "batch_size": targets}},
        "motions": [f"clips/motion{i}.gif" for i in range(motions)],
        "targets": ["images/"],
    }, indent=1))
    return plan


def plan_jobs(plan: batch.Plan, out: Path) -> list:
    """The jobs run_batch would run on an empty ``out``: inversions, then one job per motion."""
    jobs: list = []
    for m in plan.motions:
        output = out / "motions" / f"{m.name}.safetensors"
        jobs.append(batch.InvertJob(m, output, out / "motions" / ".work" / output.name,
                                    batch._inversion_key(plan, m)))
    for m in plan.motions:
        targets = [t for mm, t in plan.pairs() if mm is m]
        jobs.append(batch.AnimateJob(m, out / "motions" / f"{m.name}.safetensors", targets,
                                     [{} for _ in targets], out))
    return jobs


def run_jobs(call, jobs: list) -> tuple[list[float], list[float]]:
    """Run ``jobs`` in order with ``call(job) -> records``; (wall per job, worker seconds per job)."""
    walls, inside = [], []
    for job in jobs:
        t0 = time.perf_counter()
        records = call(job)
        walls.append(time.perf_counter() - t0)
        assert all(r["status"] == "done" for r in records), records
        inside.append(sum(r["seconds"] for r in records))
    return walls, inside


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench-out/batch", help="work folder (replaced)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--steps", type=int, default=80, help="inversion steps (the toy default)")
    p.add_argument("--gen-steps", type=int, default=25, help="denoising steps (SVD's default)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    plan_path = write_plan(root / "inputs", args.steps, args.gen_steps)
    plan = batch.load_plan(plan_path)
    result: dict = {"machine": f"{platform.machine()}, {batch.available_cpus()} CPUs visible, "
                               f"{platform.python_version()}, torch {torch.__version__}",
                    "load_average_start": os.getloadavg(), "settings": vars(args)}

    # 1. the library, in this process
    t0 = time.perf_counter()
    local = batch.Worker("toy", "cpu", None, threads=1)
    result["direct_model_load_s"] = time.perf_counter() - t0
    walls, inside = run_jobs(lambda j: (local.invert if isinstance(j, batch.InvertJob)
                                        else local.animate)(j), plan_jobs(plan, root / "direct"))
    result["direct_jobs_s"] = sum(walls)
    result["direct_total_s"] = time.perf_counter() - t0
    del local

    t0 = time.perf_counter()
    with batch.ray_session(num_cpus=args.cpus):
        import ray

        result["ray_init_s"] = time.perf_counter() - t0

        # 2. the same jobs through one actor, one at a time
        t0 = time.perf_counter()
        actor = ray.remote(num_cpus=1)(batch.Worker).remote("toy", "cpu", None, 1)
        ray.get(actor.describe.remote())
        result["actor_start_s"] = time.perf_counter() - t0
        walls, inside = run_jobs(
            lambda j: ray.get((actor.invert if isinstance(j, batch.InvertJob) else actor.animate).remote(j)),
            plan_jobs(plan, root / "actor"))
        overheads = [w - i for w, i in zip(walls, inside)]
        result["ray_jobs_s"] = sum(walls)
        result["overhead_per_job_s"] = {"median": statistics.median(overheads),
                                        "max": max(overheads), "jobs": len(overheads)}
        ray.kill(actor)

        # 3, 4. the whole plan through run_batch
        for workers in (1, 2):
            t0 = time.perf_counter()
            summary = batch.run_batch(plan, root / f"workers{workers}", max_parallel=workers,
                                      progress=False)
            assert summary.failed == 0 and summary.count("done") == 15, summary.line()
            result[f"batch_{workers}_workers_s"] = time.perf_counter() - t0
            result[f"batch_{workers}_workers_device"] = summary.records[0]["device"]
    result["speedup_2_over_1"] = result["batch_1_workers_s"] / result["batch_2_workers_s"]
    result["load_average_end"] = os.getloadavg()
    (root / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
