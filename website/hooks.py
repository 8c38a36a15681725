"""MkDocs hooks of the course site (mkdocs.yml's `hooks`): what `make site` does beyond MkDocs and its plugins.

- The pages are built from a staged copy of docs/: in the executed notebooks, each widget's live view (and the
  widget state) is dropped, so a page shows the still PNG that `show_widget` leaves beside it and loads no
  widget JavaScript; the Colab badge (a remote image) is dropped, as every notebook page gets its own "Open in
  Colab" and GitHub links (website/overrides/main.html); links to a notebook or page of the site on GitHub become
  links to its page. docs/ itself is never written.
- A page of docs/ that the nav does not list (the GPU check's docs/gpu/, once a GPU run wrote it) is added to the
  nav's last section, so no page is left out of the sidebar.
- A link of a docs page to a file of the repository outside docs/ goes to that file on GitHub.
- MathJax (npm's `mathjax` package, which `make site` installs) is copied into the site: nothing is loaded from a
  CDN when the site is read.
"""
import json
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.utils import get_relative_url

REPO = Path(__file__).resolve().parents[1]
# npm's mathjax package (its es5/ build): `make site` installs it into .venv/mathjax@VERSION and names it here
MATHJAX = Path(os.environ.get("SITE_MATHJAX") or max(REPO.glob(".venv/mathjax@*"), default=REPO / ".venv/mathjax"))
MATHJAX_PARTS = ("tex-chtml.js", "input", "output", "a11y", "ui", "sre")  # the component and what it loads lazily
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
COLAB_BADGE = re.compile(r"\[!\[[^\]]*\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\([^)]*\)\s*")
MD_LINK = re.compile(r"(\]\(|(?:src|href)=\")([^)\"\s#]+)")  # a Markdown link or an HTML src/href: its target
_stages: list[Path] = []


def _page_url(path: str, directory_urls: bool) -> str:
    """The URL of the page built from `path` (relative to docs/), as MkDocs writes it."""
    stem = posixpath.splitext(path)[0]
    if not directory_urls:
        return stem + ".html"
    return "" if stem == "index" else (stem[: -len("index")] if stem.endswith("/index") else stem + "/")


def _site_links(text: str, page: str, pages: set[str], github: str, directory_urls: bool) -> str:
    """Links to a page of the site on GitHub (blob/main/docs/X or blob/main/notebooks/X.ipynb) -> its page."""
    prefix = re.escape(f"{github}/blob/main/")

    def local(match):
        target = match.group(1)
        if target.startswith("notebooks/"):
            target = "docs/" + target  # the notebook's executed copy is its page
        target = target.removeprefix("docs/")
        if target not in pages:
            return match.group(0)
        url = get_relative_url(_page_url(target, directory_urls), _page_url(page, directory_urls))
        return url + (match.group(2) or "")

    return re.sub(prefix + r"([^)\s\"#]+)(#[^)\s\"]*)?", local, text)


def _stage_notebook(path: Path, page: str, pages: set[str], github: str, directory_urls: bool) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = COLAB_BADGE.sub("", "".join(cell["source"]))
            cell["source"] = _site_links(source, page, pages, github, directory_urls)
        elif cell["cell_type"] == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
    path.write_text(json.dumps(nb), encoding="utf-8")


def _listed(nav) -> set[str]:
    """Every page path in a MkDocs nav (nested lists of strings and one-key dicts)."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(set(), *(_listed(item) for item in nav))
    return set()


def on_config(config):
    if not (MATHJAX / "es5" / "tex-chtml.js").is_file():
        raise PluginError(f"MathJax not found in {MATHJAX}: `make site` installs it (npm's mathjax package), "
                          "or set SITE_MATHJAX to a copy of that package")
    docs = Path(config.docs_dir)
    stage = Path(tempfile.mkdtemp(prefix="ddpm_site_")) / "docs"
    _stages.append(stage.parent)
    shutil.copytree(docs, stage, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    pages = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.suffix in (".md", ".ipynb")}
    github = "https://github.com/" + config.extra["github_repo"]
    for page in sorted(pages):
        if page.endswith(".ipynb"):
            _stage_notebook(stage / page, page, pages, github, config.use_directory_urls)
    config.docs_dir = str(stage)
    config.watch.append(str(docs))  # `mkdocs serve` rebuilds when docs/ changes
    unlisted = sorted(pages - _listed(config.nav))
    if config.nav and unlisted:
        last = config.nav[-1]
        section = next(iter(last.values())) if isinstance(last, dict) else None
        if isinstance(section, list):
            section.extend(unlisted)
        else:
            config.nav.extend(unlisted)
    return config


def on_page_markdown(markdown, page, config, files):
    """A docs page's relative link to a repository file outside docs/ -> that file on GitHub."""
    if not page.file.src_uri.endswith(".md"):
        return markdown
    folder = posixpath.dirname("docs/" + page.file.src_uri)

    def to_github(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^/", target):  # a URL or an absolute path: left alone
            return match.group(0)
        path = posixpath.normpath(posixpath.join(folder, target))
        if path.startswith("docs/") or path.startswith("..") or not (REPO / path).exists():
            return match.group(0)
        kind = "tree" if (REPO / path).is_dir() else "blob"
        return f"{match.group(1)}https://github.com/{config.extra['github_repo']}/{kind}/main/{path}"

    return MD_LINK.sub(to_github, markdown)


def on_post_build(config):
    target = Path(config.site_dir) / "assets" / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    for part in MATHJAX_PARTS:
        source = MATHJAX / "es5" / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)


def on_shutdown():
    for stage in _stages:
        shutil.rmtree(stage, ignore_errors=True)
    _stages.clear()
