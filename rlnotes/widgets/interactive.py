"""Figures that respond to sliders in the rendered book too, with no kernel and no network.

Each figure is an ``anywidget`` whose traits are the equation's parameters; its front end, an ES
module (``common.js`` then ``<figure>.js``, package data beside this file, shipped in the widget's
state), computes and draws the picture as SVG in the browser. The sliders are ordinary ipywidgets,
driving the traits both in the browser (``jsdlink``: works in the static HTML, where there is no
kernel) and in Python (``Explorer``). So the same figure works in the static book, in
JupyterLab and on Colab.

The browser code mirrors the package's formulas (rlnotes.bandits, rlnotes.trpo, rlnotes.ppo,
rlnotes.dpo) and writes the numbers it draws into the SVG's ``data-values`` attribute;
tests/test_browser.py checks them against the Python functions.
"""

from __future__ import annotations

import math
from pathlib import Path

import anywidget
import ipywidgets as widgets
import traitlets

from ..utils import check_in_range

JS = Path(__file__).parent


def _esm(name: str) -> str:
    """The figure's ES module: the shared helpers followed by the figure's own drawing code."""
    return (JS / "common.js").read_text() + "\n" + (JS / f"{name}.js").read_text()


class Param(traitlets.Float):
    """A synced float trait in [low, high] (ValueError outside) and the slider that controls it.

    Values are rounded to the slider's grid (``low + k step``; for a log slider, the exponent
    ``log10(low) + k step``), as the slider in the browser rounds them: Python and the picture
    then show the same number.
    """

    def __init__(self, default, low, high, step, description, log=False):
        super().__init__(default)
        self.low, self.high, self.step, self.description, self.log = low, high, step, description, log
        self.tag(sync=True)

    def validate(self, obj, value):
        value = check_in_range(self.name, value, -math.inf, math.inf)
        tol = 1e-9 * (self.high - self.low)  # a slider's float arithmetic may land a hair outside
        if not self.low - tol <= value <= self.high + tol:
            raise ValueError(f"{self.name} must be in [{self.low}, {self.high}], got {value}")
        if self.log:
            low = math.log10(self.low)
            value = 10 ** (low + round((math.log10(value) - low) / self.step) * self.step)
        else:
            value = round(self.low + round((value - self.low) / self.step) * self.step, 12)
        return min(max(value, self.low), self.high)

    def slider(self, value):
        common = dict(description=self.description, continuous_update=True, style={"description_width": "initial"})
        if self.log:
            return widgets.FloatLogSlider(value=value, base=10, min=math.log10(self.low), max=math.log10(self.high),
                                          step=self.step, readout_format=".3g", **common)
        return widgets.FloatSlider(value=value, min=self.low, max=self.high, step=self.step, **common)


class IntParam(traitlets.Int):
    """A synced integer trait in [low, high] (ValueError outside) and its slider."""

    def __init__(self, default, low, high, description):
        super().__init__(default)
        self.low, self.high, self.description = low, high, description
        self.tag(sync=True)

    def validate(self, obj, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise TypeError(f"{self.name} must be an integer, got {value!r}")
        value = int(value)
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name} must be in [{self.low}, {self.high}], got {value}")
        return value

    def slider(self, value):
        return widgets.IntSlider(value=value, min=self.low, max=self.high, description=self.description,
                                 continuous_update=True, style={"description_width": "initial"})


class Switch(traitlets.Bool):
    """A synced on/off trait and its checkbox."""

    def __init__(self, default, description):
        super().__init__(default)
        self.description = description
        self.tag(sync=True)

    def validate(self, obj, value):
        if not isinstance(value, bool):
            raise TypeError(f"{self.name} must be True or False, got {value!r}")
        return value

    def slider(self, value):
        return widgets.Checkbox(value=value, description=self.description, indent=False)


CONTROLS = (Param, IntParam, Switch)


class SvgFigure(anywidget.AnyWidget):
    """Base of the figures: the controlled traits (``Param``...) in class order, a fixed-data repr."""

    def __init__(self, **values):
        unknown = set(values) - set(self.class_trait_names())
        if unknown:
            raise TypeError(f"{type(self).__name__} has no parameter {sorted(unknown)}; "
                            f"its parameters are {self.controls()}")
        super().__init__(**values)

    @classmethod
    def controls(cls) -> list[str]:
        """The names of the traits a reader controls, in the order of their sliders (as declared)."""
        for klass in cls.__mro__:  # anywidget may wrap the class in a subclass of its own
            names = [name for name, trait in vars(klass).items() if isinstance(trait, CONTROLS)]
            if names:
                return names
        return []

    def __repr__(self):
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.controls())
        return f"{type(self).__name__}({args})"


