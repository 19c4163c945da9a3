"""A wide screen of inversion settings on ALL benchmark references, in parallel processes (world-v2 toy).

Why: a full `reenact bench toy` run of one setting takes ~50 min on the project's 2 CPU cores, and
`benchmarks/toy_variants.py` screens settings on a handful of references, where the inversion's
own seed moves single references by up to 0.5 (docs/RESULTS.md). This script runs each variant on
every reference of the benchmark plan (same references, targets, seeds and 25 Euler steps as
`reenact bench toy`, config e unless the variant says otherwise), many processes at once, so a
lent GPU can screen a dozen settings in minutes. It is a screen: a setting becomes a default only
after the real benchmark on 2 CPU cores (its figures can differ from a GPU's by rounding).

Each variant is ``NAME=JSON``: InversionConfig changes on top of the ``toy-v2`` profile, plus
optional keys ``config`` (a bench config letter, default ``e``), ``model`` (a model folder,
default ``toy-v2``) and ``seed_offset`` (added to the benchmark seed: re-draws inversion and
generation noise, to measure the benchmark's own noise). Tasks run reference-major, so a run cut
short leaves every variant with the same references. One JSON line per (variant, reference).

The references (27 by default) are made once with ``--make-cache FILE`` (the user-file ones are
written as H.264 mp4 and read back, which needs PyAV) and loaded with ``--cache FILE`` where PyAV
is missing:

    python benchmarks/toy_sweep.py --make-cache refs.pt
    python benchmarks/toy_sweep.py OUT.jsonl --cache refs.pt --device cuda --workers 10 \\
        --variants 'base={}' 'lsm3={"log_sigma_mean": 3.0}' 'shared={"config": "c"}'
    python benchmarks/toy_sweep.py OUT.jsonl --summarise      # the table, paired on common references
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

EXTRA_KEYS = ("config", "model", "seed_offset")


def parse_variants(items: list[str]) -> list[tuple[str, dict]]:
    out = []
    for item in items:
        name, _, text = item.partition("=")
        if not name or not text:
            raise SystemExit(f"--variants: '{item}' is not NAME=JSON")
        out.append((name, json.loads(text)))
    return out


def make_cache(path: Path, count: int, targets: int) -> None:
    import torch

    from reenact import models
    from reenact.toy import bench
    geometry = models.native_geometry(models.load_pipeline("toy-v2", "cpu", torch.float32))  # as bench does
    refs = bench.pick_references(count, *geometry)
    tgts = [bench.pick_targets(r, targets, *geometry) for r in refs]
    # scoring needs a reference's inverted frames and its clip's ground truth, and a target's
    # first frame (the still): the rest is dropped (and cloned: torch.save writes whole storages)
    for r in refs:
        r.video, r.clip.video, r.clip.masks = r.video.clone(), r.clip.video[:1].clone(), r.clip.masks[:1].clone()
    for ts in tgts:
        for t in ts:
            t.video, t.masks = t.video[:1].clone(), t.masks[:1].clone()
    torch.save({"refs": refs, "targets": tgts}, path)
    print(f"{path}: {len(refs)} references x {targets} targets")


_LOADED: dict = {}  # per worker process: the reference cache and each model's pipeline, loaded once


def _run_task(task: tuple) -> dict:
    """One (variant, reference): invert (unless a or o), animate the targets, score them."""
    name, variant, index, cache, device = task
    import torch

    from reenact import models, profiles
    from reenact.toy import bench
    torch.set_num_threads(1)
    if cache not in _LOADED:
        _LOADED[cache] = torch.load(cache, weights_only=False)
    data = _LOADED[cache]
    ref, tgts = data["refs"][index], data["targets"][index]
    model = variant.get("model", "toy-v2")
    if model not in _LOADED:
        _LOADED[model] = models.load_pipeline(model, device, torch.float32)
    pipe = _LOADED[model]
    changes = {k: v for k, v in variant.items() if k not in EXTRA_KEYS}
    key = variant.get("config", "e")
    base = profiles.TOY_V2.config(**changes)
    settings = bench.BenchSettings(configs=[key], inversion=base, gen_steps=25,
                                   seed=variant.get("seed_offset", 0), model=model,
                                   keep_videos_for=0, reconstruct=False)
    t0 = time.perf_counter()
    run = bench.run_benchmark(pipe, [ref], [tgts], settings)
    inv = run.inversions[0] if run.inversions else {}
    return {"variant": name, "spec": variant, "ref": ref.index, "motion": ref.motion,
            "slices": ref.slices(), "cos": [round(r["trajectory_cosine"], 4) for r in run.records],
            "dir": [bool(r["direction_ok"]) for r in run.records],
            "no_leak": [bool(r["no_leak"]) for r in run.records],
            "psnr": [round(min(r["first_frame_psnr"], 100.0), 2) for r in run.records],
            "inv_s": inv.get("seconds"), "loss": inv.get("final_loss"), "task_s": time.perf_counter() - t0,
            "device": device}


def sweep(out: Path, variants: list[tuple[str, dict]], cache: Path, device: str, workers: int,
          budget_s: float, refs: list[int] | None) -> None:
    import torch

    count = len(torch.load(cache, weights_only=False)["refs"])
    indices = refs if refs is not None else list(range(count))
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["ref"]))
    tasks = [(name, spec, i, str(cache), device) for i in indices for name, spec in variants
             if (name, i) not in done]
    t0 = time.perf_counter()
    print(f"{len(tasks)} tasks ({len(done)} done before), {workers} workers, budget {budget_s:.0f} s", flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool, open(out, "a") as f:
        pending = [pool.apply_async(_run_task, (t,)) for t in tasks]
        for n, res in enumerate(pending):
            left = budget_s - (time.perf_counter() - t0)
            try:
                row = res.get(timeout=max(left, 1.0))
            except mp.TimeoutError:
                print(f"budget spent after {n} of {len(tasks)} tasks; stopping", flush=True)
                pool.terminate()
                break
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"[{time.perf_counter() - t0:6.1f} s] {row['variant']:>16} ref {row['ref']:2d} "
                  f"{row['motion']:>14}: {np.mean(row['cos']):+.2f} (inv {row['inv_s'] or 0:.1f} s, "
                  f"task {row['task_s']:.1f} s)", flush=True)


def summarise(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_variant: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], {})[r["ref"]] = r
    common = set.intersection(*(set(v) for v in by_variant.values()))
    print(f"{len(common)} references common to all {len(by_variant)} variants; per variant on those:")
    print("| variant | cosine | direction | no leak | worst motion | worst slice | refs < 0.5 | inv s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, per_ref in by_variant.items():
        sel = [per_ref[i] for i in sorted(common)]
        cos = np.concatenate([r["cos"] for r in sel])
        dirs = np.concatenate([r["dir"] for r in sel])
        leak = np.concatenate([r["no_leak"] for r in sel])
        slices: dict[str, list[float]] = {}
        for r in sel:
            for s in r["slices"]:
                slices.setdefault(s, []).extend(r["cos"])
        motions = {s: np.mean(v) for s, v in slices.items() if s.startswith("motion:")}
        worst_m = min(motions, key=motions.get)
        worst = min(slices, key=lambda s: np.mean(slices[s]))
        low = sum(np.mean(r["cos"]) < 0.5 for r in sel)
        secs = [r["inv_s"] for r in sel if r["inv_s"]]
        print(f"| {name} | {cos.mean():.3f} | {dirs.mean():.1%} | {leak.mean():.1%} | "
              f"{worst_m[8:]} {motions[worst_m]:.2f} | {worst} {np.mean(slices[worst]):.2f} | {low} | "
              f"{np.mean(secs) if secs else 0:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, nargs="?", help="JSON lines file (appended to; done tasks are skipped)")
    p.add_argument("--variants", nargs="+", default=[], help="NAME=JSON (see module docs)")
    p.add_argument("--variants-file", type=Path, help="more NAME=JSON, one per line")
    p.add_argument("--cache", type=Path, help="references made by --make-cache")
    p.add_argument("--make-cache", type=Path, help="make the references and their targets, save, exit")
    p.add_argument("--count", type=int, default=27, help="references (the benchmark's 27)")
    p.add_argument("--refs", help="comma-separated plan indices (default: all in the cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--budget", type=float, default=1e9, help="seconds, then stop (finished rows are kept)")
    p.add_argument("--summarise", action="store_true")
    args = p.parse_args()
    if args.make_cache:
        make_cache(args.make_cache, args.count, 3)
        return
    if args.out is None:
        p.error("OUT is required")
    if args.summarise:
        summarise(args.out)
        return
    if args.cache is None:
        p.error("--cache is required (make it with --make-cache)")
    refs = [int(x) for x in args.refs.split(",")] if args.refs else None
    items = args.variants + (args.variants_file.read_text().split("\n") if args.variants_file else [])
    sweep(args.out, parse_variants([i for i in items if i.strip()]), args.cache, args.device, args.workers, args.budget, refs)


if __name__ == "__main__":
    sys.exit(main())
