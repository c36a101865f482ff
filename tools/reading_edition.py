"""Generate the reading edition of the chapters (colab/*.ipynb) from book/*.ipynb.

    python tools/reading_edition.py            # write colab/ (same file names as book/)
    python tools/reading_edition.py --check    # exit 1, listing the editions that are out of date

The source notebooks stay the one source. The edition is for Colab and other viewers that render
plain CommonMark, where MyST's roles and directives would show as source:

- ``{glue:text}`name:fmt``` becomes the glued value from the notebook's stored outputs, formatted
  exactly as MyST-NB's ``glue:text`` role formats it (the numbers of the book's stored run);
- ``{ref}``, ``{eq}`` and ``{py:func}`` (``meth``, ``class``, ``mod``) become links to the rendered
  book's page and anchor; ``{cite}`` (``cite:p``, ``cite:t``) becomes author-year text linked to the
  bibliography;
- ``:::{table}`` becomes its caption in bold above the table; admonitions and notes become block
  quotes with a bold title; ``(label)=`` lines go; ``$$ ... $$ (label)`` keeps its equation, tagged
  with the number the book gives it;
- code cells and their outputs (the set-up cell among them) are copied unchanged, and a first
  markdown cell says what the notebook is and links to the rendered page;
- a code cell whose metadata carries a figure caption (``"mystnb": {"figure": {"caption": ...}}``,
  which the book renders under the cell's figure or widget and Jupyter and Colab ignore) is followed
  by a markdown cell ``*Figure: <caption>*``, the caption's roles converted as in the markdown cells;
  a {ref} to the figure's ``name`` links to it in the rendered book.

Anything MyST left after the conversion, or a glue name the notebook does not store, is an error
naming the notebook. The book's address is ``html.baseurl`` in _config.yml (DEFAULT_BASE if unset).
"""
from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml
from docutils.nodes import make_id

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "https://rlnotes.github.io/rlnotes/"
OUT_DIR = "colab"
HEADER_ID = "reading-edition"
GLUE_PREFIX = "application/papermill.record/"
CAPTION_ID_SUFFIX = "-caption"   # the id of a caption cell: the id of its code cell + this

PY_ROLES = {"py:func", "py:meth", "py:class", "py:mod", "py:obj", "py:attr", "py:data", "py:exc"}
CITE_ROLES = {"cite", "cite:p", "cite:t", "cite:ps", "cite:ts"}
ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger",
               "error", "seealso"}

ROLE_RE = re.compile(r"\{([A-Za-z][\w:.-]*)\}`([^`]+)`")
LABEL_LINE_RE = re.compile(r"^[ \t]*\(([^()\s]+)\)=[ \t]*$")
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
DIRECTIVE_OPEN_RE = re.compile(r"^([ \t]*)(:{3,}|`{3,}|~{3,})[ \t]*\{([\w:.-]+)\}[ \t]*(.*?)[ \t]*$")
CODE_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")
OPTION_RE = re.compile(r"^[ \t]*:([\w-]+):[ \t]*(.*)$")
EXPLICIT_TITLE_RE = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
# What must not be left in the edition: roles, labels, directive fences, labelled equations.
LEFTOVER_RES = {
    "role": re.compile(r"\{[A-Za-z][\w:.-]*\}`"),
    "label line": re.compile(r"^[ \t>]*\([^()\s]+\)=[ \t]*$", re.M),
    "directive fence": re.compile(r"^[ \t>]*(:{3,}|`{3,}|~{3,})[ \t]*\{", re.M),
    "equation label": re.compile(r"\$\$[ \t]*\([^()\s]+\)[ \t]*$", re.M),
}


class EditionError(Exception):
    """A source construct the edition cannot convert (the message names notebook and construct)."""


# ----------------------------------------------------------------------------------- glue values

def format_plain_text(text: str, fmt_spec: str) -> str:
    """MyST-NB's formatting of a glued text/plain value (myst_nb.core.variables.format_plain_text)."""
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if fmt_spec == "":
        return str(value)
    type_char = fmt_spec[-1]
    if type_char == "s":
        value = str(value)
    elif type_char in ("b", "c", "d", "o", "x", "X"):
        value = int(value)
    elif type_char in ("e", "E", "f", "F", "g", "G", "n", "%"):
        value = float(value)
    return format(value, fmt_spec)


