"""Shared fixtures: a tiny random SVD model on disk, loaded the way the library loads models."""

from __future__ import annotations

import pytest
import torch

from tiny_model import build_tiny_svd

#: frames of the tiny model
TINY_FRAMES = 4

# The test models are tiny: one thread is as fast, and with the CPU shared (a training job, CI)
# several intra-op threads spin against each other and get ~100x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_svd_dir(tmp_path_factory):
    """A diffusers SVD folder with random tiny weights (4 frames, d = 32)."""
    return build_tiny_svd(tmp_path_factory.mktemp("tiny_svd"), num_frames=TINY_FRAMES)


@pytest.fixture
def tiny_pipe(tiny_svd_dir):
    """The tiny model as a MotionTransferPipeline on the CPU in fp32."""
    from reenact import models

    return models.load_pipeline(str(tiny_svd_dir), torch.device("cpu"), torch.float32)
