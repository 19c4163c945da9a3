"""``reenact batch``: a plan of motions x targets on Ray, nothing lost and nothing redone.

One local Ray instance serves the whole module (its start-up is the slow part); the plan is
3 motions x 4 targets on the bundled toy model with one unreadable video and one unreadable
image, at a few inversion and denoising steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from reenact import batch, cli, models, video
from reenact.embedding import MotionEmbedding
from reenact.toy import world

ROOT = Path(__file__).resolve().parents[1]
GOOD_MOTIONS = ("walk", "turn")
GOOD_TARGETS = ("t0", "t1", "t2")
PLAN = """
defaults:
  model: toy
  seed: 0
  invert: {{steps: {steps}, checkpoint_every: {every}}}
  animate: {{steps: 2, format: {fmt}, batch_size: 2}}
motions:
  - video: clips/walk.gif
  - video: clips/turn.mp4
  - video: clips/broken.mp4
targets:
  - images/
"""


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs, as CI) for the module; run_batch reuses it."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # CrashOnce, in the workers
    with batch.ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two toy reference clips and a file that is not a video; three targets and a bad png."""
    root = tmp_path_factory.mktemp("batch_inputs")
    frames, height, width = models.native_geometry("toy")
    (root / "clips").mkdir()
    (root / "images").mkdir()
    lo = world.SEED_RANGES["demo"][0]
    for i, (name, suffix, motion) in enumerate([("walk", ".gif", "line"), ("turn", ".mp4", "turn")]):
        clip = world.make_clip(lo + i, num_frames=frames, height=height, width=width, motion=motion)
        video.write_video(clip.video, root / "clips" / f"{name}{suffix}", fps=4)
    (root / "clips" / "broken.mp4").write_bytes(b"this is not an mp4 " * 20)
    for i, name in enumerate(GOOD_TARGETS):
        target = world.make_target(lo + 100 + i, height=height, width=width)
        video.tensor_to_images(target.video[:1])[0].save(root / "images" / f"{name}.png")
    (root / "images" / "zbad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    (root / "plan.yaml").write_text(PLAN.format(steps=4, every=2, fmt="mp4"))
    return root


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]


def _by_status(summary: batch.BatchSummary, job: str, status: str) -> set:
    return {(r["motion"], r["target"]) for r in summary.records
            if r["job"] == job and r["status"] == status}


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name
            or p.name.endswith(".ckpt")]


