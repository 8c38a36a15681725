"""Samplers against diffusers' schedulers step for step, and against Gaussian data, whose ideal noise
predictor and probability-flow ODE solution are known in closed form."""
import math

import pytest
import torch
from torch import nn

from helpers import MU, S, IdealEps, check_moments, fake_model, gen

from ddpm_lib.guidance import guided
from ddpm_lib.objective import Denoiser
from ddpm_lib.utils import to_uint8
from ddpm_lib.sampler_steps import Trajectory
from ddpm_lib.samplers import (SAMPLERS, ddim_sample, ddim_timesteps, ddpm_sample, dpm_solver_sample,
                               dpm_solver_timesteps, generate_images)
from ddpm_lib.schedule import NoiseSchedule, cosine_betas, linear_betas
from ddpm_lib.unet import UNetConfig

diffusers = pytest.importorskip("diffusers")
# diffusers' DPMSolverMultistepScheduler.set_timesteps trips a NumPy 2 deprecation inside diffusers itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 3, 4, 4)
GAUSS_SHAPE = (10, 1, 20, 20)          # 4,000 draws of the 1-D Gaussian; a small batch keeps per-step indexing cheap


def fake(schedule):
    """fake_model, an eps-predicting function of (x_t, t), as the denoiser the samplers take."""
    return Denoiser(fake_model, schedule)


def ideal(schedule, prediction="eps"):
    """The ideal network of the Gaussian data predicting `prediction`, as its denoiser: Denoiser(net, schedule,
    Objective(prediction)) (IdealEps.denoiser)."""
    return IdealEps(schedule, prediction).denoiser()


def posterior_mean_x0(abar, x_t):
    """E[x0 | x_t] for x0 ~ N(MU, S^2): the Gaussian's regression of x0 on x_t."""
    return MU + abar.sqrt() * S ** 2 / (abar * S ** 2 + 1 - abar) * (x_t - abar.sqrt() * MU)


def flow_solution(schedule, x_T):
    """The probability-flow ODE from t = T-1 to t = 0 keeps the standardised value z of a 1-D Gaussian
    (the flow is monotone), followed by the final x0 = E[x0 | x_0] every sampler ends with."""
    abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)
    z = (x_T - abar[-1].sqrt() * MU) / (abar[-1] * S ** 2 + 1 - abar[-1]).sqrt()
    x_at_0 = abar[0].sqrt() * MU + (abar[0] * S ** 2 + 1 - abar[0]).sqrt() * z
    return posterior_mean_x0(abar[0], x_at_0)


def diffusers_dpm_solver(betas, order, timesteps):
    """diffusers' DPM-Solver++ of `order` on given timesteps, ending at sigma = 0 with a first-order step."""
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=len(betas), trained_betas=betas.numpy(), algorithm_type="dpmsolver++",
        solver_order=order, lower_order_final=False, final_sigmas_type="zero")
    ref.set_timesteps(timesteps=timesteps)
    return ref


def run_diffusers(ref, x, generator=None, **step_kwargs):
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t.repeat(x.shape[0])), t, x, generator=generator, **step_kwargs).prev_sample
    return x


# ---- against diffusers, full sampling loops ---------------------------------------------------

