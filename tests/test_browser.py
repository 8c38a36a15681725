"""Notebook 01's noising explorer in a real browser: JupyterLab 4 driven by headless Chromium.

Needs Debian's chromium at /usr/bin/chromium (scripts/setup_browser.sh installs it), Python's playwright
and jupyterlab (the dev and notebooks extras); skips with the reason when one is missing.
DDPM_UPDATE_SCREENSHOT=1 also writes the final screenshot to docs/widget_in_jupyterlab.png.
"""

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import LOCAL

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path("notebooks") / "01_noise_schedule.ipynb"
MARKER = "# widget: noising-explorer"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
RUN_TIMEOUT_S = 180  # for the cells up to the explorer under DDPM_SMOKE=1 (tens of seconds on 2 idle cores)
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class")
# Fresh JupyterLab user settings: every cell in the DOM (no windowing), no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False,
    },
}

pytestmark = pytest.mark.browser


def _missing_requirement():
    """The reason the browser test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: run scripts/setup_browser.sh (installs Debian's chromium with apt)"
    for module, extra in (("playwright", "dev"), ("jupyterlab", "notebooks"), ("ipywidgets", "notebooks")):
        if importlib.util.find_spec(module) is None:
            return f"python package {module} not installed: pip install -e '.[{extra}]'"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_fixture(root, n=500):
    """A small CIFAR-10-format data set (procedural shapes) for the notebook under DDPM_SMOKE=1
    (smaller than the root conftest's 6000-image nbval fixture, which only exists when nbval runs)."""
    from ddpm_lib.data import make_shapes
    from ddpm_lib.cifar10 import write_cifar10_format

    images, _ = make_shapes(n, seed=0)  # (n, 3, 32, 32) uint8
    write_cifar10_format(root, images, torch.arange(n) % 10)


def _start_lab(root, env, log, tmp):
    """Start JupyterLab on a free port with a random token; returns (process, base url, token)."""
    settings = tmp / "lab-settings"
    for name, value in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'lab-workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a start, not a speed: other tests may share the cores (make test)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{Path(log.name).read_text()}")
        try:
            with LOCAL.open(f"{url}/api/status?token={token}", timeout=2):
                return proc, url, token
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer in 240 s:\n{Path(log.name).read_text()}")


def _stop_lab(proc, url, token):
    """Shut the server (and its kernels) down, then kill its process group whatever is left.
    (Kernels run in sessions of their own; without the server they exit by themselves, as ipykernel
    watches its parent.)"""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
            LOCAL.open(req, timeout=5).close()
            proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _errors_in_page(page):
    text = page.inner_text("body")
    return [e for e in WIDGET_ERRORS + ("Traceback (most recent call last)",) if e in text]


IDLE_JS = "() => /\\|\\s*Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText ?? '')"


def _kernel_idle(page):
    """The status bar shows the kernel idle ("Python 3 (ipykernel) | Idle")."""
    return page.evaluate(IDLE_JS)


def _wait_idle(page, timeout_s):
    page.wait_for_function(IDLE_JS, timeout=timeout_s * 1000)


def _run_menu(page, item):
    """Click Run > `item` in JupyterLab's menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def _t_slider(output):
    """The explorer's t slider: the one labelled "t", else the first slider in the output."""
    sliders = output.locator(".widget-slider")
    labelled = sliders.filter(has=output.page.locator(".widget-label", has_text="t"))
    for i in range(labelled.count()):
        if labelled.nth(i).locator(".widget-label").inner_text().strip() == "t":
            return labelled.nth(i)
    return sliders.first


def _settled_picture(page, image, before, timeout_s):
    """The image element's screenshot once it differs from `before`, the kernel is idle and it stops changing."""
    deadline, last, stable = time.monotonic() + timeout_s, before, 0
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        shot = image.screenshot()
        stable = stable + 1 if shot == last else 0
        last = shot
        if shot != before and stable >= 2 and _kernel_idle(page):
            break
    return last


def _run_explorer_cell(page, url, token, notebook):
    """Open the notebook, run every cell above the explorer and the explorer; returns its cell."""
    page.goto(f"{url}/lab/tree/{notebook.as_posix()}?reset&token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    _wait_idle(page, 60)  # without this the first cells can be sent before the kernel is there
    cell = page.locator(".jp-Notebook .jp-CodeCell", has_text=MARKER)
    cell.first.wait_for(timeout=30_000)
    assert cell.count() == 1, f"expected one cell starting with {MARKER!r} in {notebook}"
    cell.locator(".jp-InputPrompt").click()  # select the cell (command mode)
    _run_menu(page, "Run All Above Selected Cell")
    _run_menu(page, "Run Selected Cell")
    try:
        cell.locator(".jp-OutputArea .widget-image").first.wait_for(state="visible", timeout=RUN_TIMEOUT_S * 1000)
    except Exception as exc:
        raise AssertionError(f"the explorer did not appear; errors in page: {_errors_in_page(page)}") from exc
    _wait_idle(page, 60)
    return cell


def _check_t_moves_picture(page, cell):
    """Move t with the keyboard, then with a click on its track; the picture must change each time."""
    output = cell.locator(".jp-OutputArea")
    image = output.locator(".widget-image").first
    image.scroll_into_view_if_needed()
    slider = _t_slider(output)
    readout = slider.locator(".widget-readout")

    t_start, start = readout.inner_text(), image.screenshot()
    slider.locator(".noUi-handle").first.focus()
    for key in ["ArrowRight"] * 3 + ["End"]:
        page.keyboard.press(key)
    keyed = _settled_picture(page, image, start, timeout_s=60)
    assert readout.inner_text() != t_start, f"t did not move from {t_start} with the keyboard"
    assert keyed != start, "the explorer's picture did not change when t moved (keyboard)"

    # A click a quarter along the track: t about T/4 also leaves a telling picture for the docs.
    t_keyed, track = readout.inner_text(), slider.locator(".noUi-target").first
    box = track.bounding_box()
    track.click(position={"x": box["width"] * 0.25, "y": box["height"] / 2})
    clicked = _settled_picture(page, image, keyed, timeout_s=60)
    assert readout.inner_text() != t_keyed, f"t did not move from {t_keyed} with a click"
    assert clicked != keyed, "the explorer's picture did not change when t moved (click)"
    assert not _errors_in_page(page), f"errors in page: {_errors_in_page(page)}"


def _screenshot_cell(page, cell, path):
    """The notebook's toolbar down to the end of `cell`, as a PNG file."""
    cell.evaluate("e => e.scrollIntoView({block: 'start'})")
    panel, shown = page.locator(".jp-NotebookPanel").first.bounding_box(), cell.bounding_box()
    bottom = min(shown["y"] + shown["height"] + 12, panel["y"] + panel["height"])
    page.screenshot(path=str(path), clip={
        "x": panel["x"], "y": panel["y"], "width": panel["width"], "height": bottom - panel["y"]})


def drive_explorer(root, notebook, env, tmp, screenshot):
    """Serve `root` with JupyterLab, run `notebook`'s explorer in Chromium, move t; screenshot to `screenshot`."""
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    with open(tmp / "jupyter-lab.log", "w") as log:
        proc, url, token = _start_lab(root, env, log, tmp)
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(tmp / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000},
                )
                page = context.new_page()
                try:
                    print(f"[{time.monotonic() - t0:5.1f} s] JupyterLab at {url}, chromium started")
                    cell = _run_explorer_cell(page, url, token, notebook)
                    print(f"[{time.monotonic() - t0:5.1f} s] explorer shown")
                    _check_t_moves_picture(page, cell)
                    print(f"[{time.monotonic() - t0:5.1f} s] t moved, picture changed")
                    _screenshot_cell(page, cell, screenshot)
                except Exception:
                    page.screenshot(path=str(tmp / "failure.png"))
                    status = page.locator("#jp-main-statusbar").inner_text(timeout=2000)
                    log.flush()
                    print(f"failure screenshot: {tmp / 'failure.png'}; status bar: {status!r}\n"
                          f"end of the JupyterLab log:\n{Path(log.name).read_text()[-3000:]}")
                    raise
                finally:
                    context.close()
        finally:
            _stop_lab(proc, url, token)
            print(f"[{time.monotonic() - t0:5.1f} s] browser and server stopped")


def test_noising_explorer_in_jupyterlab(tmp_path):
    reason = _missing_requirement()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "root"  # a copy, so JupyterLab's autosave never touches the committed notebook
    (root / NOTEBOOK).parent.mkdir(parents=True)
    shutil.copy(REPO / NOTEBOOK, root / NOTEBOOK)
    data = os.environ.get("DDPM_DATA_ROOT")  # kept where set (e.g. the real CIFAR-10), as the root conftest does
    if data is None:
        data = tmp_path / "data"
        _write_fixture(data)
    env = dict(os.environ, DDPM_SMOKE="1", DDPM_DATA_ROOT=str(data), DDPM_RUNS=str(tmp_path / "runs"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    screenshot = tmp_path / "widget_in_jupyterlab.png"
    drive_explorer(root, NOTEBOOK, env, tmp_path, screenshot)
    if os.environ.get("DDPM_UPDATE_SCREENSHOT") == "1":
        shutil.copy(screenshot, REPO / "docs" / "widget_in_jupyterlab.png")
