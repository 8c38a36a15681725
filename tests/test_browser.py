"""Notebook 01's noising explorer in a real browser: JupyterLab 4 driven by headless Chromium.

Needs Debian's chromium at /usr/bin/chromium (scripts/setup_browser.sh installs it), Python's playwright
and jupyterlab (the dev and notebooks extras); skips with the reason when one is missing.
DDPM_UPDATE_SCREENSHOT=1 also writes the final screenshot to docs/widget_in_jupyterlab.png.
"""

import importlib.util
import json
import os
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

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path("notebooks") / "01_noise_schedule.ipynb"
MARKER = "# widget: noising-explorer"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
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


def _write_fixture(root):
    """A small CIFAR-10-format data set for the notebook under DDPM_SMOKE=1."""
    from ddpm_lib.data import write_cifar10_format

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(120) % 10
    write_cifar10_format(root, images, labels)


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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{Path(log.name).read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                return proc, url, token
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer in 60 s:\n{Path(log.name).read_text()}")


def _stop_lab(proc, url, token):
    """Shut the server (and its kernels) down, then kill its process group whatever is left."""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
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
            continue


def _errors_in_page(page):
    text = page.inner_text("body")
    return [e for e in WIDGET_ERRORS + ("Traceback (most recent call last)",) if e in text]


def _wait_idle(page, timeout_s):
    # The toolbar's execution indicator carries the kernel status.
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_s * 1000)


def _run_menu(page, item):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _t_slider(output):
    """The explorer's t slider: the one labelled "t", else the first slider in the output."""
    sliders = output.locator(".widget-slider")
    labelled = sliders.filter(has=output.page.locator(".widget-label", has_text="t"))
    for i in range(labelled.count()):
        if labelled.nth(i).locator(".widget-label").inner_text().strip() == "t":
            return labelled.nth(i)
    return sliders.first


def drive_explorer(root, notebook, env, tmp, screenshot):
    """Open `notebook` in JupyterLab served from `root`, run the explorer cell, move t; checks the picture."""
    from playwright.sync_api import sync_playwright

    log = open(tmp / "jupyter-lab.log", "w")
    proc, url, token = _start_lab(root, env, log, tmp)
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000},
            )
            try:
                page = context.new_page()
                page.goto(f"{url}/lab/tree/{notebook.as_posix()}?reset&token={token}")
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
                _wait_idle(page, 60)

                cell = page.locator(".jp-Notebook .jp-CodeCell", has_text=MARKER)
                assert cell.count() == 1, f"expected one cell starting with {MARKER!r} in {notebook}"
                cell.locator(".jp-InputPrompt").click()  # select the cell (command mode)
                _run_menu(page, "Run All Above Selected Cell")
                _run_menu(page, "Run Selected Cell")

                output = cell.locator(".jp-OutputArea")
                image = output.locator(".widget-image").first
                try:
                    image.wait_for(state="visible", timeout=90_000)
                except Exception as exc:
                    raise AssertionError(f"explorer did not appear; page errors: {_errors_in_page(page)}") from exc
                _wait_idle(page, 60)
                image.scroll_into_view_if_needed()
                before = image.screenshot()

                slider = _t_slider(output)
                readout = slider.locator(".widget-readout")
                t_before = readout.inner_text()
                slider.locator(".noUi-handle").first.focus()
                for _ in range(5):
                    page.keyboard.press("ArrowRight")
                page.keyboard.press("End")

                deadline, after = time.monotonic() + 30, before
                while after == before and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                    after = image.screenshot()
                assert readout.inner_text() != t_before, f"t slider did not move from {t_before}"
                assert after != before, "the explorer's picture did not change when t moved"
                assert not _errors_in_page(page), f"errors in page: {_errors_in_page(page)}"
                cell.scroll_into_view_if_needed()
                page.locator(".jp-NotebookPanel").first.screenshot(path=str(screenshot))
            finally:
                context.close()
    finally:
        _stop_lab(proc, url, token)
        log.close()


def test_noising_explorer_in_jupyterlab(tmp_path):
    reason = _missing_requirement()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "root"  # a copy, so JupyterLab's autosave never touches the committed notebook
    (root / NOTEBOOK).parent.mkdir(parents=True)
    shutil.copy(REPO / NOTEBOOK, root / NOTEBOOK)
    data = tmp_path / "data"
    _write_fixture(data)
    env = dict(os.environ, DDPM_SMOKE="1", DDPM_DATA_ROOT=str(data), DDPM_RUNS=str(tmp_path / "runs"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    screenshot = tmp_path / "widget_in_jupyterlab.png"
    drive_explorer(root, NOTEBOOK, env, tmp_path, screenshot)
    if os.environ.get("DDPM_UPDATE_SCREENSHOT") == "1":
        shutil.copy(screenshot, REPO / "docs" / "widget_in_jupyterlab.png")
