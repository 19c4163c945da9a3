"""Generation with a motion embedding, and loading models."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from reenact import models
from reenact.embedding import MotionEmbedding, init_random
from reenact.errors import ConfigError, ModelNotFoundError
from reenact.pipeline import MotionTransferPipeline

F, D = 4, 32
SIZE = 32


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8))


def generate(pipe, image, **kwargs):
    kwargs = {
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 3.0,  # CFG on: the negative branch zeroes the embedding
        "output_type": "pt",
        "generator": torch.Generator().manual_seed(0),
        **kwargs,
    }
    return pipe(image, **kwargs).frames


def test_generates_F_frames_with_a_motion_embedding(tiny_pipe, image):
    emb = MotionEmbedding(init_random(F, 2, D, std=1.0, generator=torch.Generator().manual_seed(0)))
    before = dict(tiny_pipe.unet.attn_processors)
    frames = generate(tiny_pipe, image, motion_embedding=emb)
    assert frames.shape == (1, F, 3, SIZE, SIZE)
    assert torch.isfinite(frames).all()
    # the routing lives only for the call: processors and hooks are restored
    after = tiny_pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in before)
    assert len(tiny_pipe.unet._forward_pre_hooks) == 0
    # and it matters: another embedding gives another video
    other = generate(tiny_pipe, image, motion_embedding=torch.zeros(F + 1, 2, D))
    assert not torch.allclose(frames, other)


def test_a_video_does_not_depend_on_the_rest_of_its_batch(tiny_pipe, image):
    """Same image, same seed, alone or batched: same video (the VAE decodes videos apart)."""
    emb = MotionEmbedding(init_random(F, 2, D, std=1.0, generator=torch.Generator().manual_seed(0)))
    seeded = [torch.Generator().manual_seed(0) for _ in range(2)]
    other = PIL.Image.fromarray(np.full((SIZE, SIZE, 3), 200, dtype=np.uint8))
    alone = generate(tiny_pipe, image, motion_embedding=emb)
    batched = generate(tiny_pipe, [other, image], motion_embedding=emb, generator=seeded)
    torch.testing.assert_close(batched[1], alone[0], rtol=0, atol=1e-4)  # was ~0.3 apart


def test_all_sets_equal_to_the_clip_embedding_is_stock_svd(tiny_svd_dir, image):
    """F+1 copies of SVD's own CLIP token through the routing = stock SVD, the whole CFG loop.

    Compared in float64 so that the test does not depend on one CPU's float32 rounding: the
    routed temporal attention (K/V once per batch item) sums in another order than the stock
    per-position path, which in float32 leaves ~1e-4 on the latents after two CFG steps and
    differs between Intel and AMD CPUs. In float64 the same reordering is ~1e-16; the tolerance
    is 1e4 float64 epsilons, ~1e10 times below any real routing mistake (O(1e-2) here).
    """
    pipe = models.load_pipeline(str(tiny_svd_dir), torch.device("cpu"), torch.float64)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float64
    clip = pipe._encode_image(image, "cpu", 1, False)[0]  # (1, d): SVD's own conditioning
    emb = clip[None].expand(F + 1, 1, D)
    stock = generate(pipe, image, output_type="latent")
    ours = generate(pipe, image, motion_embedding=emb, output_type="latent")
    assert stock.dtype == torch.float64
    tolerance = 1e4 * torch.finfo(torch.float64).eps * stock.abs().max().item()
    torch.testing.assert_close(ours, stock, rtol=0, atol=tolerance)
    # and it can fail: another token in the temporal set moves the latents far beyond that
    other = emb.clone()
    other[F] = other[F] + 0.1
    moved = generate(pipe, image, motion_embedding=other, output_type="latent")
    assert (moved - stock).abs().max().item() > 1e6 * tolerance


def test_without_an_embedding_it_is_stock_svd(tiny_pipe, tiny_svd_dir, image):
    svd = StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir)
    svd.set_progress_bar_config(disable=True)
    assert torch.equal(generate(tiny_pipe, image), generate(svd, image))


def test_one_embedding_per_image_and_several_videos_per_image(tiny_pipe, image):
    """Distinct images, distinct embeddings, 2 videos each: every video pairs its image with
    that image's embedding. Each batched video is compared with the same image generated alone
    (same starting latents) with its own embedding and with the other one."""
    other_image = PIL.Image.fromarray(np.full((SIZE, SIZE, 3), (230, 40, 90), dtype=np.uint8))
    images = [image, other_image]
    embs = 3.0 * torch.randn(2, F + 1, 2, D, generator=torch.Generator().manual_seed(0))
    latents = torch.randn(4, F, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    common = {"noise_aug_strength": 0.0, "output_type": "latent"}  # no draw from the generator
    batched = generate(tiny_pipe, images, motion_embedding=embs, num_videos_per_prompt=2,
                       latents=latents, **common)
    assert batched.shape == (4, F, 4, SIZE // 2, SIZE // 2)
    for k in range(4):
        b = k % 2  # diffusers tiles the image latents: video k animates image k % 2
        mine = generate(tiny_pipe, images[b], motion_embedding=embs[b], latents=latents[k : k + 1],
                        **common)
        theirs = generate(tiny_pipe, images[b], motion_embedding=embs[1 - b],
                          latents=latents[k : k + 1], **common)
        gap = (mine - theirs).abs().max().item()
        assert gap > 1e-2, "the two embeddings must give distinguishable videos"
        # batched vs alone differs only by float32 summation order (2e-4 here vs a gap of ~3)
        assert (batched[k : k + 1] - mine).abs().max().item() < 1e-2 * gap


def test_frame_count_must_match_the_embedding(tiny_pipe, image):
    with pytest.raises(ConfigError, match="F=4"):
        generate(tiny_pipe, image, motion_embedding=torch.zeros(F + 1, 1, D), num_frames=3)


def test_routing_is_removed_even_when_generation_fails(tiny_pipe, image):
    before = dict(tiny_pipe.unet.attn_processors)
    with pytest.raises(ValueError):  # SVD's own check: size must be a multiple of 8
        generate(tiny_pipe, image, motion_embedding=torch.zeros(F + 1, 1, D), height=30)
    after = tiny_pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in before)
    assert len(tiny_pipe.unet._forward_pre_hooks) == 0


# ---------------------------------------------------------------- loading


def test_load_pipeline_from_a_local_folder(tiny_svd_dir):
    pipe = models.load_pipeline(str(tiny_svd_dir), "cpu", torch.float32)
    assert isinstance(pipe, MotionTransferPipeline)
    assert pipe.model_name == str(tiny_svd_dir)
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_missing_local_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.load_pipeline(str(tmp_path / "no" / "such-model"), "cpu")
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        models.load_pipeline(str(tmp_path), "cpu")


def test_hub_id_not_in_cache_while_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as err:
        models.load_pipeline("reenact-tests/no-such-svd", "cpu")
    assert str(err.value) == (
        "model 'reenact-tests/no-such-svd' not found locally and could not be downloaded; download "
        "it (huggingface-cli download reenact-tests/no-such-svd --local-dir DIR) and pass --model DIR"
    )


def test_missing_bundled_toy_model_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "toy_model_dir", lambda name=models.TOY_MODEL: tmp_path / "model")
    with pytest.raises(ModelNotFoundError, match="python -m reenact.toy.train --out src/reenact/toy/model"):
        models.load_pipeline(models.TOY_MODEL, "cpu")


def test_device_and_dtype_resolution(monkeypatch):
    assert models.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        models.resolve_device("tpu-please")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        models.resolve_device("cuda")
    cpu = torch.device("cpu")
    assert models.resolve_dtype("fp32", cpu) == torch.float32
    assert models.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert models.resolve_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="use fp32 or bf16"):
        models.resolve_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown dtype"):
        models.resolve_dtype("int8", cpu)