def glue_values(nb) -> dict[str, str]:
    """Name -> the stored text/plain repr of every value glued in the notebook (the last one wins,
    as in MyST-NB)."""
    values = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            prefix = meta.get("mime_prefix", "")
            data = {k[len(prefix):]: v for k, v in out.get("data", {}).items() if k.startswith(prefix)}
            if "text/plain" in data:
                text = data["text/plain"]
                values[meta["name"]] = "".join(text) if isinstance(text, list) else text
    return values


# -------------------------------------------------------------------------- the book's structure

@dataclass
class Label:
    page: str            # "book/01_policy_gradient"
    anchor: str          # the element id on the rendered page
    title: str | None    # the section title (or table caption) a bare {ref} shows, as Markdown


@dataclass
class Site:
    base: str
    labels: dict[str, Label] = field(default_factory=dict)
    equations: dict[str, tuple[str, int]] = field(default_factory=dict)   # label -> (page, number)
    modules: dict[str, str] = field(default_factory=dict)                 # rlnotes.pg -> api page
    bib: dict[str, tuple[list[str], str]] = field(default_factory=dict)   # key -> (last names, year)
    glue: dict[str, dict[str, str]] = field(default_factory=dict)         # page -> glue values

    def url(self, page: str, anchor: str | None = None) -> str:
        return f"{self.base}{page}.html" + (f"#{anchor}" if anchor else "")


def base_url(root: Path = ROOT) -> str:
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    base = ((config.get("html") or {}).get("baseurl") or DEFAULT_BASE).strip()
    return base if base.endswith("/") else base + "/"


def toc_pages(root: Path) -> list[str]:
    """The pages in the order Sphinx walks them (root first, then the _toc.yml entries, depth first)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return [str(Path(p).with_suffix("")) for p in pages]


def page_markdown(root: Path, page: str) -> list[str]:
    """The markdown of a page: its markdown cells, or the file's text (front matter dropped)."""
    ipynb, md = root / f"{page}.ipynb", root / f"{page}.md"
    if ipynb.exists():
        nb = nbformat.read(ipynb, as_version=4)
        return [c.source for c in nb.cells if c.cell_type == "markdown"]
    if md.exists():
        text = md.read_text(encoding="utf-8")
        if text.startswith("---\n"):
            end = text.find("\n---\n", 4)
            text = text[end + 5:] if end > 0 else text
        return [text]
    return []


def figure_options(cell) -> dict:
    """A code cell's MyST-NB figure options (``metadata.mystnb.figure``), or {}."""
    if cell.get("cell_type") != "code":
        return {}
    figure = ((cell.get("metadata") or {}).get("mystnb") or {}).get("figure")
    return figure if isinstance(figure, dict) else {}


def outside_code(lines: list[str]):
    """Yield (index, line) of the lines not inside a plain fenced code block (directive fences,
    whose content MyST parses, are not code)."""
    def closes(fence: str, line: str) -> bool:
        return re.match(rf"^[ \t>]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", line) is not None

    fence, directives = None, []
    for i, line in enumerate(lines):
        if fence:
            if closes(fence, line):
                fence = None
            continue
        if directives and closes(directives[-1], line):
            directives.pop()
            yield i, line
            continue
        d = DIRECTIVE_OPEN_RE.match(line)
        if d:
            directives.append(d.group(2))
            yield i, line
            continue
        m = CODE_FENCE_RE.match(line)
        if m:
            fence = m.group(1)
            continue
        yield i, line


def math_blocks(text: str):
    """(start, end, content, label) of each $$ display-math block; end is past the label."""
    pos = 0
    opening = re.compile(r"^[ \t>]*\$\$", re.M)
    label_re = re.compile(r"[ \t]*\(([^()\s]+)\)[ \t]*$", re.M)
    while m := opening.search(text, pos):
        close = text.find("$$", m.end())
        if close < 0:
            return
        end = close + 2
        lab = label_re.match(text, end)
        label = None
        if lab:
            label, end = lab.group(1), lab.end()
        yield m.start(), end, text[m.end():close], label
        pos = end


