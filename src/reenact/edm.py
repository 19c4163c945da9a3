"""The EDM maths of Stable Video Diffusion, in one place (docs/METHOD.md, "The loss").

SVD is trained (and inverted here) as an EDM denoiser with v-prediction and ``sigma_data = 1``:

    x_s  = x_0 + s * n,                    ln s ~ N(mean, std^2)
    D(x_s) = c_skip(s) x_s + c_out(s) F(c_in(s) x_s; c_noise(s), context, cond)
    loss = mean( w(s) * weight * (D(x_s) - x_0)^2 ),   w(s) = (1 + s^2) / s^2 = 1 / c_out^2

Everything that needs one of these -- the inversion, the toy model's trainer, the benchmarks --
calls this module, so the scalings cannot drift apart (k-diffusion's ``Denoiser`` is the model:
the preconditioning, the denoiser and the loss live together). :class:`Preconditioning` is a
named tuple, so callers read ``p.c_in`` rather than remembering an order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Preconditioning", "preconditioning", "loss_weight", "sample_sigma", "denoise", "loss",
           "append_dims"]


class Preconditioning(NamedTuple):
    """The four EDM scalings of a noise level ``s`` (v-prediction, ``sigma_data = 1``)."""

    c_skip: torch.Tensor  # 1 / (s^2 + 1)
    c_out: torch.Tensor  # -s / sqrt(s^2 + 1)
    c_in: torch.Tensor  # 1 / sqrt(s^2 + 1)
    c_noise: torch.Tensor  # ln(s) / 4: the UNet's timestep input


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-sample ``(B,)`` tensor as ``(B, 1, ..., 1)`` with ``ndim`` dimensions."""
    return x.view(*x.shape, *([1] * (ndim - x.ndim)))


def preconditioning(sigma: torch.Tensor) -> Preconditioning:
    """EDM preconditioning for v-prediction with ``sigma_data = 1`` (SVD's), per sample."""
    s2 = sigma * sigma
    return Preconditioning(
        c_skip=1.0 / (s2 + 1.0),
        c_out=-sigma / torch.sqrt(s2 + 1.0),
        c_in=1.0 / torch.sqrt(s2 + 1.0),
        c_noise=0.25 * torch.log(sigma),
    )


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """``w(s) = (1+s^2)/s^2 = 1/c_out^2``: every noise level contributes a unit-variance target."""
    return (1.0 + sigma * sigma) / (sigma * sigma)


def sample_sigma(n: int, mean: float, std: float, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` noise levels with ``ln s ~ N(mean, std^2)`` (EDM's training distribution)."""
    return torch.exp(mean + std * torch.randn(n, generator=generator, device=device))


def denoise(
    unet: torch.nn.Module,
    x_s: torch.Tensor,
    sigma: torch.Tensor,
    cond: torch.Tensor,
    context: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> torch.Tensor:
    """The denoiser ``D(x_s) = c_skip*x_s + c_out*F(c_in*x_s; c_noise, context, cond)``, float32.

    ``x_s`` ``(B, F, C, h, w)`` noisy scaled latents, ``sigma`` ``(B,)``, ``cond``
    ``(B, F, C, h, w)`` the unscaled conditioning latent repeated over frames (concatenated on
    channels, as the SVD pipeline does), ``context`` the cross-attention context ``(B, T, d)``
    (the flattened motion embedding, or one token per clip for the toy trainer),
    ``added_time_ids`` ``(B, 3)``. The UNet runs in its own dtype (or under the caller's
    autocast); D is float32.
    """
    c_skip, c_out, c_in, c_noise = (append_dims(c, x_s.ndim) for c in preconditioning(sigma))
    dtype = getattr(unet, "dtype", x_s.dtype)
    unet_in = torch.cat([c_in * x_s, cond.to(x_s.dtype)], dim=2).to(dtype)
    out = unet(
        unet_in,
        c_noise.flatten().to(dtype),
        encoder_hidden_states=context.to(dtype),
        added_time_ids=added_time_ids.to(dtype),
        return_dict=False,
    )[0]
    return c_skip * x_s.float() + c_out * out.float()


def loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
         weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(w(s) * weight * (D - x_0)^2)`` over batch, frames, channels and pixels.

    ``weight``: an optional extra per-element weight broadcastable to ``x0`` (the toy trainer
    raises it where the object is, so the motion is not a residual the model can average away).
    """
    w = append_dims(loss_weight(sigma), x0.ndim)
    if weight is not None:
        w = w * weight
    return (w * (denoised.float() - x0.float()) ** 2).mean()
