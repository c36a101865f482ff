"""The reader's view: the built book opened in a real, headless Chromium.

`make test` builds the book into ``_build/html`` (from the notebooks' stored outputs, which nbval
has just checked against a fresh execution) before this runs. The test serves that folder on
127.0.0.1, and opens it from ``file://`` too, and checks every page in ``_toc.yml``: it loads
without console errors or failed requests (any host but 127.0.0.1 is blocked), its equations
are typeset by MathJax, its images load, its internal links resolve, and each chapter has a
Colab button pointing at its own notebook. Every interactive figure (``rlnotes.widgets``) must
respond, with no kernel, to each of its controls moved by the keyboard, carry an accessible
name, and draw at two settings the numbers the package's Python functions compute. It skips,
saying why, when the built book, Playwright or Chromium is missing.
At 1280 and 400 px it checks that nothing is cut off (no display equation, table or output
wider than the content column at 1280 px; no sideways scroll of the page at 400 px), that Korean
renders with a font that has Hangul, and that a collapsed cell opens on click; it saves a
full-page screenshot of every page at 1280 px into ``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import re
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
    """Every page of _toc.yml in reading order, sections included."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                yield entry["file"]
            yield from walk(entry.get("sections"))
            for part in entry.get("parts", []) if isinstance(entry.get("parts"), list) else []:
                yield from walk(part.get("chapters"))

    return [toc["root"], *walk(toc.get("chapters")), *(f for part in toc.get("parts", []) for f in walk(part.get("chapters")))]


PAGES = toc_pages()
NOTEBOOKS = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]


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


@pytest.fixture(scope="module", params=["http", "file"])
def base(request):
    """The book's root URL: served on 127.0.0.1, or the folder itself (file://, origin null)."""
    if request.param == "http":
        return request.getfixturevalue("server")
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html: run `make test` (or `make book`) first")
    return HTML.as_uri() + "/"


