"""The reading edition (colab/*.ipynb, tools/reading_edition.py): plain CommonMark with every glued
number of the book's stored run, links into the rendered book, and the code cells of the source.

The link check (test_links_resolve_in_built_book) needs the built book in _build/html (`make
book-stored`) and skips without it."""

import importlib.util
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reading_edition", ROOT / "tools" / "reading_edition.py")
edition = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("reading_edition", edition)   # dataclasses look their module up there
_spec.loader.exec_module(edition)

GLUE_ROLE = re.compile(r"\{glue(?::text)?\}`[^`]+`")
# MyST as CommonMark renders it: a role is "{name}" before a code span; a label line is a
# paragraph "(name)="; a directive fence is a code block with "{name}" as its language; and so on.
MYST_IN_HTML = {
    "role": re.compile(r"\{[A-Za-z][\w:.-]*\}<code>"),
    "label": re.compile(r"(^|<p>|\n)\([^()\s]+\)=(\n|</p>|$)"),
    "directive fence": re.compile(r"<code class=\"language-\{|:::+\s*\{"),
    "directive option": re.compile(r"(^|<p>|\n):(name|class|label|align|widths):\s"),
    "glue": re.compile(r"\{glue"),
    "equation label": re.compile(r"\$\$\s*\([^()\s]+\)"),
}


@pytest.fixture(scope="module")
def built():
    """(file name -> edition text, totals) for the current book/*.ipynb."""
    return edition.build(ROOT)


def markdown_cells(text):
    return [c for c in nbformat.reads(text, as_version=4).cells if c.cell_type == "markdown"]


def source_markdown(path):
    """The markdown of a source notebook: its markdown cells and its figure captions."""
    cells = nbformat.read(path, as_version=4).cells
    return ([c.source for c in cells if c.cell_type == "markdown"]
            + [str(edition.figure_options(c).get("caption", "")) for c in cells if edition.figure_options(c)])


def is_caption_cell(cell):
    return cell.cell_type == "markdown" and cell.get("id", "").endswith(edition.CAPTION_ID_SUFFIX)


# ------------------------------------------------------------------------------ (1) no MyST left

def test_commonmark_rendering_shows_no_myst(built):
    texts, _ = built
    assert sorted(texts) == [p.name for p in edition.sources(ROOT)]
    md = MarkdownIt("commonmark")
    found = []
    for name, text in texts.items():
        for i, cell in enumerate(markdown_cells(text)):
            html = md.render(cell.source)
            found += [f"{name} markdown cell {i}: {kind}: {m.group(0)!r}"
                      for kind, rx in MYST_IN_HTML.items() for m in rx.finditer(html)]
            found += [f"{name} markdown cell {i}: {left}" for left in edition.leftovers(cell.source)]
    assert not found, "\n".join(found)


def test_code_cells_and_outputs_unchanged(built):
    texts, _ = built
    for source in edition.sources(ROOT):
        src = nbformat.read(source, as_version=4)
        out = nbformat.reads(texts[source.name], as_version=4)
        header, cells = out.cells[0], [c for c in out.cells[1:] if not is_caption_cell(c)]
        assert header.cell_type == "markdown" and f"book/{source.name}" in header.source
        assert f"{edition.base_url(ROOT)}book/{source.stem}.html" in header.source
        assert "stored run" in header.source
        assert len(cells) == len(src.cells)
        for a, b in zip(src.cells, cells):
            assert a.cell_type == b.cell_type
            if a.cell_type != "markdown":
                assert a == b, f"{source.name}: cell {a.get('id')} changed"
        assert out.metadata == src.metadata


# ---------------------------------------------------------------------------- figure captions

