"""rlnotes: the package behind the book *RL for language models, from the policy gradient to DPO*.

One module per idea, in the order of the book:

==================  ==================================================="""

__version__ = "0.1.0"


def _version_key(version: str, name: str) -> tuple:
    """``"0.1"`` -> ``((0, 1, 0, ...), "")``: numeric parts padded with zeros, then any suffix."""
    import re

    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(.*)", version.strip())
    if match is None:
        raise ValueError(f"{name} must be a version such as '{__version__}', got {version!r}")
    parts = tuple(int(p) for p in match.group(1).split("."))
    return parts + (0,) * (8 - len(parts)), match.group(2)


def check_version(built_with: str) -> None:
    """Warn when the imported rlnotes is not the version a page was built with.

    Each chapter's first cell calls this, so a notebook opened against an older or newer
    package says so at once, instead of failing later on a function that moved. Versions are
    compared by their numeric parts, so ``"0.1"`` is ``"0.1.0"``.
    """
    if not isinstance(built_with, str):
        raise TypeError(f"built_with must be a version string such as '{__version__}', "
                        f"got {type(built_with).__name__} {built_with!r}")
    if _version_key(built_with, "built_with") != _version_key(__version__, "rlnotes.__version__"):
        import warnings

        warnings.warn(f"this page was built with rlnotes {built_with}, but rlnotes {__version__} is "
                      f"imported: install the matching version (pip install rlnotes=={built_with}, "
                      f"or the repository at tag v{built_with.strip().lstrip('v')})", stacklevel=2)