def load_site(root: Path = ROOT) -> Site:
    site = Site(base=base_url(root))
    pages = toc_pages(root)
    others = sorted({str(p.relative_to(root).with_suffix(""))
                     for ext in ("md", "ipynb") for p in (root / "book").rglob(f"*.{ext}")
                     if "_ext" not in p.parts and ".ipynb_checkpoints" not in p.parts})
    pages += [p for p in others if p not in pages]
    number = 0   # numfig: Sphinx numbers labelled equations through the whole (unnumbered) toc
    for page in pages:
        chunks = page_markdown(root, page)
        if (root / f"{page}.ipynb").exists():
            nb = nbformat.read(root / f"{page}.ipynb", as_version=4)
            site.glue[page] = glue_values(nb)
            for cell in nb.cells:             # a figure's name is a target, its caption the {ref} text
                figure = figure_options(cell)
                if figure.get("name"):
                    name = str(figure["name"]).strip()
                    site.labels[name] = Label(page, make_id(name), figure.get("caption") or None)
        for chunk in chunks:
            for _, _, _, label in math_blocks(chunk):
                if label:
                    number += 1
                    site.equations[label] = (page, number)
        lines = "\n\n".join(chunks).split("\n")
        kept = list(outside_code(lines))
        for k, (i, line) in enumerate(kept):
            m = LABEL_LINE_RE.match(line)
            if m:
                title = None
                for _, nxt in kept[k + 1:]:
                    if not nxt.strip() or LABEL_LINE_RE.match(nxt):
                        continue
                    h = HEADING_RE.match(nxt)
                    title = h.group(2) if h else None
                    break
                site.labels[m.group(1)] = Label(page, make_id(m.group(1)), title)
            d = DIRECTIVE_OPEN_RE.match(line)
            if d:
                for _, opt in kept[k + 1:]:
                    o = OPTION_RE.match(opt)
                    if not o:
                        break
                    if o.group(1) == "name":
                        caption = d.group(4) if d.group(3) in ("table", "figure") else None
                        site.labels[o.group(2).strip()] = Label(page, make_id(o.group(2).strip()),
                                                                caption or None)
            for am in re.finditer(r"\.\. automodule::\s*(\S+)", line):
                site.modules[am.group(1)] = page
    site.bib = read_bib(root)
    return site


def read_bib(root: Path) -> dict[str, tuple[list[str], str]]:
    import codecs

    import latexcodec  # noqa: F401  (registers the "ulatex" codec; pybtex depends on it)
    from pybtex.database import parse_file

    bib = {}
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    files = ((config.get("sphinx") or {}).get("config") or {}).get("bibtex_bibfiles") or ["book/references.bib"]
    for name in files:
        data = parse_file(str(root / name), bib_format="bibtex")
        for key, entry in data.entries.items():
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = []
            for person in people:
                last = codecs.decode(" ".join(person.last_names), "ulatex")
                names.append(last.replace("{", "").replace("}", ""))
            bib[key] = (names, entry.fields.get("year", "n.d."))
    return bib


# --------------------------------------------------------------------------------- conversion

@dataclass
class Counts:
    glue: int = 0
    ref: int = 0
    eq: int = 0
    py: int = 0
    cite: int = 0
    directives: int = 0
    labels: int = 0
    equation_labels: int = 0

    def add(self, other: "Counts"):
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


