"""The toy world, its model, benchmark and demo, as a specification.

The world has exact ground truth (clips are a pure function of their seed, the tracker recovers
the motion, every motion has the extent asked for, training and evaluation seeds never meet); the
training script makes a loadable SVD folder with a model card and its motion code, and resumes;
the constructed VAE is a near-identity; the benchmark's metrics score a perfect transfer as perfect
and a leak as a leak; the benchmark and the demo run end to end; and on the bundled model the demo's
learned motion beats the stock model's.

Everything runs on one thread on a model trained for 3 steps (a module fixture, ~20 s), except the
last test, which needs the bundled model (``src/reenact/toy/model``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from reenact import models
from reenact.embedding import MotionEmbedding
from reenact.toy import bench, demo, metrics, train, world

SIDE = 16


# --- the world -----------------------------------------------------------------------------

def test_a_clip_is_a_pure_function_of_its_seed():
    a, b, c = world.make_clip(123), world.make_clip(123), world.make_clip(124)
    assert torch.equal(a.video, b.video) and np.array_equal(a.centers, b.centers)
    assert (a.shape, a.motion, a.size) == (b.shape, b.motion, b.size)
    assert not torch.equal(a.video, c.video)
    assert a.video.shape == (8, 3, SIDE, SIDE) and a.video.min() >= -1 and a.video.max() <= 1
    assert np.array_equal(a.displacements, (a.centers - a.centers[:1]) / SIDE)


def test_track_is_exact_on_the_rendered_coverage():
    """The tracker returns the coverage-weighted centroid of the object, to float precision."""
    for seed in range(20):
        clip = world.make_clip(1000 + seed)
        centres, coverage = world.track(clip.video, clip.object_color, clip.background_color)
        m = clip.masks.double()
        pos = torch.arange(SIDE, dtype=torch.float64) + 0.5
        cx = (m.sum(1) * pos).sum(1) / m.sum((1, 2))
        cy = (m.sum(2) * pos).sum(1) / m.sum((1, 2))
        assert np.abs(centres - torch.stack([cx, cy], 1).numpy()).max() < 1e-3
        assert np.allclose(coverage, m.sum((1, 2)).numpy(), rtol=1e-3)


def test_track_recovers_the_true_displacements():
    """Against the geometric path the error is the renderer's 4x supersampling: an edge snaps to a
    quarter pixel, so a centroid can be off by up to ~0.25 px (mean ~0.1 px, < 2% of the frame)."""
    errors = []
    for seed in range(40):
        for shape in world.SHAPES:
            clip = world.make_clip(2000 + seed, shape=shape)
            centres, _ = world.track(clip.video, clip.object_color, clip.background_color)
            true = clip.centers - clip.centers[:1]
            errors.append(np.abs((centres - centres[:1]) - true).max())
    assert max(errors) < 0.3 and np.mean(errors) < 0.15, (max(errors), np.mean(errors))


@pytest.mark.parametrize("motion", world.MOTIONS)
def test_every_motion_has_the_extent_asked_for(motion):
    extent = 0.3 * SIDE
    for seed in range(20):
        clip = world.make_clip(3000 + seed, motion=motion, extent_range=(0.3, 0.3), size_range=(0.25, 0.25))
        path = clip.centers - clip.centers[:1]
        reach = np.linalg.norm(path, axis=1)
        if motion in ("line", "turn", "arc"):  # the end point is `extent` away
            assert reach[-1] == pytest.approx(extent, rel=1e-6)
        elif motion == "back-and-forth":  # out and back; 8 frames reach 6/7 of the turning point
            assert reach.max() == pytest.approx(extent * 6 / 7, rel=1e-6)
            assert reach[-1] == pytest.approx(0, abs=1e-6)
        else:  # zigzag: three legs of extent/2 with a 90-144 degree turn between them
            assert 0.6 * extent < reach.max() < 1.15 * extent
        steps = np.diff(path, axis=0)
        if motion == "line":  # straight: every step in the same direction
            unit = steps / np.linalg.norm(steps, axis=1, keepdims=True)
            assert np.allclose(unit, unit[0])
        if motion == "turn":  # two legs at a right angle
            assert abs(steps[0] @ steps[-1]) < 1e-6
        assert clip.video.std() > 0


def test_a_target_is_kept_only_if_the_transferred_motion_keeps_its_object_in_the_picture():
    """The world's own margin decides: every clip it renders passes with its own motion; an
    object at the bottom edge moving down does not, the same object in the middle does."""
    for seed in range(40):
        c = world.make_scene_clip(seed)
        assert world.stays_in_frame(c.centers[0], c.size, c.object_path, c.camera_shift, c.camera_scale, 32, 32)
    down = np.stack([np.zeros(8), np.linspace(0, 6, 8)], 1)  # 6 px down over 8 frames
    still, one = np.zeros((8, 2)), np.ones(8)
    assert not world.stays_in_frame(np.array([16.0, 28.0]), 4.0, down, still, one, 32, 32)
    assert world.stays_in_frame(np.array([16.0, 16.0]), 4.0, down, still, one, 32, 32)
    assert not world.stays_in_frame(np.array([16.0, 28.0]), 4.0, still, down, one, 32, 32)  # a pan
    zoom_in = np.exp(np.linspace(0, np.log(1.8), 8))
    assert not world.stays_in_frame(np.array([4.0, 4.0]), 4.0, still, still, zoom_in, 32, 32)
    assert world.stays_in_frame(np.array([16.0, 16.0]), 4.0, still, still, zoom_in, 32, 32)


def test_seed_ranges_are_disjoint_and_evaluation_stays_inside(tmp_path):
    ranges = sorted(world.SEED_RANGES.values())
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:]))
    lo, hi = world.SEED_RANGES["bench"]
    refs = bench.pick_references(10, work_dir=tmp_path)
    assert {r.motion for r in refs} == set(world.MOTIONS_V2)
    for ref in refs:
        assert lo <= ref.seed < hi and ref.video.shape == (8, 3, 32, 32)
        for t in bench.pick_targets(ref, 3):
            assert lo <= t.meta["seed"] < hi
            assert bench.keeps_object_in_picture(ref, t, 32, 32)
            assert metrics.color_distance(t.object_color, ref.clip.object_color) >= metrics.MIN_COLOR_DISTANCE
            assert t.background == ref.clip.background
    ref, targets = demo.pick_demo_clips(0)
    lo, hi = world.SEED_RANGES["demo"]
    assert ref.motion in demo.DEMO_MOTIONS
    assert all(lo <= c.meta["seed"] < hi for c in [ref.clip, *targets])
    assert len({t.shape for t in [ref.clip, *targets]}) == 4
    assert [t.background for t in targets] == [b for b, _ in demo.DEMO_TARGETS]
    small = bench.SIZE_CLASSES["small"]
    assert small[0] * 32 <= targets[1].size <= small[1] * 32


def test_the_plan_covers_every_slice_and_user_files_are_read_as_users_files_are(tmp_path):
    refs = bench.pick_references(27, work_dir=tmp_path)
    for motion in world.MOTIONS_V2:  # every motion at every size
        assert {r.size_class for r in refs if r.motion == motion} == set(bench.SIZE_CLASSES)
    for motion in world.OBJECT_MOTIONS_V2:  # and every object motion on every background
        assert {r.clip.background for r in refs if r.motion == motion} == set(world.BACKGROUNDS)
    extreme = [r for r in refs if r.extreme_color]
    assert extreme and all(np.abs(r.clip.object_color).min() >= bench.EXTREME_COLOR for r in extreme)
    users = [r for r in refs if r.source.startswith("mp4")]
    assert len(users) == 13 and sorted(p.suffix for p in tmp_path.iterdir()) == [".mp4"] * 13
    for r in users:
        frames = r.clip.video.shape[0]
        assert 16 <= frames <= 24 and r.clip.video.shape[-1] == bench.USER_SIZE
        assert r.video.shape == (8, 3, 32, 32)
        # the truth is taken at the frames the reader chose: it matches what the reading shows
        measured = metrics.measured_motion(r.video, r.kind, r.clip.object_color)
        assert metrics.motion_metrics(r.truth, measured)["trajectory_cosine"] > 0.95, r.motion


# --- the benchmark's metrics -------------------------------------------------------------------

def _recoloured(clip: world.SceneClip, colour: np.ndarray) -> world.SceneClip:
    """The same clip with another object colour (exact: a frame is bg * (1 - m) + colour * m)."""
    shift = torch.as_tensor(colour - clip.object_color, dtype=torch.float32)[None, :, None, None]
    return dataclasses.replace(clip, video=clip.video + shift * clip.masks[:, None], object_color=colour)


@pytest.mark.parametrize("motion", ["turn", "pan", "zoom"])
def test_a_perfect_transfer_scores_perfectly_and_a_leak_is_caught(motion):
    clip = world.make_scene_clip(world.SEED_RANGES["bench"][0] + 3, motion=motion, background="texture")
    ref = bench.Reference(0, clip, clip.video, metrics.true_motion(clip), "medium", False, "rendered")
    background = clip.video.permute(1, 0, 2, 3)[:, clip.masks < 1e-3]  # (3, N) pure background pixels
    corners = [np.array(c) * 0.95 for c in itertools.product((-1, 1), repeat=3)]
    far = next(c for c in corners  # a colour the benchmark could have drawn as a target's
               if metrics.color_distance(c, clip.object_color) >= 1.0
               and float(torch.linalg.norm(background - torch.as_tensor(c, dtype=torch.float32)[:, None], dim=0).min())
               >= world.MIN_CONTRAST)
    moved = _recoloured(clip, far)
    image = moved.video[0]
    perfect = metrics.score_video(moved.video, ref, moved, image)
    assert perfect["trajectory_cosine"] > 0.99 and perfect["direction_ok"]
    assert perfect["magnitude_ratio"] == pytest.approx(1, abs=0.05)
    assert perfect["first_frame_psnr"] == math.inf and perfect["no_leak"]

    leaked = metrics.score_video(clip.video, ref, moved, image)  # the reference's colour came along
    assert not leaked["no_leak"] and leaked["leak_frames"] == 8
    assert leaked["colour_leak_frames"] == 8 and leaked["lost_frames"] == 0

    # the object painted over with a background colour in the last three frames: it is lost,
    # which fails the check too but is no colour leak
    vanished = moved.video.clone()
    m = moved.masks[5:, None]
    vanished[5:] = vanished[5:] * (1 - m) + background[:, :1, None] * m
    lost = metrics.score_video(vanished, ref, moved, image)
    assert not lost["no_leak"] and lost["leak_frames"] >= 3
    assert lost["colour_leak_frames"] == 0 and lost["lost_frames"] == lost["leak_frames"]
    if ref.kind == "object":  # a vanished object measures no displacement, not a jump to the corner
        measured = metrics.measured_motion(vanished, "object", far)
        assert np.allclose(measured[5:], 0) and np.allclose(measured[:5], ref.truth[:5], atol=0.02)
        empty = moved.video[:1] * (1 - moved.masks[:1, None]) + background[:, :1, None] * moved.masks[:1, None]
        assert np.all(metrics.measured_motion(empty.expand(8, -1, -1, -1), "object", far) == 0)

    still = metrics.score_video(image[None].expand(8, -1, -1, -1), ref, moved, image)
    assert still["trajectory_cosine"] == 0 and not still["direction_ok"]

    backwards = metrics.motion_metrics(ref.truth, -ref.truth)
    assert backwards["trajectory_cosine"] == pytest.approx(-1) and backwards["angle_deg"] == pytest.approx(180)


# --- the model: training script, VAE, benchmark and demo end to end ---------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``python -m reenact.toy.train`` for 3 steps (checks at 2 and 3, checkpoint at 2)."""
    out = tmp_path_factory.mktemp("toy") / "m"
    train.main(["--out", str(out), "--steps", "3", "--check-every", "2", "--ckpt-every", "2", "--threads", "1",
                "--batch", "2", "--check-clips", "3"])
    torch.set_num_threads(1)
    log = json.loads((out / "training_log.json").read_text())
    return out, log


