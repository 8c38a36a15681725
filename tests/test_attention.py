"""MultiHeadSelfAttention2d against its explicit path, torch.nn.MultiheadAttention, and its symmetries."""
import pytest
import torch
from torch import nn

from ddpm_lib.attention import MultiHeadSelfAttention2d

B, C, H, W, HEADS = 2, 32, 5, 6, 4  # H != W so a transposed reshape would show


pytestmark = pytest.mark.usefixtures("one_thread")


def make_block(heads=HEADS, seed=0):
    g = torch.Generator().manual_seed(seed)
    block = MultiHeadSelfAttention2d(C, heads, norm_groups=8)
    with torch.no_grad():  # non-trivial norm affine and biases too
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p is block.norm.weight else 0.0))
    return block


def make_x(seed=1):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("heads", [1, 4])
def test_fast_path_equals_explicit_path(heads):
    block, x = make_block(heads), make_x()
    fast = block(x)
    explicit, weights = block(x, return_attention=True)
    assert fast.shape == x.shape and weights.shape == (B, heads, H * W, H * W)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


def test_matches_torch_multihead_attention():
    block, x = make_block(), make_x()
    mha = nn.MultiheadAttention(C, HEADS, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.qkv.weight.view(3 * C, C))
        mha.in_proj_bias.copy_(block.qkv.bias)
        mha.out_proj.weight.copy_(block.proj_out.weight.view(C, C))
        mha.out_proj.bias.copy_(block.proj_out.bias)
    tokens = block.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    y, w_ref = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
    expected = x + y.transpose(1, 2).reshape(B, C, H, W)
    out, weights = block(x, return_attention=True)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, w_ref, atol=1e-6, rtol=1e-5)


def test_weights_are_distributions_over_pixels():
    _, weights = make_block()(make_x(), return_attention=True)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, HEADS, H * W))
    assert weights.std() > 0.01  # not uniform: the queries do discriminate


def test_permuting_pixels_permutes_output():
    block, x = make_block(), make_x()
    perm = torch.randperm(H * W, generator=torch.Generator().manual_seed(2))
    x_perm = x.flatten(2)[:, :, perm].reshape(B, C, H, W)
    out, w = block(x, return_attention=True)
    out_perm, w_perm = block(x_perm, return_attention=True)
    torch.testing.assert_close(out_perm, out.flatten(2)[:, :, perm].reshape(B, C, H, W), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_perm, w[:, :, perm][:, :, :, perm], atol=1e-6, rtol=1e-5)


def test_channels_last_input_gives_the_same_output():
    block, x = make_block(), make_x()
    out = block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)


def test_bf16_autocast_is_finite_and_close():
    block, x = make_block(), make_x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = block(x)
        explicit, weights = block(x, return_attention=True)
    ref = block(x)
    for out in (fast, explicit):
        assert torch.isfinite(out).all()
        assert ((out.float() - ref).abs().max() / ref.abs().max()) < 3e-2
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, HEADS, H * W), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kwargs, name", [(dict(num_heads=3), "num_heads"), (dict(norm_groups=5), "norm_groups")])
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiHeadSelfAttention2d(C, **{"num_heads": 4, **kwargs})