def open_page(browser, url, width=1280):
    """Open ``url``; return the page and the console errors and failed requests it produced."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(90_000)   # generous: on shared, busy cores a chapter's figures load slowly
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


def _wait_for_maths(page, name):
    """A page whose source has maths: MathJax has typeset it without a TeX error; then the network is idle."""
    source = (ROOT / f"{name}.ipynb").read_text() if name in NOTEBOOKS else (ROOT / f"{name}.md").read_text()
    if "$" in source:
        page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=20_000)
        assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
    page.wait_for_load_state("networkidle")


@pytest.mark.parametrize("name", PAGES)
def test_page_renders(base, browser, name):
    page, problems = open_page(browser, urljoin(base, f"{name}.html"))
    try:
        _wait_for_maths(page, name)
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert not broken, f"images that did not load: {broken}"
        if name in NOTEBOOKS:
            assert page.locator("img").count() > 0, "a chapter without a figure"
            colab = page.locator("a[href*='colab.research.google.com']")
            assert colab.count() >= 1, "no Colab launch button"
            edition = name.replace("book/", "colab/", 1)   # the reading edition (tools/reading_edition.py)
            want = f"colab.research.google.com/github/{urlparse(REPO).path.strip('/')}/blob/main/{edition}.ipynb"
            assert want in colab.first.get_attribute("href")
            binder = page.locator("a[href*='urlpath=']")   # Binder opens the same edition
            assert binder.count() >= 1 and all(f"tree/{edition}.ipynb" in binder.nth(i).get_attribute("href")
                                               for i in range(binder.count())), "Binder does not open the reading edition"
        assert not problems, "\n".join(problems)
        if base.startswith("http"):  # full-page shots of every page, once
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{name.removeprefix('book/').replace('/', '-')}.png"), full_page=True)
    finally:
        page.close()


# What may be wider than its box: wide tables scroll inside their own block, and at 400 px so may
# code, a printed output or a display equation; anything else wider than the content column is cut
# off (at 1280 px a display equation, a printed output or a visible line of code must fit: the code
# is written 75 characters wide, tests/test_notebooks.py checks).
OVERFLOW_JS = """(width) => {
  const column = document.querySelector("article.bd-article");
  const describe = (el) => {
    const tex = el.tagName === "MJX-CONTAINER" ? (el.querySelector("mjx-assistive-mml math")?.getAttribute("alttext") || "") : "";
    const text = (tex || el.textContent || "").replace(/\\s+/g, " ").trim().slice(0, 100);
    return `${el.tagName.toLowerCase()} ${el.scrollWidth}px in ${el.clientWidth}px: ${text}`;
  };
  const bad = [];
  const limit = column.getBoundingClientRect().right + 1;
  const blocks = 'mjx-container[display="true"], table, div.cell_output pre, div.cell_output img';
  const inScroller = (el) => {
    for (let a = el.parentElement; a && a !== column; a = a.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return true;
    }
    return false;
  };
  for (const el of column.querySelectorAll(blocks)) {
    if (el.closest("div.cell_input")) continue;   // code scrolls in its block at any width
    if (el.tagName === "TABLE" && inScroller(el)) continue;   // so does a wide table
    const needsScroll = el.scrollWidth > el.clientWidth + 1;
    const outside = el.getBoundingClientRect().right > limit;
    if (width >= 1000 ? (needsScroll || outside) : (outside && !inScroller(el))) bad.push("cut off: " + describe(el));
  }
  if (width >= 1000) {   // a visible code cell fits the column: no line of it scrolls sideways
    for (const el of column.querySelectorAll("div.cell_input pre")) {
      if (el.offsetParent === null || el.scrollWidth <= el.clientWidth + 1) continue;
      const longest = el.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "");
      bad.push(`code cut off: ${el.scrollWidth}px in ${el.clientWidth}px: ${longest.trim().slice(0, 100)}`);
    }
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) bad.push(`the page scrolls sideways: ${doc.scrollWidth}px in ${window.innerWidth}px`);
  if (column.scrollWidth > column.clientWidth + 1) bad.push(`the content column scrolls sideways: ${column.scrollWidth}px in ${column.clientWidth}px`);
  return bad;
}"""


@pytest.mark.parametrize("width", [1280, 400])
@pytest.mark.parametrize("name", PAGES)
def test_nothing_is_cut_off(server, browser, name, width):
    """At 1280 px no display equation, table, printed output or visible line of code overflows the
    content column; at 400 px the page does not scroll sideways (code, outputs and equations scroll
    in their block)."""
    page, _ = open_page(browser, urljoin(server, f"{name}.html"), width=width)
    try:
        page.wait_for_load_state("networkidle")
        if page.locator("mjx-container").count() or "$" in page.content():
            page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20_000)
            page.evaluate("MathJax.startup.promise")
        bad = page.evaluate(OVERFLOW_JS, width)
        assert not bad, f"{name} at {width} px:\n" + "\n".join(bad)
    finally:
        page.close()


HANGUL_JS = """(el) => {
  // Draw the element's Hangul with its own font, and the same number of characters that no font
  // has (U+10FFFD, drawn as the fallback box); a missing font draws Hangul as those same boxes.
  const text = (el.textContent.match(/[\\uAC00-\\uD7A3]+/) || [""])[0].slice(0, 4);
  const font = getComputedStyle(el).font;
  const draw = (s) => {
    const c = document.createElement("canvas"); c.width = 200; c.height = 40;
    const g = c.getContext("2d"); g.font = font; g.textBaseline = "top"; g.fillText(s, 2, 2);
    const px = g.getImageData(0, 0, 200, 40).data;
    let ink = 0; for (let i = 3; i < px.length; i += 4) ink += px[i] > 0;
    return {width: g.measureText(s).width, ink, data: c.toDataURL()};
  };
  const hangul = draw(text), boxes = draw("\\u{10FFFD}".repeat([...text].length));
  return {text, font, family: getComputedStyle(el).fontFamily, width: hangul.width, ink: hangul.ink,
          sameAsBoxes: hangul.data === boxes.data};
}"""


def test_korean_renders(server, browser):
    """The glossary's Korean terms are drawn with a font that has Hangul, not as empty boxes."""
    page, problems = open_page(browser, urljoin(server, "book/notation.html"))
    try:
        page.wait_for_load_state("networkidle")
        cell = page.locator("td", has_text=re.compile("[\uac00-\ud7a3]")).first
        result = cell.evaluate(HANGUL_JS)
        assert result["text"], "no Korean on the notation page"
        assert re.search(r"Noto Sans (CJK )?KR|Apple SD Gothic Neo|Malgun Gothic", result["family"]), \
            f"the book's font stack names no font that covers Hangul: {result['family']}"
        assert result["width"] > 0 and result["ink"] > 0 and not result["sameAsBoxes"], (
            f"{result['text']!r} renders as empty boxes (install a CJK font: apt-get install fonts-noto-cjk)")
        # and the font that actually drew it has Hangul glyphs (asked of Chromium itself)
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable"); cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "article.bd-article table td:nth-child(3)"})["nodeId"]
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        assert any(re.search("CJK|KR|Gothic|Hangul|Nanum", f["familyName"]) and f["glyphCount"] > 0 for f in fonts), fonts
        assert not problems, "\n".join(problems)
    finally:
        page.close()


