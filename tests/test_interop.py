"""unet_from_diffusers / unet_to_diffusers against diffusers' UNet2DModel (google/ddpm-cifar10-32 layout and small
networks of its form), load_ddpm_cifar10 offline, and the exported DDPMPipeline against Algorithm 2."""
import json
from dataclasses import replace

import pytest
import torch

from helpers import perturbed

from ddpm_lib import interop
from ddpm_lib.interop import (PREDICTION_TYPES, diffusers_config, load_ddpm_cifar10, objective_from_diffusers,
                              save_diffusers_pipeline, scheduler_config, unet_from_diffusers, unet_to_diffusers)
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.unet import PRESETS, UNet, UNetConfig

diffusers = pytest.importorskip("diffusers")

DDPM_CIFAR10 = dict(  # google/ddpm-cifar10-32's config.json
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    norm_eps=1e-6, norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1)
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}  # diffusers < 0.15 files


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference():
    """The diffusers network with every parameter random and non-zero (norm scales around 1)."""
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**DDPM_CIFAR10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if is_norm_scale else 0.0))
    return model.eval()


def old_style(state):
    out = {}
    for key, value in state.items():
        for new, old in OLD_NAMES.items():
            key = key.replace(f".{new}.", f".{old}.")
        out[key] = value
    return out


def test_converted_unet_computes_the_same_function(reference):
    model = unet_from_diffusers(reference).eval()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 731])
    with torch.no_grad():
        expected = reference(x, t).sample
        out = model(x, t)
    assert expected.abs().max() > 0.05  # the comparison is not between two near-zero outputs
    assert (out - expected).abs().max() / expected.abs().max() < 1e-4
    assert all(p.requires_grad for p in model.parameters())  # trainable, and a copy:
    assert model.conv_in.weight.data_ptr() != reference.conv_in.weight.data_ptr()


def test_old_attention_names_and_plain_state_dicts_convert_alike(reference):
    a = unet_from_diffusers(reference).state_dict()
    b = unet_from_diffusers(old_style(reference.state_dict())).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wrong_layout_or_config_raises(reference):
    from ddpm_lib.unet import unet_from_preset

    with pytest.raises(ValueError, match="layout"):
        unet_from_diffusers(unet_from_preset("tiny").state_dict())
    state = dict(reference.state_dict())
    state["conv_in.weight"] = state["conv_in.weight"][:64]
    with pytest.raises(ValueError, match="conv_in.weight"):
        unet_from_diffusers(state)
    small = diffusers.UNet2DModel(block_out_channels=(32, 32), down_block_types=("DownBlock2D",) * 2,
                                  up_block_types=("UpBlock2D",) * 2, flip_sin_to_cos=True)
    with pytest.raises(ValueError, match="flip_sin_to_cos"):
        unet_from_diffusers(small)
    uneven_heads = diffusers.UNet2DModel(block_out_channels=(32, 64), down_block_types=("AttnDownBlock2D",) * 2,
                                         up_block_types=("AttnUpBlock2D",) * 2, attention_head_dim=16,
                                         norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)
    with pytest.raises(ValueError, match="attention_head_dim"):  # 2 heads of 16 channels, then 4: ours has one count
        unet_from_diffusers(uneven_heads)


@pytest.fixture
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("offline (test)")
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)


@pytest.mark.parametrize("filename", interop.FILENAMES)
def test_load_reads_a_file_placed_by_hand(reference, tmp_path, no_network, filename):
    folder = tmp_path / "ddpm-cifar10-32"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in old_style(reference.state_dict()).items()}
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, folder / filename)
    else:
        torch.save(state, folder / filename)
    loaded = load_ddpm_cifar10(cache_dir=tmp_path).state_dict()
    expected = unet_from_diffusers(reference).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_offline_without_the_file_says_where_to_put_it(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as err:
        load_ddpm_cifar10(cache_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "ddpm-cifar10-32") in message
    assert "https://huggingface.co/google/ddpm-cifar10-32" in message and interop.FILENAMES[0] in message


# -- the way back: ddpm_lib UNet -> diffusers ----------------------------------------------------------------------
# Small networks of the paper's form: one head per attention level, or heads of one size on equal channels.
EXPRESSIBLE = {
    "paper form": UNetConfig(ch_list=(3, 32, 64), attention_layer=(2,), num_heads=1, temb_dim=32, num_res_blocks=2,
                             norm_groups=8, norm_eps=1e-6, time_mlp_dim=128, mid_attention=True, image_size=16),
    "two heads, no mid attention": UNetConfig(ch_list=(3, 16, 16, 16), attention_layer=(1, 3), num_heads=2,
                                              temb_dim=16, norm_groups=4, time_mlp_dim=24, mid_attention=False,
                                              image_size=8),
}


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_to_diffusers_computes_the_same_function_and_round_trips(name):
    torch.manual_seed(0)
    ours = perturbed(UNet(EXPRESSIBLE[name]))
    theirs = unet_to_diffusers(ours)
    size = ours.config.image_size
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, size, size, generator=g), torch.tensor([3, 917])
    with torch.no_grad():
        expected, out = ours(x, t), theirs(x, t).sample
    assert expected.abs().max() > 0.05
    assert (out - expected).abs().max() / expected.abs().max() < 1e-4
    back = unet_from_diffusers(theirs)
    assert back.config == ours.config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_official_layout_round_trips_exactly(reference):
    back = unet_to_diffusers(unet_from_diffusers(reference))
    assert back.config.block_out_channels == reference.config.block_out_channels
    a, b = reference.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert unet_from_diffusers(reference).config == PRESETS["ddpm-cifar10"]
    assert objective_from_diffusers("v_prediction") == Objective(prediction="v")
    assert objective_from_diffusers() == objective_from_diffusers("epsilon") == Objective()  # the paper's
    assert objective_from_diffusers("sample") == Objective(prediction="x0")
    with pytest.raises(ValueError, match="prediction_type must be one of .'epsilon', 'sample', 'v_prediction'."):
        objective_from_diffusers("v")


