"""The unit tests run torch on one thread, as the book does: the networks are tiny, one thread is
as fast as several and repeats bit for bit. (``import rlnotes`` itself leaves the count alone.)

The fixtures that more than one test file uses live here: the toy task's tokenizer and model,
phases 1 and 2 (``prepare.prepare``) once per session at each size the tests need, a headless
Chromium, and a Ctrl-C sent in the middle of a run."""

import os
import shutil
import signal

import pytest
import torch

torch.set_num_threads(1)


# ------------------------------------------------------------- the toy task's tokenizer and model

@pytest.fixture(scope="module")
def task():
    from rlnotes import sentiment

    return sentiment.SentimentTask()


@pytest.fixture(scope="module")
def tok(task):
    from rlnotes import sentiment

    return sentiment.build_tokenizer(task)


@pytest.fixture(scope="module")
def model(tok):
    from rlnotes import models

    return models.tiny_gpt2(tok, seed=0).eval()


@pytest.fixture(scope="module")
def tiny(task, tok):
    """A one-layer GPT-2 (frozen) and eight hand-written preference pairs, encoded: (model, tok, data),
    for the DPO and IPO trainers' tests."""
    from rlnotes import models
    from rlnotes.reward import Preferences

    model = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0)
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


# ------------------------------------------------------------- phases 1 and 2 (prepare.prepare), once per session
# One fixture per size; a test that trains from one must leave it as it found it (the trainers
# hand the caller's models back as found). Seed 0 throughout.

@pytest.fixture(scope="session")
def tiny_prepare_run():
    """Phases 1 and 2 at toy sizes (3 SFT steps, 3 reward-model steps), for tests of the LM trainers'
    contract and error handling, not of what they learn: (prepared, whether ``prepare`` left the
    caller's torch generator as it was)."""
    from rlnotes import prepare

    before = torch.get_rng_state()
    prepared = prepare.prepare(0, n_sft=64, sft_steps=3, n_pairs=32, n_test_pairs=16, rm_steps=3, n_eval_prompts=8)
    return prepared, torch.equal(before, torch.get_rng_state())


@pytest.fixture(scope="session")
def tiny_prepared(tiny_prepare_run):
    return tiny_prepare_run[0]


@pytest.fixture(scope="session")
def prepared_sft5():
    """Phases 1 and 2 with 5 SFT steps on 64 texts, 16 training and 8 test pairs, 2 reward-model
    steps and 8 evaluation prompts: every method of ``rlnotes.frontier`` moves this policy in one
    update (test_frontier)."""
    from rlnotes import prepare

    return prepare.prepare(0, n_sft=64, sft_steps=5, n_pairs=16, n_test_pairs=8, rm_steps=2, n_eval_prompts=8)


@pytest.fixture(scope="session")
def prepared_sft20():
    """Phases 1 and 2 with 20 SFT steps on 128 texts, 32 training and 16 test pairs, 5 reward-model
    steps and 8 evaluation prompts: a miniature of the chapter's run, in seconds (test_rlhf)."""
    from rlnotes import prepare

    return prepare.prepare(0, n_sft=128, sft_steps=20, n_pairs=32, n_test_pairs=16, rm_steps=5, n_eval_prompts=8)


@pytest.fixture(scope="module")
def sft20_batch(prepared_sft20):
    """Two prompts and two responses encoded with ``prepared_sft20``'s tokenizer: (prompt_ids,
    prompt_mask, response_ids, response_mask) (test_sft, test_reward, test_rlhf)."""
    from rlnotes import lm

    tok = prepared_sft20.tokenizer
    p = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r = lm.encode_responses(tok, ["it was good .", "good ."])
    return p + r


@pytest.fixture(scope="session")
def prepared_sft40():
    """Phases 1 and 2 with 40 SFT steps on 512 texts, 16 training and 8 test pairs, 2 reward-model
    steps and 64 evaluation prompts: an SFT policy good enough that RLOO and GRPO raise r* clearly
    in 25 steps, measured on 64 prompts (test_rloo, test_grpo)."""
    from rlnotes import prepare

    return prepare.prepare(0, n_sft=512, sft_steps=40, n_pairs=16, n_test_pairs=8, rm_steps=2, n_eval_prompts=64)


# ------------------------------------------------------------- Ctrl-C in the middle of a run

@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in an interactive session or a notebook (a job started in
    the background, as CI may be, begins with SIGINT ignored, and a trainer respects that)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sigint_on_call():
    """``sigint_on_call(fn, when, calls)``: ``fn`` wrapped so that its ``when``-th call (from 1) first
    sends this process a real SIGINT; every call appends to the list ``calls``."""
    def wrap(fn, when: int, calls: list):
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == when:
                os.kill(os.getpid(), signal.SIGINT)
            return fn(*args, **kwargs)
        return wrapped
    return wrap


@pytest.fixture
def interrupt_on_call():
    """``interrupt_on_call(n)(fn)``: ``fn`` wrapped so that its ``n``-th call (from 1) raises
    KeyboardInterrupt instead of running (no signal: the interrupt lands exactly there)."""
    def on_call(n):
        calls = []

        def wrap(fn):
            def wrapped(*args, **kwargs):
                calls.append(1)
                if len(calls) == n:
                    raise KeyboardInterrupt
                return fn(*args, **kwargs)
            return wrapped
        return wrap
    return on_call