HIDDEN = [n for n in NOTEBOOKS if any("hide-input" in c.get("metadata", {}).get("tags", [])
                                      for c in __import__("json").loads((ROOT / f"{n}.ipynb").read_text())["cells"])]


@pytest.mark.parametrize("name", HIDDEN)
def test_collapsed_cell_opens_on_click(server, browser, name):
    """A cell tagged hide-input shows only its toggle; one click shows its code."""
    page, problems = open_page(browser, urljoin(server, f"{name}.html"))
    try:
        cell = page.locator("div.cell.tag_hide-input").first
        code = cell.locator("div.cell_input")
        assert not code.is_visible(), "a hide-input cell shows its code before a click"
        cell.locator("summary").first.click()
        code.wait_for(state="visible", timeout=5_000)
        assert code.locator("pre").first.bounding_box()["height"] > 0
        assert not problems, "\n".join(problems)
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
        # (that it responds is checked by test_interactive_figures_respond_and_draw_the_package_numbers)
        page.wait_for_function("document.querySelectorAll('.widget-slider').length >= 2", timeout=30_000)
        assert page.locator(".widget-slider").count() == 2
        # the static two-panel figure (the PPO paper's Figure 1) under it, for readers without a kernel
        cell = page.locator("div.cell", has_text="plots.paper_figure(")
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
            if not re.search(r'<a class="reference internal" href="api/[\w-]+\.html#(module-)?rlnotes[^"]*"[^>]*>$', match.group(1)):
                unresolved.append(f"{name}: {match.group(2)}")
    assert not unresolved, "references to the package that do not resolve:\n" + "\n".join(unresolved)

    api_pages = {p.stem: p.read_text() for p in (HTML / "book" / "api").glob("*.html")}
    assert api_pages, "no API pages in _build/html/book/api/"
    for name in NOTEBOOKS:
        chapter = Path(name).name
        for page_name, target in set(re.findall(r'href="api/([\w-]+)\.html#(rlnotes[\w.]+)"', (HTML / f"{name}.html").read_text())):
            if target.count(".") < 2:  # a module, not a function
                continue
            entry = api_pages[page_name].split(f'id="{target}"', 1)[1].split('<dt class="sig', 1)[0]
            assert f'href="../{chapter}.html#' in entry, f"the API entry of {target} does not link back to {chapter}"


# ---------------------------------------------------------------------------------------------
# The interactive figures (rlnotes.widgets): drawn by the browser from the widget state saved in
# the page, they must respond to their controls with no kernel and no network, served over http
# and opened from file://, and draw the package's numbers.
# ---------------------------------------------------------------------------------------------

