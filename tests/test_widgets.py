"""Viewers: render functions give valid PNGs that follow their arguments; widgets show exactly what they render."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ipywidgets")
from ddpm_lib.attention import MultiHeadSelfAttention2d  # noqa: E402
from ddpm_lib.data import make_shapes  # noqa: E402
from ddpm_lib.schedule import NoiseSchedule  # noqa: E402
from ddpm_lib.nb.render import (  # noqa: E402
    forward_sample, render_attention, render_guided_samples, render_noising, render_training, render_trajectory,
    training_progress)
from ddpm_lib.nb.widgets import (  # noqa: E402
    TrainingMonitor, attention_viewer, guidance_viewer, noising_explorer, show_widget, trajectory_scrubber)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def differ(a: bytes, b: bytes) -> bool:
    pa, pb = pixels(a), pixels(b)
    return pa.shape != pb.shape or bool((pa != pb).any())


@pytest.fixture(scope="module")
def images():
    return make_shapes(3, size=16)[0]


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(100)


def widgets_in(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_in(child)


# ----------------------------------------------------------------------------- noising


def test_forward_sample_is_eq4_with_the_same_eps_at_every_t(images, schedule):
    x0, x_a = forward_sample(images, schedule, 10, 1, seed=3)
    _, x_b = forward_sample(images, schedule, 90, 1, seed=3)
    torch.testing.assert_close(x0[0], images[1].float() / 127.5 - 1)
    abar = schedule.alphas_cumprod.double()
    eps_a = (x_a.double() - abar[10].sqrt() * x0) / (1 - abar[10]).sqrt()   # Eq. 4 solved for eps
    eps_b = (x_b.double() - abar[90].sqrt() * x0) / (1 - abar[90]).sqrt()
    torch.testing.assert_close(eps_a, eps_b, atol=1e-5, rtol=1e-5)           # moving t moves only t
    torch.testing.assert_close(eps_a.float(), torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)),
                               atol=1e-5, rtol=1e-5)


def test_render_noising_is_a_png_that_follows_t_and_nothing_else(images, schedule):
    a = render_noising(images, schedule, 5)
    assert pixels(a).ndim == 3 and pixels(a).shape[0] > 100
    assert a == render_noising(images, schedule, 5)
    assert differ(a, render_noising(images, schedule, 60))


@pytest.mark.parametrize("kwargs", [{"t": 100}, {"t": -1}, {"t": 2.0}, {"t": 3, "index": 3}])
def test_render_noising_rejects_bad_arguments(images, schedule, kwargs):
    with pytest.raises(ValueError, match="t must|index must"):
        render_noising(images, schedule, **kwargs)


def test_render_noising_rejects_images_of_the_wrong_shape(schedule):
    with pytest.raises(ValueError, match="images must be"):
        render_noising(torch.zeros(3, 16, 16, dtype=torch.uint8), schedule, 0)


def test_noising_explorer_shows_render_noising_for_its_controls(images, schedule):
    box = noising_explorer(images, schedule)
    c = box.controls
    first_int_slider = next(w for w in widgets_in(box) if type(w).__name__ == "IntSlider")
    assert first_int_slider is c["t"]
    assert c["schedule"].value == "linear" and c["num_timesteps"].value == 100
    assert (c["t"].min, c["t"].max) == (1, 100)                                # the paper's t = index + 1
    c["t"].value = 7
    assert box.image.value == render_noising(images, schedule, 6)
    c["index"].value = 2
    assert box.image.value == render_noising(images, schedule, 6, index=2)
    c["schedule"].value = "cosine"
    assert box.image.value == render_noising(images, NoiseSchedule.cosine(100), 6, index=2)
    assert c["beta_max"].disabled
    c["schedule"].value = "linear"
    c["num_timesteps"].value = 50
    c["t"].value = 50
    c["beta_max"].value = 0.03
    assert box.current_schedule().num_timesteps == 50
    expected = NoiseSchedule.linear(50, c["beta_min"].value, 0.03)
    assert box.image.value == render_noising(images, expected, 49, index=2)
    before = box.image.value
    c["num_timesteps"].value = 20                                                     # t is clamped to the new T
    assert c["t"].value == 20 and c["t"].max == 20
    assert box.image.value == render_noising(images, NoiseSchedule.linear(20, c["beta_min"].value, 0.03), 19, 2)
    assert differ(before, box.image.value)


def test_noising_explorer_recognises_a_cosine_schedule(images):
    box = noising_explorer(images, NoiseSchedule.cosine(30))
    assert box.controls["schedule"].value == "cosine" and box.controls["t"].max == 30


def test_noising_explorer_offers_a_custom_schedule_as_it_is(images):
    custom = NoiseSchedule(torch.linspace(0.3, 1e-3, 40, dtype=torch.float64))  # no linear or cosine formula
    box = noising_explorer(images, custom)
    assert box.controls["schedule"].value == "custom" and box.controls["num_timesteps"].disabled
    assert box.image.value == render_noising(images, custom, 19, index=0)
    box.controls["schedule"].value = "linear"
    assert box.current_schedule().kind == "linear" and not box.controls["beta_min"].disabled
    box.controls["schedule"].value = "custom"
    assert box.current_schedule().kind == "custom" and torch.equal(box.current_schedule().betas, custom.betas)


# ----------------------------------------------------------------------------- attention


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    block = MultiHeadSelfAttention2d(16, num_heads=2, norm_groups=4)
    x = torch.randn(1, 16, 8, 8)
    _, weights = block(x, return_attention=True)
    return block, x, weights.detach()


def test_render_attention_follows_query_and_head(images, attention):
    _, _, weights = attention
    a = render_attention(images[0], weights, (2, 3), 0)
    assert a == render_attention(images[0], weights[0], (2, 3), 0)          # with or without the batch dim
    assert differ(a, render_attention(images[0], weights, (5, 3), 0))
    assert differ(a, render_attention(images[0], weights, (2, 3), 1))
    assert pixels(render_attention(None, weights, (2, 3), 1)).shape[1] < pixels(a).shape[1]


@pytest.mark.parametrize("query, head, match", [((0, 0), 2, "head must"), ((0, 8), 0, r"query\[1\] must"),
                                                ((-1, 0), 0, r"query\[0\] must"), (3, 0, "query must")])
def test_render_attention_rejects_bad_arguments(attention, query, head, match):
    with pytest.raises(ValueError, match=match):
        render_attention(None, attention[2], query, head)


def test_render_attention_rejects_non_square_weights():
    with pytest.raises(ValueError, match="weights must be"):
        render_attention(None, torch.rand(2, 12, 12), (0, 0), 0)


def test_attention_viewer_shows_render_attention_for_its_controls(images, attention):
    block, x, weights = attention
    box = attention_viewer(block, x[0], image=images[0])
    torch.testing.assert_close(box.weights, weights[0])
    c = box.controls
    c["qx"].value, c["qy"].value, c["head"].value = 1, 6, 1
    assert box.image.value == render_attention(images[0], weights, (6, 1), 1)
    assert list(c["head"].options) == [("head 0", 0), ("head 1", 1)]


# ----------------------------------------------------------------------------- trajectories


def trajectory(steps, seed):
    g = torch.Generator().manual_seed(seed)
    return {"t": list(range(steps - 1, -1, -1)), "x_t": torch.randn(steps + 1, 2, 3, 8, 8, generator=g),
            "x0_pred": torch.randn(steps, 2, 3, 8, 8, generator=g).clamp(-1, 1)}


def test_render_trajectory_follows_step_and_index():
    trs = {"DDPM (EMA)": trajectory(10, 0), "DDIM (EMA)": trajectory(5, 1)}
    a = render_trajectory(trs, 4)
    assert differ(a, render_trajectory(trs, 10)) and differ(a, render_trajectory(trs, 4, index=1))
    with pytest.raises(ValueError, match="step must"):
        render_trajectory(trs, 11)
    with pytest.raises(ValueError, match="index must"):
        render_trajectory(trs, 0, index=2)
    with pytest.raises(ValueError, match="trajectories must"):
        render_trajectory({}, 0)


def test_trajectory_scrubber_shows_render_trajectory_for_its_controls():
    trs = {"DDPM (EMA)": trajectory(6, 0), "DDPM (raw)": trajectory(6, 2)}
    box = trajectory_scrubber(trs)
    assert box.controls["step"].max == 6
    box.controls["step"].value, box.controls["index"].value = 6, 1
    assert box.image.value == render_trajectory(trs, 6, 1)


# ----------------------------------------------------------------------------- training


def test_render_training_follows_losses_grid_name_progress_and_reference(images):
    losses = list(np.exp(-np.linspace(0, 3, 200)) + 0.05)
    a = render_training(losses[:100])
    assert differ(a, render_training(losses)) and differ(a, render_training(losses[:100], grid=images))
    with_grid = render_training(losses, grid=images)
    assert differ(with_grid, render_training(losses, grid=images, reference=images.flip(0)))  # the row under it
    assert differ(a, render_training(losses[:100], loss_name="L_simple"))                     # the curve's name
    assert differ(a, render_training(losses[:100], progress="trained from step 0 to step 100 of 200 in 5 s"))
    with pytest.raises(ValueError, match="losses must"):
        render_training(np.ones((3, 2)))
    with pytest.raises(ValueError, match="grid must"):
        render_training(losses, grid=torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="reference images go under a grid"):
        render_training(losses, reference=images)


def test_training_progress_says_what_this_run_trained_and_never_0_s_for_nothing():
    assert training_progress(0, 2200, 2200, 612.4) == "trained from step 0 to step 2,200 of 2,200 in 612 s"
    assert training_progress(2000, 2200, 2200, 61.0) == "trained from step 2,000 to step 2,200 of 2,200 in 61 s"
    assert training_progress(2200, 2200, 2200, 0.0) == "already at step 2,200 of 2,200: nothing to train"
    assert training_progress(300, 300, 2200, 0.0) == "at step 300 of 2,200: training"


def test_training_monitor_redraws_one_display_in_place_which_stays_as_its_still(images, monkeypatch):
    """Every picture goes to one display id (the first shown, the rest updates of it): what a saved notebook
    keeps is the last state, a PNG, with no widget."""
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda *objs, **kw: shown.append((objs, kw.get("display_id"), kw.get("update", False))))
    monitor = TrainingMonitor(start_step=100, total=300, loss_name="x0 loss, min-SNR-5", reference=images)
    assert monitor.png == render_training([], progress="at step 100 of 300: training")
    monitor.update([1.0, 0.5], images, step=100)
    monitor.update([1.0, 0.5, 0.25], images, step=300, seconds=12.3)
    assert monitor.progress == "trained from step 100 to step 300 of 300 in 12 s"
    assert monitor.png == render_training([1.0, 0.5, 0.25], images, "x0 loss, min-SNR-5", monitor.progress, images)
    assert [update for _, _, update in shown] == [False, True, True]
    assert {display_id for _, display_id, _ in shown} == {monitor.display_id}
    for (image,), _, _ in shown:
        assert isinstance(image, IPython.display.Image) and image.format == "png"
    assert shown[-1][0][0].data == monitor.png
    finished = TrainingMonitor(start_step=300, total=300)
    finished.update([1.0, 0.5, 0.25], images, step=300)
    assert finished.progress == "already at step 300 of 300: nothing to train"
    assert finished.display_id != monitor.display_id


# ----------------------------------------------------------------------------- every widget


def built_widgets(images, schedule, attention):
    """(name, widget, the PNG of its first state from the render function alone) for each interactive viewer."""
    block, x, weights = attention
    trs = {"DDPM (EMA)": trajectory(6, 0)}
    return [
        ("noising explorer", noising_explorer(images, schedule), render_noising(images, schedule, 49, 0)),
        ("attention viewer", attention_viewer(block, x[0], image=images[0]),
         render_attention(images[0], weights, (4, 4), 0)),
        ("trajectory scrubber", trajectory_scrubber(trs), render_trajectory(trs, 0, 0)),
    ]


def test_every_slider_updates_on_release(images, schedule, attention):
    for name, box, _ in built_widgets(images, schedule, attention):
        sliders = [w for w in widgets_in(box) if type(w).__name__ in ("IntSlider", "FloatSlider")]
        assert sliders, f"{name} has no slider"
        for slider in sliders:
            assert slider.continuous_update is False, f"{name}: slider {slider.description!r} updates while dragged"


def test_show_widget_displays_a_static_picture_of_the_first_state_then_the_widget(
        images, schedule, attention, monkeypatch):
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    for name, box, first in built_widgets(images, schedule, attention):
        shown.clear()
        show_widget(box)
        assert len(shown) == 2 and shown[1] is box, name
        assert isinstance(shown[0], IPython.display.Image) and shown[0].format == "png", name
        assert shown[0].data == first, f"{name}: the static picture is not its first state"


def guided_samples():
    images, _ = make_shapes(8, seed=8)
    return {(s, label): images[(2 * i + label) % 8:][:4] for i, s in enumerate((0.0, 1.0, 3.0)) for label in range(3)}


def test_render_guided_samples_draws_the_chosen_cell():
    samples = guided_samples()
    one, other = render_guided_samples(samples, 1.0, 0), render_guided_samples(samples, 3.0, 2)
    assert one.startswith(b"\x89PNG") and other.startswith(b"\x89PNG") and one != other
    with pytest.raises(ValueError, match=r"\(s, label\) must be a key"):
        render_guided_samples(samples, 2.0, 0)


def test_guidance_viewer_redraws_on_its_controls():
    pytest.importorskip("ipywidgets")
    samples = guided_samples()
    viewer = guidance_viewer(samples)
    assert viewer.controls["s"].value == 1.0 and not viewer.controls["s"].continuous_update
    assert viewer.image.value == render_guided_samples(samples, 1.0, 0)
    viewer.controls["s"].value = 3.0
    viewer.controls["label"].value = 2
    assert viewer.image.value == render_guided_samples(samples, 3.0, 2)
