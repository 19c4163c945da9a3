"""Generation: Stable Video Diffusion with the learned motion embedding as its cross-attention.

:class:`MotionTransferPipeline` is ``StableVideoDiffusionPipeline`` with one change: the CLIP
image embedding of the target image is *replaced* by the motion-text embedding (routed per frame
by :mod:`reenact.routing`). Everything else is SVD's own ``__call__``: the target image's VAE
latent is concatenated to the noisy latents, classifier-free guidance zeroes both the image latent
(SVD's ``_encode_vae_image``) and the embedding (here) in the negative branch, and the guidance
scale rises per frame from ``min_guidance_scale`` to ``max_guidance_scale``.
"""

from __future__ import annotations

import PIL.Image
import torch
from diffusers import StableVideoDiffusionPipeline

from .embedding import MotionEmbedding
from .errors import ConfigError
from .routing import flatten_embedding, install_motion_routing

__all__ = ["MotionTransferPipeline"]


class MotionTransferPipeline(StableVideoDiffusionPipeline):
    """SVD image-to-video whose cross-attention context is a learned motion embedding.

    Same components as SVD, so ``MotionTransferPipeline.from_pretrained(svd_folder_or_hub_id)``
    loads any SVD checkpoint. ``pipe(image, motion_embedding=emb, ...)`` animates ``image`` with
    the motion of ``emb``; ``pipe(image)`` is stock SVD (the baseline).
    """

    _motion_embedding: torch.Tensor | None = None

    def __call__(
        self,
        image,
        motion_embedding: MotionEmbedding | torch.Tensor | None = None,
        **svd_kwargs,
    ):
        """Generate like ``StableVideoDiffusionPipeline.__call__`` (same keyword arguments).

        ``motion_embedding``: a :class:`MotionEmbedding`, or a tensor ``(F+1, N, d)`` (one motion
        for every image) or ``(B, F+1, N, d)`` (one per image in the batch). ``num_frames``
        defaults to the embedding's F and must equal it if given. The routing is installed on the
        UNet for this call only.
        """
        if motion_embedding is None:
            return super().__call__(image, **svd_kwargs)

        tensor = motion_embedding
        if isinstance(motion_embedding, MotionEmbedding):
            tensor = motion_embedding.tensor
        if tensor.ndim not in (3, 4):
            raise ConfigError(f"motion embedding must be (F+1, N, d), got {tuple(tensor.shape)}")
        num_sets, tokens, dim = tensor.shape[-3:]
        frames = num_sets - 1
        if svd_kwargs.get("num_frames") is None:
            svd_kwargs["num_frames"] = frames
        elif svd_kwargs["num_frames"] != frames:
            raise ConfigError(
                f"num_frames={svd_kwargs['num_frames']} but the motion embedding has F={frames} "
                "frame sets; generate with its F frames"
            )
        if dim != self.unet.config.cross_attention_dim:
            raise ConfigError(
                f"motion embedding width d={dim} != the UNet's cross_attention_dim "
                f"{self.unet.config.cross_attention_dim}"
            )

        handle = install_motion_routing(self.unet, tokens=tokens, num_frames=frames)
        self._motion_embedding = tensor
        try:
            return super().__call__(image, **svd_kwargs)
        finally:
            self._motion_embedding = None
            handle.remove()

    def decode_latents(self, latents: torch.Tensor, num_frames: int, decode_chunk_size: int = 14):
        """Decode each video of the batch on its own.

        SVD's ``decode_latents`` flattens the batch to ``B*F`` frames and decodes them in chunks
        of ``decode_chunk_size``; the VAE decoder's temporal layers treat a chunk as one clip, so
        a chunk that spans two videos mixes them, and a video would depend on what else is in
        its batch. The latents are cast to the VAE's dtype, which may differ from the UNet's.
        """
        latents = latents.to(self.vae.dtype)  # the VAE may run in its own precision (--vae-dtype)
        videos = []
        for i in range(latents.shape[0]):
            videos.append(super().decode_latents(latents[i : i + 1], num_frames, decode_chunk_size))
        return torch.cat(videos)

    def _encode_image(self, image, device, num_videos_per_prompt: int, do_classifier_free_guidance: bool):
        """The flattened motion embedding ``(B*num_videos, (F+1)*N, d)`` in place of CLIP's.

        Under CFG the negative half is zeros, as SVD's negative CLIP embedding.
        """
        if self._motion_embedding is None:
            return super()._encode_image(image, device, num_videos_per_prompt, do_classifier_free_guidance)

        if isinstance(image, PIL.Image.Image):
            batch = 1
        elif isinstance(image, list):
            batch = len(image)
        else:
            batch = image.shape[0]  # as SVD's __call__ counts a tensor batch
        emb = flatten_embedding(self._motion_embedding).to(device=device, dtype=self.unet.dtype)
        if emb.shape[0] == 1:
            emb = emb.expand(batch, -1, -1)
        elif emb.shape[0] != batch:
            raise ConfigError(f"{emb.shape[0]} motion embeddings for {batch} images")
        # One embedding per image, tiled for its videos the way SVD's _encode_vae_image tiles the
        # image latents (`repeat`: video k of the batch is image k % batch). Stock SVD's own
        # _encode_image orders its CLIP embeddings image-major instead, which pairs image 1's
        # latent with image 0's CLIP token when num_videos_per_prompt > 1; with a motion
        # embedding the motion must follow the latent it animates.
        emb = emb.repeat(num_videos_per_prompt, 1, 1)
        if do_classifier_free_guidance:
            emb = torch.cat([torch.zeros_like(emb), emb])
        return emb
