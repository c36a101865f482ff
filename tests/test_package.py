"""The package as a whole: ``rlnotes.check_version`` (rlnotes/__init__.py), which each chapter's
set-up cell calls, the dependency floors that pyproject.toml and ``make oldest`` share, and the
package's structure: no import cycle, no module over 400 lines, no private name used outside its
module or in a notebook."""

import ast
import pkgutil
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import rlnotes

ROOT = Path(__file__).resolve().parents[1]


def test_check_version():
    with pytest.raises(TypeError, match="built_with must be a version string"):
        rlnotes.check_version(None)
    with pytest.raises(ValueError, match="built_with must be a version"):
        rlnotes.check_version("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlnotes.check_version(rlnotes.__version__)
        rlnotes.check_version("0.1")  # the same version as 0.1.0
        rlnotes.check_version("0.1.0.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.2.0"):
        rlnotes.check_version("0.2.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.1.1"):
        rlnotes.check_version("0.1.1")


def _version(text):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", text).groups())


def test_torch_floor_is_the_safe_one():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', pyproject).group(1)
    assert _version(floor) >= (2, 6)  # torch.load(weights_only=True) bypass below 2.6 (CVE-2025-32434)
    oldest = re.search(r'"torch==([\d.]+)\.\*"', (ROOT / "Makefile").read_text()).group(1)
    assert oldest == floor  # `make oldest` tests the floor itself
    assert _version(torch.__version__) >= (2, 6)


# ------------------------------------------------------------------ the package's structure (issue 26)

PACKAGE = Path(rlnotes.__file__).resolve().parent
MAX_MODULE_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of rlnotes by dotted name ('rlnotes.plots' is a package's __init__.py)."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, known) -> set[str]:
    """The rlnotes modules that module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, files) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["rlnotes.grpo"]      # the walk sees the modules and their imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in module_files().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these modules (each at most {MAX_MODULE_LINES} lines): {long}"


PRIVATE_USE = re.compile(r"\b({names})\._[A-Za-z]\w*")
PRIVATE_IMPORT = re.compile(r"from\s+(?:rlnotes)?\.*(?:\w+\.)*\w*\s+import\s+\(?[^)\n]*\b_[a-z]\w*")


def private_uses(text: str) -> list[str]:
    """`module._name` for a module of rlnotes, and `from <module> import _name`, in `text`."""
    names = "|".join(sorted({name.rpartition(".")[2] for name in module_files()} - {"rlnotes"}))
    uses = re.finditer(PRIVATE_USE.pattern.format(names=names), text)
    return [m.group(0) for m in uses] + [m.group(0) for m in PRIVATE_IMPORT.finditer(text)]


def test_no_private_name_is_used_outside_its_module():
    places = {p: p.read_text() for p in [*PACKAGE.rglob("*.py"), *Path(__file__).parent.glob("*.py")]}
    for nb in (PACKAGE.parent / "book").glob("*.ipynb"):
        places[nb] = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                               if c["cell_type"] == "code")
    found = {str(p.relative_to(PACKAGE.parent)): uses for p, text in places.items()
             if p != Path(__file__) and (uses := private_uses(text))}
    assert found == {}


def test_the_private_name_finder_finds_them():
    assert private_uses("x = ppo._update(a)\nfrom .trpo import (surrogate, _line_search)") == [
        "ppo._update", "from .trpo import (surrogate, _line_search"]
    assert private_uses("ppo.update(a); lm.__all__; self._x; torch._C") == []


def test_every_subpackage_is_packaged():
    """pyproject.toml lists each subpackage, or a pip install (Colab's set-up cell) leaves it out."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "rlnotes").rglob("__init__.py")}
    assert found == listed, f"pyproject.toml's packages {sorted(listed)}, the package's {sorted(found)}"


def test_docstrings_have_no_rst_substitution_marks():
    """``|y|`` in a docstring is a reStructuredText substitution reference: the API pages' build
    (-W) fails on it. Maths goes in $...$ (book/_ext/reader_fixes.py makes it :math:) or ``...``."""
    import importlib
    import inspect
    import io
    import re

    import docutils.core

    bad = []
    for info in pkgutil.walk_packages(rlnotes.__path__, "rlnotes."):
        module = importlib.import_module(info.name)
        objects = [(info.name, module)] + [(f"{info.name}.{n}", o) for n, o in vars(module).items()
                                            if (inspect.isfunction(o) or inspect.isclass(o))
                                            and getattr(o, "__module__", None) == info.name]
        for name, obj in objects:
            doc = re.sub(r"\$[^$]*\$", "x", inspect.getdoc(obj) or "")
            err = io.StringIO()
            docutils.core.publish_doctree(doc, settings_overrides={"warning_stream": err, "report_level": 2,
                                                                   "halt_level": 5})
            if "substitution" in err.getvalue():
                bad.append(f"{name}: {err.getvalue().splitlines()[0]}")
    assert not bad, "\n".join(bad)