class Converter:
    """Converts the markdown of one page of the book (``page``, e.g. "book/01_policy_gradient")."""

    def __init__(self, site: Site, page: str, glue: dict[str, str] | None = None):
        self.site, self.page = site, page
        self.glue = site.glue.get(page, {}) if glue is None else glue
        self.counts = Counts()
        self.glue_used: set[str] = set()
        self.errors: list[str] = []

    def error(self, message: str, source: str = ""):
        """Note an error (raised together, per notebook, by ``edition``) and keep the source."""
        self.errors.append(f"{self.page}: {message}")
        return source

    # ---------------------------------------------------------------- blocks
    def convert(self, text: str) -> str:
        text = self.blocks(text)
        text = self.equations(text)
        text = self.inline(text)
        return text

    def blocks(self, text: str) -> str:
        lines = text.split("\n")
        code = set(range(len(lines))) - {i for i, _ in outside_code(lines)}
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if i in code:
                out.append(line)
                i += 1
                continue
            if LABEL_LINE_RE.match(line):
                self.counts.labels += 1
                i += 1
                # drop the blank line a removed label leaves at the start of a cell
                if not out and i < len(lines) and not lines[i].strip():
                    i += 1
                continue
            d = DIRECTIVE_OPEN_RE.match(line)
            if d:
                indent, fence, name, arg = d.groups()
                close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
                j = i + 1
                depth = 0
                while j < len(lines):
                    inner = DIRECTIVE_OPEN_RE.match(lines[j])
                    if inner and inner.group(2)[0] == fence[0] and len(inner.group(2)) >= len(fence):
                        depth += 1
                    elif close.match(lines[j]):
                        if depth == 0:
                            break
                        depth -= 1
                    j += 1
                if j == len(lines):
                    raise EditionError(f"{self.page}: unclosed directive {{{name}}} on line {i + 1}")
                body = lines[i + 1:j]
                options = {}
                while body and OPTION_RE.match(body[0]):
                    o = OPTION_RE.match(body[0])
                    options[o.group(1)] = o.group(2)
                    body = body[1:]
                out.extend(self.directive(name, arg, options, "\n".join(body)).split("\n"))
                self.counts.directives += 1
                i = j + 1
                continue
            out.append(line)
            i += 1
        return "\n".join(out)

    def directive(self, name: str, arg: str, options: dict, body: str) -> str:
        body = self.blocks(body).strip("\n")
        if name == "table":
            return (f"**{arg}**\n\n" if arg else "") + body
        if name == "admonition" or name in ADMONITIONS:
            title = arg if name == "admonition" else (
                "See also" if name == "seealso" else name.capitalize())
            if name != "admonition" and arg:
                body = arg + ("\n" + body if body else "")
            quoted = [f"> **{title}**", ">"] + [f"> {ln}" if ln.strip() else ">" for ln in body.split("\n")]
            return "\n".join(quoted)
        raise EditionError(f"{self.page}: no plain-Markdown form for the directive {{{name}}}")

    def equations(self, text: str) -> str:
        pieces, pos = [], 0
        for start, end, content, label in math_blocks(text):
            if not label:
                continue
            if label not in self.site.equations:
                self.error(f"the equation label {label!r} is not known to the book")
                continue
            page, number = self.site.equations[label]
            self.counts.equation_labels += 1
            opening = text[start:text.index("$$", start)]   # indentation or a block quote's "> "
            body = content.rstrip()
            sep = "\n" + opening if "\n" in body else " "
            pieces += [text[pos:start], f"{opening}$${body}{sep}\\tag{{{number}}}"
                       + ("\n" + opening if "\n" in body else " ") + "$$"]
            pos = end
        return "".join(pieces) + text[pos:]

    # ---------------------------------------------------------------- inline roles
    def inline(self, text: str) -> str:
        lines = text.split("\n")
        code = set(range(len(lines))) - {i for i, _ in outside_code(lines)}
        return "\n".join(ln if i in code else ROLE_RE.sub(self.role, ln) for i, ln in enumerate(lines))

    def role(self, m: re.Match) -> str:
        errors = len(self.errors)
        out = self.role_text(m.group(1), m.group(2))
        return m.group(0) if len(self.errors) > errors or out is None else out

    def role_text(self, name: str, content: str) -> str | None:
        if name == "glue:text":
            return self.glue_text(content)
        if name == "ref":
            return self.ref(content)
        if name == "eq":
            return self.eq(content)
        if name in PY_ROLES:
            return self.py(name, content)
        if name in CITE_ROLES:
            return self.cite(name, content)
        return self.error(f"no plain-Markdown form for the role {{{name}}}`{content}`")

    def glue_text(self, content: str) -> str:
        glue, where, doc = self.glue, "the notebook's", None
        if "::" in content:       # another document's value: "06_beyond.ipynb::key:fmt", beside this page
            doc, content = content.split("::", 1)
            page = str(Path(self.page).parent / Path(doc).with_suffix(""))
            if page not in self.site.glue:
                return self.error(f"glue from an unknown document {doc!r}")
            glue, where = self.site.glue[page], f"{doc}'s"
        key_fmt = content.rsplit(":", 1)
        key, fmt = (key_fmt[0], key_fmt[1]) if len(key_fmt) == 2 else (key_fmt[0], "s")
        if key not in glue:
            return self.error(f"the glue name {key!r} is not glued in {where} stored outputs")
        self.counts.glue += 1
        self.glue_used.add(key if doc is None else f"{doc}::{key}")
        try:
            return format_plain_text(glue[key], fmt)
        except (ValueError, TypeError) as exc:
            return self.error(f"glue {key!r} ({glue[key]!r}) does not format with {fmt!r}: {exc}")

    @staticmethod
    def split_title(content: str) -> tuple[str | None, str]:
        m = EXPLICIT_TITLE_RE.match(content)
        return (m.group(1), m.group(2).strip()) if m and m.group(1) else (None, content.strip())

    def ref(self, content: str) -> str:
        text, label = self.split_title(content)
        target = self.site.labels.get(label)
        if target is None:
            return self.error(f"{{ref}} to an unknown label {label!r}")
        if text is None:
            if target.title is None:
                return self.error(f"{{ref}}`{label}` needs a text: the label precedes no section title")
            text = self.plain_title(target)
        self.counts.ref += 1
        return f"[{escape_link_text(text)}]({self.site.url(target.page, target.anchor)})"

    def plain_title(self, target: Label) -> str:
        """A section title as link text: its roles rendered, links dropped."""
        sub = Converter(self.site, target.page)
        title = sub.inline(target.title)
        self.errors += sub.errors
        return re.sub(r"\[((?:[^\[\]\\]|\\.)*)\]\([^()\s]*\)", r"\1", title)

    def eq(self, content: str) -> str:
        text, label = self.split_title(content)
        if label not in self.site.equations:
            return self.error(f"{{eq}} to an unknown equation label {label!r}")
        page, number = self.site.equations[label]
        self.counts.eq += 1
        return f"[{text or f'({number})'}]({self.site.url(page, make_id('equation-' + label))})"

    def py(self, role: str, content: str) -> str:
        text, target = self.split_title(content)
        if text is None:
            target = target.lstrip(".")
            text = target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target
            target = target.lstrip("~")
            if role in ("py:func", "py:meth") and not text.endswith("()"):
                text += "()"
        module = max((mod for mod in self.site.modules if target == mod or target.startswith(mod + ".")),
                     key=len, default=None)
        if module is None:
            return self.error(f"{{{role}}}`{content}`: no API page documents {target!r}")
        anchor = f"module-{target}" if role == "py:mod" else target
        self.counts.py += 1
        return f"[`{text}`]({self.site.url(self.site.modules[module], anchor)})"

    def cite(self, role: str, content: str) -> str:
        keys = [k.strip() for k in content.split(",") if k.strip()]
        parts = []
        for key in keys:
            if key not in self.site.bib:
                return self.error(f"{{{role}}} of an unknown key {key!r} (book/references.bib)")
            names, year = self.site.bib[key]
            if len(names) > 2 or names[-1:] == ["others"]:
                author = f"{names[0]} et al."
            else:
                author = " and ".join(names) or key
            parts.append((author, year))
        self.counts.cite += 1
        url = self.site.url("book/bibliography")
        if role.startswith("cite:t"):
            return ", ".join(f"[{a} ({y})]({url})" for a, y in parts)
        return "(" + "; ".join(f"[{a}, {y}]({url})" for a, y in parts) + ")"