class Explorer(widgets.VBox):
    """A figure under one control per parameter; ``sliders[name]`` controls the figure's trait ``name``.

    Each control drives its trait one way, control -> figure, in two places: in the browser
    (``jsdlink``; the static book has no kernel) and in Python (an observer), so the figure's
    traits follow the sliders with or without a front end. When the move came from the browser,
    the Python side does not send the value back, as the browser has it already: during a drag in
    JupyterLab, late copies of older values would make the picture jump back. To change a
    figure, move its slider (from Python: ``sliders[name].value = ...``).
    """

    def __init__(self, figure: SvgFigure):
        self.figure = figure
        traits = figure.traits()
        self.sliders = {name: traits[name].slider(getattr(figure, name)) for name in figure.controls()}
        self.links = [widgets.jsdlink((s, "value"), (figure, name)) for name, s in self.sliders.items()]
        for name, slider in self.sliders.items():
            slider.observe(self._follow(name, slider), names="value")
        super().__init__([widgets.HBox(list(self.sliders.values()), layout={"flex_flow": "row wrap"}), figure])
        self.add_class("rlnotes-explorer")

    def _follow(self, name: str, slider):
        trait = self.figure.traits()[name]

        def update(change):
            value = trait.validate(self.figure, change["new"])
            if "value" in slider._property_lock:  # moved in the browser, which updates the figure itself
                with self.figure._lock_property(**{name: value}):  # as ipywidgets does for a browser's update
                    setattr(self.figure, name, value)
            else:
                setattr(self.figure, name, value)

        return update

    def __repr__(self):
        return f"Explorer({self.figure!r})"


# ---------------------------------------------------------------------------------------------
# Chapter 1: the score-function estimator (eq-pg-estimator) on a softmax bandit
# ---------------------------------------------------------------------------------------------

class ScoreFunctionEstimates(SvgFigure):
    """Many score-function estimates g_hat = mean_i grad log pi(a_i) (r_i - b) (eq-pg-estimator),
    each from ``n`` samples of a three-armed ``SoftmaxBandit`` (``means``, ``theta``, ``noise_std``),
    drawn as points around the exact gradient pi * (mu - J); ``baseline`` sets b = J(theta), else 0.

    The browser mirrors ``bandits.softmax``, ``SoftmaxBandit.exact_gradient``, ``bandits.score`` and
    ``SoftmaxBandit.sample`` (with its own seeded generator), and reports the spread of the
    estimates next to the exact one, sqrt(trace Var[grad log pi (r - b)] / n).
    """

    _esm = _esm("score_function")
    n = IntParam(20, 1, 500, "samples per estimate n")
    baseline = Switch(False, "baseline b = J(θ)")
    means = traitlets.List([6.0, 5.2, 4.5], read_only=True).tag(sync=True)   # chapter 1's arms 0-2, shifted by 5
    theta = traitlets.List([0.5, 0.0, -0.3], read_only=True).tag(sync=True)
    noise_std = traitlets.Float(1.0, read_only=True).tag(sync=True)
    estimates = traitlets.Int(300, read_only=True).tag(sync=True)
    seed = traitlets.Int(0, read_only=True).tag(sync=True)


def score_function_estimates(n: int = 20, baseline: bool = False) -> Explorer:
    """Chapter 1's figure: 300 estimates of grad J from ``n`` samples each, with or without baseline."""
    return Explorer(ScoreFunctionEstimates(n=n, baseline=baseline))


# ---------------------------------------------------------------------------------------------
# Chapter 2: the natural-gradient step and the trust region (eq-natural-step)
# ---------------------------------------------------------------------------------------------

class TrustRegionStep(SvgFigure):
    """One update of a three-armed softmax bandit, drawn on the probability simplex: the KL ball
    {pi : KL[pi_old || pi] = delta}, the plain gradient step theta_old + lr g, the natural-gradient
    step beta s with s = F^+ g and beta = sqrt(2 delta / s^T F s) (eq-natural-step, exact Fisher
    F = diag(pi) - pi pi^T), and the step TRPO accepts: beta s shrunk by 0.8 until the exact KL is
    <= delta and the gain J(theta) - J(theta_old) > 0 (``rlnotes.trpo.line_search``, 10 tries).

    The browser mirrors ``bandits.softmax``, ``fisher``, ``kl``, ``SoftmaxBandit.exact_gradient`` and
    the line search of ``rlnotes.trpo``.
    """

    _esm = _esm("trust_region")
    delta = Param(0.01, 0.001, 1.0, 0.1, "trust region δ", log=True)
    lr = Param(5.0, 0.5, 30.0, 0.5, "learning rate of the plain step")
    means = traitlets.List([1.0, 0.2, -0.5], read_only=True).tag(sync=True)
    theta_old = traitlets.List([-1.0, 1.0, 0.5], read_only=True).tag(sync=True)
    max_backtracks = traitlets.Int(10, read_only=True).tag(sync=True)
    shrink = traitlets.Float(0.8, read_only=True).tag(sync=True)


def trust_region_step(delta: float = 0.01, lr: float = 5.0) -> Explorer:
    """Chapter 2's figure: the KL ball of radius ``delta`` and the three steps on the simplex."""
    return Explorer(TrustRegionStep(delta=delta, lr=lr))


# ---------------------------------------------------------------------------------------------
# Chapter 3: the clipped surrogate (PPO paper, eq. 7)
# ---------------------------------------------------------------------------------------------

