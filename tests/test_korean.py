"""The Korean edition: its catalogues (locales/ko/LC_MESSAGES/, one .po file per page), the checks on
each translation, book/_ext/korean.py (the edition switcher, Korean search, the overlay config) and,
once `make book-ko` has built it, the edition in _build/html/ko/. The browser's view of the Korean
pages is in tests/test_browser.py."""

from __future__ import annotations

import html
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

# Babel comes with Sphinx (requirements.txt); `make oldest` has no Sphinx, and skips this file.
read_po = pytest.importorskip("babel.messages.pofile", reason="Babel (a Sphinx dependency) is not installed").read_po

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ROOT / "locales" / "ko" / "LC_MESSAGES"
KO_HTML = ROOT / "_build" / "html" / "ko"
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import korean  # noqa: E402

API = "book/api/"   # API docstrings may stay in English; every other page is prose a reader reads
# book/performance.md stays prose: a page of _toc.yml written for the reader (what each benchmark
# compares, on which machine, what the ratios mean, the tables' rows), not text generated from the
# code like the API pages; only its commands, code spans and numbers stay as they are.


def catalogues() -> dict[str, Path]:
    """{page: its .po file}, e.g. {"book/intro": .../book/intro.po}."""
    return {p.relative_to(LOCALES).with_suffix("").as_posix(): p for p in sorted(LOCALES.rglob("*.po"))}


def entries(path: Path):
    return [m for m in read_po(path.open("rb")) if m.id]


def is_prose(page: str) -> bool:
    return not page.startswith(API)


# ------------------------------------------------------------------------- every entry translated
def test_every_page_has_a_catalogue():
    """Each page of _toc.yml has its .po file (a new page: run `make pot`)."""
    from test_browser import PAGES

    missing = [p for p in PAGES if p not in catalogues()]
    assert not missing, f"pages without a catalogue in locales/ko/LC_MESSAGES/: {missing} (run `make pot`)"


def untranslated_and_fuzzy(path: Path) -> tuple[int, int]:
    messages = entries(path)
    return sum(not m.string for m in messages), sum(bool(m.string) and m.fuzzy for m in messages)


def test_no_prose_entry_is_untranslated_or_fuzzy():
    """Outside the API pages, every entry has a translation that is not fuzzy: an untranslated
    entry, or one whose English changed since (fuzzy), shows in English without a warning."""
    bad = []
    for page, path in catalogues().items():
        if is_prose(page):
            untranslated, fuzzy = untranslated_and_fuzzy(path)
            if untranslated or fuzzy:
                bad.append(f"{path.relative_to(ROOT)}: {untranslated} untranslated, {fuzzy} fuzzy")
    assert not bad, "entries that would show in English in the Korean edition:\n" + "\n".join(bad)


def page_markdown(page: str) -> str:
    """The Markdown of a page: a .md file, or a notebook's Markdown cells."""
    path = ROOT / f"{page}.md"
    if path.exists():
        return path.read_text()
    import json

    cells = json.loads((ROOT / f"{page}.ipynb").read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


FENCE_OR_OPTION = re.compile(r"^(\s*:{3,}.*|:[\w-]+:.*)$", re.M)


def table_cells(markdown: str) -> list[str]:
    """The text of each cell of the page's Markdown tables, as gettext has it (MyST's table rule is
    markdown-it's; the `:::{table}` fence and its options are blanked, so its table parses too)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(FENCE_OR_OPTION.sub("", markdown))
    cells, in_cell = [], False
    for token in tokens:
        if token.type in ("th_open", "td_open"):
            in_cell = True
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        elif in_cell and token.type == "inline" and token.content.strip():
            cells.append(" ".join(token.content.split()))
    return cells


def test_table_cells_found_in_a_hand_made_page():
    page = "Text.\n\n:::{table} A caption.\n:name: t\n\n| | a $x$ | b |\n|---|---|---|\n| 1 | `c` | {ref}`d` |\n:::\n"
    assert table_cells(page) == ["a $x$", "b", "1", "`c`", "{ref}`d`"]


def test_every_table_cell_is_in_its_catalogue():
    """Each cell of a page's Markdown tables (those of a `{table}` directive included: their cells
    had no source, and gettext skipped them: book/_ext/korean.py, TableCellSource) is an entry of
    its page's catalogue, or it would show in English with no test counting it."""
    from test_browser import PAGES

    missing = {}
    for page in PAGES:
        if is_prose(page) and page in catalogues():
            ids = {" ".join(m.id.split()) for m in entries(catalogues()[page])}
            if lost := [cell for cell in table_cells(page_markdown(page)) if cell not in ids]:
                missing[page] = lost
    assert not missing, "table cells not in the catalogues (run `make pot`):\n" + "\n".join(
        f"{page}: {len(cells)} cells, e.g. {cells[0][:70]!r}" for page, cells in missing.items())