@pytest.mark.parametrize("betas, variance, variance_type, atol", [
    (linear_betas(), "beta", "fixed_large", 1e-4),
    (linear_betas(), "posterior", "fixed_small", 1e-4),
    (cosine_betas(), "beta", "fixed_large", 1e-3),         # diffusers' float32 cumprod drifts more here
], ids=["linear-beta", "linear-posterior", "cosine-beta"])
def test_ddpm_matches_diffusers_ddpm_scheduler(betas, variance, variance_type, atol):
    """Algorithm 2 with sigma^2 = beta ("fixed_large") or beta_tilde ("fixed_small"), clipping x0."""
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                  variance_type=variance_type, clip_sample=True)
    g = gen(1)
    x = run_diffusers(ref, torch.randn(SHAPE, generator=g), g)  # same draws, same order: x_T, then one per t > 0
    ours = ddpm_sample(fake(NoiseSchedule(betas)), SHAPE, variance, generator=gen(1))
    torch.testing.assert_close(ours, x, rtol=0, atol=atol)
    assert ours.abs().max() <= 1


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_ddim_scheduler(eta):
    """28 steps on T = 1000 are 999, 962, ..., 0 (gap 37); diffusers' step() with 27 inference steps
    steps back by 1000 // 27 = 37, so both walk the same timesteps."""
    betas = linear_betas()
    assert ddim_timesteps(1000, 28) == list(range(999, -1, -37))
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=True)
    ref.set_timesteps(27)
    g = gen(2)
    x = torch.randn(SHAPE, generator=g)
    for t in ddim_timesteps(1000, 28):
        out = fake_model(x, torch.full((SHAPE[0],), t))
        x = ref.step(out, t, x, eta=eta, use_clipped_model_output=True, generator=g).prev_sample
    ours = ddim_sample(fake(NoiseSchedule(betas)), SHAPE, sample_steps=28, eta=eta, generator=gen(2))
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [7, 33])
def test_ddim_on_uneven_steps_matches_diffusers(steps):
    """Step counts whose gaps are uneven (999/6 = 166.5, 999/32 = 31.2). The timesteps are exactly diffusers'
    DDIMScheduler "linspace" ones. Its step() cannot walk them (it always steps back by T // steps), so the
    update is checked against two other diffusers schedulers that follow given timesteps: eta = 0 is
    first-order DPM-Solver++ (Lu et al. 2022b, Sec. 4: DDIM is its first-order case), eta = 1 is DDPM's
    ancestral step between the chosen timesteps (sigma^2 = beta_tilde of the skip, Song et al. Eq. 16)."""
    betas = linear_betas()
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), timestep_spacing="linspace")
    ref.set_timesteps(steps)
    timesteps = ref.timesteps.tolist()
    assert ddim_timesteps(1000, steps) == timesteps and len(set(b - a for a, b in zip(timesteps[1:], timesteps))) == 2
    x_T = torch.randn(SHAPE, generator=gen(3))
    ours = ddim_sample(fake(NoiseSchedule(betas)), SHAPE, steps, x_T=x_T, clip_denoised=False)
    x = run_diffusers(diffusers_dpm_solver(betas, 1, timesteps), x_T)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), variance_type="fixed_small",
                                  clip_sample=True)
    ref.set_timesteps(timesteps=timesteps)
    g = gen(4)
    x = run_diffusers(ref, torch.randn(SHAPE, generator=g), g)
    ours = ddim_sample(fake(NoiseSchedule(betas)), SHAPE, steps, eta=1.0, generator=gen(4))
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_matches_diffusers_multistep_scheduler(steps):
    """DPM-Solver++(2M) on its log-SNR timesteps, against diffusers' 2M scheduler walking the same timesteps
    (diffusers' own log-SNR timesteps are compared in test_dpm_solver_timesteps_match_diffusers_lu_lambdas)."""
    betas = linear_betas()
    timesteps = dpm_solver_timesteps(NoiseSchedule(betas), steps)
    x_T = torch.randn(SHAPE, generator=gen(3))
    x = run_diffusers(diffusers_dpm_solver(betas, 2, timesteps), x_T)
    ours = dpm_solver_sample(fake(NoiseSchedule(betas)), SHAPE, steps, x_T=x_T, clip_denoised=False)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


