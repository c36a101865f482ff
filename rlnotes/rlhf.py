"""Chapter 4: RLHF in three phases (SFT, a Bradley-Terry reward model, KL-regularised PPO over tokens).

Public API (stable; chapter 5 builds on it):

- ``prepare(seed=0, ...) -> Prepared``: the whole of phases 1 and 2, deterministic and cheap
  (a few seconds on a CPU). ``Prepared`` holds ``task`` (r* lives in ``task.true_rewards``),
  ``tokenizer``, ``sft`` (pi^SFT = pi_ref, frozen), ``reward_model`` (r_phi, mean-zero on
  pi^SFT's samples), ``train_prefs`` / ``test_prefs`` (``Preferences``: prompts, chosen,
  rejected, r* of each), ``eval_prompts`` (held-out prompts), ``sft_history``, ``rm_history``.
- ``train_ppo(prepared, beta, *, updates, seed, kl_target=None, ...) -> (policy, History)``:
  phase 3. ``policy.lm`` is the fine-tuned causal LM; ``History.updates`` holds per update
  ``r_phi``, ``r_star``, ``kl``, ``entropy``, ``distinct_1``, ``distinct_2``, ``beta``, ...
- ``evaluate(policy, prepared, n=..., seed=...) -> dict``: mean r*, mean r_phi, KL(pi || pi_ref)
  (exact per-token KL summed over the sampled response, averaged), distinct-1/2, and samples,
  on held-out prompts. ``policy`` may be any causal LM on ``prepared.tokenizer``.
- ``kl_to_ref(policy, ref, ...)``: that per-sequence KL for given responses;
  ``compare_kl_estimators``: bias and spread of k1, k2, k3 against the exact per-token KL.
- Speed: these tiny models run fastest, and bit-identically across machines, on one CPU thread,
  which ``import rlnotes`` sets (``RLNOTES_NUM_THREADS`` overrides it).
- Phase 1: ``sft_loss``, ``train_sft``, ``heldout_loss``.
- Phase 2: ``bt_probability``, ``reward_loss``, ``Preferences``, ``sample_pairs``,
  ``label_preferences``, ``RewardModel``, ``train_reward_model``, ``preference_accuracy``.
- Phase 3: ``kl_estimators`` (k1, k2, k3), ``kl_penalty``, ``token_rewards``,
  ``FixedKLController``, ``AdaptiveKLController``, ``PolicyWithValue``, ``ppo_token_loss``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import lm
from .returns import normalize
from .ppo import clipped_surrogate
from .ppo import ratio as ppo_ratio
from .returns import gae
from .trainer import History, Timer
from .utils import (check_in_range, check_positive, check_positive_int, check_same_shape,
                    get_device, seed_everything)


# ----------------------------------------------------------------------------- phase 1: SFT

def sft_loss(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t), over response tokens only (eq. rlhf-sft)."""
    logp = lm.token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return -logp.sum() / response_mask.sum()