def test_training_makes_a_loadable_svd_folder_with_card_and_motion_code(trained):
    out, log = trained
    pipe = models.load_pipeline(str(out), "cpu", torch.float32)
    assert pipe.unet.config.num_frames == train.NUM_FRAMES
    assert pipe.unet.config.cross_attention_dim == train.CONTEXT_DIM
    card = (out / "README.md").read_text()
    assert "python -m reenact.toy.train" in card and "--steps 3" in card
    from safetensors.torch import load_file

    code = load_file(str(out / "motion_code.safetensors"))
    assert code["P"].shape == (world.MOTION_FEATURES * train.NUM_FRAMES, train.CONTEXT_DIM)
    assert len(log["loss"]) == 3 and all(math.isfinite(v) for v in log["loss"])
    assert [step for step, _ in log["swap"]] == [2, 3]


def test_training_resumes_the_same_stream_from_its_checkpoint(trained):
    out, log = trained
    first_losses = list(log["loss"])
    train.main(["--out", str(out), "--steps", "3", "--check-every", "2", "--ckpt-every", "2",
                "--threads", "1", "--batch", "2", "--check-clips", "3", "--resume"])
    torch.set_num_threads(1)
    assert "resumed at UNet step 2" in (out.parent / "m.train-log").read_text()
    resumed = json.loads((out / "training_log.json").read_text())["loss"]
    assert resumed[:2] == first_losses[:2]  # restored from the checkpoint
    assert resumed[2] == pytest.approx(first_losses[2], rel=1e-5)  # recomputed: same data, same weights
    models.load_pipeline(str(out), "cpu", torch.float32)