# ------------------------------------------------------------------- each translation keeps the markup
ROLE = re.compile(r"\{([\w:+-]+)\}`([^`]*)`")
DIRECTIVE = re.compile(r"^\s*(?:`{3,}|:{3,})\{([\w:-]+)\}", re.M)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$")
CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>")


def _target(role: str, content: str) -> str:
    """What must not change in a role: the label, function, key or glue name, not the link text."""
    content = content.strip()
    explicit = re.fullmatch(r"(?s).*<([^<>]+)>", content)
    if explicit and role not in ("math",):
        content = explicit.group(1)
    if role.startswith("glue"):
        content = content.rpartition("::")[2]   # a translation names the notebook: 01_x.ipynb::key
        content = content.removesuffix(":s")      # "s", the format MyST-NB applies when none is given
    return content


def markup(text: str) -> Counter:
    """The roles (with their targets), directives, maths, code spans and link URLs of a message."""
    found = Counter()
    for role, content in ROLE.findall(text):
        found[("role", role, _target(role, content))] += 1
    text = ROLE.sub(" ", text)
    for name in DIRECTIVE.findall(text):
        found[("directive", name)] += 1
    for _, code in CODE.findall(text):
        found[("code", code.strip())] += 1
    text = CODE.sub(" ", text)
    for tex in DISPLAY_MATH.findall(text):
        found[("math", " ".join(tex.split()))] += 1
    text = DISPLAY_MATH.sub(" ", text)
    for tex in INLINE_MATH.findall(text):
        found[("math", " ".join(tex.split()))] += 1
    text = INLINE_MATH.sub(" ", text)
    for url, auto in LINK.findall(text):
        found[("link", url or auto)] += 1
    return found


BLOCK_START = re.compile(r"^(\d+[.)]\s|[-*+]\s|#{1,6}\s|>\s?)")


def markup_problems(msgid: str, msgstr: str) -> list[str]:
    """How a translation breaks its source: markup lost, added or changed, or more than one paragraph
    (or a list, heading or quote) where the source is one: Sphinx drops such a translation silently."""
    problems = []
    source, translation = markup(msgid), markup(msgstr)
    for item in sorted(source - translation):
        problems.append(f"missing {item[0]}: {' '.join(item[1:])}")
    for item in sorted(translation - source):
        problems.append(f"not in the source {item[0]}: {' '.join(item[1:])}")
    for role, content in ROLE.findall(msgstr):
        if role.startswith("glue") and "::" not in content:
            problems.append(f"glue without its notebook: write {{{role}}}`<notebook>.ipynb::{content}`")
        elif role == "glue:text" and ":" not in content.rpartition("::")[2]:
            # MyST-NB splits the format at the last colon, so 01_x.ipynb::key reads as key "01_x.ipynb:"
            problems.append(f"glue:text without a format after its notebook: write {{{role}}}`{content}:s`")
    if "\n\n" in msgstr.strip() and "\n\n" not in msgid.strip():
        problems.append("a blank line: the translation must stay one paragraph")
    if BLOCK_START.match(msgstr.lstrip()) and not BLOCK_START.match(msgid.lstrip()):
        problems.append(f"starts as a list, heading or quote ({msgstr.lstrip()[:4]!r}): escape it, e.g. 3\\.")
    return problems


