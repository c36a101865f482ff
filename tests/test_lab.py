"""The README's "Locally" step, as a reader does it: JupyterLab from the project's environment.

The test starts ``jupyter lab`` with this interpreter (the project's ``.venv`` under ``make
test``), on a free port bound to 127.0.0.1, with a random token and a private, temporary HOME and
Jupyter config/data/runtime folders (so no user configuration is read or written). A decoy
user-level ``python3`` kernelspec sits in that private data folder, as many readers have one: the
notebooks name the kernel ``python3``, and the environment's own kernelspec must win.

In headless Chromium (every host but 127.0.0.1 blocked) it opens chapter 1 of the reading edition
(``colab/``, what ``make lab`` opens) and finds its quoted numbers and no MyST source. It opens
``colab/03_ppo.ipynb``, runs the set-up cells and the cell that calls
``rlnotes.widgets.clip_plot`` through the UI, moves a slider with the keyboard and checks that
the figure changes. Through the kernel's connection file
it asks that same kernel which interpreter it runs and where ``rlnotes`` comes from: the
environment's interpreter, and the package of the repository under test. The screenshot goes to
``_build/screenshots/lab.png``. JupyterLab's news, update check and extension manager are off and
autosave is disabled, so the session neither reaches the network nor writes to the notebook.

It skips, saying why, only when Playwright or Chromium is missing; a missing JupyterLab fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "colab/03_ppo.ipynb"   # what `make lab` opens: the reading edition
WIDGET_CALL = "widgets.clip_plot("  # the source text that identifies the widget's cell
SHOTS = ROOT / "_build" / "screenshots"
DECOY = "decoy: a user-level python3 kernelspec"
STARTUP_S, KERNEL_S, FIGURE_S = 60, 90, 30


def cells_to_run(notebook: Path) -> tuple[list[int], int]:
    """Indices (among all cells) of the code cells to run: the set-up cells before the widget's
    cell (the first code cell, the Colab set-up, and every earlier code cell with an import), and
    the widget's cell itself, found by its source text."""
    cells = json.loads(notebook.read_text())["cells"]
    source = ["".join(c["source"]) for c in cells]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    widget = [i for i in code if WIDGET_CALL in source[i]]
    assert len(widget) == 1, f"expected one cell calling {WIDGET_CALL!r} in {notebook}, found {len(widget)}"
    setup = [i for i in code if i < widget[0] and (i == code[0] or re.search(r"^\s*(import|from)\s", source[i], re.M))]
    return setup, widget[0]


def private_jupyter_env(home: Path) -> dict[str, str]:
    """This process's environment (PYTHONPATH included: the kernel inherits it), with every
    Jupyter, IPython and matplotlib folder moved into ``home``, and the lab's settings there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "XDG_", "IPYTHON", "MPLCONFIG"))}
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               MPLCONFIGDIR=str(home / "matplotlib"), XDG_CONFIG_HOME=str(home / "xdg-config"),
               XDG_CACHE_HOME=str(home / "xdg-cache"), XDG_DATA_HOME=str(home / "xdg-data"))
    # No network from the server: no news feed, no update check, no PyPI extension manager.
    (home / "config").mkdir()
    (home / "config" / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "extension_manager": "readonly"}}))
    # The front end: never ask about news, never autosave (the repository's notebook stays as it
    # is), and every cell in the DOM (no windowing), so cells can be found by their index.
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "docmanager-extension/plugin": {"autosave": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    # The decoy: a reader's own ~/.local/share/jupyter/kernels/python3, pointing elsewhere.
    decoy = home / "data" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps({
        "argv": ["/nonexistent/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": DECOY, "language": "python"}))
    return env


def repo_files() -> set[str]:
    """The repository's files, less the environment, the build and Python's caches."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in {".venv", "_build", ".git", "__pycache__", ".pytest_cache"}]
        found.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files)
    return found


