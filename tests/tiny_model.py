"""A tiny random Stable Video Diffusion pipeline, saved as a diffusers folder.

Same component classes and configuration *shape* as the real SVD checkpoint (and as diffusers'
own SVD pipeline tests), so everything that loads SVD loads this, but small enough to run a
full CFG generation on a CPU in well under a second. The weights are random (seed 0): tests use
it for shapes, routing and equivalences, never for quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

#: cross-attention width of the tiny model (SVD: 1024)
TINY_DIM = 32


def build_tiny_svd(path: str | Path, num_frames: int = 4) -> Path:
    """Build a tiny random SVD pipeline and ``save_pretrained`` it into ``path``.

    Latents are 4 channels at 1/2 the pixel resolution (two VAE blocks), so 32x32 pixel frames
    give 16x16 latents.
    """
    path = Path(path)
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TINY_DIM,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
        num_frames=num_frames,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
        steps_offset=1,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=TINY_DIM,
            projection_dim=TINY_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,  # the pipeline resizes to 224 before CLIP
            patch_size=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    pipe.save_pretrained(path)
    return path