@pytest.mark.parametrize("T", [1, 2, 5, 100, 1000])
def test_every_sampler_matches_diffusers_for_any_T(T):
    """Short schedules too (T = 1: a single step straight to x0): DDPM against DDPMScheduler, DDIM (eta = 0)
    and DPM-Solver++(2M) against DPMSolverMultistepScheduler on their timesteps, with 1, a few and all T steps."""
    betas = linear_betas(T) if T >= 100 else linear_betas(T, 0.1, 0.5)   # T = 1: beta_1 = 0.1
    schedule = NoiseSchedule(betas)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=betas.numpy(), variance_type="fixed_large",
                                  clip_sample=True)
    g = gen(1)
    x = run_diffusers(ref, torch.randn(SHAPE, generator=g), g)
    torch.testing.assert_close(ddpm_sample(fake(schedule), SHAPE, generator=gen(1)), x, rtol=0, atol=1e-4)
    x_T = torch.randn(SHAPE, generator=gen(3))
    for steps in sorted({1, min(T, 7), T}):
        for sample, timesteps, order in ((ddim_sample, ddim_timesteps(T, steps), 1),
                                         (dpm_solver_sample, dpm_solver_timesteps(schedule, steps), 2)):
            assert len(timesteps) == steps and timesteps[0] == T - 1 and timesteps[-1] == (T - 1 if steps == 1 else 0)
            x = run_diffusers(diffusers_dpm_solver(betas, order, timesteps), x_T)
            ours = sample(fake(schedule), SHAPE, steps, x_T=x_T, clip_denoised=False)
            torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_one_step_samplers_return_the_posterior_mean_of_x0():
    """T = 1 (cosine: alpha_bar = 0.001), and one step on T = 1000: every sampler returns E[x0 | x_T], known
    in closed form for Gaussian data."""
    for schedule in (NoiseSchedule.cosine(1), NoiseSchedule.linear()):
        x_T = torch.randn(GAUSS_SHAPE, generator=gen(5), dtype=torch.float64)
        exact = posterior_mean_x0(torch.cumprod(1 - schedule.state_dict()["betas"], 0)[-1], x_T)
        kw = dict(x_T=x_T, clip_denoised=False)
        denoiser = ideal(schedule)
        outs = [dpm_solver_sample(denoiser, x_T.shape, 1, **kw), ddim_sample(denoiser, x_T.shape, 1, **kw)]
        if schedule.num_timesteps == 1:
            outs.append(ddpm_sample(denoiser, x_T.shape, generator=gen(6), **kw))
        for out in outs:
            torch.testing.assert_close(out, exact, rtol=1e-6, atol=1e-6)


# ---- timesteps ---------------------------------------------------------------------------------

def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(10, 4) == [9, 6, 3, 0]
    assert ddim_timesteps(1, 1) == [0] and ddim_timesteps(2, 2) == [1, 0]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpm_solver_timesteps_give_exactly_the_requested_steps(kind):
    """Every requested step is a distinct model evaluation, even where log-SNR-uniform targets crowd into
    fewer integers than steps (cosine, 20 steps: plain rounding leaves 17), from T-1 down to 0."""
    schedule = NoiseSchedule.linear() if kind == "linear" else NoiseSchedule.cosine()
    for steps in [*range(2, 60), 69, 100, 250, 500, 999, 1000]:
        ts = dpm_solver_timesteps(schedule, steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))                   # distinct, descending
    assert dpm_solver_timesteps(schedule, 1) == [999]
    assert dpm_solver_timesteps(schedule, 1000) == list(range(999, -1, -1))


def test_dpm_solver_timesteps_are_spaced_uniformly_in_log_snr():
    schedule = NoiseSchedule.linear()
    ts = dpm_solver_timesteps(schedule, 10)
    lam = [0.5 * math.log(schedule.snr(t).item()) for t in ts]
    gaps = [a - b for a, b in zip(lam[1:], lam)]
    assert max(gaps) - min(gaps) < 0.1 * (sum(gaps) / len(gaps))


