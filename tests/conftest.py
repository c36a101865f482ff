"""The unit tests run torch on one thread, as the book does: the networks are tiny, one thread is
as fast as several and repeats bit for bit. (``import rlnotes`` itself leaves the count alone.)"""

import shutil

import pytest
import torch

torch.set_num_threads(1)


# ------------------------------------------------------------- the toy task's tokenizer and model

@pytest.fixture(scope="module")
def task():
    from rlnotes import lm

    return lm.SentimentTask()


@pytest.fixture(scope="module")
def tok(task):
    from rlnotes import lm

    return lm.build_tokenizer(task)


@pytest.fixture(scope="module")
def model(tok):
    from rlnotes import lm

    return lm.tiny_gpt2(tok, seed=0).eval()


@pytest.fixture(scope="module")
def tiny(task, tok):
    """A one-layer GPT-2 (frozen) and eight hand-written preference pairs, encoded: (model, tok, data),
    for the DPO and IPO trainers' tests."""
    from rlnotes import lm
    from rlnotes.rlhf import Preferences

    model = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0)
    model.requires_grad_(False)
    prompts = ["review of the movie :", "so , the book :", "game review :", "my thoughts on the cafe :"] * 2
    chosen = ["it was great .", "great , good and fun .", "lovely .", "the price was superb ."] * 2
    rejected = ["it was awful and bad .", "dull .", "the story is boring but weak .", "poor ."] * 2
    prefs = Preferences(prompts, chosen, rejected, torch.zeros(8), torch.zeros(8))
    return model, tok, prefs.encode(tok)


# ------------------------------------------------------------- a headless Chromium (browser tests)

def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (make test does it where it can)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


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
