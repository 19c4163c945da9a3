"""Activation checkpointing of SVD's UNet, temporal blocks included: what ``--gradient-checkpointing``
turns on during an inversion.

Its own module, importing only torch and diffusers' model classes, so that code which must run
where transformers (and so diffusers' SVD pipeline) is missing -- ``benchmarks/gpu_unet.py`` on a
bare GPU machine -- uses this very code rather than a copy. ``reenact.inversion`` re-exports both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def checkpoint_temporal_blocks(unet: torch.nn.Module) -> Iterator[int]:
    """Checkpoint every temporal transformer block of ``unet`` too, for the duration.

    ``unet.enable_gradient_checkpointing()`` makes SVD's UNet recompute its resnets and *spatial*
    transformer blocks in the backward pass, but diffusers'
    ``TransformerSpatioTemporalModel.forward`` calls its ``temporal_transformer_blocks`` outside
    any checkpoint, so their activations stay saved: at 14x576x1024 with fp16 weights an inversion
    step then still peaks at 32.3 GB, 11.0 GB with this (docs/PERFORMANCE.md). Each block's
    ``forward`` is wrapped in ``torch.utils.checkpoint`` (non-reentrant, as diffusers does) while
    grad is enabled; the gradients are unchanged. Yields the number of blocks wrapped; on exit
    every block gets its own ``forward`` back.
    """
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    blocks = [b for m in unet.modules() if isinstance(m, TransformerSpatioTemporalModel)
              for b in m.temporal_transformer_blocks]
    saved = [b.__dict__.get("forward") for b in blocks]  # None: the class's forward

    def checkpointed(forward):
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)
        return run

    for b in blocks:
        b.forward = checkpointed(b.forward)
    try:
        yield len(blocks)
    finally:
        for b, forward in zip(blocks, saved):
            if forward is None:
                del b.forward
            else:
                b.forward = forward


@contextlib.contextmanager
def gradient_checkpointing(unet: torch.nn.Module) -> Iterator[None]:
    """diffusers' gradient checkpointing plus :func:`checkpoint_temporal_blocks`, undone on exit.

    What ``InversionConfig.gradient_checkpointing`` turns on. Leaves diffusers' flag on if it was
    on before.
    """
    had = getattr(unet, "is_gradient_checkpointing", False)
    if not had:
        unet.enable_gradient_checkpointing()
    try:
        with checkpoint_temporal_blocks(unet):
            yield
    finally:
        if not had:
            unet.disable_gradient_checkpointing()
