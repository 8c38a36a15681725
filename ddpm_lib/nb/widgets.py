"""Notebook viewers: thin ipywidgets wiring around the pure render functions of ddpm_lib.nb.render.

Each `render_*` function of ddpm_lib.nb.render draws one picture with matplotlib's Agg backend, so tests call it
directly; each widget only wires core controls (IntSlider, FloatSlider, Dropdown, Image, boxes),
common to ipywidgets 7.7 (Colab) and 8 (JupyterLab 4), to it. A widget keeps its controls in `.controls`
(name -> control) and its picture in `.image`, so a test can set `controls["t"].value` and read the image.
Sliders update on release (continuous_update=False): one render per move, not one per pixel dragged.
Notebooks show a widget with `show_widget`, which puts a static copy of its first picture above it, so a
saved or GitHub-rendered notebook still shows a picture where the live widget is gone. `TrainingMonitor` needs no
widget: its picture is redrawn in place through a display id, so the saved notebook keeps its last state.
"""
import torch

from .render import (as_images, render_attention, render_guided_samples, render_noising,
                     render_trajectory, render_training, training_progress)
from ..schedule import NoiseSchedule
from ..shapes import SHAPE_KINDS

__all__ = ["show_widget", "noising_explorer", "attention_viewer", "trajectory_scrubber", "TrainingMonitor",
           "guidance_viewer"]


# ----------------------------------------------------------------------------- wiring

def _wire(render, controls: dict, layout: list):
    """VBox(layout rows of controls, Image); re-renders with the controls' values whenever one changes."""
    import ipywidgets as widgets

    image = widgets.Image(value=render(**{k: c.value for k, c in controls.items()}), format="png")

    def refresh(_change=None):
        image.value = render(**{k: c.value for k, c in controls.items()})

    for control in controls.values():
        control.observe(refresh, names="value")
    box = widgets.VBox([widgets.HBox(row) for row in layout] + [image])
    box.controls, box.image, box.refresh = controls, image, refresh
    return box


def _slider(kind: str, **kwargs):
    """An IntSlider / FloatSlider that reports its value on release (continuous_update=False)."""
    import ipywidgets as widgets

    return getattr(widgets, kind)(continuous_update=False, style={"description_width": "initial"}, **kwargs)


def show_widget(widget) -> None:
    """Display a static PNG of the widget's picture as it is now (its first state, right after it is built),
    then the live widget: a saved notebook, or one rendered on GitHub, keeps the picture."""
    from IPython.display import Image, display

    display(Image(data=widget.image.value, format="png"))
    display(widget)


# ----------------------------------------------------------------------------- noising explorer