def test_fine_tuning_starts_from_the_folder_and_keeps_its_provenance(trained, tmp_path):
    """``--init-from``: the new run starts at the folder's UNet (at lr 0 it stays there, bit for bit
    through the fp16 export) and its card lists the folder's commands before its own."""
    from safetensors.torch import load_file

    src, _ = trained
    out = tmp_path / "ft"
    train.main(["--out", str(out), "--init-from", str(src), "--steps", "1", "--lr", "0", "--check-every", "5",
                "--threads", "1", "--batch", "2", "--check-clips", "3"])
    torch.set_num_threads(1)
    before = load_file(str(src / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    log = json.loads((out / "training_log.json").read_text())
    earlier = json.loads((src / "training_log.json").read_text())["commands"]
    assert log["commands"][:-1] == earlier and "--init-from" in log["commands"][-1]
    assert [step for step, _ in log["swap"]] == [0, 1]
    assert "started from the UNet of" in (out / "README.md").read_text()


def test_fine_tuning_refuses_another_seeds_folder_or_a_folder_that_is_not_a_model(trained, tmp_path):
    src, _ = trained
    with pytest.raises(SystemExit, match="motion code is not seed 1's"):
        train.main(["--out", str(tmp_path / "ft"), "--init-from", str(src), "--seed", "1", "--steps", "1",
                    "--threads", "1", "--batch", "2"])
    torch.set_num_threads(1)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "ft.train-log").exists()
    with pytest.raises(SystemExit, match="not a model folder this script exported"):
        train.main(["--out", str(tmp_path / "ft"), "--init-from", str(tmp_path), "--steps", "1", "--threads", "1"])
    torch.set_num_threads(1)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "ft.train-log").exists()


