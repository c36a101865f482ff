import math

import numpy as np
import pytest
import torch

from rlnotes import utils


def test_seed_everything_repeats():
    utils.seed_everything(5)
    a = (np.random.rand(), torch.rand(1).item())
    utils.seed_everything(5)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_get_device():
    assert utils.get_device("cpu") == torch.device("cpu")
    assert utils.get_device().type in {"cpu", "cuda", "mps"}


def test_checks():
    assert utils.check_positive("eps", 0.2) == 0.2
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="eps"):
            utils.check_positive("eps", bad)
    with pytest.raises(TypeError, match="eps"):
        utils.check_positive("eps", "x")
    with pytest.raises(ValueError, match=r"gamma must be in \[0.0, 1.0\]"):
        utils.check_in_range("gamma", 2, 0.0, 1.0)
    with pytest.raises(ValueError, match="iters"):
        utils.check_positive_int("iters", 0)
    with pytest.raises(TypeError, match="iters"):
        utils.check_positive_int("iters", 1.5)
    with pytest.raises(ValueError, match=r"a \(2,\), b \(3,\)"):
        utils.check_same_shape(a=torch.zeros(2), b=torch.zeros(3))
    with pytest.raises(ValueError, match="x must be finite"):
        utils.check_finite("x", torch.tensor([1.0, float("nan")]))


def test_check_version_warns_on_mismatch():
    import warnings

    import rlnotes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlnotes.check_version(rlnotes.__version__)  # silent when they match
    with pytest.warns(UserWarning, match="built with rlnotes 0.0.1"):
        rlnotes.check_version("0.0.1")
