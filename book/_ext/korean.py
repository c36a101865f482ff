"""The Korean edition (``make book-ko``, built from locales/ko/; CONTRIBUTING.md, "Korean edition").

1. The edition switcher: a link in every page's header, in both editions, to the same page of the
other edition (the English book in ``_build/html/``, the Korean one in ``_build/html/ko/``). The
URL is relative, so it works from ``file://`` and over http, and a click carries the section the
reader is at (the URL's ``#anchor``: the section labels are the same in both editions).

2. Korean search: Sphinx 7.4 has no Korean search language, and its default splits text at spaces,
so a search for 정책 finds no "정책은" (a noun with its particle). ``SearchKorean`` indexes each
Hangul word whole, without its particle (은, 는, 이, 가, 을, 를, 의, 에서, 으로, ...) and as its
two-syllable pieces (so 학습 finds 강화학습); Latin words are indexed as in English.

3. Table cells in the catalogues: the ``{table}`` directive (docutils' ``RSTTable``, which the
chapters' tables use for their captions) has MyST parse its Markdown table into a detached
``nodes.Element()``, and MyST-Parser 3 makes a cell's paragraph without a ``source``
(``render_table_row``), counting on docutils to give a new child the document's: a node outside
the document gets none. Sphinx's gettext skips a node without a source (``is_translatable``), so
only the caption came through, and the Korean build could not translate a cell either (a plain
Markdown table, as in book/notation.md, was fine). ``TableCellSource`` gives those nodes their
table's source and line before Sphinx's i18n transforms run.

4. ``python book/_ext/korean.py overlay BASE OVERLAY OUT``: the Korean build's configuration,
BASE (a jupyter-book _config.yml) with OVERLAY (locales/ko/_config.yml) merged over it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"   # korean.css, the switcher's place in the header

# The other edition of each: its folder relative to this edition's root, and its switcher's text.
EDITIONS = {"en": ("ko/", "한국어", "ko", "이 페이지를 한국어로"),
            "ko": ("../", "English", "en", "This page in English")}

# Particles (조사) and copulas stripped from the end of a Hangul word, longest first.
PARTICLES = sorted("""은 는 이 가 을 를 의 에 로 와 과 도 만 나 란 며 고 께 엔 에서 에게 으로 까지 부터 보다 처럼
마다 이나 이란 이며 이고 라는 라고 이다 하고 에는 에도 와는 과는 로는 으로는 에서는 에서도 에게는 으로서 으로써
이라는 이라고 입니다 이었다 였다 이면 에서의 으로의 로의 와의 과의""".split(), key=len, reverse=True)
HANGUL = re.compile(r"[\uac00-\ud7a3]+")


def hangul_terms(word: str) -> list[str]:
    """What a Hangul word is indexed as: itself, without its particle, and its two-syllable pieces."""
    if not isinstance(word, str):
        raise TypeError(f"word must be a str, got {type(word).__name__}")
    if not HANGUL.fullmatch(word):
        return [word]
    terms = [word]
    stem = next((word[: -len(p)] for p in PARTICLES if word.endswith(p) and len(word) > len(p)), None)
    if stem:
        terms.append(stem)
    terms += [word[i:i + 2] for i in range(len(word) - 1)]
    return list(dict.fromkeys(terms))


def overlay(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged over it: nested mappings merged, anything else replaced."""
    if not isinstance(base, dict) or not isinstance(extra, dict):
        raise TypeError(f"base and extra must be dicts, got {type(base).__name__} and {type(extra).__name__}")
    merged = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = overlay(base[key], value) if nested else value
    return merged


def edition_link(pagename: str, language: str) -> dict:
    """The switcher of page ``pagename`` in the edition of ``language`` ("en" or "ko"): the relative
    URL of the same page in the other edition, its text and its language."""
    if language not in EDITIONS:
        raise ValueError(f"language must be one of {sorted(EDITIONS)}, got {language!r}")
    folder, text, lang, title = EDITIONS[language]
    up = "../" * pagename.count("/")
    return {"href": f"{up}{folder}{pagename}.html", "text": text, "lang": lang, "title": title}


def _search_language():
    from sphinx.search.en import SearchEnglish

    class SearchKorean(SearchEnglish):
        """English stemming for Latin words; Hangul words also without their particle, and in pieces."""
        lang = "ko"
        language_name = "Korean"

        def split(self, input: str) -> list[str]:
            return [term for word in super().split(input) for term in hangul_terms(word)]

    return SearchKorean


def _table_cell_source():
    from docutils import nodes
    from sphinx.transforms import SphinxTransform

    class TableCellSource(SphinxTransform):
        """A table cell's paragraph without a source gets its table's, so that gettext extracts it
        and the Korean build translates it (Sphinx's ``is_translatable`` skips a node without one)."""
        default_priority = 5   # before Sphinx's i18n transforms (Locale: 20)

        def apply(self, **kwargs) -> None:
            for table in self.document.findall(nodes.table):
                for node in table.findall(nodes.TextElement):
                    if node.source is None and not isinstance(node, nodes.Inline):
                        node.source, node.line = table.source, table.line

    return TableCellSource


def _switcher(app, pagename, templatename, context, doctree):
    context["rlnotes_edition"] = edition_link(pagename, "ko" if app.config.language == "ko" else "en")


def _add_template(app, config):
    config.templates_path = [*config.templates_path, str(TEMPLATES)]
    if str(STATIC) not in map(str, config.html_static_path):
        config.html_static_path = [*config.html_static_path, str(STATIC)]
    options = dict(config.html_theme_options or {})
    options.setdefault("article_header_end", ["edition-switcher.html", "article-header-buttons.html"])
    config.html_theme_options = options


def setup(app):
    app.connect("config-inited", _add_template)
    app.connect("html-page-context", _switcher)
    app.add_search_language(_search_language())
    app.add_transform(_table_cell_source())
    app.add_css_file("korean.css")
    return {"parallel_read_safe": True}


def main(argv: list[str]) -> None:
    import yaml

    if len(argv) != 5 or argv[1] != "overlay":
        sys.exit("usage: python book/_ext/korean.py overlay BASE OVERLAY OUT")
    base, extra = (yaml.safe_load(Path(p).read_text()) for p in argv[2:4])
    Path(argv[4]).write_text(yaml.safe_dump(overlay(base, extra), allow_unicode=True, sort_keys=False))


if __name__ == "__main__":
    main(sys.argv)