def test_context_noise_jitters_the_kept_tokens_and_leaves_the_dropped_ones_null(monkeypatch):
    """``--context-noise s``: every kept context token moves by N(0, s^2), a dropped one stays
    exactly the null context (SVD's CFG branch), and ``s = 0`` feeds the clean tokens."""
    unet, vae, *_ = train.build_components(0)
    train.construct_vae(vae)
    code = train.motion_code(0)
    video, moving, feats = train.batch_tensors(0, 0, 16)
    clean = train.encode_motion(feats, code)
    seen = []
    real = train.edm.denoise
    monkeypatch.setattr(train.edm, "denoise", lambda u, x, s, c, ctx, ids: seen.append(ctx) or real(u, x, s, c, ctx, ids))
    for std in (0.0, 0.3):
        args = train.build_parser().parse_args(["--out", "x", "--p-drop-context", "0.5", "--context-noise", str(std)])
        with torch.no_grad():
            train.unet_loss(unet, vae, code, video, moving, feats, torch.Generator().manual_seed(1), args)
    for std, ctx in zip((0.0, 0.3), seen):
        kept = ctx.flatten(1).abs().sum(1) > 0
        assert 0 < int(kept.sum()) < len(kept)  # both branches present in this batch
        assert torch.equal(ctx[~kept], torch.zeros_like(ctx[~kept]))
        jitter = ctx[kept] - clean[kept]
        if std == 0:
            assert torch.equal(jitter, torch.zeros_like(jitter))
        else:
            assert 0.25 < float(jitter.std()) < 0.35 and abs(float(jitter.mean())) < 0.05
    with pytest.raises(SystemExit, match="--context-noise -0.1: a standard deviation must be >= 0"):
        train.main(["--out", "never-written", "--context-noise", "-0.1"])