def _figure_checks():
    """{figure name: (figure class, settings to try, check(values, figure) -> None)}."""
    import numpy as np
    import torch

    from rlnotes import bandits, bestofn, dpo, dpo_closed_form, ppo, trpo, widgets

    def clip(v, fig):
        r, drawn = np.array(v["curve"]).T
        r_t = torch.as_tensor(r)
        expected = ppo.clipped_surrogate(r_t, torch.full_like(r_t, v["advantage"]), v["eps"])
        np.testing.assert_allclose(drawn, expected.numpy(), atol=1e-12)
        at = list(r).index(1.5)  # the example of the text: L^CLIP at r = 1.5
        assert drawn[at] == pytest.approx(min(1.5 * v["advantage"], min(1.5, 1 + v["eps"]) * v["advantage"]), abs=1e-12)
        flat = widgets.flat_region(v["eps"], v["advantage"])
        assert v["flat"] == (None if flat is None else pytest.approx(list(flat), abs=1e-12))
        assert v["at_one"] == v["advantage"]

    def score(v, fig):
        bandit = bandits.SoftmaxBandit(fig.means, fig.noise_std)
        exact = bandit.exact_gradient(np.array(fig.theta))
        np.testing.assert_allclose(v["exact"], exact, atol=1e-12)
        b = bandit.expected_reward(np.array(fig.theta)) if v["baseline"] else 0.0
        assert v["b"] == pytest.approx(b, abs=1e-12)
        # the exact variance of one term grad log pi(a) (r - b), from rlnotes.bandits.score
        pi, rows = bandits.softmax(np.array(fig.theta)), bandits.score(np.array(fig.theta), np.arange(3))
        second = np.sum(pi * (rows ** 2).sum(1) * ((bandit.means - b) ** 2 + fig.noise_std ** 2))
        theory = np.sqrt((second - exact @ exact) / v["n"])
        assert v["theory"] == pytest.approx(theory, rel=1e-12)
        estimates = np.array(v["estimates"])
        assert estimates.shape == (fig.estimates, 3)
        np.testing.assert_allclose(estimates.sum(1), 0.0, atol=1e-9)  # scores sum to 0 over the arms
        np.testing.assert_allclose(estimates.mean(0), v["mean"], atol=1e-12)
        # unbiased: the mean of the estimates within 4 standard errors of the exact gradient
        assert np.linalg.norm(estimates.mean(0) - exact) < 4 * theory / np.sqrt(fig.estimates)
        # and spread as the variance says
        spread = np.sqrt(((estimates - exact) ** 2).sum(1).mean())
        assert v["spread"] == pytest.approx(spread, rel=1e-9) and spread == pytest.approx(theory, rel=0.2)

    def trust(v, fig):
        bandit, theta_old = bandits.SoftmaxBandit(fig.means, 0.0), np.array(fig.theta_old)
        g, F = bandit.exact_gradient(theta_old), bandits.fisher(theta_old)
        s = np.linalg.pinv(F) @ g
        beta = np.sqrt(2 * v["delta"] / (s @ F @ s))
        J_old = bandit.expected_reward(theta_old)
        result = trpo.line_search(lambda step: (bandit.expected_reward(theta_old + step) - J_old,
                                                bandits.kl(theta_old, theta_old + step)),
                                  beta * s, v["delta"], fig.max_backtracks, fig.shrink)
        np.testing.assert_allclose(v["g"], g, atol=1e-12)
        np.testing.assert_allclose(v["fisher"], F, atol=1e-12)
        np.testing.assert_allclose(v["s"], s, atol=1e-9)
        assert v["beta"] == pytest.approx(beta, rel=1e-9)
        assert (v["accepted"], v["backtracks"]) == (result.accepted, result.backtracks)
        np.testing.assert_allclose(v["step"], result.step, atol=1e-9)
        assert v["kl"] == pytest.approx(result.kl, abs=1e-12) and v["kl"] <= v["delta"]
        assert v["improvement"] == pytest.approx(result.improvement, abs=1e-12)
        np.testing.assert_allclose(v["trials"], result.trials, atol=1e-12)
        assert v["plain_kl"] == pytest.approx(bandits.kl(theta_old, theta_old + v["lr"] * g), abs=1e-12)
        kls = [bandits.kl(theta_old, np.array(theta)) for theta in v["contour"]]
        np.testing.assert_allclose(kls, v["delta"], rtol=1e-6)  # the drawn ball is the KL's level set

    def optimum(v, fig):
        ref, rewards = np.array(fig.ref_probs), np.array(fig.rewards)
        pi = dpo_closed_form.optimal_policy(ref, rewards, v["beta"])
        np.testing.assert_allclose(v["pi"], pi, atol=1e-12)
        assert v["log_z"] == pytest.approx(float(dpo_closed_form.log_partition(ref, rewards, v["beta"])), abs=1e-12)
        assert v["expected_reward"] == pytest.approx(float(pi @ rewards), abs=1e-12)
        assert v["kl"] == pytest.approx(float(np.sum(pi * np.log(pi / ref))), abs=1e-9)
        assert v["entropy"] == pytest.approx(float(-np.sum(pi * np.log(pi))), abs=1e-9)

    def weight(v, fig):
        t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
        zero = t(0.0)
        w, l, beta = t(v["chosen_logratio"]), t(v["rejected_logratio"]), v["beta"]
        losses, chosen, rejected = dpo.dpo_loss(w, l, zero, zero, beta)
        assert v["chosen_reward"] == pytest.approx(dpo.implicit_reward(w, zero, beta).item(), abs=1e-12)
        assert v["rejected_reward"] == pytest.approx(rejected.item(), abs=1e-12)
        assert v["chosen_reward"] == pytest.approx(chosen.item(), abs=1e-12)
        assert v["loss"] == pytest.approx(losses.item(), abs=1e-12)
        assert v["weight"] == pytest.approx(torch.sigmoid(rejected - chosen).item(), abs=1e-12)  # as dpo_gradient
        m, w = np.array(v["curve"]).T
        np.testing.assert_allclose(w, torch.sigmoid(-v["beta"] * torch.as_tensor(m)).numpy(), atol=1e-12)

    def best(v, fig):
        ref, proxy, true = fig.ref_probs, np.array(fig.proxy), np.array(fig.true_reward)
        q = bestofn.bon_distribution(ref, proxy, v["n"])
        np.testing.assert_allclose(v["pi_bon"], q, atol=1e-12)
        assert v["kl"] == pytest.approx(bestofn.exact_bon_kl(ref, proxy, v["n"]), abs=1e-9)
        assert v["kl_bound"] == pytest.approx(bestofn.bon_kl(v["n"]), abs=1e-12)
        assert v["expected_proxy"] == pytest.approx(float(q @ proxy), abs=1e-12)
        assert v["expected_true"] == pytest.approx(float(q @ true), abs=1e-12)

    return {
        "best_of_n": (widgets.BestOfN, [{"n": 64}, {"n": 2}], best),
        "clip_plot": (widgets.ClipPlot, [{"eps": 0.3, "advantage": -1.0}, {"eps": 0.1, "advantage": 1.5}], clip),
        "score_function_estimates": (widgets.ScoreFunctionEstimates,
                                     [{"n": 50, "baseline": False}, {"n": 5, "baseline": True}], score),
        "trust_region_step": (widgets.TrustRegionStep, [{"delta": 0.01, "lr": 5.0}, {"delta": 0.2, "lr": 20.0}], trust),
        "kl_regularised_optimum": (widgets.KLRegularisedOptimum, [{"beta": 1.0}, {"beta": 0.05}], optimum),
        "dpo_gradient_weight": (widgets.DPOGradientWeight,
                                [{"beta": 0.1, "chosen_logratio": 0.5, "rejected_logratio": 1.0},
                                 {"beta": 1.0, "chosen_logratio": 2.0, "rejected_logratio": -1.5}], weight),
    }