def convert_text(site: Site, page: str, text: str, glue: dict[str, str] | None = None) -> str:
    """One markdown text of ``page`` converted; an EditionError lists what would not convert."""
    conv = Converter(site, page, glue)
    out = conv.convert(text)
    if conv.errors:
        raise EditionError("\n".join(conv.errors))
    return out


def escape_link_text(text: str) -> str:
    """Link text as CommonMark reads it: balanced brackets (as in ``$\\mathrm{KL}[p\\|q]$``) may
    stay; unbalanced ones are escaped."""
    depth = 0
    for ch in re.sub(r"\\.", "", text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth == 0:
        return text
    return re.sub(r"(?<!\\)([\[\]])", r"\\\1", text)


def leftovers(text: str) -> list[str]:
    """The MyST constructs left in a converted text (code blocks excluded)."""
    lines = text.split("\n")
    plain = "\n".join(ln for _, ln in outside_code(lines))
    found = []
    for kind, rx in LEFTOVER_RES.items():
        found += [f"{kind}: {m.group(0).strip()!r}" for m in rx.finditer(plain)]
    return found


# ------------------------------------------------------------------------------- notebooks

def page_title(nb) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.split("\n"):
                h = HEADING_RE.match(line)
                if h and len(h.group(1)) == 1:
                    return h.group(2)
    return None


def edition(site: Site, source: Path, root: Path = ROOT) -> tuple[str, Counts, set[str]]:
    """The reading edition of one source notebook, as the text to write; its counts and the glue
    names it used."""
    page = str(source.relative_to(root).with_suffix(""))
    nb = nbformat.read(source, as_version=4)
    conv = Converter(site, page)
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type == "markdown":
            cell.source = conv.convert(cell.source)
            left = leftovers(cell.source)
            if left and not conv.errors:
                conv.errors.append(f"{page}: MyST left after conversion: {', '.join(left)}")
    cells = []
    for cell in out.cells:
        cells.append(cell)
        caption = str(figure_options(cell).get("caption") or "").strip()
        if caption:
            text = conv.convert(" ".join(caption.split()))
            left = leftovers(text)
            if left and not conv.errors:
                conv.errors.append(f"{page}: MyST left in the caption of cell {cell.get('id')}: {', '.join(left)}")
            caption_cell = nbformat.v4.new_markdown_cell(f"*Figure: {text}*")
            caption_cell.id = f"{cell.get('id', 'figure')}{CAPTION_ID_SUFFIX}"
            cells.append(caption_cell)
    out.cells = cells
    title = page_title(nb)
    title = conv.plain_title(Label(page, "", title)) if title else page
    if conv.errors:
        raise EditionError("\n".join(conv.errors))
    rel = source.relative_to(root).as_posix()
    header = nbformat.v4.new_markdown_cell(
        f"*This is the reading edition of [{escape_link_text(title)}]({site.url(page)}), for Colab and "
        f"other plain-Markdown viewers, generated from `{rel}` by `tools/reading_edition.py`. "
        "The numbers quoted in the text are those of the book's stored run (the outputs saved in "
        f"`{rel}`); running the cells computes them again. Cross-references, equation numbers, "
        "citations and API names link to the rendered book.*")
    header.id = HEADER_ID
    out.cells.insert(0, header)
    nbformat.validate(out)
    text = nbformat.writes(out)
    return (text if text.endswith("\n") else text + "\n"), conv.counts, conv.glue_used


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "book").glob("*.ipynb"))


