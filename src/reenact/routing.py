"""Cross-attention inflation: frame f's spatial attention sees set f, temporal attention set F.

Stable Video Diffusion has one cross-attention context (the CLIP token of the first frame). The
motion-text embedding has ``F+1`` sets of ``N`` tokens instead. Nothing in diffusers' forward
code has to change to feed it in, because of how the UNet already routes its context:

* the UNet repeat-interleaves ``encoder_hidden_states`` ``(B, T, d)`` over frames to
  ``(B*F, T, d)``; every *spatial* ``attn2`` (``...transformer_blocks.i.attn2``) receives it, row
  ``b*F + f`` belonging to frame ``f`` of batch item ``b``;
* every ``TransformerSpatioTemporalModel`` takes frame 0's slice, broadcasts it to all ``H*W``
  positions ``(B*H*W, T, d)`` and its *temporal* ``attn2``
  (``...temporal_transformer_blocks.i.attn2``) attends to that.

So we pass the flattened embedding ``(B, (F+1)*N, d)`` (:func:`flatten_embedding`) as
``encoder_hidden_states`` and swap in two attention processors that pick the right ``N`` tokens:
:class:`SpatialMotionAttnProcessor` (set ``f`` for row ``b*F + f``) and
:class:`TemporalMotionAttnProcessor` (set ``F``). With all ``F+1`` sets equal this is exactly the
stock UNet fed those ``N`` tokens — the test that pins the routing down.

**Lean hand-over** (the default, ``lean=True``): letting diffusers route the whole embedding
costs memory that nothing reads. Under CFG (B = 2) the temporal path's ``broadcast_to(...)
.reshape`` *copies* ``B*H*W*(F+1)*N*d`` elements per temporal block (~2.8 GB at 14x576x1024,
fp16), and in an inversion the backward of selecting set ``F`` from that broadcast allocates a
dense zero tensor of the same shape per temporal block. So the UNet's forward pre-hook keeps the
``(B, (F+1)*N, d)`` embedding in the :class:`RoutingState` and hands the UNet a one-token
placeholder ``(B, 1, d)`` instead; both processors read their sets from the state. diffusers'
repeat / broadcast then move one zero token per row, and the gradient flows straight from the
selected sets to the embedding. ``lean=False`` keeps the old hand-over (diffusers routes the
whole embedding; the processors pick from what they receive) so benchmarks can measure the
difference; outputs and gradients are the same (tests).

The temporal context is the same for every spatial position, so the temporal processor projects
its K/V once per batch item instead of once per position (the stock path computes ``B*H*W``
identical projections). Measured at 14x576x1024 (``benchmarks/flops.py``, docs/PERFORMANCE.md):
for N = 5 tokens those per-position projections are 1.2% of the UNet's forward FLOPs, so this
saves ~1.1% against stock SVD fed 5 tokens; against the stock processors fed the whole inflated
``(F+1)*N = 75``-token context -- the naive path, where they are 15.1% of the forward -- routing
saves 15.0% of an inversion step.

Attention itself runs through ``F.scaled_dot_product_attention`` (``attention="sdpa"``, as
diffusers' ``AttnProcessor2_0``) or, with ``attention="eager"``, through diffusers' classic
``AttnProcessor`` path (``get_attention_scores`` + ``bmm``: the whole attention matrix in memory).
:func:`set_attention` switches every layer of a UNet; the routing follows what it finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

__all__ = [
    "ATTENTION_KINDS",
    "set_attention",
    "RoutingState",
    "SpatialMotionAttnProcessor",
    "TemporalMotionAttnProcessor",
    "RoutingHandle",
    "install_motion_routing",
    "flatten_embedding",
]

_TEMPORAL_MARK = ".temporal_transformer_blocks."
#: ``sdpa``: torch's fused ``scaled_dot_product_attention`` (diffusers' default for torch >= 2);
#: ``eager``: diffusers' classic matmul-softmax ``AttnProcessor`` (materialises ``L x L``).
ATTENTION_KINDS = ("sdpa", "eager")
_SDPA, _EAGER = AttnProcessor2_0(), AttnProcessor()  # stateless: one instance serves all layers


def set_attention(unet: torch.nn.Module, kind: str) -> dict:
    """Give every attention layer of ``unet`` diffusers' ``kind`` processor; return the old ones.

    ``unet.set_attn_processor(returned)`` undoes it. Install motion routing *after* this: it
    replaces the cross-attention processors again and keeps to the same kind.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)} (got {kind!r})")
    previous = dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor() if kind == "eager" else AttnProcessor2_0())
    return previous