def test_the_constructed_vae_reconstructs_a_clip_above_35_db():
    _, vae, *_ = train.build_components(0)
    train.construct_vae(vae)
    vae.eval()
    clip = world.make_clip(4242).video
    with torch.no_grad():
        z = vae.encode(clip).latent_dist.mode()
        rec = vae.decode(z, num_frames=clip.shape[0]).sample
    mse = (((rec - clip) / 2) ** 2).mean().item()
    assert 10 * math.log10(1 / mse) > 35


def test_the_benchmark_runs_end_to_end(trained, tmp_path, capsys):
    out, _ = trained
    rc = bench.main(["--model", str(out), "--refs", "2", "--targets", "2", "--steps", "2", "--gen-steps", "2",
                     "--batch-size", "2", "--probe-draws", "3", "--starts", "2", "--configs", "a,e,o",
                     "--threads", "1", "--out", str(tmp_path), "--examples", "1"])
    torch.set_num_threads(1)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| (e) F+1 sets, N=5" in printed and "| (o) oracle" in printed
    assert "| motion: line |" in printed and "| reference: user mp4 |" in printed
    assert "Reconstruction diagnostic" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and results["command"].startswith("reenact bench toy --model")
    assert results["settings"]["inversion"]["batch_size"] == 2  # bench flags reach the inversion
    assert (results["settings"]["inversion"]["probe_draws"], results["settings"]["inversion"]["starts"]) == (3, 2)
    assert set(results["summary"]) == {"a", "e", "o"} and len(results["records"]) == 3 * 2 * 2
    assert [v["config"] for v in results["inversions"]] == ["e", "e"]
    # with several starts each inversion row says which start was kept, and both probe losses
    assert all(v["start_choice"]["chosen"] in (0, 1) and len(v["start_choice"]["probe_losses"]) == 2
               for v in results["inversions"])
    assert all(set(v["reconstruction"]) >= {"first_frame_psnr", "trajectory_cosine"} for v in results["inversions"])
    assert results["summary"]["e"]["worst_slice"] in results["summary"]["e"]["slices"]
    assert {"machine", "cpu_count", "torch", "threads"} <= set(results["machine"])
    for name in ("table.md", "example_0.png", "example_0.gif"):
        assert (tmp_path / name).is_file()


