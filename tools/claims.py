"""Execute every chapter under several numeric variants and fail on any exception.

`make claims` runs this. A variant is a set of environment variables given to the kernel
before it imports torch: `native` (the CPU's own kernels), `avx2` and `default`
(`ATEN_CPU_CAPABILITY`, torch's narrower kernels, a cheap stand-in for another CPU).
Each notebook runs in a fresh kernel on a copy; the committed notebooks are not touched.
Prints a table: notebook x variant -> seconds, or the first failing cell and its error.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

VARIANTS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
}
BOOK = Path(__file__).resolve().parent.parent / "book"


def run(path, variant, timeout, save=None):
    """Execute one notebook in a fresh kernel under `variant`; return (seconds, error or None).
    With `save` (a folder), the executed copy is written to save/variant/name."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY",)}
    env.update(VARIANTS[variant])
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(BOOK)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     and any(o.get("output_type") == "error" for o in c.get("outputs", []))), "?")
        return time.perf_counter() - start, f"cell {cell}: {err.ename}: {err.evalue}"[:300]
    finally:
        if save:
            (Path(save) / variant).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(save) / variant / Path(path).name)
    return time.perf_counter() - start, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--notebooks", nargs="+", default=None,
                        help="notebook files (default: every book/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--save", default=None,
                        help="folder for the executed copies (FOLDER/VARIANT/NAME.ipynb), for tools/volatile.py")
    args = parser.parse_args(argv)
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else sorted(BOOK.glob("*.ipynb"))
    failed = 0
    print("| notebook | " + " | ".join(args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for path in notebooks:
        cells = []
        for variant in args.variants:
            seconds, error = run(path, variant, args.timeout, args.save)
            failed += error is not None
            cells.append(f"{seconds:.0f} s" if error is None else f"FAIL ({seconds:.0f} s) {error}")
        print(f"| {path.name} | " + " | ".join(cells) + " |", flush=True)
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
