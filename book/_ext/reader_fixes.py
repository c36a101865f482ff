"""Small fixes that make the rendered book work for a reader, checked by tests/test_browser.py.

1. Serve MathJax, require.js and the Jupyter widget manager from the book itself when they were
vendored at set-up time (``make setup`` runs npm into ``.venv/js`` where npm exists).

Without them, the rendered pages load those scripts from CDNs, and a reader offline (or a
browser test without network) sees neither equations nor widgets. With them, the build copies
the files into ``_build/html/_static/offline/`` (after the build, so that Jupyter Book does not
inject every script into every page) and points Sphinx and MyST-NB at the copies; both settings
take paths relative to ``_static``.

The figures of ``rlnotes.widgets`` are anywidgets: the widget manager loads their front end, the
AMD module ``anywidget`` (``anywidget/nbextension/index.js`` in the Python package), with
require.js, which would look for it beside the page and then on a CDN. It is copied beside
require.js, and a small script (``anywidget-path.js``, loaded between require.js and the widget
manager) tells require.js where it is. The widget manager is loaded without
``crossorigin="anonymous"``: opened from ``file://`` (origin null) Chromium refuses a script so
marked, and the pages would show no widgets.

3. Make the widget manager work beside MathJax 3: html-manager 1.x typesets widget labels with
MathJax 2's ``MathJax.Hub.Queue``, which MathJax 3 does not have ("Cannot read properties of
undefined (reading 'Queue')"); a small inline script gives MathJax 3 a ``Hub.Queue`` that calls
``typesetPromise``. It also loads its fonts relative to require.js's base URL, the page's own
folder, so the fonts are copied beside each page that shows a widget.

2. Drop repeated inline scripts: with Jupyter Book 1.0 the sphinx-thebe configuration script
(``const THEBE_JS_URL = ...``) is added twice to every page, and the browser reports
"Identifier 'THEBE_JS_URL' has already been declared".

4. Link every API entry back to the book: each entry of the API page that a chapter refers to
(``{py:func}`rlnotes.ppo.clipped_surrogate``` and friends) ends with "In the book:" and links to
the labelled sections that refer to it, found by reading the chapters' markdown. The links stay
in step with the chapters because they are derived from them.

5. The book's stylesheet (``book/_ext/static/rlnotes.css``): a font stack that covers Hangul
(the source's Korean terms), and display equations, outputs and tables that scroll inside their
own block rather than being cut off.

6. Maths in link text: a reference to a section whose title holds maths (``{ref}`ch1-lpg```)
shows the title's maths, typeset, instead of its TeX source ("1.3 L^{PG}: ...").

7. Docstring maths as maths on the API pages: the docstrings stay plain text (they are read in a
terminal too); the key equations, written once in TeX below (``EQUATIONS``), are shown as a
display equation under the first line of the entry, and ``$...$`` in a docstring becomes a
``:math:`` role.
"""

import importlib.util
import json
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / ".venv" / "js" / "node_modules"
FILES = {
    "mathjax": VENDOR / "mathjax" / "es5" / "tex-chtml.js",
    "require": VENDOR / "requirejs" / "require.js",
    "widgets": VENDOR / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js",
}


def _anywidget_amd() -> Path | None:
    """The anywidget front end as an AMD module, shipped in the anywidget Python package."""
    spec = importlib.util.find_spec("anywidget")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "nbextension" / "index.js"
    return path if path.exists() else None


# Run between require.js and the widget manager: where require.js finds the module "anywidget".
ANYWIDGET_PATH = """requirejs.config({paths: {anywidget:
  document.currentScript.src.replace(/anywidget-path\\.js(\\?.*)?$/, "anywidget")}});
"""


def _use_local_copies(app):
    if not all(path.exists() for path in FILES.values()):
        return
    out = Path(app.outdir) / "_static" / "offline"
    app.config.mathjax_path = "offline/mathjax/es5/tex-chtml.js"
    anywidget = {"offline/anywidget-path.js": {}} if _anywidget_amd() else {}
    # no crossorigin attribute: from file:// (origin null) Chromium would refuse the script
    app.config.nb_ipywidgets_js = {"offline/require.js": {}, **anywidget, "offline/embed-amd.js": {}}
    app.connect("build-finished", lambda app, exc: exc or _copy(out))


def _copy(out):
    import shutil

    shutil.copytree(VENDOR / "mathjax", out / "mathjax", dirs_exist_ok=True)
    shutil.copy2(FILES["require"], out / "require.js")
    if _anywidget_amd():
        shutil.copy2(_anywidget_amd(), out / "anywidget.js")
        (out / "anywidget-path.js").write_text(ANYWIDGET_PATH)
    dist = VENDOR / "@jupyter-widgets" / "html-manager" / "dist"
    shutil.copytree(dist, out, dirs_exist_ok=True)
    fonts = [f for f in dist.iterdir() if f.suffix in {".woff", ".woff2", ".ttf", ".eot", ".svg"}]
    pages = {p.parent for p in out.parents[1].rglob("*.html") if "embed-amd.js" in p.read_text()}
    for folder in pages:
        target = folder / "@jupyter-widgets" / "html-manager" / "dist"
        target.mkdir(parents=True, exist_ok=True)
        for font in fonts:
            shutil.copy2(font, target / font.name)


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the copies differ only in filename None against "" (an inline script either way)
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers (MathJax) append to this list


