"""UNet: shapes per level, presets, validation, class labels, gradients, FLOPs, autocast / channels_last / compile,
overfitting."""
import dataclasses
import json
import time
from dataclasses import asdict, replace

import pytest
import torch
from helpers import MICRO, perturbed
from torch import nn

from ddpm_lib.attention import MultiHeadSelfAttention2d
from ddpm_lib.summary import model_summary
from ddpm_lib.unet import PRESETS, UNet, UNetConfig, unet_from_preset


pytestmark = pytest.mark.usefixtures("one_thread")


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
    half = unet_from_preset("ddpm-cifar10-half")  # the paper's network at half its width (its preset's comment)
    assert sum(p.numel() for p in half.parameters()) == 8_952_067
    assert half.config == replace(PRESETS["ddpm-cifar10"], ch_list=(3, 64, 128, 128, 128), temb_dim=64,
                                  time_mlp_dim=256)
    assert 0.5e6 < sum(p.numel() for p in unet_from_preset("tiny").parameters()) < 2e6
    seed = unet_from_preset("walkthrough")
    assert seed.config == UNetConfig() and seed.config.ch_list == (3, 64, 128, 256, 512)
    attn = [(name, m) for name, m in seed.named_modules() if isinstance(m, MultiHeadSelfAttention2d)]
    assert {m.channels for _, m in attn} == {64, 128} and {m.num_heads for _, m in attn} == {4}
    assert len(attn) == 2 * 1 + 2 * 2  # levels 1, 2: one res block down, two up; none in the middle


def test_attention_layer_indexes_ch_list_levels():
    """Level i: ch_list[i] channels at image_size / 2**(i-1), attention after each of its res blocks, down and up."""
    cfg = UNetConfig(ch_list=(3, 16, 32, 64), attention_layer=(1, 3), num_heads=2, temb_dim=16, num_res_blocks=2,
                     norm_groups=8, image_size=32)
    seen = []
    model = UNet(cfg)
    for m in model.modules():
        if isinstance(m, MultiHeadSelfAttention2d):
            m.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    down, up = [(16, 32, 32)] * 2 + [(64, 8, 8)] * 2, [(64, 8, 8)] * 3 + [(16, 32, 32)] * 3  # 2 blocks down, 3 up
    assert seen == down + up


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
    model = unet_from_preset("walkthrough")  # 4 levels: H, W must be multiples of 8
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


def test_configs_and_presets_are_read_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].num_heads = 8
    with pytest.raises(TypeError):
        PRESETS["mine"] = UNetConfig()
    assert replace(PRESETS["tiny"], num_classes=10).num_classes == 10 and PRESETS["tiny"].num_classes is None
    assert hash(UNetConfig(ch_list=[3, 64, 128, 256, 512], attention_layer=[1, 2])) == hash(UNetConfig())


# ----------------------------------------------------------------------------- class labels

def conditional(num_classes=5, **overrides):
    return perturbed(UNet(replace(MICRO, num_classes=num_classes, dropout=0.0, **overrides)))


@pytest.mark.parametrize("time_mlp_dim", [0, 24], ids=["sinusoid", "time-mlp"])
def test_label_embedding_is_added_to_the_time_embedding(time_mlp_dim):
    """Oracle: the unconditional net with the same weights, label_emb's row added to the time embedding the blocks
    consume (the time MLP's output, or the sinusoid itself when there is no MLP)."""
    model = conditional(time_mlp_dim=time_mlp_dim)
    plain = UNet(replace(MICRO, dropout=0.0, time_mlp_dim=time_mlp_dim)).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "label_emb.weight"}
    plain.load_state_dict(state)  # strict: an unconditional model has exactly the other keys
    x, t = inputs(batch=4)
    y = torch.tensor([0, 4, -1, 2])
    rows = model.label_emb.weight[torch.tensor([0, 4, 5, 2])]  # -1 -> the null row, num_classes
    plain.time_mlp.register_forward_hook(lambda m, args, out: out + rows)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), plain(x, t), atol=1e-5, rtol=1e-5)