def test_each_captioned_figure_is_followed_by_its_caption(built):
    """The book shows a figure cell's caption (metadata mystnb.figure) under the figure; Jupyter
    and Colab ignore that metadata, so the edition puts it in a markdown cell after the cell."""
    texts, _ = built
    md, count = MarkdownIt("commonmark"), 0
    for source in edition.sources(ROOT):
        src = nbformat.read(source, as_version=4)
        out = nbformat.reads(texts[source.name], as_version=4).cells[1:]
        captioned = {c.id: edition.figure_options(c)["caption"] for c in src.cells
                     if edition.figure_options(c).get("caption")}
        for i, cell in enumerate(out):
            if is_caption_cell(cell):
                assert out[i - 1].id in captioned and cell.id == out[i - 1].id + edition.CAPTION_ID_SUFFIX
            if cell.id not in captioned:
                continue
            count += 1
            after = out[i + 1]
            assert is_caption_cell(after), f"{source.name}: no caption after cell {cell.id}"
            html = md.render(after.source)     # one italic paragraph: the caption's own * and _ do not split it
            assert html.startswith("<p><em>Figure: ") and html.rstrip().endswith("</em></p>"), html
            assert html.count("<em>") == 1, f"{source.name} {cell.id}: the caption's emphasis breaks: {html}"
            assert not edition.leftovers(after.source)
            plain = re.sub(r"\{[^}]*\}`[^`]*`", "", captioned[cell.id])      # the caption's words are kept
            assert plain.split()[:3] == after.source[len("*Figure: "):].split()[:3]
    assert count == sum(1 for s in edition.sources(ROOT) for c in nbformat.read(s, as_version=4).cells
                        if edition.figure_options(c).get("caption"))
    assert count > 0


def test_caption_roles_converted_and_figure_name_is_a_ref_target(tmp_path):
    root = tiny_book(tmp_path, "See {ref}`fig-ch9-demo` and {ref}`the figure <fig-ch9-demo>`.")
    path = root / "book" / "09_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].metadata["mystnb"] = {"figure": {
        "name": "fig-ch9-demo",
        "caption": "Over {glue:text}`ch9_n` seeds the curves of\n{ref}`ch9-sec` meet, as $\\pi_\\theta$ says."}}
    nbformat.write(nb, path)
    assert edition.main(["--root", str(root)]) == 0
    out = nbformat.read(root / "colab" / "09_x.ipynb", as_version=4)
    assert [c.cell_type for c in out.cells] == ["markdown", "markdown", "code", "markdown"]
    caption = out.cells[3]
    assert caption.id == "cell-1" + edition.CAPTION_ID_SUFFIX
    url = "https://rlnotes.github.io/rlnotes/book/09_x.html"
    assert caption.source == (f"*Figure: Over 3 seeds the curves of [9. A chapter]({url}#ch9-sec) meet, "
                              "as $\\pi_\\theta$ says.*")
    text = out.cells[1].source
    # a bare {ref} shows the caption, as Sphinx does: its roles converted, its links dropped
    assert text.endswith(f"See [Over 3 seeds the curves of\n9. A chapter meet, as $\\pi_\\theta$ says.]"
                         f"({url}#fig-ch9-demo) and [the figure]({url}#fig-ch9-demo).")
    # a glue name the notebook does not store fails, naming the notebook, as in a markdown cell
    nb.cells[1].metadata["mystnb"]["figure"]["caption"] = "Value {glue:text}`ch9_missing`."
    nbformat.write(nb, path)
    with pytest.raises(edition.EditionError, match=r"book/09_x: .*'ch9_missing'"):
        edition.build(root)


# ------------------------------------------------------------------------- (2) every glue name

def test_every_glue_name_substituted(built):
    texts, totals = built
    uses, names = 0, set()
    for source in edition.sources(ROOT):
        for md in source_markdown(source):
            for m in GLUE_ROLE.finditer(md):
                uses += 1
                names.add((source.name, m.group(0).split("`")[1].rsplit(":", 1)[0]))
    assert uses > 0
    assert totals.glue == uses, f"{totals.glue} of {uses} glue roles substituted"
    site = edition.load_site(ROOT)
    substituted = set()
    for source in edition.sources(ROOT):
        _, _, used = edition.edition(site, source, ROOT)
        substituted |= {(source.name, n) for n in used}
    assert substituted == names
    assert not any("{glue" in c.source for t in texts.values() for c in markdown_cells(t))


def test_missing_glue_name_fails_naming_notebook_and_name(tmp_path):
    root = tiny_book(tmp_path, "Value {glue:text}`ch9_missing:.2f`.")
    with pytest.raises(edition.EditionError, match=r"book/09_x: .*'ch9_missing'"):
        edition.build(root)
    assert edition.main(["--root", str(root)]) == 2
    assert not (root / "colab").exists()


# ------------------------------------------------------------------- (3) each transformation