def build(root: Path = ROOT) -> tuple[dict[str, str], Counts]:
    """File name -> edition text for every source notebook, and the totals."""
    site = load_site(root)
    texts, total, errors = {}, Counts(), []
    for source in sources(root):
        try:
            text, counts, _ = edition(site, source, root)
        except EditionError as exc:
            errors.append(str(exc))
            continue
        texts[source.name] = text
        total.add(counts)
    if errors:
        raise EditionError("\n".join(errors))
    return texts, total


def stale(texts: dict[str, str], out_dir: Path) -> list[str]:
    """The editions in out_dir that differ from what would be written (or are missing or orphaned)."""
    names = [n for n, t in texts.items()
             if not (out_dir / n).exists() or (out_dir / n).read_bytes() != t.encode("utf-8")]
    names += sorted(p.name + " (no source)" for p in out_dir.glob("*.ipynb") if p.name not in texts)
    return names


def main(argv=None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if an edition is out of date with its source notebook")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {OUT_DIR}/)")
    parser.add_argument("--root", type=Path, default=root, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    out_dir = args.out or root / OUT_DIR
    try:
        texts, total = build(root)
    except EditionError as exc:
        print(f"reading edition: not written, the sources do not convert:\n{exc}", file=sys.stderr)
        return 2
    if args.check:
        old = stale(texts, out_dir)
        if old:
            print(f"{out_dir}: out of date with book/ (run `python tools/reading_edition.py`): "
                  + ", ".join(old), file=sys.stderr)
            return 1
        print(f"{out_dir}: {len(texts)} editions up to date")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = out_dir / name
        if not path.exists() or path.read_bytes() != text.encode("utf-8"):
            path.write_bytes(text.encode("utf-8"))
    for orphan in out_dir.glob("*.ipynb"):
        if orphan.name not in texts:
            orphan.unlink()
    print(f"{out_dir}: {len(texts)} editions; " + ", ".join(f"{k} {v}" for k, v in vars(total).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
