"""What nbval does not compare, each chapter must check.

A cell whose text output depends on a training trajectory differs from machine to machine (the
last bits of a sum decide a seed's fate), so it carries the tag ``nbval-ignore-output``
(tools/volatile.py finds them by executing under other numeric kernels). nbval then only checks
that it runs; what it shows must be checked by the cell itself, with an ``assert``.
"""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "book").glob("*.ipynb"))
UNCOMPARED = {"nbval-ignore-output", "nbval-skip"}


def uncompared_cells(path):
    """(index, source) of every code cell whose output nbval does not compare."""
    nb = json.loads(path.read_text())
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and UNCOMPARED & set(c.get("metadata", {}).get("tags", []))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_uncompared_cell_asserts_what_it_shows(path):
    missing = [i for i, source in uncompared_cells(path) if "assert " not in source]
    assert not missing, f"{path.name}: cells {missing} are not compared by nbval and assert nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_is_ignored_whole(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(uncompared_cells(path)) < len(code), f"{path.name}: every code cell is ignored by nbval"
    assert not {"nbval-skip", "nbval-ignore-output"} & set(nb["metadata"].get("tags", []))


def test_the_listing_finds_a_tagged_cell_without_an_assert(tmp_path):
    cell = lambda src, tags: {"cell_type": "code", "source": src, "metadata": {"tags": tags}, "outputs": []}
    nb = {"cells": [cell("x = train()\nprint(x)", ["nbval-ignore-output"]), cell("print(1)", []),
                    cell("assert x > 0", ["nbval-skip"])], "metadata": {}}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    listed = uncompared_cells(tmp_path / "nb.ipynb")
    assert [i for i, _ in listed] == [0, 2]
    assert [i for i, src in listed if "assert " not in src] == [0]


def headings(path):
    """(cell index, heading line) for every markdown heading of a notebook, in order."""
    cells = json.loads(path.read_text())["cells"]
    return [(i, line) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines() if line.startswith("#")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_chapter_opens_with_a_preview_and_closes_with_the_posts_table(path):
    cells = json.loads(path.read_text())["cells"]
    assert ":::{admonition} In this" in "".join(cells[0]["source"]), "the first cell previews the chapter"
    marks = headings(path)
    recap = [i for i, line in marks if line.startswith("## Recap: the post")]
    if "post, sentence by sentence" not in path.read_text():      # chapter 6: the post ends before it
        return
    assert len(recap) == 1
    after = [line for i, line in marks if i > recap[0] and line.startswith("## ")]
    assert after in ([], ["## Exercises"]), f"the recap is the last section before the exercises, not {after}"


FIGURE_MIMES = ("image/png", "application/vnd.jupyter.widget-view+json")


def figure_problems(paths):
    """What keeps a figure from its caption: every code cell that displays a figure (image/png) or a
    live widget needs metadata mystnb.figure with a non-empty caption (MyST-NB renders it under the
    output) and a name no other figure of the book uses."""
    problems, names = [], {}
    for path in paths:
        for i, cell in enumerate(json.loads(Path(path).read_text())["cells"]):
            if cell["cell_type"] != "code" or not any(
                    mime in out.get("data", {}) for out in cell.get("outputs", []) for mime in FIGURE_MIMES):
                continue
            figure = (cell.get("metadata", {}).get("mystnb") or {}).get("figure") or {}
            where = f"{Path(path).name} cell {i} ({cell.get('id')})"
            if not str(figure.get("caption", "")).strip():
                problems.append(f"{where}: no caption (metadata mystnb.figure.caption)")
            name = str(figure.get("name", "")).strip()
            if not name:
                problems.append(f"{where}: no name (metadata mystnb.figure.name)")
            elif name in names:
                problems.append(f"{where}: the name {name!r} is also that of {names[name]}")
            else:
                names[name] = where
    return problems


def test_every_figure_has_a_caption_and_a_unique_name():
    assert not figure_problems(NOTEBOOKS), "\n".join(figure_problems(NOTEBOOKS))


def test_the_figure_check_finds_a_figure_without_a_caption(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
           "metadata": {}}
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}}}
    cell = lambda outputs, meta: {"cell_type": "code", "source": "plot()", "metadata": meta, "outputs": outputs}
    named = {"mystnb": {"figure": {"caption": "What to see.", "name": "fig-a"}}}
    nb = {"cells": [cell([png], named), cell([], {}), cell([widget], {"tags": ["hide-input"]}),
                    cell([png, png], {"mystnb": {"figure": {"caption": " ", "name": "fig-a"}}})], "metadata": {}}
    for i, c in enumerate(nb["cells"]):
        c["id"] = f"c{i}"
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert figure_problems([tmp_path / "nb.ipynb"]) == [
        "nb.ipynb cell 2 (c2): no caption (metadata mystnb.figure.caption)",
        "nb.ipynb cell 2 (c2): no name (metadata mystnb.figure.name)",
        "nb.ipynb cell 3 (c3): no caption (metadata mystnb.figure.caption)",
        "nb.ipynb cell 3 (c3): the name 'fig-a' is also that of nb.ipynb cell 0 (c0)"]
    nb["cells"] = nb["cells"][:2]
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert figure_problems([tmp_path / "nb.ipynb"]) == []
