"""What nbval does not compare, each chapter must check.

A cell whose text output depends on a training trajectory differs from machine to machine (the
last bits of a sum decide a seed's fate), so it carries the tag ``nbval-ignore-output``
(tools/volatile.py finds them by executing under other numeric kernels). nbval then only checks
that it runs; what it shows must be checked by the cell itself, with an ``assert``.
"""
import json
import re
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


# --- Number density of the prose (issue 25, item 2) -------------------------------------------------

MAX_NUMBERS = 10
_GLUE = re.compile(r"\{glue(?::text|:md)?\}`[^`]*`")
_ROLE = re.compile(r"\{[\w:.+-]+\}`[^`]*`")            # any other role: {ref}, {eq}, {py:func}, {cite:t}
_CODE = re.compile(r"`[^`]*`")
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(?:[^$\\]|\\.)+?\$")
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$[^\n]*", re.S)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_HTML = re.compile(r"<!--.*?-->|<[^>\n]+>", re.S)
_REFERENCE = re.compile(                              # "section 5.5", "chapters 4 and 5", "Figure 2"
    r"(?i)(?:\b(?:sections?|chapters?|ch\.|exercises?|figures?|fig\.|tables?|appendix|parts?|eqs?\.|"
    r"equations?)|§)\s*\(?\d+(?:\.\d+)*[a-z]?\)?"
    r"(?:\s*(?:,|and|or|to|–|-)\s*\(?\d+(?:\.\d+)*[a-z]?\)?)*")
_NUMBER = re.compile(                                 # 0.13, 3e-3, 95%, 1,500, 10**6, 10^6, 1/2, −0.4
    r"(?<![\w.\-/])(?<![A-Za-z]-)[−-]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+−]?\d+)?"
    r"(?:(?:\*\*|\^)\d+)?(?:/\d+)?%?(?![\w.]*[A-Za-z_])(?!\.\d)")
_FENCE = re.compile(r"^\s*(`{3,}|:{3,})\s*(\{([\w:-]+)\})?")
_VERBATIM = {None, "code", "code-block", "code-cell", "math", "raw", "python", "bash", "text"}


def prose_paragraphs(markdown):
    """The paragraphs of prose in one markdown cell: blank-line separated, without headings, tables,
    targets ``(label)=``, directive option lines ``:name: ...``, fence lines, display maths and the
    inside of code/math fences (an admonition's or a note's body is prose and stays)."""
    text = _DISPLAY_MATH.sub("\n", markdown)
    paragraphs, current, fence = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        m = _FENCE.match(line)
        if fence is not None:                         # inside a fence: only its body, if prose
            if m and m.group(1) == fence[0] and m.group(2) is None:
                fence = None
                paragraphs.append(current); current = []
            elif fence[1] and not re.match(r"^\s*:[\w-]+:", line):
                if stripped:
                    current.append(stripped)
                else:
                    paragraphs.append(current); current = []
            continue
        if m and (m.group(2) or len(stripped) == len(m.group(1)) or stripped[len(m.group(1)):].isalpha()):
            paragraphs.append(current); current = []
            lang = m.group(3) or (stripped[len(m.group(1)):] or None)
            fence = (m.group(1), lang not in _VERBATIM and lang != "table")
            continue
        if not stripped:
            paragraphs.append(current); current = []
        elif stripped.startswith(("#", "|")) or re.fullmatch(r"\([\w.:-]+\)=", stripped):
            continue
        else:
            current.append(stripped)
    paragraphs.append(current)
    return [" ".join(p) for p in paragraphs if p]