def site():
    return edition.Site(
        base="https://example.org/book-site/",
        labels={"ch1-basics": edition.Label("book/01_a", "ch1-basics", "1.1 The basics of $\\pi$"),
                "tab": edition.Label("book/01_a", "tab", None),
                "glued": edition.Label("book/01_a", "glued", "Over {glue:text}`n` seeds")},
        equations={"eq-a": ("book/01_a", 1), "eq-b": ("book/02_b", 7)},
        modules={"rlnotes.pg": "book/api/policy_gradient", "rlnotes.mdp": "book/api/policy_gradient"},
        bib={"williams1992simple": (["Williams"], "1992"), "bradley1952rank": (["Bradley", "Terry"], "1952"),
             "sutton2000policy": (["Sutton", "McAllester", "Singh"], "2000")},
        glue={"book/01_a": {"n": "5"}},
    )


def convert(text, glue=None):
    return edition.Converter(site(), "book/01_a", glue).convert(text)


@pytest.mark.parametrize("stored, spec, shown", [
    ("0.4567", ".0f", "0"), ("12345.678", ",.0f", "12,346"), ("1234567", ",", "1,234,567"),
    ("0.123", ".0%", "12%"), ("0.00012", "g", "0.00012"), ("2500.0", "g", "2500"),
    ("0.05", "+.2f", "+0.05"), ("1e-12", ".0e", "1e-12"), ("3", ".1f", "3.0"),
    ("'holds'", "s", "holds"), ("np.float64(0.5)", "s", "np.float64(0.5)"), ("7", "", "7"),
])
def test_glue_formats_as_myst_nb(stored, spec, shown):
    assert edition.format_plain_text(stored, spec) == shown
    variables = pytest.importorskip("myst_nb.core.variables")
    assert variables.format_plain_text(stored, spec) == shown
    role = f"{{glue:text}}`x:{spec}`" if spec not in ("s", "") else "{glue:text}`x`"
    if spec != "":
        assert convert(f"a {role} b", {"x": stored}) == f"a {shown} b"


def test_ref_with_and_without_text():
    url = "https://example.org/book-site/book/01_a.html#ch1-basics"
    assert convert("see {ref}`ch1-basics`.") == f"see [1.1 The basics of $\\pi$]({url})."
    assert convert("see {ref}`the basics <ch1-basics>`.") == f"see [the basics]({url})."
    assert convert("{ref}`glued`") == "[Over 5 seeds](https://example.org/book-site/book/01_a.html#glued)"
    assert convert("{ref}`Table 1 <tab>`").startswith("[Table 1](")
    for bad in ("{ref}`tab`", "{ref}`nowhere`"):
        with pytest.raises(edition.EditionError, match="book/01_a"):
            edition.convert_text(site(), "book/01_a", bad)


def test_cite_textual_and_parenthetical():
    bib = "https://example.org/book-site/book/bibliography.html"
    assert convert("{cite:t}`williams1992simple`") == f"[Williams (1992)]({bib})"
    assert convert("{cite:p}`williams1992simple`") == f"([Williams, 1992]({bib}))"
    assert convert("{cite}`williams1992simple`") == f"([Williams, 1992]({bib}))"
    assert convert("{cite:t}`bradley1952rank`") == f"[Bradley and Terry (1952)]({bib})"
    assert convert("{cite:p}`sutton2000policy, bradley1952rank`") == \
        f"([Sutton et al., 2000]({bib}); [Bradley and Terry, 1952]({bib}))"


def test_bib_names_from_references_bib():
    bib = edition.read_bib(ROOT)
    assert bib["williams1992simple"] == (["Williams"], "1992")
    assert bib["bradley1952rank"][0] == ["Bradley", "Terry"]


def test_equations_numbered_through_the_book_and_tagged(tmp_path):
    root = tiny_book(tmp_path, "$$\na = 1\n$$ (eq-one)\n\nNo label:\n\n$$\nb\n$$\n\n$$ c = 2 $$ (eq-two)",
                     second="Back to {eq}`eq-two` and {eq}`eq-three`.\n\n$$\nd\n$$ (eq-three)")
    s = edition.load_site(root)
    # numfig: Sphinx numbers labelled equations through the toc, not per page
    assert s.equations == {"eq-one": ("book/09_x", 1), "eq-two": ("book/09_x", 2),
                           "eq-three": ("book/10_y", 3)}
    conv = edition.Converter(s, "book/10_y")
    assert conv.convert("Back to {eq}`eq-two`.") == \
        "Back to [(2)](https://rlnotes.github.io/rlnotes/book/09_x.html#equation-eq-two)."
    conv = edition.Converter(s, "book/09_x")
    out = conv.convert("$$\na = 1\n$$ (eq-one)\n\n$$ c = 2 $$ (eq-two)\n\n$$\nb\n$$")
    assert out == "$$\na = 1\n\\tag{1}\n$$\n\n$$ c = 2 \\tag{2} $$\n\n$$\nb\n$$"


