"""The reader's view: the built book opened in a real, headless Chromium.

`make test` builds the book into ``_build/html`` (from the notebooks' stored outputs, which nbval
has just checked against a fresh execution) before this runs. The test serves that folder on
127.0.0.1 and checks every page in ``_toc.yml``: it loads without console errors or failed
requests, its equations are typeset by MathJax, its images load, its internal links resolve,
and each chapter has a Colab button pointing at its own notebook. It skips, saying why, when
the built book, Playwright or Chromium is missing.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]


PAGES = toc_pages()
NOTEBOOKS = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html: run `make test` (or `make book`) first")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (make test does it where it can)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def open_page(browser, url):
    """Open ``url``; return the page and the console errors and failed requests it produced."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    # Nothing outside the book may be needed to read it: block and report any other host.
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"),
               lambda route: (problems.append(f"external request: {route.request.url}"), route.abort()))
    page.goto(url, wait_until="load")
    return page, problems


@pytest.mark.parametrize("name", PAGES)
def test_page_renders(server, browser, name):
    page, problems = open_page(browser, urljoin(server, f"{name}.html"))
    try:
        source = (ROOT / f"{name}.ipynb").read_text() if name in NOTEBOOKS else (ROOT / f"{name}.md").read_text()
        if "$" in source:
            page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=20_000)
            assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
        page.wait_for_load_state("networkidle")
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert not broken, f"images that did not load: {broken}"
        if name in NOTEBOOKS:
            assert page.locator("img").count() > 0, "a chapter without a figure"
            colab = page.locator("a[href*='colab.research.google.com']")
            assert colab.count() >= 1, "no Colab launch button"
            want = f"colab.research.google.com/github/{urlparse(REPO).path.strip('/')}/blob/main/{name}.ipynb"
            assert want in colab.first.get_attribute("href")
        assert not problems, "\n".join(problems)
        if name in ("book/intro", "book/01_policy_gradient"):
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{Path(name).name}.png"))
    finally:
        page.close()


def test_internal_links_resolve():
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html")
    bad = []
    for name in PAGES:
        html_file = HTML / f"{name}.html"
        for href in re.findall(r'href="([^"]+)"', html_file.read_text()):
            url = urlparse(href)
            if url.scheme or href.startswith(("mailto:", "javascript:")) or href.startswith("#") and not url.fragment:
                continue
            target = (html_file.parent / url.path).resolve() if url.path else html_file
            if not target.exists():
                bad.append(f"{name}: {href}")
            elif url.fragment and target.suffix == ".html" and f'id="{url.fragment}"' not in target.read_text():
                bad.append(f"{name}: {href} (no such anchor)")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_ppo_page_shows_the_widget_and_the_static_clip_figure(server, browser):
    page, problems = open_page(browser, urljoin(server, "book/03_ppo.html"))
    try:
        page.wait_for_load_state("networkidle")
        # the widget, rendered from the state saved in the page (no kernel): sliders for eps and A
        assert page.locator(".widget-slider").count() == 2
        # the static two-panel figure (the PPO paper's Figure 1) under it, for readers without a kernel
        cell = page.locator("div.cell", has_text="widgets.paper_figure(")
        assert cell.count() == 1
        assert cell.locator("img").evaluate_all("imgs => imgs.filter(i => i.naturalWidth > 0).length") >= 1
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def test_equations_link_to_code_and_back():
    """Every labelled equation of a chapter has a link to the API entry of the code that computes it
    (in the same markdown cell), every reference to the package resolves, and each API entry that a
    chapter refers to links back to that chapter's section."""
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html")
    import json

    unlinked = []
    for name in NOTEBOOKS:
        for cell in json.loads((ROOT / f"{name}.ipynb").read_text())["cells"]:
            text = "".join(cell["source"])
            labels = re.findall(r"^\$\$ \(([\w-]+)\)", text, re.M)
            if cell["cell_type"] == "markdown" and labels and "{py:" not in text:
                unlinked.append(f"{name}: {labels}")
    assert not unlinked, "equations without a link to the function that computes them:\n" + "\n".join(unlinked)

    unresolved = []
    for name in NOTEBOOKS:
        page = (HTML / f"{name}.html").read_text()
        # a resolved reference is <a ... href="...api.html#rlnotes..."><code class="xref py ...">
        for match in re.finditer(r'(.{0,300})<code class="xref py[^"]*"><span class="pre">([^<]*)', page):
            if not re.search(r'<a class="reference internal" href="api\.html#(module-)?rlnotes[^"]*"[^>]*>$', match.group(1)):
                unresolved.append(f"{name}: {match.group(2)}")
    assert not unresolved, "references to the package that do not resolve:\n" + "\n".join(unresolved)

    api = (HTML / "book" / "api.html").read_text()
    for name in NOTEBOOKS:
        chapter = Path(name).name
        for target in set(re.findall(r'href="api\.html#(rlnotes[\w.]+)"', (HTML / f"{name}.html").read_text())):
            if target.count(".") < 2:  # a module, not a function
                continue
            entry = api.split(f'id="{target}"', 1)[1].split('<dt class="sig', 1)[0]
            assert f'href="{chapter}.html#' in entry, f"the API entry of {target} does not link back to {chapter}"