@pytest.mark.parametrize("change, reason", [
    ({"num_heads": 4, "attention_layer": (1, 2)}, "one attention_head_dim"),  # heads of 16 and 32 channels
    ({"time_mlp_dim": 0}, "time_mlp_dim=0"),
    ({"temb_dim": 64}, "temb_dim=64"),
    ({"resample_with_conv": False}, "resample_with_conv"),
    ({"num_classes": 10}, "num_classes"),
])
def test_networks_diffusers_cannot_express_raise(change, reason):
    config = replace(EXPRESSIBLE["paper form"], **change)
    with pytest.raises(ValueError, match=reason):
        diffusers_config(config)
    with pytest.raises(ValueError, match=reason):
        unet_to_diffusers(UNet(config))


@pytest.mark.parametrize("schedule, kind", [
    (NoiseSchedule.linear(1000, 1e-4, 0.02), "linear"),
    (NoiseSchedule.linear(40, 1e-3, 0.3), "linear"),
    (NoiseSchedule.cosine(1000), "squaredcos_cap_v2"),
    (NoiseSchedule(torch.linspace(0.3, 1e-3, 40, dtype=torch.float64)), None),  # decreasing: only as betas
])
def test_scheduler_config_gives_diffusers_the_same_schedule(schedule, kind):
    config = scheduler_config(schedule)
    assert config.get("beta_schedule") == kind and ("trained_betas" in config) == (kind is None)
    assert config["prediction_type"] == "epsilon"  # no objective: the paper's
    scheduler = diffusers.DDPMScheduler(**config)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), schedule.alphas_cumprod.double(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_exported_pipeline_loads_offline_and_samples_as_algorithm_2(tmp_path, monkeypatch, prediction):
    """DDPMPipeline over all T steps draws x_T and each step's noise from the generator as ddpm_sample does, and
    its variance_type "fixed_large" is Algorithm 2's sigma_t^2 = beta_t: the samples agree, for a network of each
    prediction (diffusers converts "sample" and "v_prediction" outputs by its own code)."""
    from ddpm_lib.samplers import ddpm_sample

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    ours, schedule = perturbed(UNet(EXPRESSIBLE["paper form"]), std=0.02), NoiseSchedule.linear(8, 1e-3, 0.3)
    denoiser = Denoiser(ours, schedule, Objective(prediction=prediction))
    save_diffusers_pipeline(denoiser, tmp_path / "pipe")
    prediction_type = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())[
        "prediction_type"]
    assert prediction_type == PREDICTION_TYPES[prediction]
    assert objective_from_diffusers(prediction_type) == denoiser.objective  # and back
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-5, atol=1e-7)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 7])
    with torch.no_grad():
        expected = ours(x, t)
        assert (pipe.unet(x, t).sample - expected).abs().max() / expected.abs().max() < 1e-4

    images = pipe(batch_size=2, num_inference_steps=8, generator=torch.Generator().manual_seed(2),
                  output_type="pt").images                                 # (2, 3, 16, 16) in [0, 1]
    x0 = ddpm_sample(denoiser, (2, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    assert x0.std() > 0.1
    torch.testing.assert_close(images, ((x0 + 1) / 2).clamp(0, 1), rtol=0, atol=1e-4)
    few = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(3), output_type="np")
    assert few.images.shape == (1, 16, 16, 3) and torch.isfinite(torch.from_numpy(few.images)).all()
