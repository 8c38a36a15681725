"""UNet: shapes per level, presets, validation, gradients, FLOPs, autocast / channels_last / compile, overfitting."""
import json
import time
from dataclasses import asdict

import pytest
import torch
from torch import nn

from ddpm_lib.attention import MultiHeadSelfAttention2d
from ddpm_lib.unet import PRESETS, UNetConfig, model_summary, unet_from_preset


pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(model: nn.Module, seed=0, std=0.05) -> nn.Module:
    """All parameters random (norm scales around 1): the near-zero init of the output layers hides bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_norm_scale else 0.0))
    return model.eval()


def inputs(batch=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 1000, (batch,), generator=g)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_through_every_level(name):
    model = unet_from_preset(name)
    cfg, L = model.config, len(model.config.ch_list) - 1
    seen = {}
    hooks = [lvl.res[-1].register_forward_hook(lambda m, a, out, key=key: seen.update({key: out.shape}))
             for key, lvl in [(f"down{i}", lvl) for i, lvl in enumerate(model.down, 1)] + [("mid", model.mid)]
             + [(f"up{L - k}", lvl) for k, lvl in enumerate(model.up)]]
    x, t = inputs(batch=1, size=16)
    with torch.no_grad():
        eps = model(x, t)
    for h in hooks:
        h.remove()
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    for i in range(1, L + 1):
        s = 16 >> (i - 1)
        assert seen[f"down{i}"] == seen[f"up{i}"] == (1, cfg.ch_list[i], s, s)
    assert seen["mid"] == (1, cfg.ch_list[-1], 16 >> (L - 1), 16 >> (L - 1))


def test_preset_parameter_counts():
    assert sum(p.numel() for p in unet_from_preset("ddpm-cifar10").parameters()) == 35_746_307  # the paper's
    assert 0.5e6 < sum(p.numel() for p in unet_from_preset("tiny").parameters()) < 2e6
    seed = unet_from_preset("seed")
    assert seed.config == UNetConfig() and seed.config.ch_list == (3, 64, 128, 256, 512)
    attn = [(name, m) for name, m in seed.named_modules() if isinstance(m, MultiHeadSelfAttention2d)]
    assert {m.channels for _, m in attn} == {64, 128} and {m.num_heads for _, m in attn} == {4}
    assert len(attn) == 2 * 1 + 2 * 2  # levels 1, 2: one res block down, two up; none in the middle


def test_output_depends_on_t_and_each_image_only_on_itself():
    model = perturbed(unet_from_preset("tiny"))
    x, _ = inputs(batch=3)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 10, 999]))
        b = model(x, torch.tensor([500, 10, 998]))
        single = model(x[1:2], torch.tensor([10]))
    assert (a[0] - b[0]).abs().max() > 1e-3 and (a[2] - b[2]).abs().max() > 1e-4
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(single[0], a[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x, 10), model(x, torch.full((3,), 10)))  # an int t broadcasts


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-init", "perturbed"])
def test_every_parameter_gets_a_gradient(fresh):
    model = unet_from_preset("tiny", dropout=0.1).train()
    if not fresh:
        perturbed(model).train()
    x, t = inputs()
    model(x, t).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0)]
    assert not dead, dead
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, field", [
    (dict(ch_list=(3,)), "ch_list"),
    (dict(ch_list=(3, 64, 0)), "ch_list"),
    (dict(ch_list=(3, 64, 80)), "norm_groups"),
    (dict(norm_groups=24), "norm_groups"),
    (dict(attention_layer=(0,)), "attention_layer"),
    (dict(attention_layer=(5,)), "attention_layer"),
    (dict(num_heads=3), "num_heads"),
    (dict(num_heads=128, attention_layer=(1,)), "num_heads"),
    (dict(temb_dim=7), "temb_dim"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(dropout=1.0), "dropout"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(time_mlp_dim=-1), "time_mlp_dim"),
    (dict(image_size=20), "image_size"),
])
def test_invalid_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        UNetConfig(**kwargs)


def test_unknown_preset_or_field_raises():
    with pytest.raises(ValueError, match="tiny"):
        unet_from_preset("huge")
    with pytest.raises(ValueError, match="channels"):
        unet_from_preset("tiny", channels=3)


def test_bad_input_raises_at_forward_with_the_sizes():
    model = unet_from_preset("seed")  # 4 levels: H, W must be multiples of 8
    with pytest.raises(ValueError, match="20x16"):
        model(torch.zeros(1, 3, 20, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(1, 1, 16, 16\)"):
        model(torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.zeros(2, 3, 16, 16), torch.zeros(3, dtype=torch.long))


def test_config_round_trips_through_a_checkpoint_dict():
    cfg = PRESETS["ddpm-cifar10"]
    back = UNetConfig(**json.loads(json.dumps(asdict(cfg))))  # tuples come back as lists
    assert back == cfg and isinstance(back.ch_list, tuple)
    assert unet_from_preset("tiny", num_heads=8).config.num_heads == 8 and PRESETS["tiny"].num_heads == 4


def test_model_summary_counts_params_per_level_and_flops():
    model = unet_from_preset("tiny")
    s = model_summary(model)
    assert s.total_params == sum(p.numel() for p in model.parameters()) == sum(r[3] for r in s.rows)
    assert [r[0] for r in s.rows] == ["time embedding", "conv_in", "down 1", "down 2", "down 3", "mid",
                                      "up 3", "up 2", "up 1", "out"]
    # FLOPs by hand: 2 * MACs of every conv and linear, plus q k^T and weights @ v of every attention block
    flops = []
    def conv_hook(m, args, out):
        flops.append(2 * out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups)
    def linear_hook(m, args, out):
        flops.append(2 * out.numel() * m.in_features)
    def attn_hook(m, args, out):
        hw = out.shape[2] * out.shape[3]
        flops.append(2 * 2 * out.shape[0] * hw * hw * m.channels)
    for m in model.modules():
        hook = {nn.Conv2d: conv_hook, nn.Linear: linear_hook, MultiHeadSelfAttention2d: attn_hook}.get(type(m))
        if hook:
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    assert s.flops_per_image == sum(flops)
    assert "total" in str(s)


def test_channels_last_and_bf16_autocast():
    model = perturbed(unet_from_preset("tiny"))
    x, t = inputs()
    with torch.no_grad():
        ref = model(x, t)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last), t), ref,
                                   atol=1e-5, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() / ref.abs().max() < 5e-2


def test_forward_compiles_without_graph_breaks():
    model = unet_from_preset("tiny")
    explanation = torch._dynamo.explain(model)(*inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_forward_on_cuda():
    model = unet_from_preset("tiny").cuda()
    x, t = (v.cuda() for v in inputs())
    model(x, t)
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x, t).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    model = unet_from_preset("tiny").train()
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(4, 3, 16, 16, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, t0 = None, time.time()
    for _ in range(100):
        loss = (model(x_t, t) - eps).square().mean()
        start = loss.item() if start is None else start
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"overfit: loss {start:.3f} -> {loss.item():.4f} in {time.time() - t0:.1f}s")
    assert start > 0.8 and loss.item() < 0.1 * start
