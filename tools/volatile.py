"""List the code cells whose text output or glued values differ between executed copies of a notebook.

    python tools/volatile.py book/03_ppo.ipynb RUN/avx2/03_ppo.ipynb RUN/default/03_ppo.ipynb

The first notebook is the reference (usually the committed one); each cell whose text output
(after nbval's sanitiser, tests/nbval_sanitize.cfg) differs from it in any other copy is printed
with its tags and whether its source asserts something. Cells listed here depend on the CPU's
rounding (a training trajectory): nbval cannot compare them across machines, so they carry the
tag `nbval-ignore-output` and an `assert` of what they show (tests/test_notebooks.py checks it).
"""
import configparser
import re
import sys
from pathlib import Path

import nbformat

SANITIZE = Path(__file__).resolve().parent.parent / "tests" / "nbval_sanitize.cfg"


def sanitizers():
    cfg = configparser.ConfigParser()
    cfg.read(SANITIZE)
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def texts(path):
    """Per code cell index: its sanitised text outputs (stream text and text/plain)."""
    rules = sanitizers()
    nb = nbformat.read(path, as_version=4)
    out = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        parts = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                found = [o.get("text")]
            else:  # text/plain, and the values `glue` records (application/papermill.record/...)
                found = [v for k, v in sorted(o.get("data", {}).items())
                         if k == "text/plain" or k.startswith("application/papermill.record/")]
            for t in found:
                t = "".join(t)
                for rx, rep in rules:
                    t = rx.sub(rep, t)
                parts.append(t)
        out[i] = ("".join(parts), cell)
    return out


def main(reference, *others):
    ref = texts(reference)
    differ = set()
    for other in others:
        for i, (text, _) in texts(other).items():
            if i in ref and ref[i][0] != text:
                differ.add(i)
    for i in sorted(differ):
        cell = ref[i][1]
        tags = cell.get("metadata", {}).get("tags", [])
        print(f"cell {i}: tags {tags}, asserts {'assert' in cell.source}")
    print(f"{len(differ)} cells differ")


if __name__ == "__main__":
    main(*sys.argv[1:])