WIDGET_SHIM = """
(function () {
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (mj && mj.typesetPromise && !mj.Hub) {
      mj.Hub = {Queue: function (job) {
        return mj.startup.promise.then(function () { return mj.typesetPromise([job[2]]); });
      }};
    }
  });
})();
"""


LABEL = re.compile(r"^\(([\w-]+)\)=\s*$")
PY_ROLE = re.compile(r"\{py:(?:func|meth|class|mod|attr)\}`([^`]+)`")


def book_references(book: Path) -> dict[str, list[str]]:
    """{python name: [section labels of the chapters whose text refers to it, in book order]}."""
    refs: dict[str, list[str]] = {}
    for notebook in sorted(book.glob("*.ipynb")):
        label = None
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for line in "".join(cell["source"]).splitlines():
                if match := LABEL.match(line):
                    label = match.group(1)
                for target in PY_ROLE.findall(line):
                    name = target.split("<")[-1].rstrip(">").strip().lstrip("~")
                    if label and label not in refs.setdefault(name, []):
                        refs[name].append(label)
    return refs


def _link_back(app, what, name, obj, options, lines):
    labels = app.env.rlnotes_book_references.get(name)
    if labels:
        lines += ["", "In the book: " + ", ".join(f":ref:`{label}`" for label in labels) + "."]


EQUATIONS = {
    "rlnotes.pg.pg_loss": r"L^{PG}(\theta) = \hat{\mathbb E}_t\big[\log \pi_\theta(a_t \mid s_t)\, \hat A_t\big]",
    "rlnotes.returns.discounted_returns": r"G_t = \sum_{k \ge 0} \gamma^k r_{t+k}",
    "rlnotes.returns.gae": r"\hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}, \quad "
                           r"\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)",
    "rlnotes.trpo.surrogate": r"L_{\theta_\text{old}}(\theta) = \hat{\mathbb E}_t\Big[\frac{\pi_\theta(a_t \mid s_t)}"
                              r"{\pi_{\theta_\text{old}}(a_t \mid s_t)} \hat A_t\Big]",
    "rlnotes.mdp.TabularMDP.surrogate": r"L_{\theta_\text{old}}(\theta) = J(\theta_\text{old}) + \sum_t \gamma^t \sum_s "
                                        r"d_t^{\pi_{\theta_\text{old}}}(s) \sum_a \pi_\theta(a \mid s)\, "
                                        r"A_t^{\pi_{\theta_\text{old}}}(s, a)",
    "rlnotes.trpo.conjugate_gradient": r"\text{solve } A s = b \text{ using only products } v \mapsto A v",
    "rlnotes.ppo.ratio": r"r_t(\theta) = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\theta_\text{old}}(a_t \mid s_t)}",
    "rlnotes.ppo.clipped_surrogate": r"L^{CLIP}(\theta) = \hat{\mathbb E}_t\big[\min\big(r_t(\theta) \hat A_t,\ "
                                     r"\operatorname{clip}(r_t(\theta), 1 - \epsilon, 1 + \epsilon) \hat A_t\big)\big]",
    "rlnotes.kl.exact_kl": r"\mathrm{KL}[p \Vert q] = \sum_a p(a) \big(\log p(a) - \log q(a)\big)",
    "rlnotes.kl.sequence_kl": r"\sum_{t} m_t\, \mathrm{KL}\big[\pi(\cdot \mid s_t) \,\Vert\, \pi_\text{ref}(\cdot \mid s_t)\big]",
    "rlnotes.kl.k3": r"k_3 = (\rho - 1) - \log \rho, \quad \rho = \frac{\pi_\text{ref}(y)}{\pi(y)}, \quad y \sim \pi",
    "rlnotes.reward.bt_probability": r"p(y_1 \succ y_2 \mid x) = \sigma\big(r(x, y_1) - r(x, y_2)\big)",
    "rlnotes.reward.reward_loss": r"\mathcal L_R(r_\phi) = -\mathbb E\big[\log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big)\big]",
    "rlnotes.rlhf.token_rewards": r"r_t = -\beta \big(\log \pi_\theta(y_t) - \log \pi_\text{ref}(y_t)\big)"
                                  r" + [t = T]\, r_\phi(x, y)",
    "rlnotes.dpo_closed_form.rlhf_objective": r"F(\pi) = \mathbb E_{y \sim \pi(\cdot \mid x)}\big[r(x, y)\big] - \beta\, "
                                  r"\mathrm{KL}\big[\pi(\cdot \mid x) \,\Vert\, \pi_\text{ref}(\cdot \mid x)\big]",
    "rlnotes.dpo_closed_form.log_partition": r"\log Z(x) = \log \sum_y \pi_\text{ref}(y \mid x)\, e^{r(x, y) / \beta}",
    "rlnotes.dpo_closed_form.optimal_policy": r"\pi_r(y \mid x) = \frac{1}{Z(x)} \pi_\text{ref}(y \mid x)\, e^{r(x, y) / \beta}",
    "rlnotes.dpo.implicit_reward": r"\hat r(x, y) = \beta \log \frac{\pi_\theta(y \mid x)}{\pi_\text{ref}(y \mid x)}",
    "rlnotes.dpo.dpo_loss": r"\mathcal L_\text{DPO} = -\log \sigma\Big(\beta \log \frac{\pi_\theta(y_w \mid x)}"
                            r"{\pi_\text{ref}(y_w \mid x)} - \beta \log \frac{\pi_\theta(y_l \mid x)}{\pi_\text{ref}(y_l \mid x)}\Big)",
}
DOLLARS = re.compile(r"(?<![\\$])\$([^$\n]+?)\$(?!\$)")


