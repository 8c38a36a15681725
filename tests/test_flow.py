"""Flow matching on the library's schedule, objective and samplers: the flow schedule's grid, the velocity target and
its conversions against a closed form (Gaussian data, whose ideal predictors are known exactly), Euler and Heun on the
probability-flow ODE against DDIM, against diffusers' flow-matching schedulers and by their order of accuracy, and a
flow network's export, training and sampling through the CLI."""
import json

import pytest
import torch
from helpers import MICRO, perturbed

from ddpm_lib.objective import Denoiser, Objective, diffusion_loss
from ddpm_lib.samplers import SAMPLERS, ddim_sample, euler_sample, generate_images, heun_sample
from ddpm_lib.schedule import NoiseSchedule, flow_betas
from ddpm_lib.unet import UNet, UNetConfig

M, C = 0.2, 0.25  # Gaussian data x0 ~ N(M, C^2) per pixel
F64 = torch.float64
# a network diffusers' UNet2DModel expresses (temb_dim = the first level's channels, a time MLP, one head)
EXPRESSIBLE = UNetConfig(ch_list=(3, 16, 16), attention_layer=(2,), num_heads=1, temb_dim=16, norm_groups=4,
                         time_mlp_dim=24, image_size=8)


def gaussian_flow_net(schedule):
    """The exact flow velocity E[eps - x0 | z_s] of Gaussian data as a network of (z_s, s T): z_s = (1 - s) x0 + s eps
    has variance V = (1 - s)^2 C^2 + s^2, E[x0 | z] = M + (1 - s) C^2 (z - (1 - s) M) / V, E[eps | z] = s (z - (1 - s)
    M) / V."""
    T = schedule.num_timesteps

    def net(z, time):
        s = (time.to(z.dtype) / T).reshape(-1, *[1] * (z.ndim - 1))
        V = (1 - s) ** 2 * C ** 2 + s ** 2
        centred = z - (1 - s) * M
        return s * centred / V - (M + (1 - s) * C ** 2 * centred / V)
    return net


def gaussian_eps_net(schedule):
    """The exact E[eps | x_t] of Gaussian data on the variance-preserving x_t (Eq. 4): sigma (x_t - alpha M) / V."""
    def net(x_t, t):
        a, s = schedule.sqrt_alpha_bar(t, x_t), schedule.sqrt_one_minus_alpha_bar(t, x_t)
        return s * (x_t - a * M) / (a ** 2 * C ** 2 + s ** 2)
    return net


def test_the_flow_schedule_is_flow_matchings_evenly_spaced_time():
    T = 1000
    schedule = NoiseSchedule.flow(T)
    s = schedule._f64["flow_times"]
    # s_t = (t + 1) / T (index 0 is the paper's t = 1), up to the last, whose beta is clipped at 0.999 as cosine's are
    torch.testing.assert_close(s[:-1] * T, torch.arange(1, T, dtype=F64), rtol=0, atol=1e-9)
    assert 1 - 4e-5 < s[-1].item() < 1
    abar = schedule._f64["alphas_cumprod"]
    ref = (1 - s[:-1]) ** 2 / ((1 - s[:-1]) ** 2 + s[:-1] ** 2)
    torch.testing.assert_close(abar[:-1], ref, rtol=1e-12, atol=0)
    assert torch.equal(flow_betas(T), schedule.state_dict()["betas"])
    assert NoiseSchedule.from_config(schedule.config()).config() == {"kind": "flow", "num_timesteps": T}
    with pytest.raises(ValueError, match="params of a flow schedule must be"):
        NoiseSchedule(flow_betas(8), "flow", {"num_timesteps": 8, "s": 0.008})


