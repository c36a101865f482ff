"""The tests are laid out by module: each module of rlnotes (a subpackage counts as one module:
rlnotes/widgets -> test_widgets.py) has its file tests/test_<module>.py, and every other test file
is cross-cutting, named below with what it tests. A test goes in the file of the module whose
function it calls first (or asserts about); the fixtures several files share live in conftest.py."""

import pkgutil
from pathlib import Path

import rlnotes

TESTS = Path(__file__).resolve().parent

CROSS_CUTTING = {
    "test_browser.py": "the built book in Chromium: overflow, links, figures (make browser)",
    "test_colab_setup.py": "the Colab set-up cell in a fresh venv (make test-colab)",
    "test_contract.py": "the training contract on every trainer, and CONTRIBUTING.md's table",
    "test_lab.py": "JupyterLab reading the book (make test-lab)",
    "test_korean.py": "the Korean edition: locales/ko/ catalogues, book/_ext/korean.py, _build/html/ko (make book-ko)",
    "test_layout.py": "this layout",
    "test_notebooks.py": "the chapters: each cell whose output nbval ignores asserts what it shows",
    "test_package.py": "the package as a whole: check_version (rlnotes/__init__.py), dependency floors",
    "test_reader_fixes.py": "book/_ext/reader_fixes.py, the docstring maths of the API pages",
    "test_reading_edition.py": "the reading edition (colab/, tools/reading_edition.py)",
    "test_release.py": "the repository URL and release tag in _config.yml, the README and the set-up cells",
}


def modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(rlnotes.__path__) if not m.name.startswith("_")}


def test_every_test_file_is_a_modules_file_or_a_cross_cutting_one():
    stray = sorted(p.name for p in TESTS.glob("test_*.py")
                   if p.name not in CROSS_CUTTING and p.stem.removeprefix("test_") not in modules())
    assert stray == [], (f"{stray}: name each test file test_<module>.py after a module of rlnotes, or add it "
                         f"to CROSS_CUTTING in tests/test_layout.py with what it tests")


def test_every_module_has_its_test_file():
    missing = sorted(f"test_{m}.py" for m in modules() if not (TESTS / f"test_{m}.py").is_file())
    assert missing == []


def test_the_cross_cutting_files_exist_and_none_is_named_after_a_module():
    assert sorted(name for name in CROSS_CUTTING if not (TESTS / name).is_file()) == []
    assert sorted(name for name in CROSS_CUTTING if name.removeprefix("test_").removesuffix(".py") in modules()) == []
    assert "widgets" in modules() and "grpo" in modules()       # the listing sees subpackages and modules
