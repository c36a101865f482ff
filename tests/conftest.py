"""The unit tests run torch on one thread, as the book does: the networks are tiny, one thread is
as fast as several and repeats bit for bit. (``import rlnotes`` itself leaves the count alone.)"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_prepare_run():
    """Phases 1 and 2 at toy sizes (3 SFT steps, 3 reward-model steps), for tests of the LM trainers'
    contract and error handling, not of what they learn: (prepared, whether ``prepare`` left the
    caller's torch generator as it was)."""
    from rlnotes import rlhf

    before = torch.get_rng_state()
    prepared = rlhf.prepare(0, n_sft=64, sft_steps=3, n_pairs=32, n_test_pairs=16, rm_steps=3, n_eval_prompts=8)
    return prepared, torch.equal(before, torch.get_rng_state())


@pytest.fixture(scope="session")
def tiny_prepared(tiny_prepare_run):
    return tiny_prepare_run[0]
