"""How much of each chapter a reader sees as code: the issue-14 measure, run over the notebooks.

    .venv/bin/python tools/code_share.py [REPO_ROOT]

For each book/0*.ipynb: the characters of visible code (code cells not tagged hide-input,
remove-input or remove-cell) over all rendered text (markdown + visible code + text outputs;
images and HTML outputs not counted), the number of visible code cells, the longest one in
lines, and how many are longer than 12 lines (the issue's targets: at most 25 %, no visible cell
over 12 lines). Prints a Markdown table.
"""

import json
import sys
from pathlib import Path

HIDDEN = {"hide-input", "remove-input", "remove-cell"}


def chapter(notebook: Path) -> dict:
    md = code = out = over = visible = 0
    longest, first_line = 0, ""
    for cell in json.loads(notebook.read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            md += len(src)
            continue
        if cell["cell_type"] != "code":
            continue
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "image/png" in data or "text/html" in data:
                continue
            text = o.get("text") or data.get("text/plain", "")
            out += len("".join(text) if isinstance(text, list) else text)
        if HIDDEN & set(cell.get("metadata", {}).get("tags", [])):
            continue
        visible += 1
        code += len(src)
        lines = len(src.rstrip("\n").splitlines())
        over += lines > 12
        if lines > longest:
            longest, first_line = lines, src.splitlines()[0][:60]
    return dict(share=code / max(1, md + code + out), code=code, total=md + code + out,
                visible=visible, longest=longest, first_line=first_line, over=over)


def main(root: Path) -> None:
    print("| chapter | visible code share | visible code cells | longest visible cell (lines) | cells > 12 lines |")
    print("| --- | --- | --- | --- | --- |")
    for notebook in sorted((root / "book").glob("0*.ipynb")):
        c = chapter(notebook)
        print(f"| {notebook.stem} | {100 * c['share']:.0f}% ({c['code']}/{c['total']}) | {c['visible']} | "
              f"{c['longest']} (`{c['first_line']}`) | {c['over']} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