def test_shards_merge_into_the_run_they_split(trained, tmp_path, capsys):
    """--shard K/N runs the plan's references i with i % N == K (same seeds as a whole run);
    --merge combines finished shards into one results.json; --only reruns chosen references."""
    out, _ = trained
    common = ["--model", str(out), "--refs", "3", "--targets", "1", "--steps", "2", "--gen-steps", "2",
              "--configs", "a,e", "--threads", "1", "--examples", "0", "--no-reconstruct"]
    whole, parts = tmp_path / "whole", [tmp_path / "s0", tmp_path / "s1"]
    assert bench.main([*common, "--out", str(whole)]) == 0
    for k, part in enumerate(parts):
        assert bench.main([*common, "--shard", f"{k}/2", "--out", str(part)]) == 0
    assert bench.main(["--merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    torch.set_num_threads(1)
    one = json.loads((whole / "results.json").read_text())
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    key = lambda r: (r["ref"], r["config"], r["target"])  # noqa: E731
    assert merged["complete"] and sorted(map(key, merged["records"])) == sorted(map(key, one["records"]))
    for a, b in zip(sorted(one["records"], key=key), sorted(merged["records"], key=key)):
        assert a["target_seed"] == b["target_seed"] and a["trajectory_cosine"] == pytest.approx(b["trajectory_cosine"], abs=1e-6)
    # a reference rerun (--only) after the shards: the last folder's records are the ones kept
    rerun = tmp_path / "rerun"
    assert bench.main([*common, "--only", "1", "--out", str(rerun)]) == 0
    assert bench.main(["--merge", *map(str, parts), str(rerun), "--out", str(tmp_path / "m2")]) == 0
    torch.set_num_threads(1)
    m2 = json.loads((tmp_path / "m2" / "results.json").read_text())
    assert m2["complete"] and m2["replaced_references"] == [1] and len(m2["records"]) == len(one["records"])
    # without the shard that ran reference 1 the merge is not complete; a foreign folder is refused
    assert bench.main(["--merge", str(parts[0]), "--out", str(tmp_path / "m3")]) == 0
    assert not json.loads((tmp_path / "m3" / "results.json").read_text())["complete"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        bench.main(["--merge", str(parts[0]), str(tmp_path), "--out", str(tmp_path / "bad")])
    assert "not a readable benchmark result" in capsys.readouterr().err


def test_draws_at_other_seeds_pool_into_one_table(trained, tmp_path, capsys):
    """One run is one draw of the inversion's randomness; --merge --pool combines draws at other
    --seed s (the same references and targets) into one table, each draw's figures kept beside it."""
    out, _ = trained
    common = ["--model", str(out), "--refs", "2", "--targets", "1", "--steps", "2", "--gen-steps", "2",
              "--threads", "1", "--examples", "0", "--no-reconstruct"]
    draws = {0: tmp_path / "d0", 5: tmp_path / "d5"}
    assert bench.main([*common, "--configs", "a,e", "--out", str(draws[0])]) == 0
    assert bench.main([*common, "--configs", "e", "--seed", "5", "--out", str(draws[5])]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # without --pool, another seed is another benchmark
        bench.main(["--merge", *map(str, draws.values()), "--out", str(tmp_path / "bad")])
    assert "add --pool" in capsys.readouterr().err
    assert bench.main(["--merge", *map(str, draws.values()), "--pool", "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    runs = {seed: json.loads((d / "results.json").read_text()) for seed, d in draws.items()}
    e_rows = {seed: [r for r in run["records"] if r["config"] == "e"] for seed, run in runs.items()}
    # the configurations every draw ran (e), all their videos, each tagged with its draw
    assert pooled["complete"] and {r["config"] for r in pooled["records"]} == {"e"}
    assert sorted((r["draw_seed"], r["ref"]) for r in pooled["records"]) == sorted(
        (seed, r["ref"]) for seed, rows in e_rows.items() for r in rows)
    assert [r["target_seed"] for r in e_rows[0]] == [r["target_seed"] for r in e_rows[5]]  # same targets
    cos = [r["trajectory_cosine"] for rows in e_rows.values() for r in rows]
    assert pooled["summary"]["e"]["trajectory_cosine_mean"] == pytest.approx(float(np.mean(cos)))
    for seed, run in runs.items():  # each draw's own figures, as its own run reported them
        assert pooled["draws"][str(seed)]["e"]["trajectory_cosine_mean"] == pytest.approx(
            run["summary"]["e"]["trajectory_cosine_mean"])
    assert "| (e) |" in (tmp_path / "pooled" / "table.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--pool", "--out", str(tmp_path / "x")])


def test_the_oracle_is_the_training_context(trained):
    out, _ = trained
    ref = world.make_scene_clip(5)
    emb = bench.oracle_embedding(str(out), ref)
    from safetensors.torch import load_file

    code = load_file(str(out / "motion_code.safetensors"))
    feats = torch.tensor(world.motion_features(ref), dtype=torch.float32)[None]
    expected = train.encode_motion(feats, code)[0]  # (1, d): what training fed the UNet
    assert emb.tensor.shape == (train.NUM_FRAMES + 1, 1, train.CONTEXT_DIM)
    assert torch.allclose(emb.tensor, expected.expand(train.NUM_FRAMES + 1, 1, -1))


DEMO_FILES = ["reference.mp4", "reference.gif", "motion.safetensors", "grid.gif", "grid.png",
              *(f"{kind}_{i}.{ext}" for i in range(3) for kind, ext in
                [("target", "png"), ("result", "mp4"), ("result", "gif"), ("baseline", "gif")])]


def test_the_demo_writes_everything(trained, tmp_path):
    out, _ = trained
    summary = demo.run_demo(tmp_path, steps=2, model=str(out), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DEMO_FILES)
    assert MotionEmbedding.load(summary["embedding"]).tensor.shape == (train.NUM_FRAMES + 1, 5, train.CONTEXT_DIM)
    assert -1 <= summary["motion_score"] <= 1 and -1 <= summary["baseline_score"] <= 1
    assert summary["motion score (trajectory cosine)"].startswith(f"{summary['motion_score']:.2f} (no embedding: ")


BUNDLED = (models.toy_model_dir("toy-v2") / "model_index.json").is_file()


@pytest.mark.skipif(not BUNDLED, reason="the bundled toy model (src/reenact/toy/model_v2) is missing")
def test_on_the_bundled_model_the_learned_motion_beats_the_stock_model(tmp_path):
    """The demo with its default inversion (the toy-v2 profile: two starts of 56 steps, the better
    kept, null-context initialisation, frame_lr 0.1, ln s ~ N(3.5, 1.6^2), motion weight 4) and 10
    Euler steps per generation, on both demo references (an L-turn and an arc; each with a target
    on a textured background, a small object and a large one).

    Measured with these settings (x86_64, 1 thread), the shipped (fine-tuned) weights, on the
    targets that keep their object in the picture (``world.stays_in_frame``): turn 0.99 vs the
    stock model's -0.64; arc 1.00 vs -0.65 (with one start of 80 steps: 1.00 and 1.00, the same
    with the uniform loss). On
    the earlier targets (before that rule) they scored 0.98 and 0.99, the pre-trained weights 0.81
    and 0.78, and the model's own training context 0.77 and 0.99 (docs/RESULTS.md), so the bar is
    not a near-perfect score but a clear lead over the stock model on each reference.
    """
    for seed in (0, 1):
        summary = demo.run_demo(tmp_path / str(seed), seed=seed, progress=False, gen_steps=10)
        assert sorted(p.name for p in (tmp_path / str(seed)).iterdir()) == sorted(DEMO_FILES)
        assert summary["motion_score"] >= 0.6, summary
        assert summary["motion_score"] >= summary["baseline_score"] + 1.0, summary


def test_data_workers_render_the_same_stream_as_one_process():
    """Step k's batch is a pure function of (seed, k), whoever renders it."""
    one = train.batch_stream(5, 1, 7, workers=0, pin=False)
    two = train.batch_stream(5, 1, 7, workers=2, pin=False)
    for _ in range(3):
        a, b = next(one), next(two)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (1, train.NUM_FRAMES, 3, train.RESOLUTION, train.RESOLUTION)
    assert a[2].shape == (1, train.NUM_FRAMES, world.MOTION_FEATURES)
    two.close()


def test_the_warm_up_does_not_depend_on_the_step_count():
    """So a --time-budget run, which resolves --steps during its warm-up, is reproduced by --steps."""
    args = train.build_parser().parse_args(["--out", "x", "--warmup", "50"])
    short, long = (train.build_parser().parse_args(["--out", "x", "--warmup", "50", "--steps", str(n)]) for n in (300, 900))
    assert [train.learning_rate(k, short) for k in range(50)] == [train.learning_rate(k, long) for k in range(50)]
    assert train.learning_rate(299, short) == pytest.approx(0.1 * args.lr, rel=1e-3)
    assert train.learning_rate(60, short) < train.learning_rate(60, long)
