"""Cross-attention inflation: frame f's spatial attention sees set f, temporal attention set F."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from reenact.routing import (
    SpatialMotionAttnProcessor,
    TemporalMotionAttnProcessor,
    flatten_embedding,
    install_motion_routing,
)

F = 4  # frames of the tiny model
N = 3  # tokens per set
D = 32  # cross-attention width of the tiny model


@pytest.fixture(scope="module")
def unet(tiny_svd_dir):
    model = UNetSpatioTemporalConditionModel.from_pretrained(tiny_svd_dir / "unet")
    return model.eval().requires_grad_(False)


def unet_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, F, 8, 8, 8, generator=g)  # (B, F, C, h, w), 8x8 latents
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1)
    return sample, torch.tensor(0.5), added_time_ids


def run(unet, emb_flat, batch, seed=0):
    sample, t, ids = unet_inputs(batch, seed)
    return unet(sample, t, encoder_hidden_states=emb_flat, added_time_ids=ids, return_dict=False)[0]


def cross_attentions(unet):
    spatial = {n: m for n, m in unet.named_modules() if n.endswith(".attn2") and ".temporal_" not in n}
    temporal = {n: m for n, m in unet.named_modules() if n.endswith(".attn2") and ".temporal_" in n}
    return spatial, temporal


def capture_key_inputs(unet):
    """Record what every attn2's to_k projects: the context that attention actually sees."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    spatial, temporal = cross_attentions(unet)
    for name, attn in {**spatial, **temporal}.items():
        def hook(module, args, name=name):
            seen.setdefault(name, []).append(args[0].detach().clone())
        handles.append(attn.to_k.register_forward_pre_hook(hook))
    return seen, handles


def marker_embedding(batch: int) -> torch.Tensor:
    """(B, F+1, N, d): set k of batch item b is the constant 100*b + k + 1 (k = F: temporal)."""
    marks = 100.0 * torch.arange(batch)[:, None] + torch.arange(F + 1)[None, :] + 1.0
    return marks[:, :, None, None].expand(batch, F + 1, N, D).clone()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kv_once", [True, False])