# the interactive figures: each SVG's data-figure is the name of the rlnotes.widgets function that makes it
FIGURE_FUNCTIONS = ("score_function_estimates", "trust_region_step", "clip_plot", "kl_regularised_optimum",
                    "dpo_gradient_weight", "best_of_n")


def figures_in(name: str) -> list[str]:
    """The interactive figures a chapter's code cells make (``widgets.<function>(``)."""
    import json

    code = "\n".join("".join(c["source"]) for c in json.loads((ROOT / f"{name}.ipynb").read_text())["cells"]
                   if c["cell_type"] == "code")
    return [fn for fn in FIGURE_FUNCTIONS if re.search(rf"\bwidgets\.{fn}\(", code)]


FIGURE_PAGES = [p for p in NOTEBOOKS if figures_in(p)]


def _drawn(box) -> str:
    return box.locator("svg[data-figure]").evaluate("svg => svg.innerHTML")


def _values(box) -> dict:
    import json

    return json.loads(box.locator("svg[data-figure]").get_attribute("data-values"))


def _wait_redrawn(page, box, before: str):
    page.wait_for_function("([svg, before]) => svg.innerHTML !== before",
                           arg=[box.locator("svg[data-figure]").element_handle(), before], timeout=5_000)


def _check_accessible(box):
    svg = box.locator("svg[data-figure]")
    assert svg.get_attribute("role") == "img"
    ids = svg.get_attribute("aria-labelledby").split()
    texts = [box.locator(f"[id='{i}']").text_content().strip() for i in ids]
    assert len(texts) == 2 and all(texts), "the figure needs a title and a description"
    assert box.locator("figcaption[aria-live]").text_content().strip() == texts[1]
    for handle in box.locator("[role=slider]").all():
        assert handle.get_attribute("aria-label"), "a slider without an accessible name"
        assert handle.get_attribute("tabindex") == "0", "a slider that the keyboard cannot reach"
    for checkbox in box.locator("input[type=checkbox]").all():
        assert checkbox.evaluate("c => c.closest('label').textContent.trim()"), "a checkbox without a label"