@pytest.mark.parametrize("msgid, msgstr, ok", [
    ("The ratio $r_t(\\theta)$ and $L^{CLIP}$", "확률비 $r_t(\\theta)$와 $L^{CLIP}$", True),
    ("See {ref}`the clip <ch3-clip>` and {py:func}`rlnotes.ppo.ppo_loss`.",
     "{ref}`클리핑 <ch3-clip>`과 {py:func}`rlnotes.ppo.ppo_loss`를 보세요.", True),
    ("$J$ climbs to {glue:text}`ch1_J:.2f`.", "$J$는 {glue:text}`01_policy_gradient.ipynb::ch1_J:.2f`까지 오릅니다.", True),
    ("Call `ppo.train` ([docs](https://x.org/a)).", "`ppo.train`을 호출합니다([문서](https://x.org/a)).", True),
    ("3. PPO", "3\\. PPO", True),
    ("The ratio $r_t(\\theta)$", "확률비 $r_t$", False),                        # maths changed
    ("See {ref}`the clip <ch3-clip>`.", "{ref}`클리핑 <ch3-eps>`을 보세요.", False),   # another label
    ("See {ref}`the clip <ch3-clip>`.", "클리핑을 보세요.", False),                # role dropped
    ("$J$ climbs to {glue:text}`ch1_J:.2f`.", "$J$는 {glue:text}`x.ipynb::ch1_J0:.2f`까지 오릅니다.", False),
    ("$J$ climbs to {glue:text}`ch1_J:.2f`.", "$J$는 {glue:text}`ch1_J:.2f`까지 오릅니다.", False),   # no notebook
    ("Over {glue:text}`ch1_n` seeds.", "{glue:text}`01_x.ipynb::ch1_n:s`개 시드에서.", True),
    ("Over {glue:text}`ch1_n` seeds.", "{glue:text}`01_x.ipynb::ch1_n`개 시드에서.", False),  # the build's key: "01_x.ipynb:"
    ("Call `ppo.train`.", "ppo.train을 호출합니다.", False),                     # code span lost
    ("A [link](https://x.org/a).", "[링크](https://x.org/b).", False),
    ("3. PPO", "3. PPO", True),   # the same as the source: a list in both (not this check's business)
    ("Chapter 3. PPO", "3. PPO 장", False),                                      # becomes a list
    ("One paragraph.", "첫 문단.\n\n둘째 문단.", False),
    ("Cited {cite:p}`schulman2017proximal`.", "{cite:p}`schulman2015trust`에서 인용.", False),
])
def test_markup_check_on_hand_made_entries(msgid, msgstr, ok):
    assert (markup_problems(msgid, msgstr) == []) == ok, markup_problems(msgid, msgstr)


def test_every_translation_keeps_its_sources_markup():
    """Each translated entry keeps the roles (labels, functions, citations, glue names: written
    `01_x.ipynb::key` in a translation, which the build needs), maths, code spans and links of its
    msgid, and stays one paragraph."""
    bad = []
    for page, path in catalogues().items():
        for m in entries(path):
            if m.string and not m.fuzzy:
                bad += [f"{path.relative_to(ROOT)}: {m.id[:60]!r}: {p}" for p in markup_problems(m.id, m.string)]
    assert not bad, "\n".join(bad)


def test_at_least_one_entry_is_translated():
    """The pipeline is proved end to end on the intro page (tests below find it in the built page)."""
    assert sum(bool(m.string) for m in entries(catalogues()["book/intro"])) >= 5


# ----------------------------------------------------------------------------- book/_ext/korean.py
def test_hangul_terms_strip_the_particle_and_index_pieces():
    assert korean.hangul_terms("정책은") == ["정책은", "정책", "책은"]
    assert "학습" in korean.hangul_terms("강화학습") and "강화학습" in korean.hangul_terms("강화학습")
    assert "보상" in korean.hangul_terms("보상에서")
    assert korean.hangul_terms("은") == ["은"] and korean.hangul_terms("policy") == ["policy"]
    with pytest.raises(TypeError, match="word must be a str, got int"):
        korean.hangul_terms(3)


def test_korean_search_language_finds_a_noun_without_its_particle():
    words = korean._search_language()(None).split("정책은 보상 모델을 따라 policies")
    assert {"정책은", "정책", "모델", "보상", "policies"} <= set(words)


def test_edition_link_points_at_the_same_page_of_the_other_edition():
    assert korean.edition_link("book/03_ppo", "en") == {
        "href": "../ko/book/03_ppo.html", "text": "한국어", "lang": "ko", "title": "이 페이지를 한국어로"}
    assert korean.edition_link("book/api/ppo", "ko")["href"] == "../../../book/api/ppo.html"
    assert korean.edition_link("index", "en")["href"] == "ko/index.html"
    with pytest.raises(ValueError, match=r"language must be one of \['en', 'ko'\], got 'fr'"):
        korean.edition_link("index", "fr")


