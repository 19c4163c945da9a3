"""benchmarks/toy_compare.py pairs two benchmark runs video by video: its gap per motion class
is the mean of the paired differences, and it states the largest gap the cosine allows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "toy_compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("toy_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(path: Path, config: str, cosines: dict[tuple[int, str, int], float]) -> Path:
    records = [{"ref": ref, "motion": motion, "target": t, "config": config, "draw_seed": 0,
                "trajectory_cosine": c} for (ref, motion, t), c in cosines.items()]
    path.write_text(json.dumps({"settings": {"seed": 0}, "records": records}))
    return path


def test_the_gap_is_paired_and_bounded_by_the_metric(tmp_path, capsys):
    compare = _load()
    a = _run(tmp_path / "a.json", "e", {(0, "zoom", 0): 0.9, (0, "zoom", 1): 1.0, (1, "turn", 0): 0.2,
                                        (2, "turn", 0): 0.5})
    b = _run(tmp_path / "b.json", "c", {(0, "zoom", 0): 0.98, (0, "zoom", 1): 0.98, (1, "turn", 0): 0.6,
                                        (3, "turn", 0): 0.0})  # ref 2 / 3 only on one side
    rows = {r["class"]: r for r in compare.compare(compare._videos(a, "e"), compare._videos(b, "c"))}
    assert rows["zoom"]["videos"] == 2 and abs(rows["zoom"]["gap"] - (-0.03)) < 1e-9
    assert abs(rows["zoom"]["largest_possible_gap"] - 0.02) < 1e-9  # cosine <= 1
    assert rows["turn"]["videos"] == 1 and abs(rows["turn"]["gap"] - (-0.4)) < 1e-9
    assert rows["turn"]["b_wins"] == 1 and rows["turn"]["a_wins"] == 0
    assert rows["all"]["videos"] == 3
    assert compare.main([str(a), str(b)]) == 0
    assert "| zoom | 2 (1) |" in capsys.readouterr().out


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert _load().main([str(tmp_path / "nope.json"), str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.json" in err