@pytest.mark.parametrize("kind", ["linear", "cosine", "flow"])
def test_the_flow_target_converts_back_and_is_a_rescaled_v(kind):
    """split(target) gives back x0 and eps; z_s, the network's input, is (1 - s) x0 + s eps; and u = eps - x0 is
    v (Salimans & Ho) seen in other coordinates: u = (sigma - alpha) x_t + (alpha + sigma) v."""
    schedule = {"linear": NoiseSchedule.paper, "cosine": NoiseSchedule.cosine, "flow": NoiseSchedule.flow}[kind]()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(16, 3, 4, 4, generator=g, dtype=F64), torch.randn(16, 3, 4, 4, generator=g, dtype=F64)
    t = torch.randint(0, 1000, (16,), generator=g)
    x_t = schedule.q_sample(x0, t, eps)
    flow = Objective(prediction="flow")
    u = flow.target(schedule, x0, t, eps)
    x0_back, eps_back = flow.split(schedule, u, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-9)
    a, sg = schedule.sqrt_alpha_bar(t, x_t), schedule.sqrt_one_minus_alpha_bar(t, x_t)
    v = Objective(prediction="v").target(schedule, x0, t, eps)
    torch.testing.assert_close(u, (sg - a) * x_t + (a + sg) * v, rtol=0, atol=1e-12)
    z, time = flow.net_input(schedule, x_t, t)
    s = sg / (a + sg)
    torch.testing.assert_close(z, (1 - s) * x0 + s * eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(time.double(), s.flatten() * 1000, rtol=1e-6, atol=0)  # float32 times


@pytest.mark.parametrize("kind", ["cosine", "flow"])
def test_the_exact_flow_velocity_gives_the_exact_denoiser(kind):
    """The ideal flow network (closed form in z_s and s) and the ideal eps network (closed form in x_t) of the same
    Gaussian data are one denoiser: Denoiser's conversions (net_input, split) join the two coordinate systems."""
    schedule = NoiseSchedule.cosine() if kind == "cosine" else NoiseSchedule.flow()
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(32, 1, 2, 2, generator=g, dtype=F64), torch.randint(0, 1000, (32,), generator=g)
    via_flow = Denoiser(gaussian_flow_net(schedule), schedule, Objective(prediction="flow"))(x_t, t)
    via_eps = Denoiser(gaussian_eps_net(schedule), schedule)(x_t, t)
    # the flow net reads s from float32 times s T: relative error 6e-8 in s, x0 ~ 1e4 x_t near the end of cosine's
    torch.testing.assert_close(via_flow.x0, via_eps.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(via_flow.eps, via_eps.eps, rtol=1e-5, atol=1e-5)


def test_min_snr_weighs_the_velocitys_error_as_x0s():
    """With weighting min-snr the flow loss of an output error equals min(SNR, gamma) times the squared error of the
    x0 it implies, as for the other targets (Objective.weight's derivation), at every t."""
    schedule, flow = NoiseSchedule.flow(), Objective(prediction="flow", weighting="min-snr", snr_gamma=5.0)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(64, 1, 2, 2, generator=g, dtype=F64)
    eps, t = torch.randn(64, 1, 2, 2, generator=g, dtype=F64), torch.arange(0, 1000, 1000 // 64)[:64]
    x_t = schedule.q_sample(x0, t, eps)
    u = flow.target(schedule, x0, t, eps)
    wrong = u + 0.1 * torch.randn(u.shape, generator=g, dtype=F64)
    weighted = flow.weight(schedule, t).double() * ((wrong - u) ** 2).flatten(1).mean(1)
    x0_error = ((flow.split(schedule, wrong, x_t, t)[0] - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(weighted, schedule.snr(t, F64).clamp(max=5.0) * x0_error, rtol=1e-6, atol=0)


def test_diffusion_loss_feeds_a_flow_net_its_path_and_time():
    """Algorithm 1 with the flow objective: the network sees z_s and s T, and is scored against eps - x0."""
    schedule, seen = NoiseSchedule.flow(), {}
    x0, eps, t = torch.rand(4, 3, 2, 2) * 2 - 1, torch.randn(4, 3, 2, 2), torch.tensor([0, 10, 500, 999])

    def net(z, time):
        seen.update(z=z, time=time)
        return torch.zeros_like(z)
    loss = diffusion_loss(net, schedule, x0, Objective(prediction="flow"), t=t, noise=eps, reduction="none")
    s = schedule.flow_time(t, x0)
    torch.testing.assert_close(seen["z"], (1 - s) * x0 + s * eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["time"], torch.tensor([1.0, 11.0, 501.0, 999.968]), rtol=0, atol=1e-3)
    torch.testing.assert_close(loss, ((eps - x0) ** 2).flatten(1).mean(1))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow"])
def test_euler_on_the_flow_ode_is_ddim(prediction):
    """z_s' = z_s + (s' - s)(eps - x0) = (1 - s') x0 + s' eps is DDIM's eta = 0 update (Eq. 12) rescaled, for every
    objective; the coefficients differ only by float32 rounding (sqrt of a rounded alpha_bar, or a rounded sqrt)."""
    schedule = NoiseSchedule.cosine(100)
    torch.manual_seed(0)
    denoiser = Denoiser(perturbed(UNet(MICRO)).double(), schedule, Objective(prediction=prediction))
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    a = ddim_sample(denoiser, x_T.shape, 7, x_T=x_T)
    b = euler_sample(denoiser, x_T.shape, 7, x_T=x_T)
    assert (a - b).abs().max() < 1e-4 * x_T.abs().max(), (a - b).abs().max()
    assert (a - x_T).abs().max() > 0.1


def test_heun_is_second_order_and_euler_first():
    """On the exact velocity of Gaussian data the end point of Heun converges as h^2 and Euler's as h: doubling the
    steps divides Heun's error by about 4 and Euler's by about 2 (against Heun with 999 evaluations)."""
    schedule = NoiseSchedule.flow()
    denoiser = Denoiser(gaussian_flow_net(schedule), schedule, Objective(prediction="flow"))
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    kw = dict(x_T=x_T, clip_denoised=False)
    exact = heun_sample(denoiser, x_T.shape, 999, **kw)
    heun = [(heun_sample(denoiser, x_T.shape, 2 * k - 1, **kw) - exact).abs().max().item() for k in (9, 17, 33)]
    euler = [(euler_sample(denoiser, x_T.shape, k, **kw) - exact).abs().max().item() for k in (9, 17, 33)]
    assert all(3.0 < a / b < 5.0 for a, b in zip(heun, heun[1:])), heun
    assert all(1.6 < a / b < 2.6 for a, b in zip(euler, euler[1:])), euler
    assert heun[-1] < euler[-1] / 20
    torch.testing.assert_close(exact.mean(), torch.tensor(M, dtype=F64), rtol=0, atol=0.05)  # the data: N(M, C^2)
    torch.testing.assert_close(exact.std(), torch.tensor(C, dtype=F64), rtol=0.1, atol=0)


@pytest.mark.parametrize("sample_steps", [1, 2, 3, 4, 7, 10])
def test_heun_makes_exactly_its_sample_steps_evaluations(sample_steps):
    schedule, calls = NoiseSchedule.flow(50), []
    net = gaussian_flow_net(schedule)
    denoiser = Denoiser(lambda z, time: calls.append(1) or net(z, time), schedule, Objective(prediction="flow"))
    heun_sample(denoiser, (1, 1, 2, 2), sample_steps)
    assert len(calls) == sample_steps
    assert SAMPLERS["heun"].fn is heun_sample and SAMPLERS["euler"].fn is euler_sample


def test_euler_and_heun_agree_with_diffusers_flow_matching_schedulers():
    """diffusers' FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler, stepped on our grid of s (the
    Heun scheduler's sigmas set as its set_timesteps lays them out), with a flow network's output, give our samples
    to float32 accuracy."""
    diffusers = pytest.importorskip("diffusers")
    from ddpm_lib.timesteps import ddim_timesteps

    T, schedule = 1000, NoiseSchedule.flow()
    torch.manual_seed(0)
    net = perturbed(UNet(MICRO), std=0.02).eval()
    denoiser = Denoiser(net, schedule, Objective(prediction="flow"))
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    s = schedule.flow_times[ddim_timesteps(T, 10)]  # our grid of s (diffusers' own starts at s = 1, ours 3.2e-5 below)
    euler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T)
    euler.set_timesteps(sigmas=s.tolist())
    heun = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=T)
    heun.set_timesteps(10)
    heun.sigmas = torch.cat([s[:1], s[1:].repeat_interleave(2), torch.zeros(1)])
    heun.timesteps = torch.cat([s[:1], s[1:].repeat_interleave(2)]) * T
    with torch.no_grad():
        for scheduler, ours in ((euler, euler_sample(denoiser, x_T.shape, 10, x_T=x_T, clip_denoised=False)),
                                (heun, heun_sample(denoiser, x_T.shape, 19, x_T=x_T, clip_denoised=False))):
            z = x_T / (schedule.sqrt_alphas_cumprod[-1] + schedule.sqrt_one_minus_alphas_cumprod[-1])  # z at s_max
            for time in scheduler.timesteps:
                z = scheduler.step(net(z, time.expand(len(z))), time, z).prev_sample
            assert (z - ours).abs().max() < 1e-4, (type(scheduler).__name__, (z - ours).abs().max())
            assert ours.std() > 0.1


def test_a_flow_network_exports_to_diffusers_flow_matching(tmp_path, monkeypatch):
    """save_diffusers_pipeline gives a flow network FlowMatchEulerDiscreteScheduler; the DDPMPipeline it writes
    samples as euler_sample does, up to the first point of the grids (s = 1 there, 1 - 3.2e-5 here: the first step
    differs by 3.2e-5 of x_T and of the velocity, far below the 1e-3 allowed)."""
    diffusers = pytest.importorskip("diffusers")
    from ddpm_lib.interop import save_diffusers_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    net = perturbed(UNet(EXPRESSIBLE), std=0.02).eval()
    denoiser = Denoiser(net, NoiseSchedule.flow(), Objective(prediction="flow"))
    save_diffusers_pipeline(denoiser, tmp_path / "pipe")
    config = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler" and config["num_train_timesteps"] == 1000
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(6),
                  output_type="pt").images
    x0 = euler_sample(denoiser, (2, 3, 8, 8), 10, generator=torch.Generator().manual_seed(6), clip_denoised=False)
    assert x0.std() > 0.1
    torch.testing.assert_close(images, ((x0 + 1) / 2).clamp(0, 1), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="needs the flow schedule, got a cosine one"):
        save_diffusers_pipeline(Denoiser(net, NoiseSchedule.cosine(), Objective(prediction="flow")), tmp_path / "x")


def test_a_flow_model_trains_and_samples_through_the_cli(tmp_path):
    """train --prediction flow --schedule flow records both; the checkpoint's denoiser and `sample` draw with Heun;
    `export` writes diffusers' flow-matching scheduler."""
    from ddpm_lib.checkpoint import load_model
    from ddpm_lib.cli import main

    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--ch-list", "3,16,32", "--attention-layer", "2", "--heads", "1",
            "--temb-dim", "16", "--num-timesteps", "50", "--schedule", "flow", "--prediction", "flow",
            "--data", "shapes", "--image-size", "16", "--n-images", "64", "--batch-size", "16", "--lr", "2e-3",
            "--train-steps", "40", "--device", "cpu", "--sample-every", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["objective"]["prediction"] == "flow" and ckpt["schedule"]["kind"] == "flow"
    denoiser = load_model(out / "checkpoint.pt", device="cpu")
    assert denoiser.objective.prediction == "flow" and denoiser.schedule.kind == "flow"
    images = generate_images(denoiser, 4, sampler="heun", sample_steps=9)
    assert images.shape == (4, 3, 16, 16) and images.float().std() > 10
    assert main(["sample", "--ckpt", str(out), "--sampler", "heun", "--sample-steps", "5", "--n", "4",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    pytest.importorskip("diffusers")
    assert main(["export", "--ckpt", str(out), "--out", str(tmp_path / "pipe")]) == 0
    config = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler" and config["num_train_timesteps"] == 50
