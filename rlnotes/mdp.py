"""A tiny tabular Markov decision process whose objective J(theta) is exact (chapter 1, "RL from zero").

The MDP has states ``s = 0..S-1``, actions ``a = 0..A-1``, transitions ``P[s, a, s']``, rewards
``R[s, a]``, an initial distribution ``mu0[s]``, a finite horizon ``H`` and a discount ``gamma``.
The policy is a softmax per state, ``pi_theta(a | s) = softmax(theta[s])[a]`` with ``theta`` of
shape ``[S, A]``. Small enough that J(theta) is computed exactly, by dynamic programming or by
enumerating every trajectory, and differentiated by autograd: the reference that the sampled
estimators of the book (the score-function estimator, reward-to-go, baselines, GAE) are checked
against.

Rollout tensors follow :mod:`rlnotes.returns`: shape ``[T, N]`` (time steps, trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .returns import discounted_returns
from .utils import check_in_range, check_positive, check_positive_int, check_seed


def _check_theta(theta, shape) -> None:
    if not torch.is_tensor(theta):
        raise TypeError(f"theta must be a torch.Tensor of shape {shape}, got {type(theta).__name__}")
    if tuple(theta.shape) != shape:
        raise ValueError(f"theta must have shape {shape} = [S, A], got {tuple(theta.shape)}")
    if not bool(torch.isfinite(theta).all()):
        raise ValueError("theta must be finite (it holds NaN or inf)")


def _check_rollout(name, x) -> None:
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"{name} must be a torch.Tensor of shape [T, N]")


@dataclass(frozen=True)
class Trajectories:
    """``n`` sampled trajectories: ``states``, ``actions`` (long) and ``rewards`` (float64),
    each ``[H, n]``: step ``t`` of trajectory ``i`` is ``(states[t, i], actions[t, i], rewards[t, i])``."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor


