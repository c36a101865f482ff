"""The repository URL and the release tag live in one place, ``_config.yml``: every notebook's
set-up cell and the README use exactly those, and the tag is the package's version."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rlnotes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
URL, TAG = CONFIG["url"], CONFIG["release_tag"]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
GITHUB = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def setup_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_the_tag_is_the_package_version():
    assert TAG == f"v{rlnotes.__version__}"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_installs_the_configured_url_and_tag(notebook):
    src = setup_cell(notebook)
    assert f'"rlnotes @ git+{URL}@{TAG}"' in src, f"{notebook.name}: set-up cell does not install {URL}@{TAG}"
    assert f'rlnotes.check_version("{TAG[1:]}")' in src
    assert set(GITHUB.findall(src)) == {URL}, f"{notebook.name}: another repository in the set-up cell"
    assert set(re.findall(r"@(v[\d.]+)", src)) == {TAG}


def test_readme_uses_the_configured_url():
    readme = (ROOT / "README.md").read_text()
    path = URL.removeprefix("https://github.com/")
    urls = set(GITHUB.findall(readme))
    assert URL in urls and urls <= {URL}, f"README names other repositories: {urls - {URL}}"
    colab = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", readme)
    assert colab and set(colab) == {path}
    assert set(re.findall(r"@(v\d[\d.]*)", readme)) <= {TAG}


def test_set_repository_rewrites_every_copy(tmp_path):
    for name in ["_config.yml", "README.md", "tools"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "book").mkdir()
    shutil.copy(NOTEBOOKS[0], tmp_path / "book")
    new = "https://github.com/someone/rl-book"
    out = subprocess.run([sys.executable, str(tmp_path / "tools" / "set_repository.py"), new],
                         capture_output=True, text=True, check=True).stdout
    assert "_config.yml" in out and "README.md" in out and NOTEBOOKS[0].name in out
    assert f"  url: {new}\n" in (tmp_path / "_config.yml").read_text()
    assert f"git+{new}@{TAG}" in setup_cell(tmp_path / "book" / NOTEBOOKS[0].name)
    readme = (tmp_path / "README.md").read_text()
    assert URL not in readme and "github/someone/rl-book/blob" in readme
    bad = subprocess.run([sys.executable, str(tmp_path / "tools" / "set_repository.py"), "not a url"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "url must look like" in bad.stderr