def count_numbers(paragraph):
    """How many numbers a reader reads in one paragraph of prose.

    Each glue role ({glue}, {glue:text}, {glue:md}) counts one. Every other role and inline code is
    dropped with its backticks (a {ref}, a {py:func}, a `code` quotes no result), and so is inline
    maths ``$...$``: its numbers are constants of a formula ($\\gamma = 1$, $(1-\\gamma)^2$), not
    results, which the book glues. In what remains each numeric literal counts one: 0.13, −0.4, 3e-3,
    95%, 1,500, 10**6, 10^6 and 1/2 are one number each. Not counted: digits inside a word or a name
    (GPT-2, distinct-2, ch4, A1, 2nd), a link's target, and references to the book's own parts: a
    number (or a list or range of them) right after "section", "chapter", "exercise", "figure",
    "table", "appendix", "part", "equation", "eq." or "§" (section 5.5, chapters 4 and 5, Figure 2),
    case-insensitive; a bare "5.5" without such a word counts. Headings, tables, display maths, code
    and directive option lines are not prose (see prose_paragraphs); a bulleted list without blank
    lines between its items is one paragraph, as the issue measures it.
    """
    glued = len(_GLUE.findall(paragraph))
    rest = _GLUE.sub(" ", paragraph)
    for pattern in (_ROLE, _CODE, _INLINE_MATH, _LINK_TARGET, _HTML, _REFERENCE):
        rest = pattern.sub(" ", rest)
    return glued + len(_NUMBER.findall(rest))


def dense_paragraphs(path, limit=MAX_NUMBERS):
    """(cell index, count, first words) of every prose paragraph that quotes more than limit numbers."""
    cells = json.loads(path.read_text())["cells"]
    return [(i, n, p[:60]) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
            for p in prose_paragraphs("".join(c["source"])) if (n := count_numbers(p)) > limit]