def test_py_roles():
    api = "https://example.org/book-site/book/api/policy_gradient.html"
    assert convert("{py:func}`rlnotes.pg.train`") == f"[`rlnotes.pg.train()`]({api}#rlnotes.pg.train)"
    assert convert("{py:func}`~rlnotes.pg.train`") == f"[`train()`]({api}#rlnotes.pg.train)"
    assert convert("{py:func}`pg.train(seed=0) <rlnotes.pg.train>`") == \
        f"[`pg.train(seed=0)`]({api}#rlnotes.pg.train)"
    assert convert("{py:meth}`rlnotes.mdp.TabularMDP.values`") == \
        f"[`rlnotes.mdp.TabularMDP.values()`]({api}#rlnotes.mdp.TabularMDP.values)"
    assert convert("{py:class}`~rlnotes.mdp.TabularMDP`") == f"[`TabularMDP`]({api}#rlnotes.mdp.TabularMDP)"
    assert convert("{py:mod}`rlnotes.pg`") == f"[`rlnotes.pg`]({api}#module-rlnotes.pg)"
    with pytest.raises(edition.EditionError, match="rlnotes.nowhere"):
        edition.convert_text(site(), "book/01_a", "{py:func}`rlnotes.nowhere.f`")


def test_table_admonition_note_and_labels():
    table = ":::{table} Results over {glue:text}`n` seeds.\n:name: tab\n\n| a | b |\n|---|---|\n| 1 | 2 |\n:::"
    assert convert(table) == "**Results over 5 seeds.**\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    adm = "```{admonition} Takeaways\n:class: tip\n\n- one\n\n  two\n- $x$\n```"
    assert convert(adm) == "> **Takeaways**\n>\n> - one\n>\n>   two\n> - $x$"
    assert convert("```{note}\nThese are *this run's* numbers.\n```") == \
        "> **Note**\n>\n> These are *this run's* numbers."
    assert convert("(ch1-basics)=\n## 1.1 The basics\n\ntext\n(other)=\n") == "## 1.1 The basics\n\ntext\n"
    # code blocks are left alone, and a directive's closing fence does not open one
    code = "```{note}\nA\n```\n\n```python\nx = '{ref}`ch1-basics`'\n(label)=\n```\n\n{ref}`ch1-basics`"
    out = convert(code)
    assert "x = '{ref}`ch1-basics`'\n(label)=" in out and out.endswith("#ch1-basics)")


def test_link_text_brackets():
    assert edition.escape_link_text("$\\mathrm{KL}[p\\|q]$ bound") == "$\\mathrm{KL}[p\\|q]$ bound"
    assert edition.escape_link_text("a ] b [") == "a \\] b \\["
    md = MarkdownIt("commonmark")
    for text in ("$\\mathrm{KL}[p\\|q]$", "a ] b [", "x [y"):
        html = md.render(f"[{edition.escape_link_text(text)}](https://e.org/p.html#a)")
        assert html.count("<a href=") == 1, html


def test_leftovers_catch_myst():
    assert edition.leftovers("{ref}`x`") and edition.leftovers("(x)=") and edition.leftovers(":::{table}")
    assert edition.leftovers("$$ a $$ (x)") and not edition.leftovers("[(1)](u) and `(x)=`")


# ------------------------------------------------------------------------------- (4) --check

def test_check_detects_stale_edition(tmp_path, capsys):
    root = tiny_book(tmp_path, "Over {glue:text}`ch9_n` seeds, as in {ref}`ch9-sec`.")
    assert edition.main(["--root", str(root), "--check"]) == 1          # nothing generated yet
    assert edition.main(["--root", str(root)]) == 0
    first = (root / "colab" / "09_x.ipynb").read_bytes()
    assert edition.main(["--root", str(root), "--check"]) == 0
    assert edition.main(["--root", str(root)]) == 0                     # deterministic
    assert (root / "colab" / "09_x.ipynb").read_bytes() == first
    assert "Over 3 seeds" in first.decode()
    path = root / "book" / "09_x.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, path)
    capsys.readouterr()
    assert edition.main(["--root", str(root), "--check"]) == 1
    assert "09_x.ipynb" in capsys.readouterr().err
    edition.main(["--root", str(root)])
    (root / "colab" / "old.ipynb").write_text("{}")
    assert edition.main(["--root", str(root), "--check"]) == 1          # an edition without source


