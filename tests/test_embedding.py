"""The motion-text embedding: file format, compatibility checks, CLIP initialisation."""

from __future__ import annotations

import json
import re

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from reenact.embedding import (
    FORMAT_VERSION,
    LIMITS,
    check_recorded_size,
    MotionEmbedding,
    check_compatible,
    clip_image_embeddings,
    init_from_clip,
    init_random,
    init_zeros,
    unet_fingerprint,
)
from reenact.errors import EmbeddingError, InputError

F, N, D = 4, 3, 32


def make_embedding(**metadata) -> MotionEmbedding:
    tensor = torch.randn(F + 1, N, D, generator=torch.Generator().manual_seed(0))
    return MotionEmbedding(tensor, dict(metadata))


def test_save_load_round_trip_keeps_tensor_and_metadata(tmp_path):
    emb = make_embedding(
        base_model="toy",
        unet_fingerprint="0123456789ab",
        height=32,
        width=32,
        fps=7,
        motion_bucket_id=127,
        noise_aug_strength=0.02,
        optimisation={"lr": 0.01, "steps": 200, "sigma_mean": 2.8},
        steps_done=200,
        final_loss=0.123456789,
        seed=0,
        reference="walk.mp4",
        note="127",  # a string that looks like a number stays a string
    )
    path = emb.save(tmp_path / "motion.safetensors")
    loaded = MotionEmbedding.load(path)
    assert torch.equal(loaded.tensor, emb.tensor) and loaded.tensor.dtype == torch.float32
    assert loaded.metadata == emb.metadata
    assert (loaded.num_frames, loaded.tokens, loaded.dim) == (F, N, D)
    assert loaded.metadata["num_frames"] == F
    assert loaded.path == path
    assert [p.name for p in tmp_path.iterdir()] == ["motion.safetensors"]  # no temp file left


def test_corrupt_file_is_an_embedding_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(EmbeddingError, match="broken.safetensors"):
        MotionEmbedding.load(path)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.safetensors"):
        MotionEmbedding.load(tmp_path / "nope.safetensors")


def test_other_safetensors_files_are_refused(tmp_path):
    wrong_name = tmp_path / "weights.safetensors"
    save_file({"something_else": torch.zeros(5, 3, 32)}, str(wrong_name))
    with pytest.raises(EmbeddingError, match="no tensor named 'motion_embedding'"):
        MotionEmbedding.load(wrong_name)

    wrong_rank = tmp_path / "rank.safetensors"
    save_file({"motion_embedding": torch.zeros(5, 32)}, str(wrong_rank))
    with pytest.raises(EmbeddingError, match=r"\(F\+1, N, d\)"):
        MotionEmbedding.load(wrong_rank)

    newer = tmp_path / "newer.safetensors"
    meta = {"format_version": str(FORMAT_VERSION + 1), "json_keys": json.dumps(["format_version"])}
    save_file({"motion_embedding": torch.zeros(5, 3, 32)}, str(newer), metadata=meta)
    with pytest.raises(EmbeddingError, match="format version 2"):
        MotionEmbedding.load(newer)


def test_compatible_embedding_is_accepted(tiny_pipe):
    emb = make_embedding(base_model="tiny", unet_fingerprint=unet_fingerprint(tiny_pipe.unet))
    check_compatible(emb, tiny_pipe.unet, "tiny", num_frames=F)


def test_fingerprint_depends_on_the_architecture_only(tiny_pipe):
    fp = unet_fingerprint(tiny_pipe.unet)
    assert len(fp) == 12 and fp == unet_fingerprint(tiny_pipe.unet)

    class Other:
        config = {**tiny_pipe.unet.config, "cross_attention_dim": 1024}

    assert unet_fingerprint(Other()) != fp


@pytest.mark.parametrize(
    "tensor_shape, num_frames, fingerprint, side",
    [
        ((F + 1, N, 1024), F, None, "d=1024"),  # wrong width
        ((F + 1, N, D), 14, None, "F=14"),  # model generates another number of frames
        ((F + 1, N, D), F, "a1b2c3d4e5f6", "unet a1b2c3d4e5f6"),  # another UNet
    ],
)
def test_mismatched_embedding_is_refused_naming_both_sides(
    tiny_pipe, tmp_path, tensor_shape, num_frames, fingerprint, side
):
    meta = {"base_model": "stabilityai/stable-video-diffusion-img2vid"}
    if fingerprint:
        meta["unet_fingerprint"] = fingerprint
    path = MotionEmbedding(torch.zeros(tensor_shape), meta).save(tmp_path / "motion.safetensors")
    emb = MotionEmbedding.load(path)
    with pytest.raises(EmbeddingError) as err:
        check_compatible(emb, tiny_pipe.unet, "tiny", num_frames=num_frames)
    message = str(err.value)
    learned_on = "motion.safetensors was learned on 'stabilityai/stable-video-diffusion-img2vid'"
    assert message.startswith(learned_on)
    assert "but the model is 'tiny'" in message and side in message
    assert unet_fingerprint(tiny_pipe.unet) in message and "\n" not in message


def test_clip_embeddings_are_svds_own_image_conditioning(tiny_pipe):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(F, 40, 48, 3), dtype=np.uint8)
    frames = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ours = clip_image_embeddings(tiny_pipe, frames)
    assert ours.shape == (F, D) and ours.dtype == torch.float32
    for f in range(F):
        svd = tiny_pipe._encode_image(PIL.Image.fromarray(pixels[f]), "cpu", 1, False)
        torch.testing.assert_close(ours[f], svd[0, 0], rtol=1e-4, atol=1e-5)