def test_labels_change_the_output_and_none_means_no_label():
    model = conditional()
    x, t = inputs(batch=3)
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 2, 3]))
        b = model(x, t, torch.tensor([1, 0, -1]))
        torch.testing.assert_close(model(x, t), model(x, t, torch.full((3,), -1)))
        torch.testing.assert_close(model(x, t, None)[2], b[2])
    torch.testing.assert_close(a[0], b[0])  # each row sees only its own label
    assert (a[1] - b[1]).abs().max() > 1e-3 and (a[2] - b[2]).abs().max() > 1e-3


def test_gradient_reaches_the_label_embedding_rows_used():
    model = conditional().train()
    x, t = inputs(batch=3)
    model(x, t, torch.tensor([1, 1, -1])).square().mean().backward()
    used = model.label_emb.weight.grad.abs().sum(1) > 0
    assert used.tolist() == [False, True, False, False, False, True]  # labels 1 and the null row (-1)


def test_conditioning_adds_only_the_label_embedding():
    plain, cond = UNet(MICRO), UNet(replace(MICRO, num_classes=10))
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"label_emb.weight"}
    assert set(plain.state_dict()) <= set(cond.state_dict())
    extra = sum(p.numel() for p in cond.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 11 * MICRO.temb_dim  # 10 labels + the null label, in the blocks' embedding width
    assert dict((r[0], r[3]) for r in model_summary(cond).rows)["label embedding"] == extra


@pytest.mark.parametrize("model_kwargs, y, match", [
    ({}, torch.tensor([0, 1]), "unconditional"),
    (dict(num_classes=5), torch.tensor([0, 1, 2]), r"shape \(2,\)"),
    (dict(num_classes=5), torch.tensor([0.0, 1.0]), "expected integers, got dtype torch.float32"),
    (dict(num_classes=5), torch.tensor([0, 5]), r"\[-1, 5\).*\[5\]"),
    (dict(num_classes=5), torch.tensor([-2, 0]), r"\[-1, 5\).*\[-2\]"),
])
def test_bad_labels_raise_naming_y(model_kwargs, y, match):
    model = UNet(replace(MICRO, **model_kwargs))
    x, t = inputs(batch=2)
    with pytest.raises(ValueError, match=r"y\b.*" + match):
        model(x, t, y)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True])
def test_invalid_num_classes_raises(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        UNetConfig(num_classes=num_classes)


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


@pytest.mark.parametrize("num_classes", [None, 10], ids=["unconditional", "conditional"])
def test_forward_compiles_without_graph_breaks(num_classes):
    model = unet_from_preset("tiny", num_classes=num_classes)
    y = None if num_classes is None else torch.tensor([3, -1])
    explanation = torch._dynamo.explain(model)(*inputs(), y)
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


@pytest.mark.slow
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


def test_activation_checkpointing_recomputes_the_res_blocks_for_the_same_gradients():
    """UNet.checkpointing (TrainConfig.checkpoint_activations): every res block runs again in the backward pass,
    and the loss and the gradients are those without it, dropout included (its RNG state is replayed)."""
    from ddpm_lib.train import Trainer
    from ddpm_lib.train_config import TrainConfig

    x, t = inputs(batch=2, size=16)
    results = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = perturbed(unet_from_preset("tiny", dropout=0.1)).train()
        model.checkpointing = on
        calls = []
        model.down[0].res[0].register_forward_pre_hook(lambda *_, c=calls: c.append(1))  # the recompute may stop early
        torch.manual_seed(1)  # dropout's masks
        loss = model(x, t).square().mean()
        loss.backward()
        results[on] = loss.detach(), [p.grad for p in model.parameters()], len(calls)
    assert results[False][2] == 1 and results[True][2] == 2  # recomputed once in the backward
    assert torch.equal(results[True][0], results[False][0])
    for g_on, g_off in zip(results[True][1], results[False][1]):
        assert torch.equal(g_on, g_off)  # the same operations in the same order
    trainer = Trainer(unet_from_preset("tiny"), None, TrainConfig(checkpoint_activations=True, out_dir=None))
    assert trainer.model.checkpointing and not unet_from_preset("tiny").checkpointing