@pytest.mark.parametrize("betas", [linear_betas(), cosine_betas()], ids=["linear", "cosine"])
def test_dpm_solver_timesteps_match_diffusers_lu_lambdas(betas):
    """diffusers' use_lu_lambdas claims the same spacing (uniform in log-SNR, interpolated, rounded); it keeps
    colliding timesteps as repeats. Wherever its timesteps are distinct ours are the same, up to one integer:
    diffusers interpolates log-sigma of its float32 alpha_bar, we of our float64 one, so a target within ~1e-4
    of a half-integer can round the other way (linear betas, 26 steps: 265 vs 264)."""
    schedule = NoiseSchedule(betas)
    compared = exact = 0
    for steps in range(2, 101):
        ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                                    algorithm_type="dpmsolver++", use_lu_lambdas=True)
        ref.set_timesteps(steps)
        theirs, ours = ref.timesteps.tolist(), dpm_solver_timesteps(schedule, steps)
        if len(set(theirs)) < steps:
            assert len(set(theirs)) < len(ours) == steps                 # where diffusers repeats, we do not
            continue
        compared += 1
        exact += theirs == ours
        assert max(abs(a - b) for a, b in zip(theirs, ours)) <= 1
    assert compared >= 5 and exact >= compared - 1


@pytest.mark.parametrize("name, steps", [("ddim", 33), ("dpm-solver", 20), ("dpm-solver", 100)])
def test_model_calls_equal_steps(name, steps):
    schedule = NoiseSchedule.cosine()
    calls = []
    SAMPLERS[name].fn(Denoiser(lambda x, t: calls.append(t) or fake_model(x, t), schedule), SHAPE, steps,
                      generator=gen(0))
    assert len(calls) == steps and len({int(t[0]) for t in calls}) == steps


def test_registry():
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm-solver", "euler", "heun"}
    assert [SAMPLERS[k].default_sample_steps for k in ("ddpm", "ddim", "dpm-solver", "euler", "heun")] == [
        None, 50, 20, 50, 35]
    assert SAMPLERS["ddim"].fn is ddim_sample and SAMPLERS["dpm-solver"].fn is dpm_solver_sample
    with pytest.raises(TypeError):
        SAMPLERS["sde"] = SAMPLERS["ddim"]


# ---- Gaussian data: the samplers return the data's distribution --------------------------------