def noising_explorer(images, schedule: NoiseSchedule):
    """t slider (the first IntSlider: the paper's t, 1..T), image index, and the schedule (linear / cosine, T,
    beta_min, beta_max) rebuilt whenever one of those changes; the picture is `render_noising` at index t - 1
    (fixed eps: only t moves it). A custom schedule (betas given directly) is offered as it is, with no sliders."""
    import ipywidgets as widgets

    images = as_images(images, "images")
    schedule = schedule.to("cpu")
    T, kind = schedule.num_timesteps, schedule.kind
    b = schedule.betas
    controls = {
        "t": _slider("IntSlider", value=T // 2, min=1, max=T, description="t"),
        "index": _slider("IntSlider", value=0, min=0, max=len(images) - 1, description="image"),
        "schedule": widgets.Dropdown(options=["linear", "cosine"] + (["custom"] if kind == "custom" else []),
                                     value=kind, description="schedule"),
        "num_timesteps": _slider("IntSlider", value=T, min=10, max=max(2000, T), step=10, description="T"),
        "beta_min": _slider("FloatSlider", value=float(f"{b[0]:.3g}"), min=1e-5, max=1e-3, step=1e-5,
                            readout_format=".5f", description="beta_min"),
        "beta_max": _slider("FloatSlider", value=float(f"{b[-1]:.3g}"), min=2e-3, max=0.05, step=1e-3,
                            readout_format=".3f", description="beta_max"),
    }
    state = {"schedule": schedule}

    def render(t, index):
        return render_noising(images, state["schedule"], t - 1, index)

    box = _wire(render, {"t": controls["t"], "index": controls["index"]},
                [[controls["t"], controls["index"]], [controls["schedule"], controls["num_timesteps"]],
                 [controls["beta_min"], controls["beta_max"]]])

    def rebuild(_change=None):
        c = {k: w.value for k, w in controls.items()}
        build = {"linear": lambda: NoiseSchedule.linear(c["num_timesteps"], c["beta_min"], c["beta_max"]),
                 "cosine": lambda: NoiseSchedule.cosine(c["num_timesteps"]), "custom": lambda: schedule}
        state["schedule"] = build[c["schedule"]]()
        controls["beta_min"].disabled = controls["beta_max"].disabled = c["schedule"] != "linear"
        controls["num_timesteps"].disabled = c["schedule"] == "custom"
        t_before = controls["t"].value
        controls["t"].max = c["num_timesteps"]  # when T shrinks this first clamps t, which re-renders
        if controls["t"].value == t_before:
            box.refresh()

    controls["beta_min"].disabled = controls["beta_max"].disabled = kind != "linear"
    controls["num_timesteps"].disabled = kind == "custom"
    for name in ("schedule", "num_timesteps", "beta_min", "beta_max"):
        controls[name].observe(rebuild, names="value")
    box.controls = controls
    box.current_schedule = lambda: state["schedule"]
    return box


# ----------------------------------------------------------------------------- attention viewer

def attention_viewer(block, x, image=None):
    """Query pixel (x, y sliders) and head (dropdown) -> `render_attention` for `block` on feature map x (C, H, W)."""
    import ipywidgets as widgets

    x = x if x.ndim == 4 else x[None]                                         # (1, C, H, W)
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must be one square feature map (C, H, W); got shape {tuple(x.shape)}")
    with torch.no_grad():
        _, weights = block(x, return_attention=True)                          # (1, heads, HW, HW)
    weights, side = weights[0].cpu(), x.shape[-1]
    controls = {
        "qx": _slider("IntSlider", value=side // 2, min=0, max=side - 1, description="query x"),
        "qy": _slider("IntSlider", value=side // 2, min=0, max=side - 1, description="query y"),
        "head": widgets.Dropdown(options=[(f"head {h}", h) for h in range(weights.shape[0])], value=0,
                                 description="head"),
    }

    def render(qx, qy, head):
        return render_attention(image, weights, (qy, qx), head)

    box = _wire(render, controls, [list(controls.values())])
    box.weights = weights
    return box


# ----------------------------------------------------------------------------- trajectory scrubber

def trajectory_scrubber(trajectories: dict):
    """Step slider (0 = pure noise x_T ... S = the sample) and sample index -> `render_trajectory`."""
    max_sample_steps = max(len(tr["t"]) for tr in trajectories.values())
    batch = min(tr["x_t"].shape[1] for tr in trajectories.values())
    controls = {
        "step": _slider("IntSlider", value=0, min=0, max=max_sample_steps, description="step"),
        "index": _slider("IntSlider", value=0, min=0, max=batch - 1, description="sample"),
    }
    return _wire(lambda step, index: render_trajectory(trajectories, step, index), controls, [list(controls.values())])


# ----------------------------------------------------------------------------- training monitor

class TrainingMonitor:
    """The live view of a training loop, which is its own still: one PNG (`render_training`: the loss curve, the
    latest samples over a row of training images, and the progress line of `training_progress`) shown through an
    IPython display id and redrawn in place by `update`. What a saved notebook keeps is the last picture drawn,
    so the run's final state stays without a widget kernel, however the cell ended (done, stopped, interrupted).

    monitor = TrainingMonitor(start_step=trainer.step, total=train_steps, loss_name=..., reference=images[:8])
    monitor.update(losses, grid, step=trainer.step, seconds=seconds_trained_so_far)
    """

    def __init__(self, start_step: int, total: int, loss_name: str = "loss", reference=None):
        from uuid import uuid4

        self.start_step, self.total, self.loss_name, self.reference = start_step, total, loss_name, reference
        self.display_id = uuid4().hex
        self.progress = training_progress(start_step, start_step, total, 0.0)
        self.png = render_training([], progress=self.progress)
        self._show(update=False)

    def update(self, losses, grid=None, step: int | None = None, seconds: float = 0.0) -> None:
        """Redraw in place with the losses so far, the latest sample grid (with the reference row under it) and the
        progress from start_step to `step` (default: start_step) in `seconds` of training."""
        step = self.start_step if step is None else step
        self.progress = training_progress(self.start_step, step, self.total, seconds)
        self.png = render_training(losses, grid, self.loss_name, self.progress,
                                   self.reference if grid is not None else None)
        self._show(update=True)

    def _show(self, update: bool) -> None:
        from IPython.display import Image, display

        display(Image(data=self.png, format="png"), display_id=self.display_id, update=update)


# ----------------------------------------------------------------------------- guidance viewer

def guidance_viewer(samples: dict, class_names=SHAPE_KINDS):
    """A slider over the guidance scales and a class dropdown, wired to render_guided_samples."""
    import ipywidgets as widgets

    scales = sorted({s for s, _ in samples})
    labels = sorted({label for _, label in samples})
    controls = {
        "s": _slider("SelectionSlider", options=scales, value=scales[min(1, len(scales) - 1)],
                     description="guidance scale s"),
        "label": widgets.Dropdown(options=[(class_names[k], k) for k in labels], value=labels[0], description="class"),
    }
    return _wire(lambda s, label: render_guided_samples(samples, s, label, class_names), controls,
                 [list(controls.values())])
