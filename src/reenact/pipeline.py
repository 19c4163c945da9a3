"""Generation: Stable Video Diffusion with the learned motion embedding as its cross-attention.

:class:`MotionTransferPipeline` is ``StableVideoDiffusionPipeline`` with one change: the CLIP
image embedding of the target image is *replaced* by the motion-text embedding (routed per frame
by :mod:`reenact.routing`). Everything else is SVD's own ``__call__``: the target image's VAE
latent is concatenated to the noisy latents, classifier-free guidance zeroes both the image latent
(SVD's ``_encode_vae_image``) and the embedding (here) in the negative branch, and the guidance
scale rises per frame from ``min_guidance_scale`` to ``max_guidance_scale``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers import StableVideoDiffusionPipeline

from .embedding import MotionEmbedding
from .errors import ConfigError
from .routing import flatten_embedding, install_motion_routing
from .settings import setting, validate

__all__ = ["MotionTransferPipeline", "GenerationConfig", "SVD_CALL_DEFAULTS"]

#: ``StableVideoDiffusionPipeline.__call__``'s keyword defaults (steps, guidance, fps, bucket,
#: noise_aug_strength, size): read, not copied, so they follow diffusers.
SVD_CALL_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(StableVideoDiffusionPipeline.__call__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
_GEN = "generation (defaults: SVD pipeline; micro-conditioning and size from the embedding's metadata when recorded)"
_SVD_SRC = "SVD pipeline default"


@dataclass
class GenerationConfig:
    """The knobs of one generation. ``None`` means: the embedding's recorded value, else SVD's
    (micro-conditioning) or the model's native size -- resolved by :meth:`resolve`."""

    steps: int = setting(SVD_CALL_DEFAULTS["num_inference_steps"], "Euler denoising steps",
                         low=1, high=1000, group=_GEN, source=_SVD_SRC)
    min_guidance: float = setting(SVD_CALL_DEFAULTS["min_guidance_scale"], "CFG scale of the first frame",
                                  low=0.0, high=100.0, group=_GEN, source=_SVD_SRC)
    max_guidance: float = setting(SVD_CALL_DEFAULTS["max_guidance_scale"],
                                  "CFG scale of the last frame, linear in between", low=0.0,
                                  high=100.0, group=_GEN, source=_SVD_SRC)
    fps: int | None = setting(None, f"fps micro-conditioning and of the written video (default: the "
                              f"embedding's, else SVD's {SVD_CALL_DEFAULTS['fps']})", group=_GEN)
    motion_bucket_id: int | None = setting(
        None, f"motion-amount micro-conditioning (default: the embedding's, else SVD's "
        f"{SVD_CALL_DEFAULTS['motion_bucket_id']})", group=_GEN)
    noise_aug_strength: float | None = setting(
        None, f"noise added to the image's latent (default: the embedding's, else SVD's "
        f"{SVD_CALL_DEFAULTS['noise_aug_strength']})", group=_GEN)
    height: int | None = setting(None, "output height, a multiple of 8 (default: the embedding's, "
                                 "else the model's native height)", group=_GEN)
    width: int | None = setting(None, "output width, a multiple of 8 (default: the embedding's, "
                                "else the model's native width)", group=_GEN)
    decode_chunk_size: int = setting(8, "frames per VAE decode (lower it if out of memory)", low=1,
                                     high=1024, group=_GEN,
                                     source="SVD docs' value; decoding all frames at once is a common OOM")
    seed: int = setting(0, "seed of the generation noise (each image gets the same seed)", low=0,
                        high=2**63 - 1, flag=False)

    def validate(self) -> None:
        """ConfigError naming the first bad value (ranges of the optional ones included)."""
        validate(self)
        for name, low, high in (("fps", 1, 1000), ("motion_bucket_id", 0, 1023),
                                ("noise_aug_strength", 0.0, 10.0), ("height", 8, 4096),
                                ("width", 8, 4096)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}] (got {value})")
        for name in ("height", "width"):
            if getattr(self, name) is not None and getattr(self, name) % 8:
                raise ConfigError(f"{name} must be a positive multiple of 8 (got {getattr(self, name)})")

    def resolve(self, embedding: MotionEmbedding | None, native_size: tuple[int, int]) -> GenerationConfig:
        """Every ``None`` filled: the embedding's recorded value, else SVD's / the native size."""
        meta = embedding.metadata if embedding is not None else {}

        def pick(key: str, fallback):
            value = getattr(self, key)
            if value is None:
                value = meta.get(key)
            return fallback if value is None or isinstance(value, bool) else value

        return dataclasses.replace(
            self,
            fps=int(pick("fps", SVD_CALL_DEFAULTS["fps"])),
            motion_bucket_id=int(pick("motion_bucket_id", SVD_CALL_DEFAULTS["motion_bucket_id"])),
            noise_aug_strength=float(pick("noise_aug_strength", SVD_CALL_DEFAULTS["noise_aug_strength"])),
            height=int(pick("height", native_size[0])),
            width=int(pick("width", native_size[1])),
        )


class MotionTransferPipeline(StableVideoDiffusionPipeline):
    """SVD image-to-video whose cross-attention context is a learned motion embedding.

    Same components as SVD, so ``MotionTransferPipeline.from_pretrained(svd_folder_or_hub_id)``
    loads any SVD checkpoint. ``pipe(image, motion_embedding=emb, ...)`` animates ``image`` with
    the motion of ``emb``; ``pipe(image)`` is stock SVD (the baseline).
    """

    _motion_embedding: torch.Tensor | None = None

    def animate(
        self,
        images: Sequence[PIL.Image.Image],
        embedding: MotionEmbedding | torch.Tensor | None,
        config: GenerationConfig,
        output_type: str = "pt",
    ):
        """Animate ``images`` in one batched call with a *resolved* ``config`` (see
        :meth:`GenerationConfig.resolve`); ``embedding=None`` is stock SVD (the baseline).

        One generator per image, all seeded ``config.seed``: an image's video does not depend
        on which other images share its batch. Returns the pipeline's ``frames``: for ``"pt"`` a
        ``(B, F, 3, H, W)`` tensor in ``[-1, 1]`` on the CPU, else lists of PIL images.
        """
        if embedding is not None:
            num_frames = (embedding.num_frames if isinstance(embedding, MotionEmbedding)
                          else embedding.shape[-3] - 1)
        else:
            num_frames = self.unet.config.num_frames
        frames = self(
            list(images),
            motion_embedding=embedding,
            height=config.height,
            width=config.width,
            num_frames=num_frames,
            num_inference_steps=config.steps,
            min_guidance_scale=config.min_guidance,
            max_guidance_scale=config.max_guidance,
            fps=config.fps,
            motion_bucket_id=config.motion_bucket_id,
            noise_aug_strength=config.noise_aug_strength,
            decode_chunk_size=config.decode_chunk_size,
            generator=[torch.Generator().manual_seed(config.seed) for _ in images],
            output_type=output_type,
        ).frames
        return frames.float().cpu() * 2 - 1 if output_type == "pt" else frames

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
