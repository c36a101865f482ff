import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlnotes import widgets  # noqa: E402


def test_flat_region_closed_form():
    assert widgets.flat_region(0.2, 1.0) == (1.2, 2.0)
    assert widgets.flat_region(0.2, -1.0) == (0.0, 0.8)
    assert widgets.flat_region(0.3, 0.0) == (0.0, widgets.R_MAX)


# ---------------------------------------------------------------------------------------------
# The interactive figures, Python side (tests/test_browser.py checks what the browser draws)
# ---------------------------------------------------------------------------------------------

FACTORIES = {  # factory: (figure class, its ES module, the parameters a reader controls)
    widgets.score_function_estimates: (widgets.ScoreFunctionEstimates, "score_function", ["n", "baseline"]),
    widgets.trust_region_step: (widgets.TrustRegionStep, "trust_region", ["delta", "lr"]),
    widgets.clip_plot: (widgets.ClipPlot, "clip_plot", ["eps", "advantage"]),
    widgets.kl_regularised_optimum: (widgets.KLRegularisedOptimum, "kl_optimum", ["beta"]),
    widgets.dpo_gradient_weight: (widgets.DPOGradientWeight, "dpo_weight",
                                  ["beta", "chosen_logratio", "rejected_logratio"]),
    widgets.best_of_n: (widgets.BestOfN, "best_of_n", ["n"]),
}


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_explorer_links_one_labelled_control_per_parameter(factory):
    cls, module, params = FACTORIES[factory]
    box = factory()
    assert isinstance(box, widgets.Explorer) and isinstance(box.figure, cls) and box.figure in box.children
    assert list(box.sliders) == cls.controls() == params
    assert "rlnotes-explorer" in box._dom_classes  # the figure's front end finds its sliders by it
    traits = box.figure.traits()
    for name, slider in box.sliders.items():
        assert slider.value == getattr(box.figure, name) and slider.description
        trait = traits[name]
        if hasattr(trait, "low") and not getattr(trait, "log", False):
            assert (slider.min, slider.max) == (trait.low, trait.high)  # the slider cannot leave the range
        if getattr(trait, "log", False):
            assert 10 ** slider.min == pytest.approx(trait.low) and 10 ** slider.max == pytest.approx(trait.high)
    # driven in the browser (jsdlink: the static book has no kernel) ...
    pairs = {(link.source[0], link.source[1], link.target[0], link.target[1]) for link in box.links}
    assert pairs == {(box.sliders[n], "value", box.figure, n) for n in params}
    assert all(type(link).__name__ == "DirectionalLink" for link in box.links)  # one way: slider -> figure
    # ... and in Python; a move made in the browser is not sent back to it (it has the value)
    sent = []
    box.figure.send_state = lambda key=None: sent.append(key)
    for name, slider in box.sliders.items():
        if isinstance(slider.value, bool):
            new = not slider.value
        elif isinstance(slider, widgets_module().FloatLogSlider):
            new = 10 ** slider.max
        else:
            new = slider.max
        with slider._lock_property(value=new):  # what ipywidgets does with an update from the browser
            slider.value = new
        assert getattr(box.figure, name) == pytest.approx(slider.value)
    assert sent == []
    name, slider = next(iter(box.sliders.items()))
    slider.value = traits[name].default_value  # moved from Python: sent (the saved state is then right)
    assert getattr(box.figure, name) == slider.value and sent == [name]


def widgets_module():
    import ipywidgets

    return ipywidgets


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_figure_state_carries_its_front_end_and_every_trait_it_reads(factory):
    cls, module, params = FACTORIES[factory]
    figure = factory().figure
    state = figure.get_state()
    js = (Path(widgets.__file__).parent / f"{module}.js").read_text()
    assert state["_esm"].startswith((Path(widgets.__file__).parent / "common.js").read_text())
    assert state["_esm"].endswith(js) and state["_esm"].count("export default") == 1
    # the traits the module redraws on (its `names: [...]`) are all synced
    names = re.search(r"names: \[([^\]]*)\]", js, re.S).group(1)
    read = re.findall(r'"(\w+)"', names)
    assert set(params) <= set(read) and all(name in state for name in read), (read, sorted(state))
    assert state["_model_module"] == "anywidget"
    assert f'name: "{factory.__name__}"' in js  # the SVG's data-figure, by which the browser test finds it


def test_embedded_state_has_the_figures_models_and_links():
    from ipywidgets.embed import dependency_state, embed_data

    box = widgets.clip_plot(0.3, -1.0)
    state = embed_data(views=[box], state=dependency_state([box, *box.links], drop_defaults=False),
                       drop_defaults=False)["manager_state"]["state"]
    names = [m["model_name"] for m in state.values()]
    assert names.count("AnyModel") == 1 and names.count("DirectionalLinkModel") == 2 and names.count("FloatSliderModel") == 2
    (fig,) = [m["state"] for m in state.values() if m["model_name"] == "AnyModel"]
    assert (fig["eps"], fig["advantage"]) == (0.3, -1.0) and "export default" in fig["_esm"]


