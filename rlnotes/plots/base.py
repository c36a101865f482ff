"""What the figures share: the axis labels of the control chapters, the target axes (``ax``, or a new
figure), the runs of several learners, and the moving mean of the batch-level curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RETURN_LABEL = "mean return, last 20 episodes"
STEPS_LABEL = "environment steps"


def new_axes(ax, figsize):
    """``ax`` itself, or the axes of a new figure of ``figsize`` when ``ax`` is None."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def panel_axes(ax, n: int, width: float = 4.2):
    """One axes per panel: ``ax`` (an Axes or a sequence of ``n`` of them), or a new row of ``n`` panels,
    each ``width`` inches wide, when ``ax`` is None."""
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(1, n, figsize=(width * n + 0.5, 3.4), squeeze=False)[1][0]
    ax = list(np.atleast_1d(ax))
    if len(ax) != n:
        raise ValueError(f"ax must hold one Axes per panel ({n}), got {len(ax)}")
    return ax


def as_runs(runs) -> dict[str, list]:
    """{label: [History, ...]} from a mapping of label to one History or a sequence of them."""
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError("runs must be a non-empty mapping {label: History or [History, ...]}, "
                        f"got {type(runs).__name__}")
    out = {}
    for label, value in runs.items():
        histories = list(value.values()) if isinstance(value, Mapping) else (
            list(value) if isinstance(value, Sequence) else [value])
        if not histories:
            raise ValueError(f"runs[{label!r}] holds no History")
        out[str(label)] = histories
    return out


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (len - window + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")
