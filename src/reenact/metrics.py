"""Image and video scores shared by the CLI, the toy benchmark and the toy trainer.

One PSNR for the whole package: pixels in ``[-1, 1]`` (the package's convention for frames),
measured on the ``[0, 1]`` scale with peak 1, so figures compare with the usual 8-bit PSNR.
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "frame_psnr"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images (or stacks) in ``[-1, 1]``, on the ``[0, 1]`` scale; inf if equal."""
    mse = (((a.detach().float().cpu() - b.detach().float().cpu()) / 2) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def frame_psnr(video: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Per-frame :func:`psnr` of ``video`` to ``reference``, both ``(F, 3, H, W)`` in ``[-1, 1]``.

    The paper's reconstruction diagnostic (docs/METHOD.md, "Reconstruction"): an embedding that
    cannot regenerate its own reference from the first frame rarely transfers its motion.
    """
    if video.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(video.shape)} vs {tuple(reference.shape)}")
    return [psnr(v, r) for v, r in zip(video, reference)]
