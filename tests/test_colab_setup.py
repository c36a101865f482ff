"""The Colab set-up cell, run as Colab runs it (`make test-colab`, part of `make test`; a few minutes).

Colab gives a kernel with its own torch preinstalled and no checkout of this repository. This test
builds the same thing on this machine:
- a fresh virtual environment (no system packages) with torch of another minor version than
  requirements.txt pins (``COLAB_TORCH``, a CUDA build as on Colab, running on the CPU), ipykernel
  and nbclient, and nothing of rlnotes;
- a ``google.colab`` module imported at kernel start (as Colab's kernel does), whose
  ``output.enable_custom_widget_manager()`` records that it was called;
- git told to fetch ``https://github.com/rlnotes/rlnotes`` from a local clone of this repository's
  HEAD, tagged with the version the set-up cell asks for (no network but the package index, and
  the release under test is this commit);
- a working folder holding only the reading edition of chapter 1 (what the Colab button opens).

It executes that notebook from its first cell to its last in that environment: the set-up cell
installs rlnotes from the tag with the loose ranges of pyproject.toml, torch stays the preinstalled
one, the widget manager is enabled, and every cell runs, every ``assert`` of chapter 1 holding.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "01_policy_gradient.ipynb"
COLAB_TORCH = "2.14.1"   # not requirements.txt's torch: Colab's own is whatever Colab ships
REPO_URL = "https://github.com/rlnotes/rlnotes"
CELL_TIMEOUT_S = 900


def run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def setup_cell() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_requirements_pin_another_torch():
    pinned = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert pinned.rsplit(".", 1)[0] != COLAB_TORCH.rsplit(".", 1)[0], \
        f"COLAB_TORCH ({COLAB_TORCH}) must be another minor version than requirements.txt's ({pinned})"


def test_setup_cell_installs_the_release_tag():
    cell = setup_cell()
    tag = re.search(r'rlnotes @ git\+(\S+)@(v[\d.]+)"', cell)
    assert tag and tag.group(1) == REPO_URL, f"the set-up cell does not install {REPO_URL}@vX.Y.Z:\n{cell}"
    assert re.search(r'check_version\("' + re.escape(tag.group(2)[1:]) + r'"\)', cell), cell


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(python, env, work folder) of the Colab-like environment described in the module docstring."""
    if os.environ.get("RLNOTES_SKIP_COLAB_SETUP"):
        pytest.skip("RLNOTES_SKIP_COLAB_SETUP is set")
    base = tmp_path_factory.mktemp("colab")
    tag = re.search(r"@(v[\d.]+)\"", setup_cell()).group(1)
    # the release under test: this repository's HEAD as a bare repository, tagged
    release = base / "release.git"
    run(["git", "clone", "-q", "--bare", str(ROOT), str(release)])
    run(["git", "--git-dir", str(release), "tag", "-f", tag, "HEAD"])
    gitconfig = base / "gitconfig"
    gitconfig.write_text(f'[url "{release.as_uri()}"]\n\tinsteadOf = {REPO_URL}\n'
                         f"[protocol \"file\"]\n\tallow = always\n")
    # Colab's kernel: its own torch, and google.colab imported at start
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", f"torch=={COLAB_TORCH}", "ipykernel", "nbclient"], timeout=1200)
    fake = base / "colab-site"
    (fake / "google" / "colab").mkdir(parents=True)   # a namespace package: google.protobuf still imports
    (fake / "google" / "colab" / "__init__.py").write_text("from . import output\n")
    (fake / "google" / "colab" / "output.py").write_text(textwrap.dedent(f"""\
        def enable_custom_widget_manager():
            open({str(base / 'widget-manager-enabled')!r}, "w").close()
        """))
    ipython = base / "ipython"
    (ipython / "profile_default" / "startup").mkdir(parents=True)
    (ipython / "profile_default" / "startup" / "00-colab.py").write_text("import google.colab\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "IPYTHON"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PYTHONPATH=str(fake), IPYTHONDIR=str(ipython),
               GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", MPLBACKEND="Agg",
               HOME=str(base / "home"))
    work = base / "content"   # Colab's /content: the notebook and nothing else
    work.mkdir()
    (work / NOTEBOOK.name).write_bytes(NOTEBOOK.read_bytes())
    return python, env, work, base


def test_chapter_1_runs_on_colab_after_its_setup_cell(colab):
    python, env, work, base = colab
    driver = textwrap.dedent(f"""\
        import json, sys
        import nbformat
        from nbclient import NotebookClient
        nb = nbformat.read({str(work / NOTEBOOK.name)!r}, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(
            "import json as _j, sys as _s, torch as _t, rlnotes as _r\\n"
            "print('FACTS ' + _j.dumps({{'torch': _t.__version__, 'rlnotes': _r.__file__,"
            " 'colab': 'google.colab' in _s.modules}}))"))
        NotebookClient(nb, timeout={CELL_TIMEOUT_S}, kernel_name="python3",
                       resources={{"metadata": {{"path": {str(work)!r}}}}}).execute()
        print(nb.cells[-1].outputs[-1]["text"])
        """)
    out = run([python, "-c", driver], env=env, cwd=work, timeout=3000)
    facts = json.loads(out.split("FACTS ", 1)[1].splitlines()[0])
    assert facts["colab"], facts
    assert facts["torch"].split("+")[0] == COLAB_TORCH, f"the set-up cell replaced Colab's torch: {facts}"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    assert Path(facts["rlnotes"]).resolve().is_relative_to(site.resolve()), \
        f"rlnotes was not installed into the environment: {facts['rlnotes']}"
    assert (base / "widget-manager-enabled").exists(), "the set-up cell did not enable the widget manager"
    installed = run([python, "-m", "pip", "show", "rlnotes"], env=env)
    assert re.search(r"^Version: 0\.1\.0$", installed, re.M), installed
