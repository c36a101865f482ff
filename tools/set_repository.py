"""Publish under another repository: rewrite its URL (and the release tag) wherever they appear.

    .venv/bin/python tools/set_repository.py https://github.com/OWNER/NAME [--tag vX.Y.Z]

``_config.yml`` (``repository.url``, ``repository.release_tag``) is the one place the URL and the
tag are declared; this script writes a new pair there and into the copies that cannot read it:
the README and every notebook's set-up cell (its first code cell). ``tests/test_release.py``
fails when any copy differs from ``_config.yml``. The tag must be ``v`` + ``rlnotes.__version__``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+$")


def current(root: Path = ROOT) -> tuple[str, str]:
    text = (root / "_config.yml").read_text()
    url = re.search(r"^  url: (\S+)", text, re.M).group(1)
    tag = re.search(r"^  release_tag: (\S+)", text, re.M).group(1)
    return url, tag


def rewrite(root: Path, url: str, tag: str) -> list[str]:
    """Replace the configured URL and tag by ``url`` and ``tag``; return the files changed."""
    if not URL.match(url):
        raise ValueError(f"url must look like https://github.com/OWNER/NAME, got {url!r}")
    if not re.fullmatch(r"v\d+(\.\d+)*", tag):
        raise ValueError(f"tag must look like v0.1.0, got {tag!r}")
    old_url, old_tag = current(root)
    old_path, new_path = old_url.removeprefix("https://github.com/"), url.removeprefix("https://github.com/")
    changed = []

    config = root / "_config.yml"
    text = config.read_text()
    new = text.replace(f"  url: {old_url}\n", f"  url: {url}\n").replace(
        f"  release_tag: {old_tag}", f"  release_tag: {tag}")
    if new != text:
        config.write_text(new)
        changed.append("_config.yml")

    readme = root / "README.md"
    text = readme.read_text()
    new = text.replace(old_url, url).replace(f"github/{old_path}/", f"github/{new_path}/")
    if new != text:
        readme.write_text(new)
        changed.append("README.md")

    for notebook in sorted((root / "book").glob("*.ipynb")):
        nb = json.loads(notebook.read_text())
        cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
        src = "".join(cell["source"])
        new = src.replace(f"git+{old_url}@{old_tag}", f"git+{url}@{tag}")
        new = new.replace(f'check_version("{old_tag[1:]}")', f'check_version("{tag[1:]}")')
        if new != src:
            cell["source"] = new.splitlines(keepends=True)
            notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(str(notebook.relative_to(root)))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--tag", default=None, help="default: the tag in _config.yml")
    args = parser.parse_args()
    changed = rewrite(ROOT, args.url.rstrip("/"), args.tag or current()[1])
    print("changed:", ", ".join(changed) or "nothing")


if __name__ == "__main__":
    main()