def test_each_frame_sees_its_set_and_temporal_attention_sees_set_F(unet, batch, kv_once):
    emb = marker_embedding(batch)
    seen, hooks = capture_key_inputs(unet)
    with install_motion_routing(unet, tokens=N, num_frames=F, kv_once=kv_once):
        with torch.no_grad():
            run(unet, flatten_embedding(emb), batch)
    for h in hooks:
        h.remove()
    spatial, temporal = cross_attentions(unet)
    assert spatial and temporal and set(seen) == set(spatial) | set(temporal)

    # spatial: row b*F + f holds exactly set f of item b
    expected_spatial = emb[:, :F].reshape(batch * F, N, D)
    for name in spatial:
        (ctx,) = seen[name]
        torch.testing.assert_close(ctx, expected_spatial, rtol=0, atol=0)

    # temporal: only set F of each item; once per item (kv_once) or once per position (stock)
    for name in temporal:
        (ctx,) = seen[name]
        if kv_once:
            assert ctx.shape == (batch, N, D)
            torch.testing.assert_close(ctx, emb[:, F], rtol=0, atol=0)
        else:
            per_item = ctx.reshape(batch, -1, N, D)
            assert per_item.shape[1] > 1  # H*W positions
            torch.testing.assert_close(per_item, emb[:, F, None].expand_as(per_item), rtol=0, atol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_equal_sets_give_the_stock_unets_output(unet, batch):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(batch, N, D, generator=g)  # N tokens per item, different per item
    with torch.no_grad():
        stock = run(unet, tokens, batch)
        emb = tokens[:, None].expand(batch, F + 1, N, D)
        with install_motion_routing(unet, tokens=N, num_frames=F):
            inflated = run(unet, flatten_embedding(emb), batch)
    torch.testing.assert_close(inflated, stock, rtol=0, atol=1e-5)


def test_kv_once_gives_the_same_output_and_gradients_as_the_stock_projection(unet):
    batch = 2
    base = torch.randn(batch, F + 1, N, D, generator=torch.Generator().manual_seed(2))
    results = []
    for kv_once in (True, False):
        emb = base.clone().requires_grad_(True)
        with install_motion_routing(unet, tokens=N, num_frames=F, kv_once=kv_once):
            out = run(unet, flatten_embedding(emb), batch)
        out.square().mean().backward()
        results.append((out.detach(), emb.grad))
    (out_once, grad_once), (out_stock, grad_stock) = results
    torch.testing.assert_close(out_once, out_stock, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_once, grad_stock, rtol=1e-4, atol=1e-7)


def test_gradients_reach_every_set_and_never_the_frozen_unet(unet):
    emb = torch.randn(F + 1, N, D, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    with install_motion_routing(unet, tokens=N, num_frames=F):
        out = run(unet, flatten_embedding(emb), 1)
    out.square().mean().backward()
    per_set = emb.grad.abs().sum(dim=(1, 2))
    assert per_set.shape == (F + 1,)
    assert bool((per_set > 0).all()), f"sets without gradient: {per_set}"
    assert all(p.grad is None for p in unet.parameters())


def test_install_replaces_only_cross_attention_and_remove_restores_it(unet):
    before = dict(unet.attn_processors)
    handle = install_motion_routing(unet, tokens=N, num_frames=F)
    during = unet.attn_processors
    for name, proc in during.items():
        if name.endswith("attn2.processor"):
            temporal = ".temporal_transformer_blocks." in name
            kind = TemporalMotionAttnProcessor if temporal else SpatialMotionAttnProcessor
            assert isinstance(proc, kind), name
        else:
            assert proc is before[name], name  # self-attention untouched
    assert len(unet._forward_pre_hooks) == 1
    handle.remove()
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert len(unet._forward_pre_hooks) == 0
    handle.remove()  # idempotent


def test_wrong_frames_or_token_count_is_refused_clearly(unet):
    emb = torch.zeros(1, F + 1, N, D)
    with install_motion_routing(unet, tokens=N, num_frames=F):
        with pytest.raises(ValueError, match=r"\(F\+1\)\*N = 15"):
            run(unet, flatten_embedding(emb)[:, :-1], 1)
    with install_motion_routing(unet, tokens=N, num_frames=F + 1):
        with pytest.raises(ValueError, match="F=5 frame sets"):
            run(unet, flatten_embedding(torch.zeros(1, F + 2, N, D)), 1)


def test_flatten_embedding_layout():
    emb = torch.arange((F + 1) * N * 2, dtype=torch.float32).reshape(F + 1, N, 2)
    flat = flatten_embedding(emb)
    assert flat.shape == (1, (F + 1) * N, 2)
    torch.testing.assert_close(flat[0, 2 * N : 3 * N], emb[2])  # set f = tokens f*N:(f+1)*N
    assert flatten_embedding(emb[None].repeat(2, 1, 1, 1)).shape == (2, (F + 1) * N, 2)


def test_eager_attention_gives_the_sdpa_result(unet):
    from reenact.routing import set_attention

    emb = flatten_embedding(torch.randn(2, F + 1, N, D, generator=torch.Generator().manual_seed(4)))
    with install_motion_routing(unet, tokens=N, num_frames=F) as handle:
        assert handle.state.attention == "sdpa"
        sdpa = run(unet, emb, 2)
    previous = set_attention(unet, "eager")
    try:
        with install_motion_routing(unet, tokens=N, num_frames=F) as handle:
            assert handle.state.attention == "eager"  # follows the UNet's processors
            eager = run(unet, emb, 2)
    finally:
        unet.set_attn_processor(previous)
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sdpa, eager"):
        set_attention(unet, "flash")


# ---------------------------------------------------------------- lean hand-over (issue 8 item 3)


def _step(unet, emb, batch, lean, kv_once=True):
    """Forward + backward of one UNet call; returns the output and the embedding's gradient."""
    emb = emb.clone().requires_grad_(True)
    with install_motion_routing(unet, tokens=N, num_frames=F, kv_once=kv_once, lean=lean):
        sample, t, ids = unet_inputs(batch)
        sample, ids = sample.to(emb.dtype), ids.to(emb.dtype)
        out = unet(sample, t, encoder_hidden_states=flatten_embedding(emb), added_time_ids=ids,
                   return_dict=False)[0]
        out.square().mean().backward()
    return out.detach(), emb.grad


@pytest.mark.parametrize("kv_once", [True, False])
def test_lean_hand_over_gives_the_same_output_and_gradients(tiny_svd_dir, kv_once):
    """In float64, so that only a routing difference (not summation order) could show."""
    unet = UNetSpatioTemporalConditionModel.from_pretrained(tiny_svd_dir / "unet")
    unet = unet.double().eval().requires_grad_(False)
    base = torch.randn(2, F + 1, N, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out_lean, grad_lean = _step(unet, base, 2, lean=True, kv_once=kv_once)
    out_old, grad_old = _step(unet, base, 2, lean=False, kv_once=kv_once)
    tol = 1e4 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(out_lean, out_old, rtol=0, atol=tol * out_old.abs().max().item())
    torch.testing.assert_close(grad_lean, grad_old, rtol=0, atol=tol * grad_old.abs().max().item())
    assert bool((grad_lean.abs().sum(dim=(2, 3)) > 0).all())  # every set of every item


def test_lean_hand_over_gives_the_unet_a_placeholder_and_never_broadcasts_the_embedding(unet):
    """No tensor of the broadcast shape (B*H*W, (F+1)*N, d) in the forward or the backward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.big = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.ndim >= 3 and t.shape[-1] == D and (
                        t.shape[-2] == (F + 1) * N or tuple(t.shape[-3:-1]) == (F + 1, N)):
                    if t.numel() > 2 * (F + 1) * N * D:  # more than the embedding itself
                        self.big.append((func.__name__, tuple(t.shape)))
            return out

    received = []
    blocks = [m for n, m in unet.named_modules() if type(m).__name__ == "TransformerSpatioTemporalModel"]
    hooks = [b.register_forward_pre_hook(
        lambda m, a, k: received.append(tuple(k["encoder_hidden_states"].shape)), with_kwargs=True)
        for b in blocks]
    seen = {}
    try:
        for lean in (True, False):
            received.clear()
            emb = torch.randn(2, F + 1, N, D, generator=torch.Generator().manual_seed(6))
            with Shapes() as mode:
                _step(unet, emb, 2, lean=lean)
            seen[lean] = (list(received), mode.big)
    finally:
        for h in hooks:
            h.remove()
    lean_received, lean_big = seen[True]
    assert lean_received and set(lean_received) == {(2 * F, 1, D)}  # one placeholder token per row
    assert lean_big == []
    old_received, old_big = seen[False]
    assert set(old_received) == {(2 * F, (F + 1) * N, D)}
    assert old_big  # the old hand-over does make them: the check can fail


def test_lean_routing_refuses_a_call_without_its_pre_hook(unet):
    from reenact.routing import RoutingState

    state = RoutingState(num_sets=F + 1, tokens=N)
    with pytest.raises(RuntimeError, match="no embedding"):
        state.sets(None)


def test_lean_hand_over_under_gradient_checkpointing_gives_the_same_gradients(tiny_svd_dir,
                                                                            monkeypatch):
    """Checkpointed blocks rerun the processors in the backward: they must see the same sets."""
    from reenact.inversion import gradient_checkpointing
    from reenact.routing import RoutingState

    calls = []
    real_sets = RoutingState.sets
    monkeypatch.setattr(RoutingState, "sets", lambda self, ehs: calls.append(1) or real_sets(self, ehs))
    unet = UNetSpatioTemporalConditionModel.from_pretrained(tiny_svd_dir / "unet")
    unet = unet.double().eval().requires_grad_(False)
    base = torch.randn(2, F + 1, N, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, plain = _step(unet, base, 2, lean=True)
    plain_calls = len(calls)
    with gradient_checkpointing(unet):
        _, checkpointed = _step(unet, base, 2, lean=True)
    assert len(calls) - plain_calls == 2 * plain_calls  # every processor ran again in the backward
    tol = 1e4 * torch.finfo(torch.float64).eps * plain.abs().max().item()
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=tol)
