"""The library does everything the CLI does: profiles, geometry, end-to-end functions, and the
robustness the CLI relies on (divergence, bounded settings, fast model errors, full disks)."""

from __future__ import annotations

import errno
import json
import time

import pytest
import torch

from reenact import api, cli, edm, inversion, models, profiles, video
from reenact.embedding import MotionEmbedding
from reenact.errors import ConfigError, DivergedError, ModelNotFoundError
from reenact.inversion import InversionConfig, InversionState

from conftest import TINY_FRAMES

SIZE = 32


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    frames = -torch.ones(8, 3, SIZE, SIZE)
    for i in range(8):
        frames[i, :, 10:18, 2 + 3 * i: 10 + 3 * i] = 1.0
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    video.write_video(frames, path, fps=7)
    return path


def svd_like_folder(tmp_path, **unet_extra):
    folder = tmp_path / "svd"
    unet = {"sample_size": 96, "num_frames": 14, "cross_attention_dim": 1024, "in_channels": 8,
            "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280], **unet_extra}
    for sub, config in {"unet": unet, "vae": {"block_out_channels": [128, 256, 512, 512]}}.items():
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text("{}")
    return folder


# --- profiles ---------------------------------------------------------------------------------

def test_the_svd_family_gets_the_svd_profile_and_everything_else_the_toy_one(tmp_path, tiny_svd_dir):
    for hub_id in models.SVD_HUB_IDS:
        assert profiles.profile_for(hub_id) is profiles.SVD
    assert profiles.profile_for(str(svd_like_folder(tmp_path))) is profiles.SVD  # any name
    assert profiles.profile_for("toy") is profiles.TOY
    # the world-v2 model has measured values of its own, by name or by its folder's path
    assert profiles.profile_for("toy-v2") is profiles.TOY_V2
    assert profiles.profile_for(str(models.toy_model_dir("toy-v2"))) is profiles.TOY_V2
    v2 = profiles.inversion_config("toy-v2", steps=7)
    assert (v2.init, v2.frame_lr, v2.log_sigma_mean, v2.steps) == ("random", 0.1, 3.5, 7)
    assert (profiles.SVD.config().init, profiles.SVD.config().frame_lr) == ("clip", 1.0)  # the paper's
    # what was measured on the toy-v2 model stays there: SVD runs the paper's single start
    assert (v2.starts, profiles.SVD.config().starts, profiles.TOY.config().starts) == (2, 1, 1)
    assert profiles.profile_for(str(tiny_svd_dir)) is profiles.TOY


def test_svd_profile_fits_a_small_card_and_says_where_each_value_comes_from():
    cfg = profiles.SVD.config()
    assert cfg.gradient_checkpointing and cfg.num_augmentations > 0 and cfg.flip_prob > 0
    assert cfg.crop_scale < 1 and 200 <= cfg.steps <= 2000 and cfg.lr_relative
    assert all(o.source for o in profiles.SVD.overrides.values())
    assert "NOT measured here" in profiles.SVD.description
    cfg.validate()
    # every value stays overridable, and the toy profile is InversionConfig's own defaults
    assert profiles.SVD.config(steps=7, gradient_checkpointing=False).steps == 7
    assert profiles.TOY.config() == InversionConfig()


def test_invert_help_says_which_profile_applies_and_lists_both(capsys):
    for argv, name in ((["invert", "--help"], "svd"), (["invert", "--model", "toy", "--help"], "toy")):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert f"gets the '{name}' profile" in out
        assert "svd profile: 1000" in out and "(default: 80)" in out


def test_lr_relative_scales_the_step_to_the_embeddings_rms(tiny_pipe):
    init = torch.full((TINY_FRAMES + 1, 2, 32), 3.0)
    state = InversionState.create(init, InversionConfig(lr_relative=True), TINY_FRAMES,
                                  torch.device("cpu"), False)
    assert state.lr_scale == pytest.approx(3.0)
    assert InversionState.create(init, InversionConfig(), TINY_FRAMES, torch.device("cpu"),
                                 False).lr_scale == 1.0


# --- the inversion's pieces -------------------------------------------------------------------

def test_state_save_and_restore_are_symmetric(tiny_pipe):
    cfg = InversionConfig(tokens=2, cond_bank_size=2)
    frames = torch.rand(TINY_FRAMES, 3, SIZE, SIZE) * 2 - 1
    latents = inversion.encode_reference(tiny_pipe.vae, frames, cfg)
    init = inversion.initial_embedding(tiny_pipe, frames, cfg, 32)
    cpu = torch.device("cpu")
    a = InversionState.create(init, cfg, TINY_FRAMES, cpu, False)
    with inversion.install_motion_routing(tiny_pipe.unet, cfg.tokens, TINY_FRAMES):
        for _ in range(2):
            a.log.add(inversion.step(tiny_pipe.unet, a, latents, cfg).item(), 0.0)
        b = InversionState.create(init, cfg, TINY_FRAMES, cpu, False)
        b.load_state_dict(a.state_dict())
        sa, sb = a.state_dict(), b.state_dict()
        assert torch.equal(sa["embedding"], sb["embedding"]) and torch.equal(sa["rng"], sb["rng"])
        assert {k: v for k, v in sa.items() if k not in ("embedding", "rng", "optimizer")} == \
               {k: v for k, v in sb.items() if k not in ("embedding", "rng", "optimizer")}
        # and they continue identically
        la = inversion.step(tiny_pipe.unet, a, latents, cfg).item()
        lb = inversion.step(tiny_pipe.unet, b, latents, cfg).item()
    assert la == lb and torch.equal(a.param, b.param)


def test_a_diverging_inversion_stops_and_keeps_the_last_good_checkpoint(tiny_pipe, tmp_path, monkeypatch):
    real_loss, calls = edm.loss, []

    def nan_at_step_3(*a, **kw):
        calls.append(1)
        value = real_loss(*a, **kw)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(edm, "loss", nan_at_step_3)
    out = tmp_path / "m.safetensors"
    frames = torch.rand(TINY_FRAMES, 3, SIZE, SIZE) * 2 - 1
    with pytest.raises(DivergedError) as info:
        inversion.invert(tiny_pipe, frames, InversionConfig(steps=6, checkpoint_every=2, cond_bank_size=2),
                         output=out, progress=False)
    message = str(info.value)
    assert "diverged at step 3" in message and "step 2" in message and "\n" not in message
    assert not out.exists()
    ckpt = torch.load(inversion.checkpoint_path(out), weights_only=True)
    assert ckpt["step"] == 2 and torch.isfinite(ckpt["embedding"]).all()


@pytest.mark.parametrize("flag, value", [("--lr", "1e30"), ("--log-sigma-mean", "200"),
                                         ("--steps", "-3"), ("--flip-prob", "2"),
                                         ("--init-noise-std", "nan")])
def test_flags_are_bounded_to_ranges_that_make_sense(flag, value, clip_file, tiny_svd_dir, tmp_path, capsys):
    rc = cli.main(["invert", str(clip_file), "--model", str(tiny_svd_dir), "-o",
                   str(tmp_path / "m.safetensors"), "--no-progress", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and flag in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_model_name_fails_fast_in_one_line(clip_file, tmp_path, capsys):
    t0 = time.perf_counter()
    rc = cli.main(["invert", str(clip_file), "--model", "toyy", "-o", str(tmp_path / "m.safetensors")])
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'toyy'" in err[0]
    with pytest.raises(ModelNotFoundError):
        models.model_source("not a hub id")


def test_resume_without_a_checkpoint_says_so(clip_file, tiny_svd_dir, tmp_path, capsys):
    rc = cli.main(["invert", str(clip_file), "--model", str(tiny_svd_dir), "-o",
                   str(tmp_path / "m.safetensors"), "--steps", "1", "--no-progress", "--resume"])
    assert rc == 0
    assert "no checkpoint" in capsys.readouterr().err


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(
        clip_file, tiny_svd_dir, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("step") == 2:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "m.safetensors"
    rc = cli.main(["invert", str(clip_file), "--model", str(tiny_svd_dir), "-o", str(out),
                   "--steps", "4", "--checkpoint-every", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [inversion.checkpoint_path(out).name]
    assert torch.load(inversion.checkpoint_path(out), weights_only=True)["step"] == 1


# --- end to end, in Python, with no hard-coded sizes ---------------------------------------------

def test_invert_animate_reconstruct_from_python(clip_file, tiny_svd_dir, tmp_path):
    model = str(tiny_svd_dir)
    out = tmp_path / "m.safetensors"
    frames_dir = tmp_path / "seen"
    result = api.invert_video(clip_file, model, out, steps=2, tokens=2, frames_dir=frames_dir,
                              start=1, progress=False)
    meta = MotionEmbedding.load(out).metadata
    assert meta["profile"] == "toy" and meta["source_start"] == 1 and meta["source_size"] == [SIZE, SIZE]
    assert len(list(frames_dir.iterdir())) == TINY_FRAMES == result.embedding.num_frames
    seen = torch.stack([video.image_to_tensor(f) for f in video.read_frames(frames_dir)])
    assert (seen - api.load_reference(clip_file, model, start=1).frames).abs().max() <= 1 / 255 + 1e-6

    image = tmp_path / "t.png"
    video.tensor_to_images(torch.zeros(1, 3, SIZE, SIZE))[0].save(image)
    (vid,) = api.animate(out, [image], config=api.GenerationConfig(steps=1))  # model: recorded
    assert vid.shape == (TINY_FRAMES, 3, SIZE, SIZE)

    rec = api.reconstruct(out, clip_file, config=api.GenerationConfig(steps=1))  # range: recorded
    assert rec.same_reference and len(rec.psnr) == TINY_FRAMES
    assert not api.reconstruct(out, clip_file, config=api.GenerationConfig(steps=1), start=0).same_reference


def test_animate_batches_one_image_at_a_time_on_cuda_unless_asked():
    assert api.default_batch_size(torch.device("cuda")) == 1
    assert api.default_batch_size(torch.device("cpu")) > 1
    assert models.default_threads() >= 1


def test_generation_settings_are_bounded():
    with pytest.raises(ConfigError, match="fps"):
        api.GenerationConfig(fps=0).validate()
    with pytest.raises(ConfigError, match="height"):
        api.GenerationConfig(height=30).validate()


def test_native_geometry_of_a_loaded_pipeline_is_that_of_its_folder(tiny_svd_dir, tiny_pipe):
    assert models.native_geometry(tiny_pipe) == models.native_geometry(str(tiny_svd_dir)) == (
        TINY_FRAMES, SIZE, SIZE)


def test_the_svd_profile_conditions_on_the_clips_own_frame_rate(tmp_path, clip_file, monkeypatch):
    # the tiny model stands in for SVD here: the profile is what is tested, not the weights
    monkeypatch.setattr(profiles, "profile_for", lambda model: profiles.SVD)
    ref = api.load_reference(clip_file, "toy")
    assert ref.fps is not None and 5 <= ref.fps <= 30
    cfg = profiles.SVD.config(steps=1, num_augmentations=0, gradient_checkpointing=False)
    assert cfg.fps is None
    seen = {}
    monkeypatch.setattr(inversion, "invert", lambda pipe, frames, config, **kw: seen.update(config=config))
    api.invert_video(clip_file, "toy", config=cfg, progress=False)
    assert seen["config"].fps == ref.fps
