"""rlnotes.trainer: the History a run records, read back through windows of episodes."""

import math

import numpy as np
import pytest
import torch

from rlnotes.trainer import History


@pytest.fixture
def history():
    h = History()
    for i, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        h.add_episode(10 * (i + 1), r)
    return h


@pytest.mark.parametrize("call", [
    lambda h, w: h.final_mean_return(window=w),
    lambda h, w: h.moving_mean(w),
    lambda h, w: h.steps_to_reach(2.0, window=w),
    lambda h, w: h.curve(np.array([15, 45]), window=w),
])
def test_every_window_must_be_a_positive_int(history, call):
    # before: window=0 gave the mean of all episodes (final_mean_return) or all NaN (moving_mean),
    # window=-2 a slice of the first episodes
    for window in (0, -2):
        with pytest.raises(ValueError, match=f"window must be >= 1, got {window}"):
            call(history, window)
    for window in (True, 2.5, "20"):
        with pytest.raises(TypeError, match="window must be an integer"):
            call(history, window)


def test_windows_give_the_means_of_the_last_episodes(history):
    assert history.final_mean_return(2) == 3.5 and history.final_mean_return(2.0) == 3.5  # 2.0 runs as 2
    assert history.final_mean_return(np.int64(10)) == 2.5  # longer than the run: all episodes
    np.testing.assert_allclose(history.moving_mean(2), [1.0, 1.5, 2.5, 3.5])
    assert history.steps_to_reach(2.5, window=2) == 30.0 and history.steps_to_reach(5.0, window=2) == math.inf
    np.testing.assert_allclose(history.curve(np.array([5, 15, 45]), window=2), [np.nan, 1.0, 3.5])
    assert math.isnan(History().final_mean_return())


def test_threshold_grid_and_logged_values_are_checked(history):
    with pytest.raises(ValueError, match="threshold must be finite, got nan"):
        history.steps_to_reach(math.nan)  # "never reached" (inf) before
    with pytest.raises(ValueError, match="grid must hold finite numbers"):
        history.curve(np.array([15.0, np.nan]))  # the last episode's mean at NaN before
    h = History()
    with pytest.raises(TypeError, match="metric 'loss' must be one number, got tensor"):
        h.log(loss=torch.ones(2))
    with pytest.raises(TypeError, match="metric 'kl/exact_per_state' must be one number, got 'big'"):
        h.log({"kl/exact_per_state": "big"})
    h.log({"kl/exact_per_state": torch.tensor(0.5)}, loss=np.float32(2.0), entropy=math.nan)
    assert h.updates["kl/exact_per_state"] == [0.5] and h.updates["loss"] == [2.0] and len(h) == 1
    assert math.isnan(h.updates["entropy"][0])  # a NaN metric (no entropy) is still one number
