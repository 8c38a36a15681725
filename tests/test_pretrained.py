"""unet_from_diffusers against diffusers' UNet2DModel (google/ddpm-cifar10-32 layout), and load_ddpm_cifar10 offline."""
import pytest
import torch

from ddpm_lib import pretrained
from ddpm_lib.pretrained import load_ddpm_cifar10, unet_from_diffusers

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


@pytest.fixture
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("offline (test)")
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)


@pytest.mark.parametrize("filename", pretrained.FILENAMES)
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
    assert "https://huggingface.co/google/ddpm-cifar10-32" in message and pretrained.FILENAMES[0] in message