def test_committed_edition_up_to_date(built):
    """CI's check: colab/ is what the tool writes from the current notebooks."""
    texts, _ = built
    assert edition.stale(texts, ROOT / "colab") == [], "run `python tools/reading_edition.py`"


# --------------------------------------------------------------------- (5) links into the book

class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids |= {v for k, v in attrs if k == "id" and v}


def test_links_resolve_in_built_book(built):
    html_root = ROOT / "_build" / "html"
    if not (html_root / "book").is_dir():
        pytest.skip("the built book (_build/html/book) is absent: run `make book-stored` first")
    texts, _ = built
    base = edition.base_url(ROOT)
    link = re.compile(r"\[((?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*)\]\(([^()\s]+)\)")
    pages, bad, checked = {}, [], 0
    for name, text in texts.items():
        for cell in markdown_cells(text):
            for m in link.finditer(cell.source):
                label, url = m.groups()
                if not url.startswith(base):
                    continue
                path, _, anchor = url[len(base):].partition("#")
                file = html_root / urlsplit(path).path
                if not file.is_file():
                    bad.append(f"{name}: {url}: no page")
                    continue
                if file not in pages:
                    html = file.read_text(encoding="utf-8")
                    parser = _Ids()
                    parser.feed(html)
                    pages[file] = (parser.ids, html)
                ids, html = pages[file]
                checked += 1
                if anchor and anchor not in ids:
                    bad.append(f"{name}: {url}: no element with id {anchor!r}")
                elif anchor.startswith("equation-") and re.fullmatch(r"\(\d+\)", label):
                    shown = re.search(rf'<span class="eqno">(\(\d+\))<a class="headerlink" '
                                      rf'href="#{re.escape(anchor)}"', html)
                    if not shown or shown.group(1) != label:
                        bad.append(f"{name}: {url}: numbered {label}, the book shows "
                                   f"{shown.group(1) if shown else 'no number'}")
    assert checked > 0
    assert checked == sum(c.source.count(base) for t in texts.values() for c in markdown_cells(t))
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------- helpers

def tiny_book(tmp_path, text, second=None):
    """A repository with one or two chapters (book/09_x.ipynb, book/10_y.ipynb) that glue
    ch9_n = 3, and the real references.bib."""
    root = tmp_path / "repo"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("title: t\nsphinx:\n  config:\n    bibtex_bibfiles: [book/references.bib]\n")
    files = ["book/09_x"] + (["book/10_y"] if second else [])
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   + "".join(f"- file: {f}\n" for f in files))
    (root / "book" / "intro.md").write_text("# Intro\n")
    shutil.copy(ROOT / "book" / "references.bib", root / "book" / "references.bib")
    for page, body in zip(files, (text, second)):
        nb = nbformat.v4.new_notebook()
        glue = nbformat.v4.new_output("display_data", data={
            "application/papermill.record/text/plain": "3"},
            metadata={"scrapbook": {"name": "ch9_n", "mime_prefix": "application/papermill.record/"}})
        code = nbformat.v4.new_code_cell("glue('ch9_n', 3, display=False)", outputs=[glue])
        nb.cells = [nbformat.v4.new_markdown_cell("(ch9-sec)=\n# 9. A chapter\n\n" + body
                                                  if page == "book/09_x" else "# 10. Y\n\n" + body),
                    code]
        for i, cell in enumerate(nb.cells):
            cell.id = f"cell-{i}"
        nbformat.write(nb, root / f"{page}.ipynb")
    return root


def test_glue_from_another_document_reads_that_notebooks_values():
    s = site()
    s.glue["book/02_b"] = {"gap": "0.1234"}
    conv = edition.Converter(s, "book/01_a")
    assert conv.convert("a gap of {glue:text}`02_b.ipynb::gap:+.2f` tokens") == "a gap of +0.12 tokens"
    for bad, words in (("{glue:text}`03_c.ipynb::gap`", "unknown document '03_c.ipynb'"),
                       ("{glue:text}`02_b.ipynb::nope`", "not glued in 02_b.ipynb's stored outputs")):
        with pytest.raises(edition.EditionError, match=words):
            edition.convert_text(s, "book/01_a", bad)
