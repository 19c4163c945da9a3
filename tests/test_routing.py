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