PREDICTIONS = ("eps", "x0", "v", "flow")  # what the network outputs: its denoiser's Objective(prediction) converts it


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_reproduces_gaussian_data(variance, prediction):
    schedule = NoiseSchedule.linear()
    x = ddpm_sample(ideal(schedule, prediction), GAUSS_SHAPE, variance, generator=gen(4))
    check_moments(x, 0.0, 0.005)         # measured with 20,000 samples: sd 0.251 (beta), 0.247 (posterior)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_reproduces_gaussian_data(prediction):
    schedule = NoiseSchedule.linear()
    x = ddim_sample(ideal(schedule, prediction), GAUSS_SHAPE, sample_steps=50, generator=gen(5))
    # DDIM's first-order steps shrink the spread even with a perfect model: sd 0.226 at 50 steps
    # (measured, 20,000 samples); the mean is unbiased.
    check_moments(x, 0.0, 0.03)
    x = ddim_sample(ideal(schedule, prediction), GAUSS_SHAPE, sample_steps=500, generator=gen(5))
    check_moments(x, 0.0, 0.005)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_sampler_with_an_x0_or_v_model_equals_it_with_the_eps_model(prediction):
    """The ideal x0 and v predictors are the ideal eps predictor in other coordinates: from the same x_T and noise,
    each sampler returns the same samples, to the rounding of the conversions (float64 here)."""
    schedule = NoiseSchedule.linear()
    x_T = torch.randn(GAUSS_SHAPE, generator=gen(8), dtype=torch.float64)
    for sample in (lambda d: ddpm_sample(d, GAUSS_SHAPE, x_T=x_T, generator=gen(9)),
                   lambda d: ddim_sample(d, GAUSS_SHAPE, 20, eta=0.5, x_T=x_T, generator=gen(9)),
                   lambda d: dpm_solver_sample(d, GAUSS_SHAPE, 10, x_T=x_T)):
        torch.testing.assert_close(sample(ideal(schedule, prediction)), sample(ideal(schedule)),
                                   rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpm_solver_beats_ddim_at_10_steps(prediction):
    schedule = NoiseSchedule.linear()
    denoiser = ideal(schedule, prediction)
    dpm = dpm_solver_sample(denoiser, GAUSS_SHAPE, sample_steps=10, generator=gen(6))
    ddim = ddim_sample(denoiser, GAUSS_SHAPE, sample_steps=10, generator=gen(6))
    check_moments(dpm, 0.0, 0.01)                                      # measured sd 0.257
    assert abs(dpm.std().item() - S) < abs(ddim.std().item() - S) / 4   # DDIM: sd 0.138
    assert abs(dpm.mean().item() - MU) <= abs(ddim.mean().item() - MU) + 0.002


def test_deterministic_samplers_converge_to_probability_flow_solution():
    """Per sample, from the same x_T: DPM-Solver++(2M) and DDIM (eta = 0) approach the closed-form
    solution of the probability-flow ODE, DPM-Solver++ much faster (second vs first order)."""
    schedule = NoiseSchedule.linear()
    denoiser = ideal(schedule)
    x_T = torch.randn(5, 1, 20, 20, generator=gen(7), dtype=torch.float64)
    exact = flow_solution(schedule, x_T)
    err = {}
    for steps in (10, 50, 200):
        x = dpm_solver_sample(denoiser, x_T.shape, steps, x_T=x_T, clip_denoised=False)
        err[steps] = (x - exact).abs().max().item()
    assert err[10] > err[50] > err[200] and err[200] < 2e-3             # measured 0.026, 0.0026, 0.0005
    ddim = ddim_sample(denoiser, x_T.shape, 1000, x_T=x_T, clip_denoised=False)
    assert (ddim - exact).abs().max().item() < 1e-2                      # measured 0.0055
    dpm = dpm_solver_sample(denoiser, x_T.shape, 200, x_T=x_T, clip_denoised=False)
    torch.testing.assert_close(dpm, ddim, rtol=0, atol=1e-2)


# ---- reproducibility, trajectories, dtypes, devices ------------------------------------------

RUNS = {
    "ddpm": lambda **kw: ddpm_sample(fake(NoiseSchedule.linear(20)), SHAPE, **kw),
    "ddim": lambda **kw: ddim_sample(fake(NoiseSchedule.linear(20)), SHAPE, sample_steps=7, eta=0.5, **kw),
    "dpm": lambda **kw: dpm_solver_sample(fake(NoiseSchedule.linear(20)), SHAPE, sample_steps=7, **kw),
}


def with_trajectory(sample, *args, **kwargs):
    """(x0, its trajectory): a sampler run with a Trajectory as its callback."""
    trajectory = Trajectory()
    x0 = sample(*args, callback=trajectory, **kwargs)
    return x0, trajectory.result(x0)


@pytest.mark.parametrize("name", RUNS)
def test_seeded_runs_repeat_and_trajectory_shapes(name):
    sample = RUNS[name]
    a = sample(generator=gen(8))
    b, traj = with_trajectory(sample, generator=gen(8), progress=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(generator=gen(9)))
    steps = {"ddpm": 20, "ddim": 7, "dpm": 7}[name]
    assert traj["t"][0] == 19 and traj["t"][-1] == 0 and len(traj["t"]) == steps
    assert traj["x_t"].shape == (steps + 1, *SHAPE) and traj["x0_pred"].shape == (steps, *SHAPE)
    assert traj["x_t"].device.type == "cpu"
    assert torch.equal(traj["x_t"][0], torch.randn(SHAPE, generator=gen(8)))   # x_T is the first draw
    assert torch.equal(traj["x_t"][-1], b)
    assert traj["x0_pred"].abs().max() <= 1 and b.abs().max() <= 1           # clip_denoised=True


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_x_T(name, dtype):
    x_T = torch.randn(SHAPE, generator=gen(10), dtype=dtype)
    out = RUNS[name](x_T=x_T, generator=gen(11))
    assert out.dtype == dtype
    assert RUNS[name](generator=gen(11)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", RUNS)
def test_cuda_agrees_with_cpu(name):
    cpu = RUNS[name](generator=gen(12))
    cuda = RUNS[name](generator=gen(12), device="cuda")          # a CPU generator: the same draws
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


# ---- generate_images ---------------------------------------------------------------------------

class TinyNet(nn.Module):
    """fake_model as an nn.Module with what generate_images reads, a UNetConfig (image_size, num_classes,
    ch_list); records (rows, labels) of every call."""

    def __init__(self, num_classes=None, channels=3):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.config = UNetConfig(ch_list=(channels, 16), attention_layer=(), norm_groups=8, image_size=8,
                                 num_classes=num_classes)
        self.calls = []

    def forward(self, x_t, t, y=None):
        self.calls.append((len(x_t), None if y is None else y.tolist()))
        return self.scale * fake_model(x_t, t) + (0 if y is None else 0.1 * y.view(-1, 1, 1, 1))


def test_generate_images_matches_the_sampler_and_batches_deterministically():
    net, schedule = TinyNet().eval(), NoiseSchedule.linear(10)
    denoiser = Denoiser(net, schedule)
    images = generate_images(denoiser, 5, sampler="ddim", sample_steps=3, batch_size=8, seed=7)
    x0 = ddim_sample(denoiser, (5, 3, 8, 8), sample_steps=3, generator=gen(7))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 8, 8) and images.device.type == "cpu"
    assert torch.equal(images, to_uint8(x0))
    batched = generate_images(denoiser, 5, sampler="dpm-solver", sample_steps=3, batch_size=2, seed=7)
    assert torch.equal(batched, generate_images(denoiser, 5, sampler="dpm-solver", sample_steps=3, batch_size=2,
                                                seed=7))
    assert not torch.equal(batched, generate_images(denoiser, 5, sampler="dpm-solver", sample_steps=3, batch_size=2))
    net.calls.clear()
    generate_images(denoiser, 5, sampler="ddpm", batch_size=2)
    assert [rows for rows, _ in net.calls] == [2] * 10 + [2] * 10 + [1] * 10   # three batches of all T steps


def test_generate_images_passes_a_samplers_own_options():
    """options= reaches the sampler: DDIM with eta = 1 draws noise at every step (not the deterministic samples), as
    ddim_sample(eta=1) does from the same generator; Algorithm 2's variance likewise."""
    net, schedule = TinyNet().eval(), NoiseSchedule.linear(10)
    denoiser = Denoiser(net, schedule)
    images = generate_images(denoiser, 4, sampler="ddim", sample_steps=5, seed=3, options={"eta": 1.0})
    assert torch.equal(images, to_uint8(ddim_sample(denoiser, (4, 3, 8, 8), 5, eta=1.0, generator=gen(3))))
    assert not torch.equal(images, generate_images(denoiser, 4, sampler="ddim", sample_steps=5, seed=3))
    posterior = generate_images(denoiser, 4, sampler="ddpm", seed=3, options={"variance": "posterior"})
    assert torch.equal(posterior, to_uint8(ddpm_sample(denoiser, (4, 3, 8, 8), "posterior", generator=gen(3))))


def test_generate_images_takes_its_channels_from_the_config():
    images = generate_images(Denoiser(TinyNet(channels=1).eval(), NoiseSchedule.linear(10)), 3, sample_steps=2)
    assert images.shape == (3, 1, 8, 8)  # a grayscale network draws grayscale images


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver"])
def test_generate_images_default_steps_come_from_the_registry(name):
    net, schedule = TinyNet(), NoiseSchedule.linear(60)
    generate_images(Denoiser(net, schedule), 1, sampler=name)
    assert len(net.calls) == (SAMPLERS[name].default_sample_steps or schedule.num_timesteps)
    net.calls.clear()
    generate_images(Denoiser(net, NoiseSchedule.linear(10)), 1, sampler=name)     # a default above T: all T steps
    assert len(net.calls) == min(SAMPLERS[name].default_sample_steps or 10, 10)


@pytest.mark.parametrize("training", [True, False])
def test_generate_images_leaves_the_model_mode_as_it_was(training):
    net = TinyNet().train(training)
    generate_images(Denoiser(net, NoiseSchedule.linear(10)), 2, sample_steps=2)
    assert net.training is training

    def broken(*args):
        raise RuntimeError("out of memory")

    net.forward = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        generate_images(Denoiser(net, NoiseSchedule.linear(10)), 2, sample_steps=2)
    assert net.training is training


def test_generate_images_passes_labels_per_batch_with_guidance():
    net = TinyNet(num_classes=3)
    y = torch.tensor([0, 1, 2, 0, 1])
    generate_images(Denoiser(net, NoiseSchedule.linear(10)), 5, sample_steps=2, batch_size=3, y=y, guidance_scale=2.0)
    assert net.calls == [(6, [0, 1, 2, -1, -1, -1])] * 2 + [(4, [0, 1, -1, -1])] * 2


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_generate_images_with_labels_samples_the_guided_model_batch_by_batch(scale):
    """y and guidance_scale enter sampling as guided(denoiser, y[batch], s): the same images by hand."""
    denoiser = Denoiser(TinyNet(num_classes=3).eval(), NoiseSchedule.linear(10))
    y = [0, 1, 2, 0, 1]                                                 # a list is taken too
    images = generate_images(denoiser, 5, sample_steps=3, batch_size=3, seed=7, y=y, guidance_scale=scale)
    g = gen(7)                                                          # one generator through all batches
    x0 = torch.cat([ddim_sample(guided(denoiser, torch.tensor(y[a:b]), scale), (b - a, 3, 8, 8), sample_steps=3,
                                generator=g) for a, b in ((0, 3), (3, 5))])
    assert torch.equal(images, to_uint8(x0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="sde"), "sampler must be one of"),
    (dict(sampler="ddpm", sample_steps=5), "runs all T=10 timesteps"),
    (dict(sample_steps=11), r"sample_steps must be an integer in \[1, T=10\]"),
    (dict(n=0), "n must be a positive int"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(guidance_scale=3.0), "needs class labels y"),
    (dict(y=torch.tensor([0, 1])), "the network is unconditional"),
    (dict(y=torch.tensor([0, 1, 2]), num_classes=3), "y must hold one label per image, n=2, got 3"),
    (dict(y=torch.tensor([0, 3]), num_classes=3), r"y: expected labels in \[-1, 3\)"),
    (dict(y=torch.tensor([0, 1]), guidance_scale=float("nan"), num_classes=3), "must be a finite number"),
])
def test_generate_images_rejects_bad_arguments(kwargs, match):
    kwargs = dict(kwargs)
    net = TinyNet(kwargs.pop("num_classes", None))
    with pytest.raises(ValueError, match=match):
        generate_images(Denoiser(net, NoiseSchedule.linear(10)), **{"n": 2, **kwargs})
    assert net.calls == []                                              # before any sampling


