import math
import re

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


# ------------------------------------------------------------- bools, strings, seeds, shapes

@pytest.mark.parametrize("flag", [True, np.bool_(False), np.array(True), torch.tensor(True)])
def test_a_flag_is_not_a_number(flag):
    with pytest.raises(TypeError, match=f"gamma must be a number, got {re.escape(repr(flag))}"):
        utils.check_in_range("gamma", flag, 0.0, 1.0)
    with pytest.raises(TypeError, match="lr must be a number"):
        utils.check_positive("lr", flag)


def test_a_string_is_not_a_number_and_numbers_of_every_kind_are():
    with pytest.raises(TypeError, match="lr must be a number, got '0.1'"):
        utils.check_positive("lr", "0.1")
    with pytest.raises(ValueError, match="lr must be finite as a float"):
        utils.check_positive("lr", 10**400)
    for number in (0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5)):
        assert utils.check_positive("lr", number) == 0.5 and utils.check_in_range("lam", number, 0.0, 1.0) == 0.5
    assert utils.check_in_range("gamma", 1, 0.0, 1.0) == 1.0 and utils.check_positive_int("n", np.int64(3)) == 3
    assert utils.check_positive_int("n", 10**400) == 10**400  # an int is not squeezed through a float


def test_check_seed():
    for seed in (-1, 2**63, 2**64, np.uint64(2**64 - 1)):
        with pytest.raises(ValueError, match=r"seed must be (>= 0|below 2\*\*63), got"):
            utils.check_seed("seed", seed)
    for seed in (True, np.bool_(True), "0", 1.5, None, math.nan):
        with pytest.raises(TypeError, match="seed must be an integer, got"):
            utils.check_seed("seed", seed)
    for seed, expected in ((0, 0), (np.int64(7), 7), (np.uint32(7), 7), (3.0, 3), (2**63 - 1, 2**63 - 1)):
        got = utils.check_seed("seed", seed)
        assert got == expected and type(got) is int


def test_seed_everything_refuses_what_numpys_global_generator_cannot_take():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        utils.seed_everything(-1)
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*32 for NumPy's global generator"):
        utils.seed_everything(2**32)
    with pytest.raises(TypeError, match="seed must be an integer, got True"):
        utils.seed_everything(True)
    utils.seed_everything(np.int64(2**32 - 1))


def test_check_same_shape_and_check_finite_take_lists_and_name_what_is_not_numbers():
    with pytest.raises(ValueError, match=r"shapes must match: a \(2,\), b \(3,\)"):
        utils.check_same_shape(a=[1.0, 2.0], b=torch.zeros(3))
    utils.check_same_shape(a=[1.0, 2.0], b=np.zeros(2), c=torch.zeros(2))
    with pytest.raises(ValueError, match="x must be finite"):
        utils.check_finite("x", [1.0, math.nan])
    utils.check_finite("x", [1.0, 2.0])
    for bad in (["a"], None, "abc"):
        with pytest.raises(TypeError, match="x must hold numbers, got"):
            utils.check_finite("x", bad)


def test_get_device_names_a_bad_device():
    with pytest.raises(ValueError, match="device must be a device torch knows, such as 'cpu' or 'cuda:0', got 'gpu'"):
        utils.get_device("gpu")
    with pytest.raises(TypeError, match="device must be a torch.device, a name such as 'cpu' or 'cuda:0'"):
        utils.get_device(True)
    assert utils.get_device(torch.device("cpu")) == utils.get_device("cpu") == torch.device("cpu")


def test_check_binary_names_the_argument_and_the_first_other_value():
    import torch

    from rlnotes.utils import check_binary

    for ok in (torch.tensor([0, 1, 1]), torch.tensor([0.0, 1.0]), torch.tensor([True, False])):
        check_binary("mask", ok)
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 \(or False and True\), got a value of 2"):
        check_binary("mask", torch.tensor([[1, 2], [0, 1]]))
    with pytest.raises(ValueError, match=r"dones must hold only 0 and 1 .*got a value of nan"):
        check_binary("dones", torch.tensor([0.0, float("nan")]))


def test_check_choice_returns_the_value_or_names_the_choices():
    from rlnotes.utils import check_choice
    assert check_choice("loss_type", "dapo", ("grpo", "dapo")) == "dapo"
    with pytest.raises(ValueError, match=r"loss_type must be one of \('grpo', 'dapo'\), got 'dpo'"):
        check_choice("loss_type", "dpo", ("grpo", "dapo"))


def test_check_tensor_names_the_argument_and_the_kind():
    from rlnotes.utils import check_tensor
    x = torch.zeros(2)
    assert check_tensor("logp", x) is x
    assert check_tensor("ids", torch.zeros(2, dtype=torch.long), "int").dtype == torch.long
    with pytest.raises(TypeError, match=r"logp must be a torch.Tensor, got list \[1, 2\]"):
        check_tensor("logp", [1, 2])
    with pytest.raises(TypeError, match="logp must be a torch.Tensor, got NoneType None"):
        check_tensor("logp", None)
    with pytest.raises(TypeError, match="ids must be a tensor of an integer dtype, got dtype torch.float32"):
        check_tensor("ids", x, "int")
    with pytest.raises(TypeError, match="ids must be a tensor of an integer dtype, got dtype torch.bool"):
        check_tensor("ids", x.bool(), "int")
    with pytest.raises(TypeError, match="logp must be a tensor of a floating dtype, got dtype torch.int64"):
        check_tensor("logp", x.long())


def test_check_same_shape_names_a_ragged_argument():
    with pytest.raises(ValueError, match=r"a must be a rectangular array \(rows of one length\), got \[1, \[2, 3\]\]"):
        utils.check_same_shape(a=[1, [2, 3]], b=[1, 2])