@dataclass
class RoutingState:
    """What the processors need to know about the current UNet call.

    ``num_sets`` = F+1 and ``tokens`` = N are fixed by the embedding; ``batch_size`` (B of the
    UNet's ``sample``, CFG included) is recorded by the UNet pre-hook on every call and refreshed
    by the spatial processor, which always runs before the temporal one of the same block.
    ``kv_once=False`` computes the temporal K/V per spatial position like stock diffusers; it
    exists only so benchmarks can compare the two. ``attention``: ``"sdpa"`` or ``"eager"``.

    ``lean``: the pre-hook stores the call's embedding ``(B, (F+1)*N, d)`` in ``context`` and the
    UNet gets a one-token placeholder (module docstring). ``context`` stays set after the call:
    with gradient checkpointing the processors run again in the backward pass and must see the
    same embedding, so each UNet call's backward must come before the next call's forward (as
    an optimisation loop does); :meth:`RoutingHandle.remove` clears it.
    """

    num_sets: int
    tokens: int
    batch_size: int | None = None
    kv_once: bool = True
    attention: str = "sdpa"
    lean: bool = True
    context: torch.Tensor | None = None

    def attend(self, attn, hidden_states, context, attention_mask, temb) -> torch.Tensor:
        """diffusers' own processor of the chosen kind, on the routed ``context``."""
        processor = _EAGER if self.attention == "eager" else _SDPA
        return processor(attn, hidden_states, context, attention_mask, temb)

    @property
    def num_frames(self) -> int:
        return self.num_sets - 1

    def sets(self, encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        """The embedding as ``(rows, F+1, N, d)``: the stored one (lean, rows = B) or the
        context diffusers handed the processor (rows = B*F spatial, B*H*W temporal)."""
        if self.lean:
            if self.context is None:
                raise RuntimeError(
                    "lean motion routing has no embedding: call the UNet that "
                    "install_motion_routing() was applied to"
                )
            return self.context.unflatten(1, (self.num_sets, self.tokens))
        if encoder_hidden_states is None:
            raise ValueError("motion routing installed on a self-attention layer")
        return _split_sets(encoder_hidden_states, self)


def _split_sets(ehs: torch.Tensor, state: RoutingState) -> torch.Tensor:
    """View ``(rows, (F+1)*N, d)`` as ``(rows, F+1, N, d)``, with a clear error on mismatch."""
    length = ehs.shape[1]
    if length != state.num_sets * state.tokens:
        raise ValueError(
            f"cross-attention context has {length} tokens, expected (F+1)*N = "
            f"{state.num_sets}*{state.tokens} = {state.num_sets * state.tokens}: pass the "
            "flattened motion embedding as encoder_hidden_states"
        )
    return ehs.unflatten(1, (state.num_sets, state.tokens))  # a view for diffusers' layouts


class SpatialMotionAttnProcessor(AttnProcessor2_0):
    """Spatial cross-attention of frame ``f`` attends to set ``f`` only.

    ``hidden_states`` is ``(B*F, L, C)`` and ``encoder_hidden_states`` ``(B*F, (F+1)*N, d)``; row
    ``b*F + f`` keeps tokens ``f*N:(f+1)*N``. The attention itself is diffusers'
    :class:`AttnProcessor2_0` (:class:`AttnProcessor` for ``attention="eager"``), unchanged
    (norm_cross, residual, rescale, masks as there).
    """

    def __init__(self, state: RoutingState):
        super().__init__()
        self.state = state

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sets = self.state.sets(encoder_hidden_states)
        num_frames = self.state.num_frames
        rows = hidden_states.shape[0]
        if self.state.lean:  # sets (B, F+1, N, d): rows b*F + f take set f of item b
            if rows != sets.shape[0] * num_frames:
                raise ValueError(f"spatial attention got {rows} rows for batch {sets.shape[0]} "
                                 f"x F={num_frames} frames")
            context = sets[:, :num_frames].reshape(rows, self.state.tokens, sets.shape[-1])
        else:  # sets (B*F, F+1, N, d), repeat-interleaved by diffusers
            if rows % num_frames:
                raise ValueError(f"spatial attention got {rows} rows, not a multiple of F={num_frames}")
            self.state.batch_size = rows // num_frames
            frame = torch.arange(rows, device=sets.device) % num_frames
            context = sets[torch.arange(rows, device=sets.device), frame]  # (B*F, N, d)
        return self.state.attend(attn, hidden_states, context, attention_mask, temb)


class TemporalMotionAttnProcessor(AttnProcessor2_0):
    """Temporal cross-attention attends to set ``F``, with K/V projected once per batch item.

    ``hidden_states`` is ``(B*H*W, F, C)`` (rows ordered ``b*H*W + p``) and
    ``encoder_hidden_states`` ``(B*H*W, (F+1)*N, d)``, whose ``H*W`` rows per batch item are
    identical copies (diffusers broadcasts frame 0's context; this is not re-checked here). We read
    set ``F`` from the first row of each batch item, project it to K/V ``(B, N, inner)`` and let
    all ``H*W*F`` queries of batch item ``b`` attend to those ``N`` keys in one SDPA call of shape
    ``(B, heads, H*W*F, head_dim) x (B, heads, N, head_dim)``. Softmax is per query, so this is
    the per-position attention exactly, with no broadcast tensor at all (not even a strided one),
    and it keeps the fused SDPA kernels usable. Gradients reach the embedding through that first
    row; since all rows are equal they are the stock gradients.
    """

    def __init__(self, state: RoutingState):
        super().__init__()
        self.state = state

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sets = self.state.sets(encoder_hidden_states)
        temporal = self.state.num_sets - 1
        rows = hidden_states.shape[0]
        batch = sets.shape[0] if self.state.lean else self.state.batch_size
        if batch is None or rows % batch or (not self.state.lean and sets.shape[0] != rows):
            raise RuntimeError(
                "temporal motion routing needs the UNet batch size; call the UNet that "
                "install_motion_routing() was applied to"
            )
        positions = rows // batch
        if self.state.lean:
            context = sets[:, temporal]  # (B, N, d)
        else:  # rows b*H*W + p are diffusers' broadcast copies of item b's embedding
            context = sets.unflatten(0, (batch, positions))[:, 0, temporal]
        simple = (
            attention_mask is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and hidden_states.ndim == 3
        )
        if not self.state.kv_once or not simple:
            # stock path: every row projects its own (identical) copy of the N tokens
            per_row = sets[:, temporal] if not self.state.lean else context.repeat_interleave(positions, 0)
            return self.state.attend(attn, hidden_states, per_row, attention_mask, temb)

        frames = hidden_states.shape[1]
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        residual = hidden_states
        query = attn.to_q(hidden_states)  # (B*HW, F, inner)
        key = attn.to_k(context)  # (B, N, inner): once per batch item
        value = attn.to_v(context)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        # (B*HW, F, inner) -> (B, heads, HW*F, head_dim): all positions of item b share its K/V
        query = query.view(batch, positions * frames, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.state.attention == "eager":  # as AttnProcessor: probs (B*heads, HW*F, N), bmm
            probs = attn.get_attention_scores(query.flatten(0, 1), key.flatten(0, 1))
            out = torch.bmm(probs, value.flatten(0, 1)).unflatten(0, (batch, attn.heads))
        else:  # like AttnProcessor2_0: SDPA's default scale (= attn.scale for SVD)
            out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(rows, frames, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class RoutingHandle:
    """What :func:`install_motion_routing` changed; :meth:`remove` undoes it."""

    unet: torch.nn.Module
    state: RoutingState
    original_processors: dict
    hook: torch.utils.hooks.RemovableHandle | None

    def remove(self) -> None:
        """Restore the processors found at install time and remove the UNet pre-hook."""
        if self.hook is None:
            return
        self.hook.remove()
        self.hook = None
        self.state.context = None  # the last call's embedding (and its autograd graph)
        self.unet.set_attn_processor(dict(self.original_processors))  # it pops from the dict

    def __enter__(self) -> RoutingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_motion_routing(
    unet: torch.nn.Module, tokens: int, num_frames: int, kv_once: bool = True,
    attention: str | None = None, lean: bool = True,
) -> RoutingHandle:
    """Route a flattened ``(B, (F+1)*N, d)`` motion embedding through ``unet``'s cross-attention.

    Replaces the processor of every cross-attention ``attn2``: those under
    ``temporal_transformer_blocks`` get :class:`TemporalMotionAttnProcessor`, the spatial ones
    :class:`SpatialMotionAttnProcessor`. All other processors (self-attention ``attn1``) stay as
    they are. ``attention`` (``"sdpa"`` | ``"eager"``) is how the routed cross-attention is
    computed; ``None`` follows the UNet: eager if its cross-attention processors are diffusers'
    classic ``AttnProcessor`` (e.g. after :func:`set_attention`), else SDPA. A forward pre-hook records the batch size of each UNet call and checks that
    ``sample`` has ``num_frames`` frames and the context ``(num_frames+1)*tokens`` tokens.

    ``enable_xformers_memory_efficient_attention()`` and ``set_default_attn_processor()`` replace
    *all* processors, these included: call them first, install after. Use the returned handle's
    ``remove()`` (or ``with``) to restore the UNet.

    ``lean`` (default): the pre-hook keeps the embedding in the routing state and passes the
    UNet a ``(B, 1, d)`` placeholder, so diffusers never broadcasts it (the broadcast copy under
    CFG and the backward's dense zero tensor are gone; module docstring). ``lean=False`` is the
    old hand-over, where diffusers broadcasts the temporal context to ``(B*H*W, (F+1)*N, d)``
    (a copy when B > 1); kept so benchmarks can measure the difference.
    """
    if tokens < 1 or num_frames < 1:
        raise ValueError(f"need tokens >= 1 and num_frames >= 1, got {tokens}, {num_frames}")
    original = dict(unet.attn_processors)
    if attention is None:
        cross = [p for n, p in original.items() if n.endswith(".attn2.processor")]
        attention = "eager" if cross and all(type(p) is AttnProcessor for p in cross) else "sdpa"
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)} (got {attention!r})")
    state = RoutingState(num_sets=num_frames + 1, tokens=tokens, kv_once=kv_once, attention=attention,
                         lean=lean)
    spatial = SpatialMotionAttnProcessor(state)
    temporal = TemporalMotionAttnProcessor(state)
    new = {}
    for name, proc in original.items():
        if name.endswith(".attn2.processor"):
            new[name] = temporal if _TEMPORAL_MARK in f".{name}" else spatial
        else:
            new[name] = proc
    if spatial not in new.values() and temporal not in new.values():
        raise ValueError("this UNet has no cross-attention (attn2) layers to route")

    def pre_hook(module, args, kwargs):
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        if "encoder_hidden_states" in kwargs:
            ehs = kwargs["encoder_hidden_states"]
        else:
            ehs = args[2] if len(args) > 2 else None
        if sample.ndim != 5 or sample.shape[1] != num_frames:
            raise ValueError(
                f"motion embedding has F={num_frames} frame sets but the UNet is called with "
                f"sample of shape {tuple(sample.shape)} (expected (B, {num_frames}, C, H, W))"
            )
        expected = (num_frames + 1) * tokens
        if ehs is None or ehs.ndim != 3 or ehs.shape[1] != expected:
            got = None if ehs is None else tuple(ehs.shape)
            raise ValueError(
                f"encoder_hidden_states must be the flattened motion embedding "
                f"(B, (F+1)*N = {expected}, d), got {got}"
            )
        if ehs.shape[0] != sample.shape[0]:
            raise ValueError(
                f"encoder_hidden_states batch {ehs.shape[0]} != sample batch {sample.shape[0]}"
            )
        state.batch_size = sample.shape[0]
        if not state.lean:
            return None
        state.context = ehs
        placeholder = ehs.new_zeros(ehs.shape[0], 1, ehs.shape[2]).detach()  # nothing reads it
        if "encoder_hidden_states" in kwargs:
            return args, {**kwargs, "encoder_hidden_states": placeholder}
        return (*args[:2], placeholder, *args[3:]), kwargs

    unet.set_attn_processor(new)
    hook = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return RoutingHandle(unet=unet, state=state, original_processors=original, hook=hook)


def flatten_embedding(emb: torch.Tensor) -> torch.Tensor:
    """``(F+1, N, d)`` or ``(B, F+1, N, d)`` -> ``(B, (F+1)*N, d)``, the UNet's context layout."""
    if emb.ndim == 3:
        emb = emb.unsqueeze(0)
    if emb.ndim != 4:
        raise ValueError(f"motion embedding must be (F+1, N, d) or (B, F+1, N, d), got {tuple(emb.shape)}")
    return emb.reshape(emb.shape[0], emb.shape[1] * emb.shape[2], emb.shape[3])
