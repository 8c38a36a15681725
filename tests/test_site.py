"""The course website (`make site`: mkdocs.yml, website/) in a real browser, offline.

The site is built once with the same command the Pages workflow runs (`make site`, into a temporary folder),
served on 127.0.0.1 by Python's http.server, and read by headless Chromium with every request that is not to
that server aborted. Every page reachable from the home page must load without a console error, decode all of
its images (the notebooks' outputs and their widget stills among them), leave no raw TeX where maths should be
typeset, and link only to pages and files that the site has; a notebook's page has its Colab and GitHub links;
the search box finds DDIM. A static test checks that every notebook has its executed copy and its page in the nav.

Needs Debian's chromium at /usr/bin/chromium (scripts/setup_browser.sh), Python's playwright (the dev extra) and
npm (`make site` installs MathJax with it); skips with the reason when one is missing.
"""

import functools
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
COLAB = "https://colab.research.google.com/github/ddpm-lib/ddpm_lib/blob/main/notebooks/"
GITHUB = "https://github.com/ddpm-lib/ddpm_lib/blob/main/notebooks/"
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy
# TeX that MathJax would have typeset, left as text: $$, $...$, \(, \[, or a control word such as \frac
RAW_TEX = re.compile(r"\$\$|(?<![\\\w])\$[^$\n]{1,200}?\$|\\[(\[]|\\(frac|sqrt|mathcal|mathbf|bar|tilde|alpha|beta|"
                     r"epsilon|sigma|theta|mu|sum|prod|log|left|right|begin|end|big|Big|mid|quad|cdot|sim|le|ge)\b")
# The text of a page outside code, outputs and typeset maths: where raw TeX must not be left.
PROSE_JS = """() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .jp-OutputArea';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.parentElement.closest(skip)) parts.push(node.textContent);
  }
  return parts.join(' ');
}"""
MATHJAX_DONE_JS = "() => window.MathJax?.startup?.promise ? MathJax.startup.promise.then(() => true) : false"
BROKEN_IMAGES_JS = """() => Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => (img.currentSrc || img.getAttribute('src') || '').slice(0, 100))"""


