"""Small fixes that make the rendered book work for a reader, checked by tests/test_browser.py.

1. Serve MathJax, require.js and the Jupyter widget manager from the book itself when they were
vendored at set-up time (``make setup`` runs npm into ``.venv/js`` where npm exists).

Without them, the rendered pages load those scripts from CDNs, and a reader offline (or a
browser test without network) sees neither equations nor widgets. With them, the build copies
the files into ``_build/html/_static/offline/`` (after the build, so that Jupyter Book does not
inject every script into every page) and points Sphinx and MyST-NB at the copies; both settings
take paths relative to ``_static``.

2. Drop repeated inline scripts: with Jupyter Book 1.0 the sphinx-thebe configuration script
(``const THEBE_JS_URL = ...``) is added twice to every page, and the browser reports
"Identifier 'THEBE_JS_URL' has already been declared".
"""

from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / ".venv" / "js" / "node_modules"
FILES = {
    "mathjax": VENDOR / "mathjax" / "es5" / "tex-chtml.js",
    "require": VENDOR / "requirejs" / "require.js",
    "widgets": VENDOR / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js",
}


def _use_local_copies(app):
    if not all(path.exists() for path in FILES.values()):
        return
    out = Path(app.outdir) / "_static" / "offline"
    app.config.mathjax_path = "offline/mathjax/es5/tex-chtml.js"
    app.config.nb_ipywidgets_js = {
        "offline/require.js": {},
        "offline/embed-amd.js": {"crossorigin": "anonymous"},
    }
    app.connect("build-finished", lambda app, exc: exc or _copy(out))


def _copy(out):
    import shutil

    shutil.copytree(VENDOR / "mathjax", out / "mathjax", dirs_exist_ok=True)
    shutil.copy2(FILES["require"], out / "require.js")
    dist = VENDOR / "@jupyter-widgets" / "html-manager" / "dist"
    shutil.copytree(dist, out, dirs_exist_ok=True)


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the copies differ only in filename None against "" (an inline script either way)
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers (MathJax) append to this list


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts, priority=100)
    # before MyST-NB reads its configuration at the same event (default priority 500)
    app.connect("builder-inited", _use_local_copies, priority=100)
    return {"parallel_read_safe": True}