class ClipPlot(SvgFigure):
    """L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A) (eq. 7) against r in [0, 2], with the
    unclipped r A, the point r = 1 and the region where the gradient is 0 (``flat_region``).

    The browser mirrors ``rlnotes.ppo.clipped_surrogate`` and ``rlnotes.widgets.flat_region``.
    """

    _esm = _esm("clip_plot")
    eps = Param(0.2, 0.01, 0.9, 0.01, "ε (clip range)")
    advantage = Param(1.0, -2.0, 2.0, 0.1, "advantage A")


def clip_plot(eps: float = 0.2, advantage: float = 1.0) -> Explorer:
    """Chapter 3's figure: sliders for eps and A (both signs) above a live plot of L^CLIP(r)."""
    return Explorer(ClipPlot(eps=eps, advantage=advantage))


# ---------------------------------------------------------------------------------------------
# Chapter 4: the optimum of the KL-regularised objective (rlhf-objective)
# ---------------------------------------------------------------------------------------------

class KLRegularisedOptimum(SvgFigure):
    """pi_beta(y) = pi_ref(y) exp(r(y) / beta) / Z, the maximiser of E_pi[r] - beta KL[pi || pi_ref]
    (rlhf-objective; DPO paper, Eq. 4), over five responses (``ref_probs``, ``rewards``): the bars
    of pi_beta against pi_ref, and E_{pi_beta}[r], KL[pi_beta || pi_ref] and the entropy of
    pi_beta as functions of beta (log scale).

    The browser mirrors ``rlnotes.dpo_closed_form.optimal_policy`` and ``log_partition``; the KL is
    E[r] / beta - log Z.
    """

    _esm = _esm("kl_optimum")
    beta = Param(1.0, 0.01, 10.0, 0.1, "β (KL weight)", log=True)
    ref_probs = traitlets.List([0.4, 0.25, 0.2, 0.1, 0.05], read_only=True).tag(sync=True)
    rewards = traitlets.List([0.0, 0.3, -0.5, 1.0, 0.8], read_only=True).tag(sync=True)


def kl_regularised_optimum(beta: float = 1.0) -> Explorer:
    """Chapter 4's figure: the KL-regularised optimum pi_beta as beta moves."""
    return Explorer(KLRegularisedOptimum(beta=beta))


# ---------------------------------------------------------------------------------------------
# Chapter 5: the weight of a pair in the DPO gradient (dpo-gradient)
# ---------------------------------------------------------------------------------------------

class DPOGradientWeight(SvgFigure):
    """For one pair (y_w, y_l): the implicit rewards r_hat = beta log(pi / pi_ref) of both
    responses (``chosen_logratio`` and ``rejected_logratio`` are the log-ratios), the loss
    -log sigma(r_hat(y_w) - r_hat(y_l)) (dpo-loss) and the pair's weight in the gradient,
    sigma(r_hat(y_l) - r_hat(y_w)) (dpo-gradient), drawn against the log-ratio margin.

    The browser mirrors ``rlnotes.dpo.implicit_reward``, ``dpo_loss`` and the weight of
    ``dpo_gradient``.
    """

    _esm = _esm("dpo_weight")
    beta = Param(0.1, 0.01, 10.0, 0.1, "β", log=True)
    chosen_logratio = Param(0.5, -5.0, 5.0, 0.1, "log π/π_ref of y_w")
    rejected_logratio = Param(1.0, -5.0, 5.0, 0.1, "log π/π_ref of y_l")


def dpo_gradient_weight(beta: float = 0.1, chosen_logratio: float = 0.5, rejected_logratio: float = 1.0) -> Explorer:
    """Chapter 5's figure: the implicit rewards, loss and gradient weight of one preference pair."""
    return Explorer(DPOGradientWeight(beta=beta, chosen_logratio=chosen_logratio,
                                      rejected_logratio=rejected_logratio))


# ---------------------------------------------------------------------------------------------
# Chapter 7: best-of-n by a proxy reward (bon-dist, bon-kl)
# ---------------------------------------------------------------------------------------------

class BestOfN(SvgFigure):
    """Best-of-n over six responses (``ref_probs``) ranked by a ``proxy`` reward that agrees with the
    ``true_reward`` except at the top: the exact pi_bon (bon-dist) against pi_ref, its KL to pi_ref
    against the closed form log n - (n - 1)/n (bon-kl), and E[proxy], E[r*] under pi_bon against
    sqrt(KL) for n = 1..256, the point at ``n`` marked.

    The browser mirrors ``rlnotes.bestofn.bon_distribution``, ``exact_bon_kl`` and ``bon_kl``.
    """

    _esm = _esm("best_of_n")
    n = IntParam(4, 1, 256, "samples n")
    ref_probs = traitlets.List([0.30, 0.25, 0.20, 0.15, 0.08, 0.02], read_only=True).tag(sync=True)
    proxy = traitlets.List([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], read_only=True).tag(sync=True)
    true_reward = traitlets.List([0.0, 0.5, 1.0, 1.5, 1.0, -1.0], read_only=True).tag(sync=True)


def best_of_n(n: int = 4) -> Explorer:
    """Chapter 7's figure: best-of-n by a proxy, its KL and its expected proxy and true rewards as n moves."""
    return Explorer(BestOfN(n=n))
