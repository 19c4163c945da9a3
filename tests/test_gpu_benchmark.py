"""benchmarks/gpu_unet.py must not crash on the GPU machine from a Python error: run its whole
path on the CPU with a tiny UNet of the same classes (one timed step per row)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_unet.py"


def test_gpu_benchmark_runs_end_to_end_on_a_tiny_unet(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_unet", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.json"
    assert module.main(["--tiny", "--device", "cpu", "--out", str(out), "--warmup", "0",
                        "--steps", "1", "--shapes", "2x32x32"]) == 0
    result = json.loads(out.read_text())
    rows = {(r["workload"], r["routing"]) for r in result["rows"]}
    assert rows == {("inversion", "lean"), ("inversion", "old"), ("generation", "lean"),
                    ("generation", "old"), ("generation", "stock")}
    assert all(r["status"] == "ok" and r["seconds_per_step"] > 0 and r["model_tflop"] > 0
               for r in result["rows"])
    flops = result["flops"]["2x32x32"]
    assert flops["inversion_hardware"] > flops["inversion_model"] > 0  # recompute counted
    assert "| inversion" in capsys.readouterr().out