def test_overlay_merges_nested_settings():
    base = {"title": "RL", "sphinx": {"config": {"a": 1}, "x": [1]}, "html": {"baseurl": "u"}}
    extra = yaml.safe_load((ROOT / "locales" / "ko" / "_config.yml").read_text())
    merged = korean.overlay(base, extra)
    assert merged["sphinx"]["config"] == {"a": 1, **extra["sphinx"]["config"]} and merged["sphinx"]["x"] == [1]
    assert merged["sphinx"]["config"]["language"] == "ko"
    assert merged["html"]["baseurl"].endswith("/ko/") and merged["title"] != "RL"
    assert base["sphinx"]["config"] == {"a": 1}   # not modified
    with pytest.raises(TypeError, match="base and extra must be dicts, got list and dict"):
        korean.overlay([], {})


def test_table_cell_source_gives_a_cell_its_tables_source():
    from docutils import nodes
    from docutils.utils import new_document
    from sphinx.util.nodes import is_translatable

    document = new_document("x.ipynb")
    cell = nodes.paragraph("a cell", "a cell")
    table = nodes.table("", nodes.tgroup("", nodes.tbody("", nodes.row("", nodes.entry("", cell)))))
    table.source, table.line = "book/x.ipynb", 7
    document += table
    assert cell.source is None and not is_translatable(cell)
    korean._table_cell_source()(document).apply()
    assert (cell.source, cell.line) == ("book/x.ipynb", 7) and is_translatable(cell)


# ------------------------------------------------------------------------ the built Korean edition
def built(page: str) -> Path:
    if not (KO_HTML / "index.html").exists():
        pytest.skip("no Korean edition in _build/html/ko: run `make book-ko` (or `make book-stored`)")
    if max(p.stat().st_mtime for p in catalogues().values()) > (KO_HTML / "index.html").stat().st_mtime:
        pytest.skip("the Korean edition in _build/html/ko is older than locales/ko: run `make book-ko`")
    return KO_HTML / f"{page}.html"


def page_text(path: Path) -> str:
    body = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", path.read_text())
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_built_edition_has_every_page_in_korean():
    from test_browser import PAGES

    missing = [p for p in PAGES if not built(p).exists()]
    assert not missing, f"pages missing from _build/html/ko: {missing}"
    not_korean = [p for p in PAGES if '<html lang="ko"' not in built(p).read_text()]
    assert not not_korean, f"pages not marked lang=ko: {not_korean}"


def fragment(msgstr: str) -> str:
    """The longest run of plain text of a translation, as the built page shows it."""
    text = ROLE.sub("|", msgstr)
    text = DISPLAY_MATH.sub("|", INLINE_MATH.sub("|", CODE.sub("|", text)))
    text = re.sub(r"\]\([^)]*\)", "|", text).replace("\\", "")
    runs = [" ".join(r.split()) for r in re.split(r"[|*_\[\]()\"{}<>]", text)]
    return max(runs, key=len)


def test_built_pages_show_every_translation():
    """Sphinx drops a translation it cannot use (not one paragraph, inconsistent references) without
    failing: each translated entry's text must be in its page of the built Korean edition."""
    dropped = []
    for page, path in catalogues().items():
        shown = page_text(built(page)) if built(page).exists() else ""
        for m in entries(path):
            copied = m.string == m.id      # maths, numbers or names: the same in both editions
            if m.string and not copied and not m.fuzzy and (piece := fragment(m.string)) and piece not in shown:
                dropped.append(f"{page}: {piece!r}")
    assert not dropped, "translations not in the built Korean pages:\n" + "\n".join(dropped)


def test_built_switcher_links_resolve():
    from test_browser import PAGES

    bad = []
    for page in PAGES:
        source = built(page)
        for href in re.findall(r'class="btn btn-sm rlnotes-edition" href="([^"]+)"', source.read_text()):
            if (source.parent / href).resolve() != (ROOT / "_build" / "html" / f"{page}.html").resolve():
                bad.append(f"{page}: {href}")
        if "rlnotes-edition" not in source.read_text():
            bad.append(f"{page}: no switcher")
    assert not bad, bad
