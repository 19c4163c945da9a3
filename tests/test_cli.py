"""The command line, end to end through ``reenact.cli.main`` on the tiny model.

What a user sees: results are written and summarised on stdout; every mistake they can make
exits 2 with ONE line ``reenact: error: ...`` naming the culprit, no traceback and no output
file; Ctrl-C exits 130 and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import types

import pytest
import torch
from PIL import Image

from reenact import cli, inversion, models, video
from reenact.embedding import MotionEmbedding

from conftest import TINY_FRAMES
from tiny_model import TINY_DIM

SIZE = 32  # the tiny model's native size (sample_size 16 x vae_scale_factor 2)
TOKENS = 2


def moving_square(num_frames: int) -> torch.Tensor:
    """A white square moving right on black, ``(num_frames, 3, SIZE, SIZE)`` in [-1, 1]."""
    frames = -torch.ones(num_frames, 3, SIZE, SIZE)
    for i in range(num_frames):
        frames[i, :, 10:18, 2 + 3 * i : 10 + 3 * i] = 1.0
    return frames


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A reference clip, two target images, and broken inputs of every kind."""
    d = tmp_path_factory.mktemp("assets")
    video.write_video(moving_square(8), d / "clip.mp4", fps=7)
    video.write_video(moving_square(1), d / "one_frame.mp4", fps=7)
    (d / "text.mp4").write_text("this is not a video\n")
    Image.new("RGB", (40, SIZE), (200, 40, 40)).save(d / "red.png")  # not square: cropped
    Image.new("RGB", (SIZE, SIZE), (40, 40, 200)).save(d / "blue.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (d / "corrupt.safetensors").write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8)
                                            .numpy().tobytes())
    MotionEmbedding(torch.randn(TINY_FRAMES + 1, TOKENS, TINY_DIM // 2)).save(d / "wrong_d.safetensors")
    MotionEmbedding(torch.randn(TINY_FRAMES + 3, TOKENS, TINY_DIM)).save(d / "wrong_f.safetensors")
    good = torch.randn(TINY_FRAMES + 1, TOKENS, TINY_DIM)
    MotionEmbedding(good, {"height": 10**6, "width": 10**6}).save(d / "huge_size.safetensors")
    MotionEmbedding(good, {"height": 256, "width": 256}).save(d / "too_big.safetensors")  # 8x
    MotionEmbedding(torch.full_like(good, float("nan"))).save(d / "nan.safetensors")
    (d / "blocker").write_text("a regular file where a folder is expected\n")
    return d


@pytest.fixture(scope="module")
def model(tiny_svd_dir) -> str:
    return str(tiny_svd_dir)


@pytest.fixture(scope="module")
def inverted(assets, model, tmp_path_factory):
    """``reenact invert`` once (2 steps): the embedding file and what was printed."""
    out = tmp_path_factory.mktemp("inverted") / "motion.safetensors"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main(["invert", str(assets / "clip.mp4"), "--model", model, "-o", str(out),
                       "--steps", "2", "--tokens", str(TOKENS), "--no-progress"])
    assert rc == 0
    return out, stdout.getvalue()


def assert_one_line_error(capsys, rc: int, *named: str) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reenact: error: ")
    for name in named:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- the happy paths -------------------------------------------------------------------------

def test_invert_writes_embedding_with_metadata_and_a_summary(inverted, model):
    out, printed = inverted
    assert re.fullmatch(
        rf"saved {re.escape(str(out))}: F={TINY_FRAMES} N={TOKENS} d={TINY_DIM}, steps 2, "
        r"final loss [-+.e0-9]+, [.0-9]+ s \([.0-9]+ it/s\)",
        printed.strip().splitlines()[-1],
    )
    emb = MotionEmbedding.load(out)
    assert emb.tensor.shape == (TINY_FRAMES + 1, TOKENS, TINY_DIM)
    meta = emb.metadata
    assert meta["base_model"] == model
    assert (meta["height"], meta["width"]) == (SIZE, SIZE)  # the model's native size
    assert (meta["fps"], meta["motion_bucket_id"], meta["noise_aug_strength"]) == (7, 127, 0.02)
    assert meta["steps_done"] == 2 and meta["reference"] == "clip.mp4"
    assert not inversion.checkpoint_path(out).exists()  # dropped once the result is written


def test_info_prints_shape_then_sorted_metadata(inverted, capsys):
    out, _ = inverted
    assert cli.main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{TINY_FRAMES + 1} x {TOKENS} x {TINY_DIM}" in lines[0]
    assert f"F={TINY_FRAMES}" in lines[0] and f"N={TOKENS}" in lines[0] and f"d={TINY_DIM}" in lines[0]
    assert "steps_done: 2" in lines and "fps: 7" in lines and "optimisation:" in lines
    assert "  lr: 0.05" in lines and "  steps: 2" in lines  # settings pretty-printed
    keys = [line.split(":")[0] for line in lines[1:] if not line.startswith(" ")]
    assert keys == sorted(keys)


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png"])
def test_animate_writes_one_video_per_image(inverted, assets, model, tmp_path, capsys, fmt):
    out_dir = tmp_path / "out"
    rc = cli.main(["animate", str(inverted[0]), str(assets / "red.png"), str(assets / "blue.png"),
                   "--model", model, "-o", str(out_dir), "--steps", "2", "--format", fmt,
                   "--batch-size", "1", "--no-progress"])
    assert rc == 0
    suffix = "" if fmt == "png" else f".{fmt}"
    targets = [out_dir / f"red{suffix}", out_dir / f"blue{suffix}"]
    assert capsys.readouterr().out.split() == [str(t) for t in targets]
    for target in targets:
        frames = video.read_frames(target)
        # the size comes from the embedding's metadata: the 40x32 red image was centre-cropped
        assert {f.size for f in frames} == {(SIZE, SIZE)}
        if fmt != "gif":  # gif writers merge identical consecutive frames
            assert len(frames) == TINY_FRAMES


def test_animate_batches_do_not_change_a_video(inverted, assets, model, tmp_path, capsys):
    """One generator per image, all seeded --seed: batch size 1 and 2 give the same frames."""
    runs = []
    for batch in ("1", "2"):
        out_dir = tmp_path / f"b{batch}"
        assert cli.main(["animate", str(inverted[0]), str(assets / "red.png"),
                         str(assets / "blue.png"), "--model", model, "-o", str(out_dir),
                         "--steps", "2", "--format", "png", "--batch-size", batch,
                         "--no-progress"]) == 0
        runs.append([video.image_to_tensor(f) for f in video.read_frames(out_dir / "blue")])
    capsys.readouterr()
    assert all(torch.allclose(a, b, atol=2 / 255) for a, b in zip(*runs))


def test_reconstruct_prints_per_frame_psnr_and_mean(inverted, assets, model, tmp_path, capsys):
    rec = tmp_path / "rec.mp4"
    rc = cli.main(["reconstruct", str(inverted[0]), str(assets / "clip.mp4"), "--model", model,
                   "-o", str(rec), "--steps", "2", "--no-progress"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "note" not in err  # the same clip the embedding was learned on
    scores = [float(v) for v in re.findall(r"^frame \d+: ([.0-9]+)$", out, re.M)]
    assert len(scores) == TINY_FRAMES
    mean = float(re.search(r"^mean: ([.0-9]+)$", out, re.M).group(1))
    assert mean == pytest.approx(sum(scores) / len(scores), abs=0.01)
    assert len(video.read_frames(rec)) == TINY_FRAMES


def test_speed_flags_of_animate_change_speed_not_the_video(inverted, assets, model, tmp_path,
                                                           capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",  # record, don't spend the compile time
                        lambda self, *a, **kw: compiled.append(type(self).__name__))
    runs = {}
    for name, extra in {"default": [], "eager": ["--attention", "eager", "--compile"],
                        "bf16 vae": ["--vae-dtype", "bf16"]}.items():
        assert cli.main(_animate(inverted[0], assets / "blue.png", model, tmp_path / name,
                                 "--format", "png", *extra)) == 0
        runs[name] = torch.stack([video.image_to_tensor(f)
                                  for f in video.read_frames(tmp_path / name / "blue")])
    capsys.readouterr()
    assert compiled == ["UNetSpatioTemporalConditionModel"]
    assert (runs["eager"] - runs["default"]).abs().max() <= 2 / 255 + 1e-6  # one 8-bit level
    assert (runs["bf16 vae"] - runs["default"]).abs().max() <= 0.1  # bf16 rounding of the decoder


def test_invert_speed_flags_reach_the_config(assets, model, tmp_path, capsys, monkeypatch):
    seen = []

    def record_and_stop(pipe, frames, config, **kwargs):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(inversion, "invert", record_and_stop)
    argv = _invert(assets, model, tmp_path, "--attention", "eager", "--compile",
                   "--gradient-checkpointing", "--mixed-precision", "bf16", "--optim-size", "16x16",
                   "--early-stop-patience", "5")
    assert cli.main(argv) == 130
    capsys.readouterr()
    (config,) = seen
    assert (config.attention, config.compile, config.gradient_checkpointing) == ("eager", True, True)
    assert (config.mixed_precision, config.optim_size, config.early_stop_patience) == ("bf16", (16, 16), 5)


# --- interrupt and resume -------------------------------------------------------------------

def test_interrupt_exits_130_keeps_the_checkpoint_and_resume_continues(
    assets, model, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run.safetensors"
    argv = ["invert", str(assets / "clip.mp4"), "--model", model, "-o", str(out), "--steps", "6",
            "--checkpoint-every", "2", "--tokens", str(TOKENS), "--no-progress"]
    real_invert = inversion.invert

    def interrupted_after_step_3(*args, **kwargs):
        def ctrl_c(step: int, loss: float) -> None:
            if step == 3:
                raise KeyboardInterrupt

        return real_invert(*args, **{**kwargs, "callback": ctrl_c})

    monkeypatch.setattr(inversion, "invert", interrupted_after_step_3)
    assert cli.main(argv) == 130
    _, err = capsys.readouterr()
    assert err.strip().splitlines() == ["reenact: interrupted; resume with --resume"]
    ckpt = inversion.checkpoint_path(out)
    assert not out.exists() and ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 2

    monkeypatch.setattr(inversion, "invert", real_invert)
    assert cli.main(argv + ["--resume"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert ", steps 6," in summary and summary.endswith("resumed from step 2")
    assert MotionEmbedding.load(out).metadata["steps_done"] == 6
    assert not ckpt.exists()


# --- every bad input: exit 2, one line naming it, nothing written ------------------------------

def _invert(assets, model, out_dir, *extra, clip="clip.mp4"):
    return ["invert", str(assets / clip), "--model", model, "-o", str(out_dir / "m.safetensors"),
            "--steps", "1", "--no-progress", *extra]


def _animate(emb, image, model, out_dir, *extra):
    return ["animate", str(emb), str(image), "--model", model, "-o", str(out_dir), "--steps", "1",
            "--no-progress", *extra]


BAD_INPUTS = {
    # name: (argv from (assets, model, a good embedding, output folder), what the line names)
    "missing video": (lambda a, m, e, o: _invert(a, m, o, clip="nope.mp4"), "nope.mp4"),
    "text file named .mp4": (lambda a, m, e, o: _invert(a, m, o, clip="text.mp4"), "text.mp4"),
    "1-frame video": (lambda a, m, e, o: _invert(a, m, o, clip="one_frame.mp4"), "one_frame.mp4"),
    "missing model": (lambda a, m, e, o: _invert(a, str(a / "no_model"), o), "no_model"),
    "steps 0": (lambda a, m, e, o: _invert(a, m, o, "--steps", "0"), "--steps"),
    "lr 0": (lambda a, m, e, o: _invert(a, m, o, "--lr", "0"), "--lr"),
    "lr -1": (lambda a, m, e, o: _invert(a, m, o, "--lr", "-1"), "--lr"),
    "tokens 0": (lambda a, m, e, o: _invert(a, m, o, "--tokens", "0"), "--tokens"),
    "height not a multiple of 8": (lambda a, m, e, o: _invert(a, m, o, "--height", "30"),
                                   "--height"),
    "invert output under a file": (lambda a, m, e, o: _invert(a, m, a / "blocker"), "blocker"),
    "missing image": (lambda a, m, e, o: _animate(e, a / "nope.png", m, o), "nope.png"),
    "corrupt image": (lambda a, m, e, o: _animate(e, a / "corrupt.png", m, o), "corrupt.png"),
    "missing embedding": (lambda a, m, e, o: _animate(a / "nope.safetensors", a / "red.png", m, o),
                          "nope.safetensors"),
    "corrupt embedding": (lambda a, m, e, o: _animate(a / "corrupt.safetensors", a / "red.png", m,
                                                      o), "corrupt.safetensors"),
    "embedding of another d": (lambda a, m, e, o: _animate(a / "wrong_d.safetensors",
                                                           a / "red.png", m, o),
                               "wrong_d.safetensors"),
    "embedding of another F": (lambda a, m, e, o: _animate(a / "wrong_f.safetensors",
                                                           a / "red.png", m, o),
                               "wrong_f.safetensors"),
    "embedding claiming a huge size": (lambda a, m, e, o: _animate(a / "huge_size.safetensors",
                                                                   a / "red.png", m, o),
                                       "huge_size.safetensors"),
    "embedding sized far beyond the model": (lambda a, m, e, o: _animate(
        a / "too_big.safetensors", a / "red.png", m, o), "too_big.safetensors"),
    "embedding with NaN": (lambda a, m, e, o: _animate(a / "nan.safetensors", a / "red.png", m, o),
                           "nan.safetensors"),
    "animate output under a file": (lambda a, m, e, o: _animate(e, a / "red.png", m,
                                                                a / "blocker" / "out"), "blocker"),
    "animate steps 0": (lambda a, m, e, o: _animate(e, a / "red.png", m, o, "--steps", "0"),
                        "--steps"),
    "two images, one stem": (lambda a, m, e, o: ["animate", str(e), str(a / "red.png"),
                                                 str(a / "red.jpg"), "--model", m, "-o", str(o)],
                             "red.jpg"),
    "cpu offload without cuda": (lambda a, m, e, o: _animate(e, a / "red.png", m, o, "--device",
                                                             "cpu", "--cpu-offload"),
                                 "--cpu-offload"),
    "fp16 VAE on the cpu": (lambda a, m, e, o: _animate(e, a / "red.png", m, o, "--device", "cpu",
                                                        "--vae-dtype", "fp16"), "--vae-dtype"),
    "reconstruct missing video": (lambda a, m, e, o: ["reconstruct", str(e), str(a / "nope.mp4"),
                                                      "--model", m, "-o", str(o / "r.mp4")],
                                  "nope.mp4"),
    "reconstruct of another F": (lambda a, m, e, o: ["reconstruct", str(a / "wrong_f.safetensors"),
                                                     str(a / "clip.mp4"), "--model", m, "-o",
                                                     str(o / "r.mp4"), "--no-progress"],
                                 "wrong_f.safetensors"),
    "info of a corrupt file": (lambda a, m, e, o: ["info", str(a / "corrupt.safetensors")],
                               "corrupt.safetensors"),
    "info of a missing file": (lambda a, m, e, o: ["info", str(a / "nope.safetensors")],
                               "nope.safetensors"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case, assets, model, inverted, tmp_path, capsys
):
    build, named = BAD_INPUTS[case]
    out = tmp_path / "out"
    rc = cli.main(build(assets, model, inverted[0], out))
    assert_one_line_error(capsys, rc, named)
    assert not out.exists()  # not even the (empty) output folder
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in assets.iterdir() if p.name.startswith(".")]  # no temp or probe files


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["invert"], ["animate", "x.safetensors"], ["invert", "v.mp4", "-o", "x",
                                                               "--steps", "many"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_default_size_is_the_models_native_one_and_576x1024_for_svd(tmp_path, tiny_svd_dir):
    """The pipeline's rule (sample_size * vae_scale_factor), except SVD's checkpoints: their
    sample_size 96 says 768x768 but they were trained at 576x1024, the pipeline's default."""
    assert models.native_geometry(str(tiny_svd_dir)) == (TINY_FRAMES, SIZE, SIZE)
    svd = tmp_path / "svd"
    for sub, config in {"unet": {"sample_size": 96, "num_frames": 14},
                        "vae": {"block_out_channels": [128, 256, 512, 512]}}.items():
        (svd / sub).mkdir(parents=True)
        (svd / sub / "config.json").write_text(json.dumps(config))
    (svd / "model_index.json").write_text("{}")
    assert models.native_geometry(str(svd)) == (14, 576, 1024)


# --- help, version, demo and bench ------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["invert"], ["animate"], ["reconstruct"], ["info"],
                                  ["demo"], ["bench"]])
def test_help_works(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reenact")
    if argv == ["invert"]:  # defaults come from InversionConfig
        assert f"(default: {inversion.InversionConfig().steps})" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("reenact ")


def test_demo_forwards_to_run_demo(tmp_path, capsys, monkeypatch):
    calls = []

    def run_demo(out_dir, steps=None, seed=0, progress=True):
        calls.append((out_dir, steps, seed, progress))
        return {"embedding": out_dir / "motion.safetensors"}

    monkeypatch.setitem(sys.modules, "reenact.toy.demo",
                        types.SimpleNamespace(run_demo=run_demo))
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--steps", "3", "--seed", "5", "--no-progress"]) == 0
    assert calls == [(out, 3, 5, False)]
    assert capsys.readouterr().out.strip() == f"embedding: {out / 'motion.safetensors'}"


def test_bench_forwards_the_remaining_arguments(capsys, monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "reenact.toy.bench",
                        types.SimpleNamespace(main=lambda argv: seen.append(argv) or 3))
    assert cli.main(["bench", "toy", "--steps", "5", "--help"]) == 3
    assert seen == [["--steps", "5", "--help"]]


@pytest.mark.parametrize("argv", [["demo", "-o", "unused"], ["bench", "toy"]])
def test_missing_toy_module_is_a_one_line_error(argv, tmp_path, capsys, monkeypatch):
    module = "reenact.toy." + argv[0]
    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(capsys, cli.main(argv), module)
    assert list(tmp_path.iterdir()) == []
