"""Paired comparison of two configurations of `reenact bench toy`, per motion class.

Why: the per-class gaps between two inversion settings on the toy benchmark are often a few
hundredths, the size of one reference flipping between basins at one draw. A gap says something
only next to its uncertainty, so this script pairs the two runs video by video (same reference,
target and draw seed), and gives for each motion class the mean of each, the gap, a bootstrap
interval of the gap that resamples *references* (a reference's targets and draws move together,
they share its embedding's basin), how many references each side wins, and the largest gap the
metric allows at all (``1 - B``: the trajectory cosine is at most 1).

    python benchmarks/toy_compare.py A/results.json B/results.json [--config-a e] [--config-b c]

Each file is a `results.json` of `reenact bench toy` (a run, a `--merge` or a `--merge --pool`).
Only videos present in both are compared; the script says how many.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _videos(path: Path, config: str) -> dict[tuple, dict]:
    try:
        doc = json.loads(path.read_text())
        rows = [r for r in doc["records"] if r["config"] == config]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a `reenact bench toy` results.json ({type(e).__name__}: {e})") from None
    if not rows:
        raise SystemExit(f"{path}: no records of config {config!r} (it has "
                         f"{sorted({r['config'] for r in doc['records']})}); pass --config-a/--config-b")
    return {(r["ref"], r["target"], r.get("draw_seed", doc.get("settings", {}).get("seed", 0))): r for r in rows}


def compare(a: dict[tuple, dict], b: dict[tuple, dict], draws: int = 10000, seed: int = 0) -> list[dict]:
    """One row per motion class (and one for all): means, gap, bootstrap interval, wins."""
    keys = sorted(set(a) & set(b))
    groups: dict[str, list[tuple]] = defaultdict(list)
    for k in keys:
        groups[a[k]["motion"]].append(k)
    groups["all"] = keys
    rng = np.random.default_rng(seed)
    rows = []
    for name, ks in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        by_ref: dict[int, list[float]] = defaultdict(list)
        for k in ks:
            by_ref[k[0]].append(a[k]["trajectory_cosine"] - b[k]["trajectory_cosine"])
        refs = sorted(by_ref)
        sums = np.array([sum(by_ref[r]) for r in refs])
        counts = np.array([len(by_ref[r]) for r in refs])
        pick = rng.integers(0, len(refs), size=(draws, len(refs)))
        boot = sums[pick].sum(1) / counts[pick].sum(1)
        mean_a = float(np.mean([a[k]["trajectory_cosine"] for k in ks]))
        mean_b = float(np.mean([b[k]["trajectory_cosine"] for k in ks]))
        per_ref = sums / counts
        rows.append({"class": name, "videos": len(ks), "references": len(refs), "a": mean_a, "b": mean_b,
                     "gap": mean_a - mean_b, "low": float(np.quantile(boot, 0.05)),
                     "high": float(np.quantile(boot, 0.95)),
                     "a_wins": int((per_ref > 0.01).sum()), "b_wins": int((per_ref < -0.01).sum()),
                     "largest_possible_gap": 1.0 - mean_b})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--config-a", default="e")
    p.add_argument("--config-b", default="c")
    args = p.parse_args(argv)
    for f in (args.a, args.b):
        if not f.is_file():
            print(f"{f}: no such file; pass the results.json of a `reenact bench toy` run", file=sys.stderr)
            return 2
    a, b = _videos(args.a, args.config_a), _videos(args.b, args.config_b)
    rows = compare(a, b)
    print(f"A = {args.config_a} ({args.a}), B = {args.config_b} ({args.b}); {rows[-1]['videos']} videos in "
          f"both ({len(a)} in A, {len(b)} in B)\n")
    print("| motion class | videos (refs) | A | B | A - B | 90 % interval (refs resampled) | refs A / B better by > 0.01 | largest possible A - B |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['class']} | {r['videos']} ({r['references']}) | {r['a']:.3f} | {r['b']:.3f} | {r['gap']:+.3f} | "
              f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['a_wins']} / {r['b_wins']} | {r['largest_possible_gap']:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