def _move_every_control(page, box):
    """Each slider by one arrow key, each checkbox by the space bar: the picture must change."""
    controls = box.locator("[role=slider]").all() + box.locator("input[type=checkbox]").all()
    assert controls, "a figure without controls"
    for control in controls:
        before = _drawn(box)
        control.focus()
        if control.get_attribute("role") == "slider":
            at_max = control.get_attribute("aria-valuenow") == control.get_attribute("aria-valuemax")
            page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")
        else:
            page.keyboard.press("Space")
        _wait_redrawn(page, box, before)


def _set(page, box, description: str, value):
    """Set a control by keyboard: type into a slider's readout, or toggle a checkbox with space."""
    if isinstance(value, bool):
        checkbox = box.locator(".widget-checkbox", has_text=description).locator("input")
        if checkbox.is_checked() != value:
            before = _drawn(box)
            checkbox.focus()
            page.keyboard.press("Space")
            _wait_redrawn(page, box, before)
        return
    slider = box.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=description))
    assert slider.count() == 1, description
    slider.locator(".widget-readout").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


@pytest.mark.parametrize("name", FIGURE_PAGES)
def test_interactive_figures_respond_and_draw_the_package_numbers(base, browser, name):
    checks = _figure_checks()
    assert set(checks) == set(FIGURE_FUNCTIONS)
    page, problems = open_page(browser, urljoin(base, f"{name}.html"))
    try:
        expected = figures_in(name)
        page.wait_for_function(f"document.querySelectorAll('svg[data-figure]').length >= {len(expected)}",
                               timeout=30_000)
        drawn = page.eval_on_selector_all("svg[data-figure]", "els => els.map(e => e.dataset.figure)")
        assert sorted(drawn) == sorted(expected)
        for figure in drawn:
            cls, settings, check = checks[figure]
            box = page.locator(".rlnotes-explorer").filter(has=page.locator(f"svg[data-figure='{figure}']"))
            _check_accessible(box)
            _move_every_control(page, box)
            defaults = cls()
            traits = cls.class_traits()
            for setting in settings:
                for param, value in setting.items():
                    _set(page, box, traits[param].description, value)
                page.wait_for_function(
                    "([svg, want]) => { const v = JSON.parse(svg.getAttribute('data-values'));"
                    " return Object.entries(want).every(([k, x]) => typeof x === 'boolean' ? v[k] === x"
                    " : Math.abs(v[k] - x) <= 0.03 * Math.abs(x) + 1e-9); }",
                    arg=[box.locator("svg[data-figure]").element_handle(), setting], timeout=5_000)
                check(_values(box), defaults)
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def test_symbols_render():
    """No TeX source or label name where the reader expects a symbol: link text to a section with
    maths in its title carries the maths, and no heading shows a raw {ref} label."""
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html")
    bad = []
    for name in PAGES:
        html = (HTML / f"{name}.html").read_text()
        for text in re.findall(r'<span class="std std-ref">([^<]*)</span>', html):
            if re.search(r"\\[a-zA-Z]+|\^\{|_\{", text):
                bad.append(f"{name}: link text shows TeX: {text!r}")
        for text in re.findall(r'<a class="reference internal nav-link" href="#[^"]*">([^<]*)</a>', html):
            if re.search(r"\((ch\d|appendix)[\w-]*\)", text):
                bad.append(f"{name}: contents entry shows a label: {text!r}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# The Korean edition (_build/html/ko/, `make book-ko`; tests/test_korean.py checks its catalogues):
# one pass over its pages, and the switcher between the editions.
# ---------------------------------------------------------------------------------------------

HANGUL_ELEMENT_JS = """() => {
  // the first element of the page (article first, then the rest) whose own text has Hangul
  const scopes = [document.querySelector("article.bd-article"), document.body].filter(Boolean);
  for (const scope of scopes) {
    const walk = document.createTreeWalker(scope, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      const el = n.parentElement;
      const shown = el.offsetParent !== null && !el.closest("script, mjx-container");
      if (shown && /[\\uAC00-\\uD7A3]/.test(n.textContent)) return el;
    }
  }
  return null;
}"""


@pytest.mark.parametrize("name", PAGES)
def test_korean_page_renders(server, browser, name):
    """Each Korean page: no console errors or failed requests, maths typeset, Hangul drawn with a
    font that has it, its interactive figures live, and its switcher pointing at the English page."""
    if not (HTML / "ko" / "index.html").exists():
        pytest.skip("no Korean edition in _build/html/ko: run `make book-stored` (or `make book-ko`)")
    url = urljoin(server, f"ko/{name}.html")
    page, problems = open_page(browser, url)
    try:
        _wait_for_maths(page, name)
        assert page.evaluate("document.documentElement.lang") == "ko"
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert not broken, f"images that did not load: {broken}"
        hangul = page.evaluate_handle(HANGUL_ELEMENT_JS).as_element()
        assert hangul is not None, "no Korean on the page"
        drawn = hangul.evaluate(HANGUL_JS)
        assert drawn["ink"] > 0 and not drawn["sameAsBoxes"], f"{drawn['text']!r} renders as empty boxes"
        for figure in figures_in(name) if name in FIGURE_PAGES else []:
            box = page.locator(".rlnotes-explorer").filter(has=page.locator(f"svg[data-figure='{figure}']"))
            box.locator("svg[data-figure]").wait_for(timeout=30_000)
            _move_every_control(page, box)
        switcher = page.locator("a.rlnotes-edition")
        assert switcher.count() == 1 and switcher.get_attribute("hreflang") == "en"
        assert urljoin(url, switcher.get_attribute("href")) == urljoin(server, f"{name}.html")
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def test_switcher_carries_the_section_both_ways(base, browser):
    """From a section of an English chapter to the same section of the Korean one, and back, served
    over http and opened from file://."""
    if not (HTML / "ko" / "index.html").exists():
        pytest.skip("no Korean edition in _build/html/ko: run `make book-stored` (or `make book-ko`)")
    name = min(NOTEBOOKS, key=lambda n: (ROOT / f"{n}.ipynb").stat().st_size)   # the quickest to load
    cells = __import__("json").loads((ROOT / f"{name}.ipynb").read_text())["cells"]
    labels = re.findall(r"^\(([\w-]+)\)=", "\n".join("".join(c["source"]) for c in cells), re.M)
    anchor = labels[1]   # a section's label: the same id in both editions (a title's slug is not)
    page, problems = open_page(browser, urljoin(base, f"{name}.html#{anchor}"))
    try:
        for edition, lang in [("ko/", "ko"), ("", "en")]:
            with page.expect_navigation():
                page.locator("a.rlnotes-edition").click()
            assert page.url == urljoin(base, f"{edition}{name}.html#{anchor}")
            assert page.evaluate("document.documentElement.lang") == lang
            assert page.locator(f"[id='{anchor}']").count() == 1
        assert not problems, "\n".join(problems)
    finally:
        page.close()


def test_korean_search_finds_a_noun_without_its_particle(server, browser):
    """The Korean search index (book/_ext/korean.py) holds each Hangul word without its particle too:
    그래디언트 finds the intro, whose title says 정책 그래디언트에서."""
    if not (HTML / "ko" / "index.html").exists():
        pytest.skip("no Korean edition in _build/html/ko: run `make book-stored` (or `make book-ko`)")
    page, problems = open_page(browser, urljoin(server, "ko/search.html?q=그래디언트"))
    try:
        page.wait_for_function("document.querySelectorAll('#search-results li').length > 0", timeout=30_000)
        hrefs = page.eval_on_selector_all("#search-results li a", "els => els.map(a => a.getAttribute('href'))")
        assert any(h.split("#")[0].split("?")[0].endswith("intro.html") for h in hrefs), hrefs
        assert not problems, "\n".join(problems)
    finally:
        page.close()