def _docstring_maths(app, what, name, obj, options, lines):
    """Show the entry's key equation (``EQUATIONS``) as maths and turn ``$...$`` into ``:math:``."""
    lines[:] = [DOLLARS.sub(lambda m: f":math:`{m.group(1)}`", line) for line in lines]
    if name in EQUATIONS and lines:
        end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        lines[end:end] = ["", ".. math::", "", "   " + EQUATIONS[name], ""]


def _read_references(app):
    app.env.rlnotes_book_references = book_references(Path(__file__).resolve().parents[1])


def _reread_api(app, env, added, changed, removed):
    """The API pages' back-links come from the chapters: rebuild them with them (incremental builds)."""
    return [doc for doc in env.found_docs if doc.startswith("book/api")] if changed or added else []


STATIC = Path(__file__).resolve().parent / "static"


def _add_static(app, config):
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def _maths_in_link_text(app, doctree, docname):
    """Give a {ref} to a section whose title holds maths that title's nodes, maths included.

    Sphinx fills such a link with the title's plain text, which shows TeX source ("L^{PG}").
    """
    from docutils import nodes

    labels = app.env.domaindata["std"]["labels"]
    with_maths = {}
    for target_doc, label_id, title in labels.values():
        if target_doc and title and any(c in title for c in "\\^_{"):
            with_maths.setdefault(title, (target_doc, label_id))
    if not with_maths:
        return
    for inline in list(doctree.findall(nodes.inline)):
        if "std-ref" not in inline.get("classes", []) or inline.astext() not in with_maths:
            continue
        target_doc, label_id = with_maths[inline.astext()]
        source = app.env.get_doctree(target_doc) if target_doc != docname else doctree
        section = next((s for s in source.findall(nodes.section) if label_id in s["ids"]), None)
        if section is None or not isinstance(section[0], nodes.title):
            continue
        inline.children = []
        inline += [child.deepcopy() for child in section[0].children]


def _colab_reading_edition(app, pagename, templatename, context, doctree):
    """Point the Colab and Binder launch buttons at the reading edition, colab/NAME.ipynb: the same
    code cells, with every glued number substituted and MyST's roles turned into plain Markdown,
    which is all Colab renders (tools/reading_edition.py generates it from book/NAME.ipynb)."""
    def walk(buttons):
        for button in buttons:
            walk(button.get("buttons", []))
            url = button.get("url", "")
            if "colab.research.google.com" in url and "/book/" in url:
                head, _, tail = url.rpartition("/book/")
                button["url"] = f"{head}/colab/{tail}"
            elif "urlpath=" in url and "tree/book/" in url:   # Binder
                button["url"] = url.replace("tree/book/", "tree/colab/")
    walk(context.get("header_buttons", []))


def setup(app):
    # after every other script of the page (require.js and the widget manager included)
    app.add_js_file(None, body=WIDGET_SHIM, priority=999)
    app.connect("html-page-context", _drop_repeated_scripts, priority=100)
    # after sphinx-book-theme has made its launch buttons (priority 501)
    app.connect("html-page-context", _colab_reading_edition, priority=502)
    # before MyST-NB reads its configuration at the same event (default priority 500)
    app.connect("builder-inited", _use_local_copies, priority=100)
    app.connect("builder-inited", _read_references)
    app.connect("autodoc-process-docstring", _docstring_maths)
    app.connect("autodoc-process-docstring", _link_back)
    app.connect("env-get-outdated", _reread_api)
    app.connect("config-inited", _add_static)
    app.add_css_file("rlnotes.css")
    app.connect("doctree-resolved", _maths_in_link_text)
    return {"parallel_read_safe": True}
