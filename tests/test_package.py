"""The package as a whole: ``rlnotes.check_version`` (rlnotes/__init__.py), which each chapter's
set-up cell calls, and the dependency floors that pyproject.toml and ``make oldest`` share."""

import re
import warnings
from pathlib import Path

import pytest
import torch

import rlnotes

ROOT = Path(__file__).resolve().parents[1]


def test_check_version():
    with pytest.raises(TypeError, match="built_with must be a version string"):
        rlnotes.check_version(None)
    with pytest.raises(ValueError, match="built_with must be a version"):
        rlnotes.check_version("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlnotes.check_version(rlnotes.__version__)
        rlnotes.check_version("0.1")  # the same version as 0.1.0
        rlnotes.check_version("0.1.0.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.2.0"):
        rlnotes.check_version("0.2.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.1.1"):
        rlnotes.check_version("0.1.1")


def _version(text):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", text).groups())


def test_torch_floor_is_the_safe_one():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', pyproject).group(1)
    assert _version(floor) >= (2, 6)  # torch.load(weights_only=True) bypass below 2.6 (CVE-2025-32434)
    oldest = re.search(r'"torch==([\d.]+)\.\*"', (ROOT / "Makefile").read_text()).group(1)
    assert oldest == floor  # `make oldest` tests the floor itself
    assert _version(torch.__version__) >= (2, 6)