def test_clip_init_puts_frame_f_in_set_f_and_frame_0_in_the_temporal_set():
    clip = torch.randn(F, D, generator=torch.Generator().manual_seed(0))
    exact = init_from_clip(clip, tokens=N, noise_std=0.0)
    assert exact.shape == (F + 1, N, D)
    for f in range(F):
        assert torch.equal(exact[f], clip[f].expand(N, D))
    assert torch.equal(exact[F], clip[0].expand(N, D))

    noisy = init_from_clip(clip, tokens=N, noise_std=0.01, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noisy, exact, rtol=0, atol=0.1 * float(clip.std()))
    assert not torch.equal(noisy[:, 0], noisy[:, 1])  # the N copies differ


def test_other_initialisations():
    assert init_zeros(F, N, D).abs().sum() == 0 and init_zeros(F, N, D).shape == (F + 1, N, D)
    rnd = init_random(F, N, D, std=2.0, generator=torch.Generator().manual_seed(0))
    assert rnd.shape == (F + 1, N, D) and 1.5 < float(rnd.std()) < 2.5


def test_a_saved_embedding_is_readable_by_others_like_any_plain_file(tmp_path):
    """safetensors writes 0600; an embedding gets the mode a plain open() would give it."""
    import os
    import stat

    import torch

    from reenact.embedding import MotionEmbedding

    old = os.umask(0o022)
    try:
        path = MotionEmbedding(torch.zeros(3, 2, 4), {}).save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


# ---------------------------------------------------------------- what a file may claim


def test_non_finite_embeddings_are_refused_on_load(tmp_path):
    for bad in (float("nan"), float("inf")):
        tensor = torch.zeros(F + 1, N, D)
        tensor[2, 1, 5] = bad
        path = MotionEmbedding(tensor).save(tmp_path / "diverged.safetensors")
        with pytest.raises(EmbeddingError, match=r"diverged.safetensors contains 1 non-finite"):
            MotionEmbedding.load(path)


@pytest.mark.parametrize("shape, claim", [
    ((LIMITS["num_frames"] + 2, 1, 4), "num_frames"),
    ((2, LIMITS["tokens"] + 1, 4), "tokens"),
    ((2, 1, LIMITS["dim"] + 1), "dim"),
])
def test_counts_beyond_the_limits_are_refused_before_the_tensor_is_read(tmp_path, shape, claim,
                                                                        monkeypatch):
    path = tmp_path / "big.safetensors"
    save_file({"motion_embedding": torch.zeros(shape)}, str(path))
    import safetensors

    read = []  # the tensor must not be read (allocated) once its header is out of bounds
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self._fh = real_open(*args, **kwargs)

        def __enter__(self):
            self._inner = self._fh.__enter__()
            return self

        def __exit__(self, *exc):
            return self._fh.__exit__(*exc)

        def get_tensor(self, name):
            read.append(name)
            return self._inner.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr("reenact.embedding.safe_open", Spy)
    with pytest.raises(EmbeddingError, match=rf"big.safetensors claims {claim}="):
        MotionEmbedding.load(path)
    assert read == []


def test_integer_tensors_are_refused(tmp_path):
    path = tmp_path / "ints.safetensors"
    save_file({"motion_embedding": torch.zeros(F + 1, N, D, dtype=torch.int64)}, str(path))
    with pytest.raises(EmbeddingError, match="floating point"):
        MotionEmbedding.load(path)


@pytest.mark.parametrize("metadata, named", [
    ({"height": 10**9, "width": 32}, "height=1000000000"),
    ({"height": 32, "width": -8}, "width=-8"),
    ({"height": 36, "width": 32}, "height=36"),  # not a multiple of 8
    ({"height": "32", "width": 32}, "height='32'"),
    ({"fps": float("inf")}, "fps=inf"),
    ({"motion_bucket_id": 10**12}, "motion_bucket_id"),
    ({"noise_aug_strength": float("nan")}, "noise_aug_strength=nan"),
])
def test_recorded_sizes_and_conditioning_are_bounded_on_load(tmp_path, metadata, named):
    path = make_embedding(**metadata).save(tmp_path / "forged.safetensors")
    with pytest.raises(EmbeddingError, match=re.escape(named)) as err:
        MotionEmbedding.load(path)
    assert "forged.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_sensible_recorded_values_load(tmp_path):
    meta = {"height": 576, "width": 1024, "fps": 7, "motion_bucket_id": 127,
            "noise_aug_strength": 0.02, "final_loss": float("nan")}  # informational: kept
    loaded = MotionEmbedding.load(make_embedding(**meta).save(tmp_path / "ok.safetensors"))
    assert loaded.metadata["height"] == 576 and loaded.metadata["fps"] == 7


def test_recorded_size_is_checked_against_the_model():
    check_recorded_size(make_embedding(height=576, width=1024), 576, 1024)
    check_recorded_size(make_embedding(height=1024, width=576), 576, 1024)  # portrait
    check_recorded_size(make_embedding(height=2048, width=2048), 576, 1024)  # 2x: allowed
    check_recorded_size(make_embedding(), 32, 32)  # nothing recorded
    with pytest.raises(EmbeddingError, match=r"records a size 4096x4096, more than 2x this model's native 576x1024"):
        check_recorded_size(make_embedding(height=4096, width=4096), 576, 1024)
    with pytest.raises(EmbeddingError, match="native 32x32"):
        check_recorded_size(make_embedding(height=32, width=256), 32, 32)