def test_generate_images_takes_a_denoiser_of_a_network_with_a_unet_config():
    """The image shape comes from the network's UNetConfig: a bare network, or a denoiser of a plain function (no
    config), is refused before any sampling."""
    net = TinyNet()
    for not_a_unet_denoiser in (net, Denoiser(fake_model, NoiseSchedule.linear(10))):
        with pytest.raises(ValueError, match="denoiser: expected a Denoiser of a network with a UNetConfig"):
            generate_images(not_a_unet_denoiser, 2, sample_steps=2)
    assert net.calls == []


def test_generate_images_takes_keywords_after_n():
    with pytest.raises(TypeError):
        generate_images(Denoiser(TinyNet(), NoiseSchedule.linear(10)), 2, "ddim", 3)


# ---- ddpm_sample started part-way (t_start) ----------------------------------------------------

@pytest.mark.parametrize("given_x_T", [False, True])
def test_ddpm_from_t_start_T_minus_1_is_the_default_chain(given_x_T):
    schedule = NoiseSchedule.linear(20)
    kw = {"x_T": torch.randn(SHAPE, generator=gen(13))} if given_x_T else {}
    x, traj = with_trajectory(ddpm_sample, fake(schedule), SHAPE, generator=gen(14), **kw)
    x_19, traj_19 = with_trajectory(ddpm_sample, fake(schedule), SHAPE, generator=gen(14), t_start=19, **kw)
    assert torch.equal(x, x_19) and traj["t"] == traj_19["t"]
    assert torch.equal(traj["x_t"], traj_19["x_t"]) and torch.equal(traj["x0_pred"], traj_19["x0_pred"])