def _mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "motions").glob("*.safetensors")} | {
        p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_run(ray_local, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_out") / "out"
    summary = batch.run_batch(inputs / "plan.yaml", out, progress=False)
    return out, summary


def test_good_cells_exist_and_decode_bad_ones_are_reported_nothing_partial(first_run):
    out, summary = first_run
    frames, height, width = models.native_geometry("toy")
    good = {(m, t) for m in GOOD_MOTIONS for t in GOOD_TARGETS}
    assert _by_status(summary, "invert", "done") == {(m, None) for m in GOOD_MOTIONS}
    assert _by_status(summary, "animate", "done") == good
    for m, t in good:
        for suffix in (".gif", ".mp4"):
            clip = video.read_frames(out / "results" / m / f"{t}{suffix}")
            assert len(clip) >= 2 and clip[0].size == (width, height)
        emb = MotionEmbedding.load(out / "motions" / f"{m}.safetensors")
        assert emb.num_frames == frames and emb.metadata["batch_key"]["model"] == "toy"

    failed = {(r["motion"], r["target"]): r["error"] for r in summary.records if r["status"] == "failed"}
    bad_cells = {("broken", None)} | {("broken", t) for t in (*GOOD_TARGETS, "zbad")} | {
        (m, "zbad") for m in GOOD_MOTIONS}
    assert set(failed) == bad_cells
    assert all("broken.mp4" in failed[("broken", t)] for t in (None, *GOOD_TARGETS, "zbad"))
    assert all("zbad.png" in failed[(m, "zbad")] and "not a readable image" in failed[(m, "zbad")]
               for m in GOOD_MOTIONS)
    assert not (out / "motions" / "broken.safetensors").exists()
    assert not (out / "results" / "broken").exists()
    assert not list((out / "results").rglob("zbad*"))
    assert _temporaries(out) == []

    report = _records(out)  # one line per job: 3 inversions + 12 cells
    assert len(report) == 15 and report == summary.records
    assert all(r["device"] and r["seconds"] > 0 for r in report if r["status"] == "done")
    sheet = (out / "index.html").read_text()
    for m, t in good:
        assert f'src="results/{m}/{t}.gif"' in sheet
    assert "not a readable image" in sheet and sheet.count("<tr>") == 1 + 3


def test_rerun_does_no_inversion_again_and_touches_no_valid_result(first_run):
    out, _ = first_run
    before = _mtimes(out)
    summary = batch.run_batch(first_run_plan(out), out, progress=False)
    assert summary.count("done", "invert") == 0  # the broken clip is tried again, and fails
    assert _by_status(summary, "invert", "skipped") == {(m, None) for m in GOOD_MOTIONS}
    assert summary.count("done", "animate") == 0
    assert summary.count("skipped", "animate") == len(GOOD_MOTIONS) * len(GOOD_TARGETS)
    assert _mtimes(out) == before


def first_run_plan(out: Path) -> Path:
    """The plan of ``first_run`` (its report records the inputs' absolute paths)."""
    video_path = Path(next(r for r in _records(out) if r["motion"] == "walk")["inputs"]["video"])
    return video_path.parents[1] / "plan.yaml"


class CrashOnce(batch.Worker):
    """Dies (the whole process, as an OOM kill would) on its first generation if ``marker`` is
    missing; Ray restarts it and retries the job."""

    marker: Path

    def animate(self, job):
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return super().animate(job)


def test_deleting_or_corrupting_one_result_regenerates_only_that_one_despite_a_dying_worker(
        first_run, tmp_path):
    out, _ = first_run
    deleted = out / "results" / "turn" / "t2.gif"
    deleted.unlink()
    corrupt = out / "results" / "walk" / "t1.mp4"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    before = _mtimes(out)
    worker = type("CrashOnceHere", (CrashOnce,), {"marker": tmp_path / "crashed"})
    summary = batch.run_batch(first_run_plan(out), out, progress=False, worker_cls=worker)
    assert worker.marker.exists()  # a worker did die, and its job was retried
    assert _by_status(summary, "animate", "done") == {("turn", "t2"), ("walk", "t1")}
    assert summary.count("done", "invert") == 0
    assert video.read_frames(deleted) and video.read_frames(corrupt)
    after = _mtimes(out)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {out / "results" / m / f"{t}{s}" for m, t in (("turn", "t2"), ("walk", "t1"))
                       for s in (".gif", ".mp4", ".json")}


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the batch and every process of its session (its local Ray: raylet, workers)."""
    sid = proc.pid  # start_new_session: the driver leads its own session
    proc.kill()
    proc.wait()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # session id
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except OSError:
                pass


def test_a_killed_batch_resumes_its_inversion_and_completes(ray_local, inputs, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "defaults": {"model": "toy", "invert": {"steps": 20, "checkpoint_every": 2},
                     "animate": {"steps": 2, "format": "gif"}},
        "motions": [str(inputs / "clips" / "walk.gif")],
        "targets": [str(inputs / "images" / "t0.png")],
    }))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "reenact.cli", "batch", str(plan), "-o", str(out),
                             "--no-progress"],
                            env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / "motions" / ".work"
    try:
        deadline = time.monotonic() + 240
        while not list(work.glob("*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _kill_session(proc)
    assert list(work.glob("*.ckpt")), "the batch was not killed mid-inversion (no checkpoint)"

    summary = batch.run_batch(plan, out, progress=False)
    (inverted,) = [r for r in summary.records if r["job"] == "invert"]
    assert inverted["status"] == "done" and inverted["resumed_from"] >= 2
    assert inverted["steps"] == 20
    assert _by_status(summary, "animate", "done") == {("walk", "t0")}
    assert video.read_frames(out / "results" / "walk" / "t0.gif")
    assert _temporaries(out) == []


# --- the plan ----------------------------------------------------------------------------------

def test_every_plan_problem_is_reported_with_its_entry_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "plan.yaml").write_text("""
defaults:
  model: toy
  seeed: 1
  invert: {steps: 0, lrr: 0.1}
  animate: {format: webm}
motions:
  - video: a.mp4
    targets: [nobody]
  - video: b.mp4
    name: a
  - {video: c.mp4, embedding: c.safetensors}
  - video: d.mp4
    start: -1
targets:
  - a.png
  - "*.jpg"
""")
    out = tmp_path / "out"
    assert cli.main(["batch", str(tmp_path / "plan.yaml"), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = ["defaults.seeed", "defaults.invert.steps", "defaults.invert.lrr",
                "defaults.animate.format", "motions[0].targets", "motions[1].name", "motions[2]",
                "motions[3].start", "targets[1]"]
    assert len(lines) == len(expected)
    for line, where in zip(sorted(lines), sorted(expected)):
        assert line.startswith(f"reenact: error: {tmp_path / 'plan.yaml'}: {where}: "), line
    assert not out.exists()


def test_a_plan_that_is_not_yaml_or_names_a_missing_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "plan.yaml"
    bad.write_text("motions: [a.mp4\ntargets: {")
    assert cli.main(["batch", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text("defaults: {model: ./no/such/model}\nmotions: [a.mp4]\ntargets: [x.png]\n")
    assert cli.main(["batch", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defaults.model" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "out").exists()


def test_pairs_default_to_all_and_follow_target_patterns(tmp_path):
    for name in ("dog", "cat1", "cat2"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "plan.json").write_text(json.dumps({
        "defaults": {"model": "toy"},
        "motions": ["a.mp4", {"video": "b.mp4", "targets": ["cat*"]}, "c.safetensors"],
        "targets": [str(tmp_path)],
    }))
    plan = batch.load_plan(tmp_path / "plan.json")
    assert [(m.name, t.name) for m, t in plan.pairs()] == [
        ("a", "cat1"), ("a", "cat2"), ("a", "dog"), ("b", "cat1"), ("b", "cat2"),
        ("c", "cat1"), ("c", "cat2"), ("c", "dog")]
    assert plan.motions[2].embedding == tmp_path / "c.safetensors"


def test_the_readme_example_plan_is_a_valid_plan(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Batch"):]
    example = section[section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)]
    (tmp_path / "plan.yaml").write_text(example)
    for name in ("images/dog.png", "images/portrait_1.jpg", "images/portrait_2.jpg", "more_images/cat.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    plan = batch.load_plan(tmp_path / "plan.yaml", check_model=False)  # no SVD weights here
    assert [m.name for m in plan.motions] == ["horse", "talk", "jump"]
    assert plan.motions[1].invert.steps == 600 and plan.motions[0].invert.steps == 300
    assert plan.motions[0].invert.gradient_checkpointing and plan.motions[1].end == 70
    assert [t.name for m, t in plan.pairs() if m.name == "talk"] == ["dog", "portrait_1", "portrait_2"]
    assert len(plan.pairs()) == 4 + 3 + 4


def test_a_checkpoint_that_cannot_be_resumed_is_discarded_not_fatal(inputs, tmp_path):
    """A worker, used directly (no Ray): garbage where the checkpoint should be starts over."""
    plan = batch.load_plan(inputs / "plan.yaml")
    motion = plan.motions[0]
    out = tmp_path / "out"
    output = out / "motions" / f"{motion.name}.safetensors"
    work = out / "motions" / ".work" / output.name
    work.parent.mkdir(parents=True)
    work.with_name(work.name + ".ckpt").write_bytes(b"not a checkpoint")
    worker = batch.Worker("toy", "cpu", None, threads=1)
    key = batch._inversion_key(plan, motion)
    (record,) = worker.invert(batch.InvertJob(motion, output, work, key))
    assert record["status"] == "done" and record["resumed_from"] == 0
    assert batch._embedding_valid(output, key)
    assert not list(work.parent.iterdir())  # checkpoint and work file gone