def api(server: dict, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{server['url']}api/{path}", method=method,
                                     headers={"Authorization": f"token {server['token']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m jupyter lab`` from this interpreter, rooted at the repository; stopped, with
    its kernels, however the test ends."""
    home = tmp_path_factory.mktemp("lab-home")
    env = private_jupyter_env(home)
    token = secrets.token_hex(16)
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
         f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",  # not book/.ipynb_checkpoints
         "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = {"token": token, "home": home, "env": env, "log": home / "server.log", "kernel_pids": []}

    def log_tail() -> str:
        return info["log"].read_text()[-3000:]

    try:
        deadline = time.monotonic() + STARTUP_S
        while not (found := list((home / "runtime").glob("jpserver-*.json"))):
            assert proc.poll() is None, f"jupyter lab exited with {proc.returncode}:\n{log_tail()}"
            assert time.monotonic() < deadline, f"jupyter lab did not start in {STARTUP_S} s:\n{log_tail()}"
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written whole, but give the writer a moment
        port = json.loads(found[0].read_text())["port"]
        info["url"] = f"http://127.0.0.1:{port}/"
        while True:  # the file appears before the server answers
            try:
                api(info, "status")
                break
            except OSError:
                assert time.monotonic() < deadline, f"jupyter lab does not answer on {info['url']}:\n{log_tail()}"
                time.sleep(0.2)
        info["log_tail"] = log_tail
        yield info
    finally:
        try:
            for kernel in api(info, "kernels") if "url" in info else []:
                api(info, f"kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        proc.terminate()  # SIGTERM: the server stops its kernels and extensions (SIGINT may be ignored)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in info["kernel_pids"]:  # kernels run in a session of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


# The figure of a widget view, whatever draws it: an <img> (today's PNG in an Output widget), an
# <svg> (an anywidget's drawing) or a <canvas>, not counting the sliders' own parts or icons.
FIGURE_JS = """root => [...root.querySelectorAll('img, svg, canvas')]
  .filter(e => !e.closest('.widget-slider, .widget-readout, .noUi-target'))
  .filter(e => !(e.parentElement && e.parentElement.closest('svg')))
  .filter(e => { const b = e.getBoundingClientRect(); return b.width >= 100 && b.height >= 100; })
  .map(e => e.tagName === 'IMG' ? (e.naturalWidth > 0 ? 'img ' + e.src : 'broken img')
          : e.tagName === 'CANVAS' ? 'canvas ' + e.toDataURL() : 'svg ' + e.outerHTML)"""


def run_cell(page, cell):
    """Select ``cell`` by clicking its prompt and run it with Shift+Enter, as a reader does."""
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputPrompt").first.click()
    page.keyboard.press("Shift+Enter")


def settled_figure(page, widget, quiet_s: float = 1.0) -> list[str]:
    """The widget's figure once the kernel has handled every slider step: the kernel idle and the
    figure unchanged for ``quiet_s`` (one redraw per key press, each a round trip to the kernel)."""
    idle = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status=idle]")
    deadline = time.monotonic() + FIGURE_S
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        figure = widget.evaluate(FIGURE_JS)
        if figure != last or idle.count() == 0:
            last, since = figure, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return figure
        time.sleep(0.2)
    raise AssertionError(f"the widget's figure did not settle in {FIGURE_S} s")


def kernel_facts(server, kernel_id: str) -> dict:
    """Ask the notebook's own kernel (through its connection file) for its interpreter and rlnotes."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=str(server["home"] / "runtime" / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        code = ("import json as _j, os as _o, sys as _s, rlnotes as _r\n"
                "print(_j.dumps({'executable': _s.executable, 'prefix': _s.prefix, 'pid': _o.getpid(),"
                " 'rlnotes': _r.__file__}))")
        out = []
        reply = client.execute_interactive(code, timeout=30, store_history=False, output_hook=lambda m: (
            m["msg_type"] == "stream" and out.append(m["content"]["text"])))
        assert reply["content"]["status"] == "ok", reply["content"]
        return json.loads("".join(out))
    finally:
        client.stop_channels()


@contextlib.contextmanager
def waiting(server, what: str):
    """Turn a Playwright timeout into a failure that says what did not happen, with the server's log."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        yield
    except PlaywrightTimeout as error:
        raise AssertionError(f"{what} ({error.message.splitlines()[0]})\nserver log:\n{server['log_tail']()}") from None


def test_chapter_3_widget_is_live_in_jupyterlab(browser, server):
    notebook = ROOT / NOTEBOOK
    before, files = notebook.read_bytes(), repo_files()
    setup, widget_index = cells_to_run(notebook)
    n_cells = len(json.loads(before)["cells"])

    specs = api(server, "kernelspecs")
    assert json.loads(before)["metadata"]["kernelspec"]["name"] == specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["display_name"] != DECOY, \
        "a user-level python3 kernelspec shadows the environment's own"

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
               lambda route: (problems.append(f"external request: {route.request.url}"), route.abort()))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{server['url']}lab/tree/{NOTEBOOK}?token={server['token']}", wait_until="load")
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        with waiting(server, f"JupyterLab did not show the {n_cells} cells of {NOTEBOOK}"):
            page.wait_for_function(f"document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length"
                                   f" === {n_cells}", timeout=STARTUP_S * 1000)
        with waiting(server, "the notebook's kernel (python3) did not start"):
            page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName", has_text="Python 3").wait_for(
                timeout=STARTUP_S * 1000)
            page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status=idle]").wait_for(
                timeout=KERNEL_S * 1000)

        for index in setup + [widget_index]:
            run_cell(page, cells.nth(index))
            prompt = cells.nth(index).locator(".jp-InputPrompt").first
            with waiting(server, f"cell {index} did not finish"):
                page.wait_for_function("p => /^\\[\\d+\\]:$/.test(p.textContent.trim())",
                                       arg=prompt.element_handle(), timeout=KERNEL_S * 1000)
            errors = cells.nth(index).locator("[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error")
            assert errors.count() == 0, f"cell {index} failed:\n{errors.first.inner_text()}"

        widget = cells.nth(widget_index).locator(".jp-OutputArea-output").first
        slider = widget.locator("[role=slider], input[type=range]").first
        with waiting(server, "the widget's cell shows no slider and figure"):
            slider.wait_for(timeout=FIGURE_S * 1000)
            page.wait_for_function(f"root => ({FIGURE_JS})(root).length > 0", arg=widget.element_handle(),
                                   timeout=FIGURE_S * 1000)
        figure = widget.evaluate(FIGURE_JS)
        assert "broken img" not in figure, "the widget's figure did not load"
        value = slider.get_attribute("aria-valuenow") or slider.input_value()

        slider.focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        moved = slider.get_attribute("aria-valuenow") or slider.input_value()
        assert float(moved) > float(value), f"ArrowRight did not move the slider: {value} -> {moved}"
        with waiting(server, f"moving the slider ({value} -> {moved}) did not change the figure"):
            page.wait_for_function(f"([root, before]) => JSON.stringify(({FIGURE_JS})(root)) !== before",
                                   arg=[widget.element_handle(), json.dumps(figure)], timeout=FIGURE_S * 1000)
        redrawn = settled_figure(page, widget)
        assert redrawn and "broken img" not in redrawn and redrawn != figure

        page.evaluate("el => el.scrollIntoView({block: 'start'})", cells.nth(widget_index - 1).element_handle())
        page.mouse.move(0, 0)
        page.screenshot(path=str(SHOTS / "lab.png"))
        assert not problems, "\n".join(problems)
    except BaseException:
        page.screenshot(path=str(SHOTS / "lab-failure.png"))
        raise
    finally:
        page.close()

    # The same kernel, asked directly: the environment's interpreter, this repository's rlnotes.
    (session,) = [s for s in api(server, "sessions") if s["path"] == NOTEBOOK]
    facts = kernel_facts(server, session["kernel"]["id"])
    server["kernel_pids"].append(facts["pid"])
    assert os.path.realpath(facts["executable"]) == os.path.realpath(sys.executable), facts
    assert os.path.realpath(facts["prefix"]) == os.path.realpath(sys.prefix), facts
    assert Path(facts["rlnotes"]).resolve() == (ROOT / "rlnotes" / "__init__.py").resolve(), \
        f"the kernel imports rlnotes from {facts['rlnotes']}, not from the repository under test ({ROOT})"

    assert notebook.read_bytes() == before, f"the session wrote to {NOTEBOOK}"
    assert repo_files() == files, f"the session left files in the repository: {sorted(repo_files() ^ files)}"


def test_launch_button_path_opens_the_notebook(server):
    """The Binder button's path (``_config.yml`` launch_buttons.notebook_interface: classic is
    ``tree/<notebook>``, jupyterlab is ``lab/tree/<notebook>``) opens the notebook in this
    environment's server too: Notebook 7 redirects ``tree/`` to its notebook page."""
    buttons = yaml.safe_load((ROOT / "_config.yml").read_text())["launch_buttons"]
    interface = buttons.get("notebook_interface", "classic")
    prefix, page = {"classic": ("tree", "notebooks"), "jupyterlab": ("lab/tree", "lab/tree")}[interface]
    request = urllib.request.Request(f"{server['url']}{prefix}/{NOTEBOOK}",
                                     headers={"Authorization": f"token {server['token']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert urllib.parse.urlparse(response.url).path == f"/{page}/{NOTEBOOK}", response.url


def test_widget_front_ends_are_installed(server):
    """``jupyter labextension list`` from the environment (as the README says): the widget
    manager, anywidget's front end and jupyterlab-myst (MyST markdown), enabled and OK."""
    listing = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], env=server["env"],
                             capture_output=True, text=True, timeout=60, check=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    for name in ("@jupyter-widgets/jupyterlab-manager", "anywidget", "jupyterlab-myst"):
        assert re.search(rf"^\s+{re.escape(name)} v\S+ enabled OK", text, re.M), f"{name} is not enabled:\n{text}"


READING = "colab/01_policy_gradient.ipynb"   # what `make lab` opens: the reading edition
SOURCE = "book/01_policy_gradient.ipynb"
LEFTOVER_MYST = {   # MyST source a reader must not see in a rendered cell (labels: see source_labels)
    "glue role": re.compile(r"\{glue"),
    "role": re.compile(r"\{[A-Za-z][\w:.-]*\}`"),
    "directive fence": re.compile(r"^\s*(:::|```)\s*\{", re.M),
}


def source_labels(source: Path) -> list[str]:
    """The ``(name)=`` label lines of the source notebook's markdown (a rendered formula may hold a
    line such as "(a)=", so the check looks for the source's own labels, not for the pattern)."""
    cells = json.loads(source.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return sorted(set(re.findall(r"^\s*(\([A-Za-z][\w.:-]*\)=)\s*$", text, re.M)))


def glued_numbers(source: Path) -> dict[str, list[str]]:
    """Cell id -> the texts that the source cell's ``{glue:text}`` roles become (MyST-NB's
    formatting of the stored value), for every markdown cell of ``source`` that quotes one."""
    spec = importlib.util.spec_from_file_location("reading_edition", ROOT / "tools" / "reading_edition.py")
    edition = sys.modules.get("reading_edition") or importlib.util.module_from_spec(spec)
    if "reading_edition" not in sys.modules:
        sys.modules["reading_edition"] = edition
        spec.loader.exec_module(edition)
    nb = json.loads(source.read_text())
    values = edition.glue_values(nbformat.from_dict(nb))
    found = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        texts = []
        for m in re.finditer(r"\{glue:text\}`([^`]+)`", "".join(cell["source"])):
            key, _, fmt = m.group(1).rpartition(":") if ":" in m.group(1) else (m.group(1), "", "s")
            texts.append(edition.format_plain_text(values[key], fmt or "s"))
        if texts:
            found[cell["id"]] = texts
    return found


def test_chapter_1_reads_with_its_numbers_in_jupyterlab(browser, server):
    """`make lab` opens the reading edition: in JupyterLab (jupyterlab-myst renders the markdown)
    chapter 1's prose shows the stored run's numbers where the book quotes one, and no MyST source
    (no glue or other role, no ``(label)=`` line, no directive fence)."""
    expected = glued_numbers(ROOT / SOURCE)
    assert sum(map(len, expected.values())) >= 50, "chapter 1 quotes fewer numbers than expected"
    cell_ids = [c["id"] for c in json.loads((ROOT / READING).read_text())["cells"]]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
    try:
        # ?reset: a fresh workspace, not the one the widget test left (its notebook open beside this)
        page.goto(f"{server['url']}lab/tree/{READING}?reset&token={server['token']}", wait_until="load")
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        with waiting(server, f"JupyterLab did not show the {len(cell_ids)} cells of {READING}"):
            page.wait_for_function(f"document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')"
                                   f".length === {len(cell_ids)}", timeout=STARTUP_S * 1000)
        with waiting(server, "jupyterlab-myst did not render the markdown (no .myst output in a markdown cell)"):
            page.locator(".jp-MarkdownCell .myst").first.wait_for(timeout=STARTUP_S * 1000)
        with waiting(server, "not every markdown cell was rendered by jupyterlab-myst"):
            page.wait_for_function("""() => [...document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell')]
                .every(c => { const m = c.querySelector('.myst'); return m && m.innerText.trim().length > 0; })""",
                                   timeout=STARTUP_S * 1000)
        texts = page.evaluate("""() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')]
            .map(c => c.classList.contains('jp-MarkdownCell')
                 ? (c.querySelector('.myst') || {innerText: null}).innerText : null)""")
        missing, leftover, shown = [], [], 0
        labels = source_labels(ROOT / SOURCE)
        assert len(labels) >= 5, labels
        for cell_id, text in zip(cell_ids, texts):
            for name, pattern in LEFTOVER_MYST.items():
                if text and pattern.search(text):
                    leftover.append(f"cell {cell_id}: {name}: {pattern.search(text).group(0)!r}")
            leftover += [f"cell {cell_id}: label {label}" for label in labels if text and label in text]
            for number in expected.get(cell_id, []):
                if text is None or number not in text:
                    missing.append(f"cell {cell_id}: {number!r}")
                else:
                    shown += 1
        assert not missing, f"{len(missing)} quoted numbers not shown, e.g. {missing[:5]}"
        assert not leftover, f"MyST source shown in {READING}: {leftover[:5]}"
        assert shown == sum(map(len, expected.values()))
        page.screenshot(path=str(SHOTS / "lab-reading.png"))
    finally:
        page.close()