def test_the_number_counter_counts_a_known_paragraph(tmp_path):
    paragraph = ("After 1,500 steps (section 5.5, as in chapters 4 and 5) the mean KL is "
                 "{glue:text}`ch4_kl_mean:.2f` nats, $\\beta = 0.1$ and {ref}`ch4-task` aside; "
                 "95% of 10**6 draws fall within 3e-3 of −0.4, one in 1/2 on GPT-2 (`lr=3e-4`).")
    # 1,500 + glue + 95% + 10**6 + 3e-3 + −0.4 + 1/2; not 5.5, 4, 5, 0.1, GPT-2's 2 or the code's 3e-4
    assert count_numbers(paragraph) == 7
    cell = ("## A heading with 3 numbers 1 2\n\n(lab-1)=\nFirst 1 and 2.\n\n| 1 | 2 |\n|---|---|\n\n"
            "$$\nx = 1 + 2\n$$ (eq-1)\n\n:::{admonition} In 3 words\n:class: tip\nBody 4 and 5.\n:::\n\n"
            "```python\nx = 6\n```\nLast 7.")
    assert prose_paragraphs(cell) == ["First 1 and 2.", "Body 4 and 5.", "Last 7."]
    assert [count_numbers(p) for p in prose_paragraphs(cell)] == [2, 2, 1]
    dense = "Eleven: " + ", ".join(str(k) for k in range(11)) + "."
    nb = {"cells": [{"cell_type": "markdown", "source": [cell]}, {"cell_type": "code", "source": dense},
                    {"cell_type": "markdown", "source": ["Ten.\n", "\n", dense[:-4] + "."]},
                    {"cell_type": "markdown", "source": ["Intro.\n", "\n", dense]}], "metadata": {}}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert dense_paragraphs(tmp_path / "nb.ipynb") == [(3, 11, dense[:60])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_paragraph_quotes_more_than_ten_numbers(path):
    dense = dense_paragraphs(path)
    assert not dense, (f"{path.name}: paragraphs quoting more than {MAX_NUMBERS} numbers "
                       f"(cell, count, start): {dense}; move the numbers into a table after it")


BUILD_IT = {"01_policy_gradient": ["gae"], "02_trpo": ["line_search"], "03_ppo": ["clipped_surrogate"],
            "04_rlhf": ["reward_loss", "token_rewards"], "05_dpo": ["dpo_loss"], "06_beyond": ["group_advantages"],
            "07_overoptimisation": ["bon_distribution"]}


@pytest.mark.parametrize("name", sorted(BUILD_IT))
def test_each_chapter_has_a_build_it_exercise_checked_against_its_hidden_solution(name):
    """A stub the reader fills in, a check cell that runs rlnotes.exercises.check on it, and a collapsed
    solution cell that asserts the check passes (so CI tests the check against the solution)."""
    cells = json.loads((NOTEBOOKS[0].parent / f"{name}.ipynb").read_text())["cells"]
    source = {c.get("id"): "".join(c["source"]) for c in cells}
    tags = {c.get("id"): c["metadata"].get("tags", []) for c in cells}
    slug = f"buildit-{name[:2]}"
    assert "(build it)" in source[f"{slug}-task"]
    assert "raise NotImplementedError" in source[f"{slug}-stub"]
    assert "hide-input" in tags[f"{slug}-solution"] and "nbval-ignore-output" not in tags[f"{slug}-solution"]
    for exercise in BUILD_IT[name]:
        assert f'"{exercise}")' in source[f"{slug}-check"]
        assert f'"{exercise}").passed' in source[f"{slug}-solution"]
    order = [c.get("id") for c in cells]
    assert order.index(f"{slug}-stub") < order.index(f"{slug}-check") < order.index(f"{slug}-solution")


CODE_WIDTH = 75   # characters of code the book's column shows at 1280 px without scrolling


def long_code_lines(path, width=CODE_WIDTH):
    """(cell index, line) of every code line wider than `width`; IPython magics (the Colab set-up
    cell's `%pip install`, whose URL tools/set_repository.py rewrites) are left out."""
    nb = json.loads(Path(path).read_text())
    return [(i, line) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines()
            if len(line) > width and not line.lstrip().startswith(("%", "!"))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_line_fits_the_column(path):
    long = long_code_lines(path)
    assert not long, f"{path.name}: {len(long)} code lines over {CODE_WIDTH} characters, " \
                     f"the first in cell {long[0][0]}: {long[0][1]!r}"


def test_the_width_check_reports_a_long_line(tmp_path):
    cell = lambda src: {"cell_type": "code", "source": src, "metadata": {}, "outputs": []}
    nb = {"cells": [cell("x = 1\n" + "y = " + "1 + " * 20 + "1"), cell("%pip install " + "a" * 80),
                    {"cell_type": "markdown", "source": "z" * 100, "metadata": {}}], "metadata": {}}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert long_code_lines(tmp_path / "nb.ipynb") == [(0, "y = " + "1 + " * 20 + "1")]


def test_file_numbers_are_chapter_numbers_and_the_toc_keeps_their_order():
    """book/NN_*.ipynb holds chapter NN (its title reads "# NN."); an appendix is book/a<k>_*.ipynb,
    after the chapters in _toc.yml."""
    import re

    toc = re.findall(r"- file: book/(\w+)\n", (NOTEBOOKS[0].parents[1] / "_toc.yml").read_text())
    chapters = [name for name in toc if (NOTEBOOKS[0].parent / f"{name}.ipynb").is_file()]
    assert chapters == sorted(p.stem for p in NOTEBOOKS), "every notebook is in _toc.yml, in file order"
    for path in NOTEBOOKS:
        title = next(line for line in "".join(json.loads(path.read_text())["cells"][0]["source"]).splitlines()
                     if line.startswith("# "))
        if path.stem[0].isdigit():
            assert title.startswith(f"# {int(path.stem[:2])}."), (path.name, title)
        else:
            assert path.stem.startswith("a") and title.startswith("# Appendix"), (path.name, title)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stored_widget_view_has_its_model_in_the_notebooks_widget_state(path):
    """A widget output names a model id; the page can draw it only if the notebook's stored widget state
    holds that model (outputs and state must come from the same run)."""
    nb = json.loads(path.read_text())
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in nb["cells"]
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert [v for v in views if v not in state] == []