@dataclass(frozen=True)
class TabularMDP:
    """A finite-horizon MDP ``(P, R, mu0, horizon, gamma)`` with float64 tensors.

    ``P[s, a, s']`` = Pr(s_{t+1} = s' | s_t = s, a_t = a); ``R[s, a]`` = reward of action ``a`` in
    state ``s``; ``mu0[s]`` = Pr(s_0 = s). An episode has exactly ``horizon`` steps, t = 0..H-1.
    """

    P: torch.Tensor
    R: torch.Tensor
    mu0: torch.Tensor
    horizon: int
    gamma: float = 1.0

    def __post_init__(self):
        for name in ("P", "R", "mu0"):
            value = getattr(self, name)
            if not torch.is_tensor(value):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            object.__setattr__(self, name, value.to(torch.float64))
        object.__setattr__(self, "horizon", check_positive_int("horizon", self.horizon))
        object.__setattr__(self, "gamma", check_in_range("gamma", self.gamma, 0.0, 1.0))
        if self.P.dim() != 3 or self.P.shape[0] != self.P.shape[2]:
            raise ValueError(f"P must have shape [S, A, S], got {tuple(self.P.shape)}")
        S, A, _ = self.P.shape
        if tuple(self.R.shape) != (S, A):
            raise ValueError(f"R must have shape [S, A] = {(S, A)}, got {tuple(self.R.shape)}")
        if tuple(self.mu0.shape) != (S,):
            raise ValueError(f"mu0 must have shape [S] = ({S},), got {tuple(self.mu0.shape)}")
        for name, dist in (("P", self.P), ("mu0", self.mu0)):
            if not bool(torch.isfinite(dist).all()) or bool((dist < 0).any()) \
                    or not torch.allclose(dist.sum(-1), torch.ones((), dtype=torch.float64)):
                raise ValueError(f"{name} must hold probabilities that sum to 1 over its last axis")
        if not bool(torch.isfinite(self.R).all()):
            raise ValueError("R must be finite (it holds NaN or inf)")

    @classmethod
    def random(cls, n_states: int = 3, n_actions: int = 2, horizon: int = 4, gamma: float = 0.9,
               seed: int = 0) -> "TabularMDP":
        """A random MDP: Dirichlet(1) transitions and start, standard normal rewards (seeded)."""
        S, A = check_positive_int("n_states", n_states), check_positive_int("n_actions", n_actions)
        g = torch.Generator().manual_seed(seed)
        dirichlet = lambda *shape: -torch.log(torch.rand(*shape, generator=g, dtype=torch.float64))
        P, mu0 = dirichlet(S, A, S), dirichlet(S)
        R = torch.randn(S, A, generator=g, dtype=torch.float64)
        return cls(P / P.sum(-1, keepdim=True), R, mu0 / mu0.sum(), horizon, gamma)

    @classmethod
    def cash_in_trap(cls, horizon: int = 5, wait: float = 0.6, cash: float = 4.0, gamma: float = 1.0) -> "TabularMDP":
        """Chapter 2's MDP where the surrogate and J part ways: 3 states, 2 actions, start in state 0.

        State 0 (A): action 0 "wait" earns ``wait`` and stays in A, action 1 "go" earns 0 and moves to B.
        State 1 (B): action 0 "keep" earns 1 and stays in B, action 1 "cash in" earns ``cash`` and
        moves to the trap. State 2 (trap): absorbing, -1 per step whatever the action.
        Cashing in pays only close to the horizon, when few steps in the trap remain.
        """
        S, A = 3, 2
        P = torch.zeros(S, A, S, dtype=torch.float64)
        P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 2] = P[2, 0, 2] = P[2, 1, 2] = 1.0
        R = torch.tensor([[float(wait), 0.0], [1.0, float(cash)], [-1.0, -1.0]], dtype=torch.float64)
        return cls(P, R, torch.tensor([1.0, 0.0, 0.0]), horizon, gamma)

    @property
    def shape(self) -> tuple[int, int]:
        """(S, A): the number of states and of actions."""
        return tuple(self.R.shape)

    def policy(self, theta: torch.Tensor) -> torch.Tensor:
        """pi_theta(a | s) = softmax(theta[s])[a], shape [S, A]."""
        _check_theta(theta, self.shape)
        return torch.softmax(theta.to(torch.float64), dim=-1)

    def exact_return(self, theta: torch.Tensor) -> torch.Tensor:
        """J(theta) = E_tau[sum_{t<H} gamma^t r_t], exactly, by propagating the state distribution
        d_{t+1}(s') = sum_{s,a} d_t(s) pi(a | s) P(s' | s,a) from d_0 = mu0. Differentiable in theta."""
        pi = self.policy(theta)
        d, J = self.mu0, torch.zeros((), dtype=torch.float64)
        for t in range(self.horizon):
            J = J + self.gamma ** t * (d[:, None] * pi * self.R).sum()
            d = torch.einsum("s,sa,sax->x", d, pi, self.P)
        return J

    def values(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, Q): V[t, s] = V_t(s) of shape [H + 1, S] (V_H = 0) and Q[t, s, a] = Q_t(s, a) of shape
        [H, S, A], by the Bellman recursion Q_t = R + gamma P V_{t+1}, V_t(s) = sum_a pi(a | s) Q_t(s, a)."""
        pi = self.policy(theta)
        S, A = self.shape
        V = torch.zeros(self.horizon + 1, S, dtype=torch.float64)
        Q = torch.zeros(self.horizon, S, A, dtype=torch.float64)
        for t in reversed(range(self.horizon)):
            Q[t] = self.R + self.gamma * self.P @ V[t + 1]
            V[t] = (pi * Q[t]).sum(-1)
        return V, Q

    def state_distributions(self, theta: torch.Tensor) -> torch.Tensor:
        """d[t, s] = Pr(s_t = s) under pi_theta, shape [H, S]: d_0 = mu0 and
        d_{t+1}(s') = sum_{s,a} d_t(s) pi(a | s) P(s' | s,a) (the propagation of ``exact_return``)."""
        pi = self.policy(theta)
        d = [self.mu0]
        for _ in range(self.horizon - 1):
            d.append(torch.einsum("s,sa,sax->x", d[-1], pi, self.P))
        return torch.stack(d)

    def kl_per_state(self, theta_old: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """KL[pi_old(. | s) || pi_theta(. | s)] for every state s, shape [S], from log-softmax
        (finite on extreme logits). Differentiable in ``theta``."""
        _check_theta(theta_old, self.shape)
        _check_theta(theta, self.shape)
        log_old = torch.log_softmax(theta_old.detach().to(torch.float64), -1)
        log_new = torch.log_softmax(theta.to(torch.float64), -1)
        return (log_old.exp() * (log_old - log_new)).sum(-1)

    def mean_kl(self, theta_old: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """TRPO's constraint, the mean KL over the old policy's states (Schulman et al. 2015, eq. 12):
        (1/H) sum_t sum_s d_t^old(s) KL[pi_old(. | s) || pi_theta(. | s)], what a batch mean of the
        per-state KL on trajectories of pi_old estimates."""
        d_old = self.state_distributions(theta_old).detach()
        return (d_old * self.kl_per_state(theta_old, theta)).sum() / self.horizon

    def surrogate(self, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
        """The local approximation of J around theta_old (Kakade & Langford 2002; Schulman et al. 2015, eq. 3),

        L_{theta_old}(theta) = J(theta_old) + sum_t gamma^t sum_s d_t^old(s) sum_a pi_theta(a | s) A_t^old(s, a),

        with the state distributions d_t^old and the advantages A_t^old = Q_t - V_t of the OLD policy.
        J(theta) itself is the same sum with d_t of the NEW policy (the performance-difference
        lemma), so L = J at theta_old, with the same gradient, and they part as pi_theta moves the
        states it visits. Differentiable in ``theta``; nothing flows into ``theta_old``.
        """
        _check_theta(theta_old, self.shape)
        theta_old = theta_old.detach()
        V, Q = self.values(theta_old)
        A_old = Q - V[:-1, :, None]                                        # [H, S, A]
        d_old = self.state_distributions(theta_old)                        # [H, S]
        discount = self.gamma ** torch.arange(self.horizon, dtype=torch.float64)
        gain = torch.einsum("t,ts,sa,tsa->", discount, d_old, self.policy(theta), A_old)
        return (self.mu0 * V[0]).sum() + gain

    def fisher(self, theta: torch.Tensor) -> torch.Tensor:
        """F, the Hessian of ``mean_kl(theta, .)`` at theta, shape [S A, S A] (rows and columns in the
        order of theta.flatten()), in closed form: block-diagonal, the block of state s is
        (1/H) sum_t d_t(s) (diag(pi_s) - pi_s pi_s^T), the softmax Fisher matrix weighted by how
        often the policy is in s (Kakade 2002, the metric of the natural policy gradient)."""
        pi = self.policy(theta).detach()
        w = self.state_distributions(theta).detach().sum(0) / self.horizon          # [S]
        blocks = [w[s] * (torch.diag(pi[s]) - torch.outer(pi[s], pi[s])) for s in range(self.shape[0])]
        return torch.block_diag(*blocks)

    def natural_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """The natural gradient F^+ grad J(theta) (Kakade 2002), shape [S, A]: the minimum-norm
        solution of F s = g with ``fisher`` (singular: adding a constant to a state's logits changes
        nothing), the direction of TRPO's step (Schulman et al. 2015, Appendix C)."""
        _check_theta(theta, self.shape)
        th = theta.detach().to(torch.float64).clone().requires_grad_(True)
        g, = torch.autograd.grad(self.exact_return(th), th)
        return (torch.linalg.pinv(self.fisher(theta)) @ g.flatten()).reshape(self.shape)

    def surrogate_gap_bound(self, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
        """TRPO's bound on the gap between J(theta) and L_{theta_old}(theta), in absolute value (Schulman et al. 2015, Theorem 1 with
        alpha^2 <= max-KL, eq. 9), in its finite-horizon form: C * max_s KL[pi_old(. | s) || pi_theta(. | s)] with

        C = 4 eps sum_{t<H} t gamma^t   (<= 4 eps gamma / (1 - gamma)^2, the paper's C),
        eps = max_{t,s,a} abs(A_t^old(s, a)).

        Each step t adds at most 4 eps alpha (1 - (1 - alpha)^t) <= 4 eps alpha^2 t, alpha the largest
        total-variation distance between the two policies, and alpha^2 <= KL by Pinsker's inequality.
        """
        _check_theta(theta_old, self.shape)
        V, Q = self.values(theta_old.detach())
        eps = (Q - V[:-1, :, None]).abs().max()
        t = torch.arange(self.horizon, dtype=torch.float64)
        C = 4 * eps * (t * self.gamma ** t).sum()
        return C * self.kl_per_state(theta_old, theta).max()

    def enumerate_trajectories(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every trajectory tau = (s_0, a_0, ..., s_{H-1}, a_{H-1}): its probability
        p_theta(tau) = mu0(s_0) prod_t pi(a_t | s_t) P(s_{t+1} | s_t,a_t) and its return
        G(tau) = sum_t gamma^t R(s_t, a_t), as two tensors of length (S A)^H.
        So J(theta) = sum_tau p_theta(tau) G(tau), a second exact route."""
        pi = self.policy(theta)
        S, A = self.shape
        if (S * A) ** self.horizon > 2_000_000:
            raise ValueError(f"(S A)^H = {(S * A) ** self.horizon} trajectories is too many to enumerate")
        grids = torch.cartesian_prod(*[torch.arange(S), torch.arange(A)] * self.horizon)
        grids = grids.reshape(-1, 2 * self.horizon) if grids.dim() > 1 else grids[None]
        s, a = grids[:, 0::2], grids[:, 1::2]
        prob = self.mu0[s[:, 0]] * pi[s, a].prod(-1)
        prob = prob * self.P[s[:, :-1], a[:, :-1], s[:, 1:]].prod(-1)
        discount = self.gamma ** torch.arange(self.horizon, dtype=torch.float64)
        return prob, (self.R[s, a] * discount).sum(-1)

    def sample_trajectories(self, theta: torch.Tensor, n: int, generator: torch.Generator) -> Trajectories:
        """n trajectories tau ~ p_theta: s_0 ~ mu0, a_t ~ pi(. | s_t), s_{t+1} ~ P(. | s_t, a_t)."""
        n = check_positive_int("n", n)
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (for example torch.Generator().manual_seed(0))")
        pi = self.policy(theta).detach()
        H = self.horizon
        states = torch.zeros(H, n, dtype=torch.long)
        actions = torch.zeros(H, n, dtype=torch.long)
        s = torch.multinomial(self.mu0, n, replacement=True, generator=generator)
        for t in range(H):
            a = torch.multinomial(pi[s], 1, generator=generator).squeeze(1)
            states[t], actions[t] = s, a
            if t + 1 < H:
                s = torch.multinomial(self.P[s, a], 1, generator=generator).squeeze(1)
        return Trajectories(states, actions, self.R[states, actions])

    def score_function_samples(self, theta: torch.Tensor, traj: Trajectories, weights: torch.Tensor) -> torch.Tensor:
        """Per-trajectory gradient estimates g_i = sum_t grad_theta log pi(a_t | s_t) w_t, shape [n, S, A].

        With w_t = G(tau) it is the REINFORCE estimator of grad J (Williams 1992); with
        w_t = gamma^t G_t (reward-to-go, ``reward_to_go``) the causal one; with
        w_t = gamma^t (G_t - b(s_t)) the same with a baseline. For the softmax policy,
        grad_{theta[s]} log pi(a | s) = e_a - pi(. | s), and zero in the other rows.
        """
        _check_rollout("weights", weights)
        if weights.shape != traj.states.shape:
            raise ValueError(f"weights must have the trajectories' shape {tuple(traj.states.shape)}, "
                             f"got {tuple(weights.shape)}")
        pi = self.policy(theta).detach()
        S, A = self.shape
        score = torch.nn.functional.one_hot(traj.actions, A).to(torch.float64) - pi[traj.states]  # [H, n, A]
        rows = torch.nn.functional.one_hot(traj.states, S).to(torch.float64)                      # [H, n, S]
        return torch.einsum("tns,tna,tn->nsa", rows, score, weights.to(torch.float64))

    def reinforce(self, theta: torch.Tensor, *, steps: int = 40, n: int = 64, lr: float = 0.5,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The simplest policy-gradient loop (REINFORCE, Williams 1992): at each of ``steps`` steps, sample
        ``n`` trajectories from pi_theta, weight each action's score by the discounted return that
        followed it (w_t = gamma^t G_t, ``score_function_samples``) and move theta by ``lr`` times the
        mean: theta <- theta + lr * mean_i g_i. Returns the final theta and the exact J(theta) before
        each step and after the last, [steps + 1]. Seeded by ``seed``; ``theta`` is not changed."""
        steps, n = check_positive_int("steps", steps), check_positive_int("n", n)
        lr, seed = check_positive("lr", lr), check_seed("seed", seed)
        _check_theta(theta, self.shape)
        generator = torch.Generator().manual_seed(seed)
        theta, curve = theta.detach().to(torch.float64).clone(), [self.exact_return(theta)]
        for _ in range(steps):
            traj = self.sample_trajectories(theta, n, generator)
            weights = self.discounts() * reward_to_go(traj.rewards, self.gamma)
            theta = theta + lr * self.score_function_samples(theta, traj, weights).mean(0)
            curve.append(self.exact_return(theta))
        return theta, torch.stack(curve)

    def discounts(self) -> torch.Tensor:
        """gamma^t for t = 0..H-1, shape [H, 1] (broadcasts against [H, n] rollouts)."""
        return (self.gamma ** torch.arange(self.horizon, dtype=torch.float64))[:, None]


def reward_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t'-t) r_{t'} on trajectories that end after their last step
    (the causality step of the policy-gradient theorem: r_{t'} with t' < t drops out)."""
    _check_rollout("rewards", rewards)
    return discounted_returns(rewards, torch.zeros_like(rewards), gamma)


def td_residuals(rewards: torch.Tensor, values: torch.Tensor, last_value: torch.Tensor, gamma: float) -> torch.Tensor:
    """delta_t = r_t + gamma V(s_{t+1}) - V(s_t), with V(s_T) = ``last_value`` (Schulman et al. 2016, Section 3)."""
    _check_rollout("rewards", rewards)
    gamma = check_in_range("gamma", gamma, 0.0, 1.0)
    next_values = torch.cat([values[1:], last_value[None]])
    return rewards + gamma * next_values - values


def n_step_advantages(rewards: torch.Tensor, values: torch.Tensor, last_value: torch.Tensor,
                      gamma: float) -> torch.Tensor:
    """The n-step advantage estimates A^(n) of Schulman et al. 2016 (Section 3), shape [T, T, N]:

    out[n - 1, t] = A^(n)_t = sum_{l<n} gamma^l r_{t+l} + gamma^n V(s_{t+n}) - V(s_t)
                            = sum_{l<n} gamma^l delta_{t+l}      (the sum telescopes),

    for n = 1..T. Past the end (t + n >= T) the sum stops at T - 1 and bootstraps from
    V(s_T) = ``last_value``, so A^(n)_t = A^(T-t)_t, the Monte-Carlo return minus V(s_t).
    """
    delta = td_residuals(rewards, values, last_value, gamma)
    T = len(rewards)
    out = torch.zeros((T,) + tuple(rewards.shape), dtype=delta.dtype)
    running = torch.zeros_like(delta)  # after step n: sum_{l<n} gamma^l delta_{t+l}
    for n in range(1, T + 1):
        l = n - 1
        shifted = torch.zeros_like(delta)
        shifted[:T - l] = delta[l:]          # delta_{t+l}, zero past the end
        running = running + gamma ** l * shifted
        out[n - 1] = running
    return out


def lambda_mixture(n_step: torch.Tensor, lam: float) -> torch.Tensor:
    """(1 - lam) sum_{n>=1} lam^(n-1) A^(n)_t (Schulman et al. 2016, eq. 16) from ``n_step_advantages``.

    On a horizon T every A^(n)_t with n >= T - t equals A^(T-t)_t, so the infinite tail sums to
    lam^(T-t-1) A^(T-t)_t:  A_t = (1 - lam) sum_{n=1}^{T-t-1} lam^(n-1) A^(n)_t + lam^(T-t-1) A^(T-t)_t.
    """
    lam = check_in_range("lam", lam, 0.0, 1.0)
    T = n_step.shape[0]
    out = torch.zeros_like(n_step[0])
    for t in range(T):
        K = T - t  # steps left: A^(K)_t is the Monte-Carlo estimate
        head = sum((1 - lam) * lam ** (n - 1) * n_step[n - 1, t] for n in range(1, K))
        out[t] = head + lam ** (K - 1) * n_step[K - 1, t]
    return out