@torch.no_grad()
def heldout_loss(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 256) -> float:
    """The SFT loss (mean NLL per response token) of ``model`` on held-out text."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        p = lm.encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        r = lm.encode_responses(tokenizer, responses[i:i + batch_size], device=device)
        total += -lm.token_logprobs(model, *p, *r).sum().item()
        count += int(r[1].sum())
    return total / count


def train_sft(model, tokenizer, prompts: list[str], responses: list[str], *, steps: int = 300,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> History:
    """Phase 1: Adam on L_SFT over random mini-batches of (prompt, response) text; logs ``loss`` per step."""
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("prompts and responses must be non-empty and of equal length, "
                         f"got {len(prompts)} and {len(responses)}")
    device = next(model.parameters()).device
    seed_everything(seed)
    P, Pm = lm.encode_prompts(tokenizer, prompts, device)
    R, Rm = lm.encode_responses(tokenizer, responses, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    history = History()
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(prompts), (batch_size,), generator=gen).to(device)
        loss = sft_loss(model, P[idx], Pm[idx], R[idx], Rm[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.log(loss=loss)
    model.eval()
    return history


# ------------------------------------------------------------- phase 2: preferences and r_phi

def bt_probability(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry p*(y1 > y2 | x) = exp r1 / (exp r1 + exp r2) = sigma(r1 - r2) (eq. rlhf-bt)."""
    return torch.sigmoid(torch.as_tensor(r1) - torch.as_tensor(r2))


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """L_R = -E_D[ log sigma(r_phi(x, y_w) - r_phi(x, y_l)) ] (eq. rlhf-rm), with logsigmoid: finite at any margin."""
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    if r_chosen.numel() == 0:
        raise ValueError("r_chosen and r_rejected must hold at least one pair")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The fraction of pairs a reward ranks like the labels (r_chosen > r_rejected); a tie counts one half."""
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    return ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean().item()


@dataclass
class Preferences:
    """A preference data set D = {(x, y_w, y_l)}, with the (hidden) true rewards r* of y_w and y_l."""

    prompts: list
    chosen: list
    rejected: list
    r_chosen: torch.Tensor
    r_rejected: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.prompts, (list, tuple)) or len(self.prompts) == 0:
            raise ValueError("prompts must be a non-empty list of strings (empty preference data)")
        for name in ("prompts", "chosen", "rejected"):
            seq = getattr(self, name)
            if not isinstance(seq, (list, tuple)) or not all(isinstance(s, str) for s in seq):
                raise ValueError(f"{name} must be a list of strings")
        n = len(self.prompts)
        for name in ("chosen", "rejected", "r_chosen", "r_rejected"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per prompt ({n}), got {len(getattr(self, name))}")
        self.r_chosen = torch.as_tensor(self.r_chosen, dtype=torch.float32)
        self.r_rejected = torch.as_tensor(self.r_rejected, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx) -> "Preferences":
        """The pairs at positions ``idx`` (a list of ints)."""
        return Preferences([self.prompts[i] for i in idx], [self.chosen[i] for i in idx],
                           [self.rejected[i] for i in idx], self.r_chosen[idx], self.r_rejected[idx])

    def encode(self, tokenizer, device=None) -> dict:
        """Token tensors: ``prompt_ids/prompt_mask`` (left-padded), ``chosen_ids/chosen_mask``,
        ``rejected_ids/rejected_mask`` (right-padded, EOS appended)."""
        p, pm = lm.encode_prompts(tokenizer, list(self.prompts), device)
        c, cm = lm.encode_responses(tokenizer, list(self.chosen), device=device)
        r, rm = lm.encode_responses(tokenizer, list(self.rejected), device=device)
        return dict(prompt_ids=p, prompt_mask=pm, chosen_ids=c, chosen_mask=cm, rejected_ids=r, rejected_mask=rm)


def sample_pairs(model, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int = 8,
                 batch_size: int = 512) -> tuple[list[str], list[str]]:
    """Two independent responses y1, y2 ~ pi(.|x) per prompt (phase 2's comparison pairs)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    y1, y2 = [], []
    for i in range(0, len(prompts), batch_size):
        p, pm = lm.encode_prompts(tokenizer, prompts[i:i + batch_size] * 2, device)
        ids, mask = lm.sample(model, tokenizer, p, pm, max_new_tokens, generator=gen)
        text = lm.decode_responses(tokenizer, ids, mask)
        half = len(text) // 2
        y1 += text[:half]
        y2 += text[half:]
    return y1, y2


def label_preferences(task, prompts: list[str], y1: list[str], y2: list[str], *, seed: int) -> Preferences:
    """A simulated labeller: prefers y1 with probability sigma(r*(x, y1) - r*(x, y2)) (Bradley-Terry on r*)."""
    if not (len(prompts) == len(y1) == len(y2)) or not prompts:
        raise ValueError("prompts, y1 and y2 must be non-empty and of equal length, "
                         f"got {len(prompts)}, {len(y1)}, {len(y2)}")
    r1, r2 = task.true_rewards(prompts, y1), task.true_rewards(prompts, y2)
    first = torch.rand(len(prompts), generator=torch.Generator().manual_seed(seed)) < bt_probability(r1, r2)
    chosen = [a if f else b for a, b, f in zip(y1, y2, first.tolist())]
    rejected = [b if f else a for a, b, f in zip(y1, y2, first.tolist())]
    return Preferences(list(prompts), chosen, rejected, torch.where(first, r1, r2), torch.where(first, r2, r1))


class RewardModel(nn.Module):
    """r_phi(x, y): a copy of the SFT model with a linear head on the last layer's hidden state at EOS.

    ``offset`` is subtracted from every output; ``normalize_`` sets it so that r_phi has mean 0
    on pi^SFT's samples, E_{x,y}[r_phi(x, y)] = 0, as the source prescribes.
    """

    def __init__(self, base_lm):
        super().__init__()
        self.lm = copy.deepcopy(base_lm).requires_grad_(True)
        self.head = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.lm.config.hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        ids = torch.cat([prompt_ids, response_ids], dim=1)
        mask = torch.cat([prompt_mask, response_mask], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.lm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        last = prompt_ids.shape[1] + response_mask.sum(dim=1) - 1  # the EOS (or last response) token
        h = hidden[torch.arange(len(ids), device=ids.device), last]
        return self.head(h.float()).squeeze(-1) - self.offset

    @torch.no_grad()
    def score(self, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 512) -> torch.Tensor:
        """r_phi for text pairs, [B] (on the CPU)."""
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            p = lm.encode_prompts(tokenizer, prompts[i:i + batch_size], device)
            r = lm.encode_responses(tokenizer, responses[i:i + batch_size], device=device)
            out.append(self(*p, *r).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def normalize_(self, tokenizer, prompts: list[str], responses: list[str]) -> float:
        """Shift r_phi to mean zero on these (x, y); returns the offset removed."""
        self.offset += self.score(tokenizer, prompts, responses).mean().to(self.offset)
        return self.offset.item()


def train_reward_model(sft, tokenizer, prefs: Preferences, *, steps: int = 300, batch_size: int = 64,
                       lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0) -> tuple[RewardModel, History]:
    """Phase 2: minimise L_R (eq. rlhf-rm) over mini-batches of D, then normalise r_phi to mean 0 on D's responses.

    Logs per step ``loss`` and ``accuracy`` (on the mini-batch).
    """
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a Preferences, got {type(prefs).__name__}")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    seed_everything(seed)
    device = next(sft.parameters()).device
    rm = RewardModel(sft).to(device)
    t = prefs.encode(tokenizer, device)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    history = History()
    rm.train()
    for _ in range(steps):
        idx = torch.randint(len(prefs), (batch_size,), generator=gen).to(device)
        pairs = lm.stack_pairs({k: v[idx] for k, v in t.items()}, tokenizer.pad_token_id)
        rc, rr = rm(*pairs).chunk(2)  # one forward pass for the chosen and the rejected responses
        loss = reward_loss(rc, rr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.log(loss=loss, accuracy=preference_accuracy(rc.detach(), rr.detach()))
    rm.eval()
    rm.normalize_(tokenizer, list(prefs.prompts) * 2, list(prefs.chosen) + list(prefs.rejected))
    for p in rm.parameters():
        p.requires_grad_(False)
    return rm, history


# ------------------------------------------------------------------ phase 3: KL-regularised PPO

def kl_estimators(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict:
    """Per-sample estimators of KL(pi || pi_ref) from y ~ pi, with log ratio log rho = log pi_ref(y) - log pi(y):

    k1 = -log rho (unbiased, can be negative), k2 = (log rho)^2 / 2 (biased, >= 0),
    k3 = (rho - 1) - log rho (unbiased, >= 0) (eq. rlhf-kl-est).
    """
    check_same_shape(logp=logp, logp_ref=logp_ref)
    log_rho = logp_ref - logp
    return {"k1": -log_rho, "k2": 0.5 * log_rho ** 2, "k3": torch.expm1(log_rho) - log_rho}


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token KL penalty -beta (log pi(y_t|s_t) - log pi_ref(y_t|s_t)), [B, T], 0 on padding.

    The first term of eq. (rlhf-token-reward).
    """
    check_same_shape(logp=logp, logp_ref=logp_ref, mask=mask)
    check_in_range("beta", beta, 0.0, math.inf)
    return -beta * (logp - logp_ref) * mask.to(logp.dtype)


def token_rewards(r_phi: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """r_t = -beta log(pi/pi_ref)(y_t|s_t) + [t = last] r_phi(x, y), [B, T] (eq. rlhf-token-reward).

    The sum over t is the sample estimate of r_phi - beta KL(pi || pi_ref) for the sequence.
    """
    if r_phi.shape != mask.shape[:1]:
        raise ValueError(f"r_phi must be [B] = [{mask.shape[0]}], got shape {tuple(r_phi.shape)}")
    rewards = kl_penalty(logp, logp_ref, mask, beta)
    last = (mask.sum(dim=1) - 1).clamp(min=0)
    return rewards.index_put((torch.arange(len(r_phi), device=r_phi.device), last), r_phi.to(rewards.dtype),
                             accumulate=True)


def exact_token_kl(logits: torch.Tensor, logits_ref: torch.Tensor) -> torch.Tensor:
    """KL(pi(.|s_t) || pi_ref(.|s_t)) = sum_v pi log(pi / pi_ref), exact over the vocabulary, [..., T]."""
    logp, logq = F.log_softmax(logits, dim=-1), F.log_softmax(logits_ref, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float):
        self.beta = check_in_range("beta", beta, 0.0, math.inf)

    def update(self, kl: float, n_steps: int) -> float:
        return self.beta


class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta (1 + clip(KL / KL_target - 1, -0.2, 0.2) n / horizon) (eq. rlhf-adaptive)."""

    def __init__(self, beta: float, target: float, horizon: int = 2000):
        self.beta = check_positive("beta", beta)
        self.target = check_positive("kl_target", target)
        self.horizon = check_positive_int("horizon", horizon)

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta


class PolicyWithValue(nn.Module):
    """pi_theta (a copy of the SFT model) and a linear value head V(s_t) reading its last hidden state.

    The value head's input is detached: the critic reads the policy's features but its loss does
    not flow into them, so a large value error early in training cannot disturb the policy.
    """

    def __init__(self, base_lm):
        super().__init__()
        self.lm = copy.deepcopy(base_lm).requires_grad_(True)
        self.value_head = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask):
        """(logits [B, T, V], log pi(y_t|s_t) [B, T] masked, V(s_t) [B, T]) for the response tokens."""
        logits, hidden = lm.response_logits(self.lm, prompt_ids, prompt_mask, response_ids, response_mask,
                                            output_hidden_states=True)
        logp = F.log_softmax(logits, dim=-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        logp = logp * response_mask.to(logp.dtype)
        return logits, logp, self.value_head(hidden.detach().float()).squeeze(-1)


def ppo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """-L^CLIP over tokens: -mean_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t), rho_t = pi/pi_old, padding masked.

    The elementwise objective is chapter 3's ``ppo.clipped_surrogate`` (PPO paper, eq. 7); only the
    mean changes: it runs over the response tokens under ``mask``.
    """
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    surrogate = clipped_surrogate(ppo_ratio(logp, old_logp), advantages, eps)
    m = mask.to(surrogate.dtype)
    return -(surrogate * m).sum() / m.sum()


@dataclass
class Prepared:
    """Phases 1 and 2, ready for phase 3 (and for chapter 5's DPO on the same data)."""

    task: lm.SentimentTask
    tokenizer: object
    sft: nn.Module
    reward_model: RewardModel
    train_prefs: Preferences
    test_prefs: Preferences
    eval_prompts: list
    sft_history: History
    rm_history: History
    sft_heldout: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.sft.parameters()).device


def prepare(seed: int = 0, *, n_sft: int = 4000, sft_steps: int = 200, n_pairs: int = 1500,
            n_test_pairs: int = 500, rm_steps: int = 200, n_eval_prompts: int = 256, model=None,
            tokenizer=None, device=None) -> Prepared:
    """Phases 1 and 2, seeded: build the task and tokenizer, SFT a tiny GPT-2 on the corpus, sample pairs
    from pi^SFT, label them by Bradley-Terry on r*, and fit the reward model r_phi on the train pairs.

    ``model`` / ``tokenizer`` (e.g. from ``lm.load_causal_lm``) replace the tiny GPT-2 and the
    word-level tokenizer: the scale-up path. Train pairs use the train prompts, test pairs and
    ``eval_prompts`` the held-out (template, item) combinations.
    """
    for name, value in (("n_sft", n_sft), ("sft_steps", sft_steps), ("n_pairs", n_pairs),
                        ("n_test_pairs", n_test_pairs), ("rm_steps", rm_steps), ("n_eval_prompts", n_eval_prompts)):
        check_positive_int(name, value)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    seed_everything(seed)
    task = lm.SentimentTask()
    if tokenizer is None:
        tokenizer = lm.build_tokenizer(task)
        model = lm.tiny_gpt2(tokenizer, seed=seed)
    model = model.to(get_device(device))
    xs, ys = task.sft_corpus(n_sft, seed)
    hx, hy = task.sft_corpus(500, seed + 7, split="test")
    before = heldout_loss(model, tokenizer, hx, hy)
    sft_history = train_sft(model, tokenizer, xs, ys, steps=sft_steps, seed=seed)
    heldout = {"untrained": before, "sft": heldout_loss(model, tokenizer, hx, hy)}
    for p in model.parameters():
        p.requires_grad_(False)
    max_new = task.max_response_tokens

    def pairs(split, n, s):
        prompts = task.prompts(n, s, split)
        y1, y2 = sample_pairs(model, tokenizer, prompts, seed=s, max_new_tokens=max_new)
        return label_preferences(task, prompts, y1, y2, seed=s)

    train_prefs, test_prefs = pairs("train", n_pairs, seed + 1), pairs("test", n_test_pairs, seed + 2)
    rm, rm_history = train_reward_model(model, tokenizer, train_prefs, steps=rm_steps, seed=seed)
    return Prepared(task, tokenizer, model, rm, train_prefs, test_prefs,
                    task.prompts(n_eval_prompts, seed + 3, "test"), sft_history, rm_history, heldout, seed)


def _lm(policy):
    return policy.lm if isinstance(policy, PolicyWithValue) else policy


@torch.no_grad()
def kl_to_ref(policy, ref, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """KL(pi || pi_ref) per sequence, [B]: sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) over the response's states.

    For responses sampled from pi its mean is an unbiased, never-negative estimate of the
    sequence-level KL (each token's KL is exact over the vocabulary).
    """
    logits = lm.response_logits(_lm(policy), prompt_ids, prompt_mask, response_ids, response_mask)
    logits_ref = lm.response_logits(ref, prompt_ids, prompt_mask, response_ids, response_mask)
    return (exact_token_kl(logits, logits_ref) * response_mask).sum(dim=1)


@torch.no_grad()
def evaluate(policy, prepared: Prepared, prompts: list[str] | None = None, *, n_repeats: int = 1,
             seed: int = 12345) -> dict:
    """Sample from ``policy`` on held-out prompts (``prepared.eval_prompts`` by default, each ``n_repeats``
    times) and measure: ``r_star`` (mean r*), ``r_phi`` (mean reward-model score), ``kl``
    (mean KL(pi || pi_ref), see ``kl_to_ref``), ``distinct_1``, ``distinct_2`` and ``samples``."""
    model = _lm(policy)
    device = next(model.parameters()).device
    prompts = list(prepared.eval_prompts if prompts is None else prompts) * check_positive_int("n_repeats", n_repeats)
    gen = torch.Generator(device=device).manual_seed(seed)
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    ids, mask = lm.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
    text = lm.decode_responses(prepared.tokenizer, ids, mask)
    return {"r_star": prepared.task.true_rewards(prompts, text).mean().item(),
            "r_phi": prepared.reward_model(p, pm, ids, mask).mean().item(),
            "kl": kl_to_ref(model, prepared.sft, p, pm, ids, mask).mean().item(),
            "distinct_1": lm.distinct_n(text, 1), "distinct_2": lm.distinct_n(text, 2),
            "samples": text}


@torch.no_grad()
def compare_kl_estimators(policy, prepared: Prepared, *, n_prompts: int = 64, n_draws: int = 64,
                          seed: int = 0) -> dict:
    """Bias and spread of the per-token estimators k1, k2, k3 (eq. rlhf-kl-est) of KL(pi(.|s) || pi_ref(.|s)).

    States s are the prefixes of responses sampled from ``policy`` on held-out prompts; at each,
    ``n_draws`` tokens y ~ pi(.|s) are drawn and each estimator is compared with the exact KL
    over the vocabulary. Returns ``exact`` (mean exact KL per state) and, per estimator,
    ``mean``, ``bias`` (mean - exact), ``std`` (of one draw) and ``negative`` (fraction < 0).
    """
    model = _lm(policy)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    prompts = prepared.eval_prompts[:check_positive_int("n_prompts", n_prompts)]
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    ids, mask = lm.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
    m = mask.bool()
    logp = F.log_softmax(lm.response_logits(model, p, pm, ids, mask), -1)[m]  # [S, V] over the states
    logq = F.log_softmax(lm.response_logits(prepared.sft, p, pm, ids, mask), -1)[m]
    exact = (logp.exp() * (logp - logq)).sum(-1)
    draws = torch.multinomial(logp.exp(), check_positive_int("n_draws", n_draws), replacement=True, generator=gen)
    ks = kl_estimators(logp.gather(1, draws), logq.gather(1, draws))
    out = {"exact": exact.mean().item(), "n_states": int(m.sum())}
    for name, k in ks.items():
        out[name] = {"mean": k.mean().item(), "bias": (k.mean(1) - exact).mean().item(),
                     "std": k.std().item(), "negative": (k < 0).float().mean().item()}
    return out


def train_ppo(prepared: Prepared, beta: float = 0.3, *, updates: int = 50, seed: int = 0,
              batch_size: int = 64, epochs: int = 4, minibatches: int = 1, lr: float = 7e-4,
              eps: float = 0.2, gamma: float = 1.0, lam: float = 0.95, vf_coef: float = 0.5,
              max_grad_norm: float = 1.0, kl_target: float | None = None,
              kl_horizon: int = 2000, missing_eos_penalty: float = 2.0) -> tuple[PolicyWithValue, History]:
    """Phase 3: PPO over tokens on max_pi E[r_phi(x, y)] - beta KL(pi || pi_ref) (eq. rlhf-objective).

    Each update samples one response per prompt for ``batch_size`` train prompts, gives each token
    the reward of eq. (rlhf-token-reward) (the KL penalty per token, r_phi at the last token),
    computes advantages with GAE over the response (gamma, lam), and takes ``epochs`` passes of
    ``minibatches`` Adam steps on -L^CLIP + vf_coef * value loss. ``kl_target`` switches to the
    adaptive KL controller (``beta`` is then its starting value). A response that never emits EOS
    within ``task.max_response_tokens`` is cut off, and its score is r_phi - ``missing_eos_penalty``
    (as TRL does): r_phi never saw unfinished text and would otherwise be gamed through it.

    Logs per update: ``r_phi``, ``r_star``, ``kl`` (see ``kl_to_ref``), ``kl_k1`` (the mean summed
    log-ratio), ``entropy`` (per token), ``distinct_1``, ``distinct_2``, ``beta``, ``seconds``.
    """
    check_positive_int("updates", updates)
    check_positive_int("batch_size", batch_size)
    check_positive_int("epochs", epochs)
    check_positive_int("minibatches", minibatches)
    check_positive("lr", lr)
    check_in_range("eps", eps, 0.0, 1.0)
    check_in_range("beta", beta, 0.0, math.inf)
    if minibatches > batch_size:
        raise ValueError(f"minibatches must be <= batch_size ({batch_size}), got {minibatches}")
    seed_everything(seed)
    task, tok, ref, rm = prepared.task, prepared.tokenizer, prepared.sft, prepared.reward_model
    device = prepared.device
    policy = PolicyWithValue(ref).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-5)
    ctl = AdaptiveKLController(beta, kl_target, kl_horizon) if kl_target is not None else FixedKLController(beta)
    gen = torch.Generator(device=device).manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    history = History()
    for u in range(updates):
        with Timer() as timer:
            prompts = task.prompts(batch_size, seed * 100_003 + u)
            p, pm = lm.encode_prompts(tok, prompts, device)
            policy.eval()
            with torch.no_grad():
                ids, mask = lm.sample(policy.lm, tok, p, pm, task.max_response_tokens, generator=gen)
                logits, old_logp, values = policy(p, pm, ids, mask)
                logits_ref = lm.response_logits(ref, p, pm, ids, mask)
                ref_logp = F.log_softmax(logits_ref, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
                r_phi = rm(p, pm, ids, mask)
                finished = (ids == tok.eos_token_id).logical_and(mask.bool()).any(dim=1)
                score = r_phi - missing_eos_penalty * (~finished).float()
                rewards = token_rewards(score, old_logp, ref_logp, mask, ctl.beta)
                T = ids.shape[1]
                dones = (torch.arange(T, device=device)[None, :] >= mask.sum(1, keepdim=True) - 1).float()
                adv, ret = gae(rewards.T, (values * mask).T, dones.T, torch.zeros(batch_size, device=device),
                               gamma, lam)
                adv, ret = adv.T, ret.T
                m = mask.bool()
                adv = torch.where(m, adv, torch.zeros_like(adv))
                adv[m] = normalize(adv[m])
                token_kl = exact_token_kl(logits, logits_ref)
                kl = (token_kl * mask).sum(1).mean().item()
                ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
                entropy = ((ent * mask).sum() / mask.sum()).item()
            text = lm.decode_responses(tok, ids, mask)
            policy.train()
            for _ in range(epochs):
                order = torch.randperm(batch_size, generator=shuffle).to(device)
                for idx in order.chunk(minibatches):
                    _, new_logp, new_values = policy(p[idx], pm[idx], ids[idx], mask[idx])
                    pg = ppo_token_loss(new_logp, old_logp[idx], adv[idx], mask[idx], eps)
                    mm = mask[idx].float()
                    v_loss = 0.5 * (((new_values - ret[idx]) ** 2) * mm).sum() / mm.sum()
                    loss = pg + vf_coef * v_loss
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
                    opt.step()
            beta_used = ctl.beta
            ctl.update(kl, batch_size)
        history.log(r_phi=r_phi.mean(), r_star=task.true_rewards(prompts, text).mean(), kl=kl,
                    kl_k1=((old_logp - ref_logp) * mask).sum(1).mean(), entropy=entropy,
                    distinct_1=lm.distinct_n(text, 1), distinct_2=lm.distinct_n(text, 2),
                    beta=beta_used, finished=finished.float().mean(), value_loss=v_loss, seconds=timer.seconds)
    policy.eval()
    return policy, history