def test_reprs_are_deterministic_and_short():
    box = widgets.clip_plot(eps=0.2, advantage=1.0)
    assert repr(box) == "Explorer(ClipPlot(eps=0.2, advantage=1.0))"
    assert box._repr_mimebundle_()["text/plain"] == repr(box)  # what nbval compares
    assert repr(widgets.score_function_estimates(5, True)) == "Explorer(ScoreFunctionEstimates(n=5, baseline=True))"
    assert repr(widgets.dpo_gradient_weight(1.0, 2.0, -1.0)) == (
        "Explorer(DPOGradientWeight(beta=1.0, chosen_logratio=2.0, rejected_logratio=-1.0))")
    box.sliders["eps"].value = 0.5
    assert repr(box) == "Explorer(ClipPlot(eps=0.5, advantage=1.0))"
    assert "0x" not in repr(widgets.trust_region_step()) + repr(widgets.kl_regularised_optimum())


@pytest.mark.parametrize("call, error, words", [
    (lambda: widgets.clip_plot(eps=0.0), ValueError, "eps must be in [0.01, 0.9], got 0.0"),
    (lambda: widgets.clip_plot(advantage=5.0), ValueError, "advantage must be in [-2.0, 2.0]"),
    (lambda: widgets.clip_plot(eps="wide"), TypeError, "eps must be a number"),
    (lambda: widgets.clip_plot(eps=float("nan")), ValueError, "eps must be finite"),
    (lambda: widgets.score_function_estimates(n=0), ValueError, "n must be in [1, 500], got 0"),
    (lambda: widgets.score_function_estimates(n=2.5), TypeError, "n must be an integer"),
    (lambda: widgets.score_function_estimates(baseline=1), TypeError, "baseline must be True or False"),
    (lambda: widgets.trust_region_step(delta=2.0), ValueError, "delta must be in [0.001, 1.0]"),
    (lambda: widgets.trust_region_step(lr=-1), ValueError, "lr must be in [0.5, 30.0]"),
    (lambda: widgets.kl_regularised_optimum(beta=0.0), ValueError, "beta must be in [0.01, 10.0]"),
    (lambda: widgets.dpo_gradient_weight(chosen_logratio=9), ValueError, "chosen_logratio must be in [-5.0, 5.0]"),
    (lambda: widgets.best_of_n(n=0), ValueError, "n must be in [1, 256], got 0"),
    (lambda: widgets.best_of_n(n=300), ValueError, "n must be in [1, 256], got 300"),
    (lambda: widgets.ClipPlot(epsilon=0.2), TypeError, "ClipPlot has no parameter ['epsilon']"),
])
def test_bad_parameters_are_refused_with_the_range(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_assigning_a_trait_is_validated_and_snapped_to_the_slider_grid():
    box = widgets.clip_plot()
    with pytest.raises(ValueError, match=r"eps must be in \[0.01, 0.9\]"):
        box.figure.eps = 0.95
    assert box.figure.eps == 0.2 and box.sliders["eps"].value == 0.2  # unchanged
    box.figure.eps = 0.123  # the slider's step is 0.01, as it would show
    assert box.figure.eps == 0.12
    box.sliders["advantage"].value = 0.7000000000000001  # a slider's float arithmetic
    assert box.figure.advantage == 0.7
    box.figure.advantage = -2.0000000000001  # float noise at the edge of the range is clipped
    assert box.figure.advantage == -2.0
    optimum = widgets.kl_regularised_optimum(beta=0.3)  # log slider: exponents -2 + 0.1 k
    assert optimum.figure.beta == pytest.approx(10 ** -0.5) and optimum.sliders["beta"].value == optimum.figure.beta
    assert widgets.kl_regularised_optimum(beta=10.0).figure.beta == 10.0


def test_flat_region_refuses_non_finite_arguments_by_name():
    # before: a NaN advantage compared false both ways and came back "flat everywhere", (0, r_max)
    with pytest.raises(ValueError, match="advantage must be finite, got nan"):
        widgets.flat_region(0.2, float("nan"))
    with pytest.raises(ValueError, match="eps must be finite"):
        widgets.flat_region(float("nan"), 1.0)
    with pytest.raises(ValueError, match="r_max must be finite"):
        widgets.flat_region(0.2, 1.0, r_max=float("nan"))  # None ("nowhere flat") before
    with pytest.raises(ValueError, match="advantage must be finite"):
        widgets.flat_region(0.2, float("inf"))
    # valid neighbours: integers and NumPy numbers, as floats
    assert widgets.flat_region(0.2, 1) == (1.2, 2.0) and widgets.flat_region(np.float32(0.5), -3) == (0.0, 0.5)
    assert widgets.flat_region(0.2, 0.0, r_max=3) == (0.0, 3.0)


def test_best_of_n_toy_peaks_in_the_true_reward_while_the_proxy_climbs():
    """The figure's six responses show over-optimisation in miniature: E[r*] under pi_bon rises, peaks at a
    small n and falls below pi_ref's, while E[proxy] climbs for every n (bestofn.bon_distribution)."""
    from rlnotes import bestofn

    fig = widgets.best_of_n().figure
    ns = range(1, 257)
    q = [bestofn.bon_distribution(fig.ref_probs, fig.proxy, n) for n in ns]
    proxy = [float(x @ np.array(fig.proxy)) for x in q]
    true = [float(x @ np.array(fig.true_reward)) for x in q]
    assert all(b > a for a, b in zip(proxy, proxy[1:]))
    peak = int(np.argmax(true)) + 1
    assert 2 <= peak <= 8 and true[-1] < true[0] < max(true)
    assert repr(widgets.best_of_n(16)) == "Explorer(BestOfN(n=16))"