def _nav_pages(nav):
    """Every page path in a MkDocs nav (nested lists of strings and one-key dicts), in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return [page for item in nav for page in _nav_pages(item)]


def test_every_notebook_has_its_executed_copy_and_page():
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks in notebooks/"
    for name in notebooks:
        assert (REPO / "docs" / "notebooks" / name).is_file(), f"{name} has no executed copy in docs/notebooks/"
        assert f"notebooks/{name}" in nav, f"{name} has no page in mkdocs.yml's nav"
    in_nav = [page.removeprefix("notebooks/") for page in nav if page.startswith("notebooks/")]
    assert in_nav == notebooks, f"the nav's notebooks are not the course in order: {in_nav}"
    missing = [page for page in nav if not (REPO / "docs" / page).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that docs/ does not have: {missing}"


def _missing_requirement():
    """The reason the site cannot be built and read here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: run scripts/setup_browser.sh (installs Debian's chromium with apt)"
    if importlib.util.find_spec("playwright") is None:
        return "python package playwright not installed: pip install -e '.[dev]'"
    if shutil.which("make") is None:
        return "make not found: the site is built with `make site`"
    if shutil.which("npm") is None and not any(REPO.glob(".venv/mathjax@*")):
        return "npm not found: `make site` installs MathJax with it"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built by `make site` into a temporary folder and served on 127.0.0.1; yields (folder, base URL)."""
    reason = _missing_requirement()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site") / "_site"
    t0 = time.monotonic()
    build = subprocess.run(["make", "--no-print-directory", "site", f"SITE_DIR={out}"], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"make site failed:\n{build.stdout[-3000:]}\n{build.stderr[-5000:]}"
    print(f"make site: {time.monotonic() - t0:.1f} s")
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A transfer the browser cut short (it moved on to the next page) is no error of the site."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def browser_page(site):
    """A Chromium page that can reach the local server only; yields (page, errors it logged)."""
    from playwright.sync_api import sync_playwright

    _, base = site
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, service_workers="block")
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                          else route.abort("internetdisconnected"))
            page = context.new_page()
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url[:120]}"))
            yield page, errors
        finally:
            browser.close()


def _status(url):
    try:
        with LOCAL.open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _is_page(path):
    return path.endswith("/") or path.endswith(".html")


def _url_path(page):
    """The URL path of the page built from `page` (a path in docs/), as MkDocs writes it (directory URLs)."""
    stem = page.rsplit(".", 1)[0]
    return "/" if stem == "index" else "/" + stem.removesuffix("index") + ("" if stem.endswith("index") else "/")


def _check_page(page, errors, url):
    """Load one page and check it; returns the internal links it has (absolute, without fragments)."""
    errors.clear()
    page.goto(url, wait_until="load", timeout=60_000)
    assert page.evaluate(MATHJAX_DONE_JS), f"{url}: MathJax is not on the page"
    assert not errors, f"{url}: {errors}"
    broken = page.evaluate(BROKEN_IMAGES_JS)
    assert not broken, f"{url}: images that do not decode: {broken}"
    raw = sorted({m.group(0) for m in RAW_TEX.finditer(page.evaluate(PROSE_JS))})
    assert not raw, f"{url}: TeX left as text where maths should be typeset: {raw[:10]}"
    links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    return {link.split("#")[0] for link in links}


def _check_notebook_page(page, url, name):
    """A notebook's page: its Colab and GitHub links, and every picture its executed copy holds, widget stills too."""
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    assert COLAB + name in hrefs, f"{url}: no Open in Colab link to notebooks/{name}"
    assert GITHUB + name in hrefs, f"{url}: no link to notebooks/{name} on GitHub"
    nb = json.loads((REPO / "docs" / "notebooks" / name).read_text(encoding="utf-8"))
    pictures = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    shown = page.locator(".jp-OutputArea-output img").count()
    assert shown == pictures, f"{url}: {shown} output pictures on the page, {pictures} in the executed copy"


@pytest.mark.browser
def test_site_offline(site, browser_page):
    """Every page reachable from the home page, in Chromium without a network: see the module's docstring."""
    out, base = site
    page, errors = browser_page
    t0 = time.monotonic()
    to_visit, seen, files = [base], {base}, set()
    while to_visit:
        url = to_visit.pop(0)
        for link in sorted(_check_page(page, errors, url) - seen):
            if not link.startswith(base):
                continue
            seen.add(link)
            path = urllib.parse.urlparse(link).path
            if _is_page(path):
                target = out / path.lstrip("/") / ("index.html" if path.endswith("/") else "")
                assert target.is_file(), f"{url} links to {link}, which is no page of the site"
                to_visit.append(link)
            else:
                files.add(link)
        match = re.search(r"/notebooks/([^/]+)/$", url)
        if match:
            _check_notebook_page(page, url, match.group(1) + ".ipynb")
    dead = sorted((link, code) for link in seen if (code := _status(link)) != 200)
    assert not dead, f"internal links that do not resolve: {dead}"
    visited = {urllib.parse.urlparse(link).path for link in seen if _is_page(urllib.parse.urlparse(link).path)}
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    unreached = {_url_path(p) for p in nav} - visited - {"/"}
    assert not unreached, f"pages of the nav not reached from the home page: {sorted(unreached)}"
    print(f"{len(visited)} pages and {len(files)} other files checked in {time.monotonic() - t0:.1f} s")


@pytest.mark.browser
def test_site_search_finds_ddim(site, browser_page):
    _, base = site
    page, errors = browser_page
    errors.clear()
    page.goto(base, wait_until="load", timeout=60_000)
    page.locator("input.md-search__input").click()
    page.keyboard.type("DDIM")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible", timeout=60_000)
    texts = results.all_inner_texts()
    assert any("DDIM" in text for text in texts), f"search results for DDIM do not mention it: {texts[:3]}"
    assert not errors, errors