@pytest.mark.parametrize("variance", ["beta", "posterior"])
@pytest.mark.parametrize("k", [0, 1, 350])
def test_ddpm_from_t_start_k_is_the_tail_of_the_full_chain(k, variance):
    """From the full chain's state at t = k, with the generator where the chain had it (after x_T and one z
    per step T-1 ... k+1), the last k+1 steps are repeated exactly, trajectory included."""
    schedule, shape = NoiseSchedule.linear(), (3, 1, 4, 4)
    denoiser = ideal(schedule)
    x, full = with_trajectory(ddpm_sample, denoiser, shape, variance, generator=gen(15))
    g = gen(15)
    for _ in range(1 + 999 - k):                                      # x_T, then z at t = 999 ... k+1
        torch.randn(shape, generator=g)
    i = full["t"].index(k)
    x_k, part = with_trajectory(ddpm_sample, denoiser, shape, variance, generator=g, x_T=full["x_t"][i], t_start=k)
    assert part["t"] == list(range(k, -1, -1)) == full["t"][i:]
    assert torch.equal(x_k, x)
    assert torch.equal(part["x_t"], full["x_t"][i:]) and torch.equal(part["x0_pred"], full["x0_pred"][i:])


@pytest.mark.parametrize("t_start", [20, -1, 5.0, True])
def test_ddpm_rejects_a_t_start_outside_the_schedule(t_start):
    match = r"t_start must be an integer timestep in \[0, T-1=19\], got " + repr(t_start)
    with pytest.raises(ValueError, match=match):
        ddpm_sample(fake(NoiseSchedule.linear(20)), SHAPE, x_T=torch.zeros(SHAPE), t_start=t_start)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda s: ddpm_sample(fake(s), SHAPE, variance="fixed"), "variance must be .*'beta'.*'posterior'"),
    (lambda s: ddpm_sample(fake(s), (2, 3, 4)), "shape must be 4-D"),
    (lambda s: ddim_sample(fake(s), (2, 3, 4, 0), sample_steps=5), "shape must be 4-D"),
    (lambda s: ddim_sample(fake(s), SHAPE, sample_steps=0), r"sample_steps must be an integer in \[1, T=20\]"),
    (lambda s: ddim_sample(fake(s), SHAPE, sample_steps=21), r"sample_steps must be an integer in \[1, T=20\]"),
    (lambda s: ddim_sample(fake(s), SHAPE, eta=-0.1), "eta must be >= 0"),
    (lambda s: dpm_solver_sample(fake(s), SHAPE, sample_steps=0), r"sample_steps must be an integer in \[1, T=20\]"),
    (lambda s: dpm_solver_sample(fake(s), SHAPE, sample_steps=21), r"sample_steps must be an integer in \[1, T=20\]"),
    (lambda s: dpm_solver_timesteps(s, 21), r"sample_steps must be an integer in \[1, T=20\]"),
    (lambda s: dpm_solver_sample(fake(s), SHAPE, x_T=torch.zeros(1, 3, 4, 4)), "x_T must have shape"),
    (lambda s: ddpm_sample(fake(s), SHAPE, t_start=5), "t_start=5 needs x_T"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(NoiseSchedule.linear(20))
