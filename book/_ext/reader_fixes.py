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


def _read_references(app):
    app.env.rlnotes_book_references = book_references(Path(__file__).resolve().parents[1])


def _reread_api(app, env, added, changed, removed):
    """The API page's back-links come from the chapters: rebuild it with them (incremental builds)."""
    return [doc for doc in env.found_docs if doc.endswith("api")] if changed or added else []


def setup(app):
    # after every other script of the page (require.js and the widget manager included)
    app.add_js_file(None, body=WIDGET_SHIM, priority=999)
    app.connect("html-page-context", _drop_repeated_scripts, priority=100)
    # before MyST-NB reads its configuration at the same event (default priority 500)
    app.connect("builder-inited", _use_local_copies, priority=100)
    app.connect("builder-inited", _read_references)
    app.connect("autodoc-process-docstring", _link_back)
    app.connect("env-get-outdated", _reread_api)
    return {"parallel_read_safe": True}
