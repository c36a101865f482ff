"""book/_ext/reader_fixes.py's docstring maths: every entry names a real function, the TeX is
balanced, and the hook turns $...$ into :math: and adds the display equation under the summary."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import reader_fixes  # noqa: E402


@pytest.mark.parametrize("name", sorted(reader_fixes.EQUATIONS))
def test_every_equation_belongs_to_a_function_of_the_package(name):
    module, _, path = name.partition(".")
    obj = importlib.import_module(module)  # the package, then modules, classes and methods down the path
    for part in path.split("."):
        obj = getattr(obj, part, None) or importlib.import_module(f"{obj.__name__}.{part}")
    assert callable(obj)
    tex = reader_fixes.EQUATIONS[name]
    assert tex.count("{") == tex.count("}") and "\n" not in tex


def test_docstring_maths_hook():
    lines = ["The loss of $L^{PG}$, not $$x$$.", "", "More text."]
    reader_fixes._docstring_maths(None, "function", "rlnotes.pg.pg_loss", None, None, lines)
    assert lines[0] == "The loss of :math:`L^{PG}`, not $$x$$."
    assert lines[1:5] == ["", ".. math::", "", "   " + reader_fixes.EQUATIONS["rlnotes.pg.pg_loss"]]
    assert lines[-1] == "More text."
    other = ["Train on CartPole (eq. 3).", "", "Returns a TrainResult."]
    reader_fixes._docstring_maths(None, "function", "rlnotes.pg.train", None, None, other)
    assert other == ["Train on CartPole (eq. 3).", "", "Returns a TrainResult."]   # no entry: untouched
