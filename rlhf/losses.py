"""The losses and estimators of PPO for language models, as pure functions of tensors.

Shapes: per-token tensors are (batch, tokens) over the response tokens; `mask` is 1 on real
response tokens and 0 on padding. Everything is masked, so padding never counts; the
`released_*` functions are LLaVA-RLHF's released code instead, where padding does count.

Sources: PPO's clipped surrogate (Schulman et al., 2017, "Proximal Policy Optimization
Algorithms", eq. 7); generalised advantage estimation (Schulman et al., 2016, "High-
Dimensional Continuous Control Using Generalized Advantage Estimation", eq. 16); the KL
penalty to a reference folded into the per-token reward and the clipped value loss as in
RLHF for language models (Ziegler et al., 2019; Ouyang et al., 2022); LLaVA-RLHF's
settings (arXiv:2309.14525; docs/methods.md 2b): KL coefficient 0.1 with the
k1 estimator clamped at >= 0, clip 0.2, gamma = lambda = 1.
"""

from __future__ import annotations

from typing import Any

Tensor = Any  # torch.Tensor; torch is imported only when a function runs


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (the mean kept when not `shift_mean`)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * (variance + eps).rsqrt()
    return (whitened if shift_mean else whitened + mean) * mask


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor, *, clamp: bool = True) -> Tensor:
    """Per-token KL estimate log pi(y_t) - log pi_ref(y_t) (the k1 estimator; J. Schulman,
    "Approximating KL Divergence", 2020), clamped at 0 as LLaVA-RLHF does."""
    kl = logprobs - ref_logprobs
    return kl.clamp(min=0.0) if clamp else kl


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: -kl_coef * KL_t on every response token, plus the sequence's score
    (reward model + symbolic terms) on its last token."""
    import torch

    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    rewards = rewards + torch.where(last, scores.unsqueeze(1).to(rewards.dtype), torch.zeros_like(rewards))
    return rewards


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Advantages and returns by generalised advantage estimation:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}, with V and A
    zero after the last response token; returns = A + V."""
    import torch

    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * live
        # Padding after the end passes nothing back.
        next_value = torch.where(live > 0, values[:, t], next_value)
        next_advantage = torch.where(live > 0, advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, clip: float = 0.2
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, to minimise: mean of max(-A r, -A clip(r, 1-e, 1+e)) with
    r = exp(log pi - log pi_old); also the share of tokens where the clip was active."""
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float = 0.2) -> Tensor:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2)."""
    import torch

    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


# LLaVA-RLHF's released PPO (llava-rlhf/LLaVA-RLHF, RLHF/models/ppo_trainer.py), which its
# 13B run uses with `--whiten_rewards False` (scripts/13b-v1.5-336/train_rl_model.sh). Its
# per-token tensors span the whole response width (`response_len`, responses right-padded
# to it), and nothing is masked: padding columns carry their KL penalty, their values and
# their share of every mean. FactLoop's `released: true` computes with these; its default
# masks padding instead (the functions above).
RELEASED_REWARD_SCALE = 10.0  # `_estimate_advantage`: `rewards = rewards * 10.0` when not whitening rewards
RELEASED_MIN_ROWS = 8  # `whiten`: "Minibatch size ... is insufficient for whitening" below 8 rows


def released_whiten(values: Tensor, *, stats: Tensor | None = None, shift_mean: bool = True) -> Tensor:
    """ppo_trainer.py `whiten` (async_stats "full_batch"): (x - mean) / (std + 1e-8) with the
    mean and the population std of every entry of `stats` (all processes' rows gathered;
    `values` itself by default), padding included; fewer than 8 rows are refused."""
    pool = values if stats is None else stats
    if pool.size(0) < RELEASED_MIN_ROWS:
        raise ValueError(f"LLaVA-RLHF's whitening needs at least {RELEASED_MIN_ROWS} rows, got {pool.size(0)}")
    mean = pool.mean()
    whitened = (values - mean) / (pool.std(unbiased=False) + 1e-8)
    return whitened if shift_mean else whitened + mean


def released_rewards(scores: Tensor, kl: Tensor, kl_coef: float) -> Tensor:
    """ppo_trainer.py `_shape_reward`: -kl_coef * KL on every column, the score added at the
    last column (not the last real token: "shaped_rewards[:, -1] += rewards")."""
    rewards = -kl_coef * kl
    rewards[:, -1] = rewards[:, -1] + scores.to(rewards.dtype)
    return rewards


def released_advantages(
    rewards: Tensor, values: Tensor, *, gamma: float = 1.0, lam: float = 1.0, gather: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """ppo_trainer.py `_estimate_advantage` with whiten_rewards False: the rewards times 10,
    GAE over every column (V = 0 after the last), returns = A + V, and A whitened over all
    entries (`released_whiten`; `gather`, when given, maps the advantages to every
    process's rows, whose statistics then whiten them, as the release's all_gather does). Returns the scaled
    rewards, the whitened advantages and the returns."""
    import torch

    scaled = rewards * RELEASED_REWARD_SCALE
    width = scaled.size(1)
    last = torch.zeros_like(scaled[:, 0])
    reversed_advantages = []
    for t in reversed(range(width)):
        next_values = values[:, t + 1] if t < width - 1 else 0.0
        delta = scaled[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = advantages + values
    return scaled, released_whiten(advantages, stats=gather(advantages) if gather else None), returns


def entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the next-token distributions over the masked positions."""
    import torch

    log_p = torch.log_softmax(logits.float(), dim=-1)
    return masked_mean(-(log_p.exp() * log_p).sum(dim=-1), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over the masked entries (1 is a perfect critic, 0 no better
    than a constant)."""
    residual = returns - values
    mean_r = masked_mean(returns, mask)
    var_r = masked_mean((returns - mean_r) ** 2, mask)
    mean_e = masked_mean(residual, mask)
    var_e = masked_mean((residual - mean_e) ** 2, mask)
    return 1 - var_e / var_r.clamp(min=1e-12)


def adaptive_kl_coef(coef: float, kl: float, target: float, n: int, horizon: int) -> float:
    """The adaptive KL controller of Ziegler et al. (2019, "Fine-Tuning Language Models from
    Human Preferences", section 2.2): e = clip(KL / target - 1, -0.2, 0.2),
    coef <- coef * (1 + e * n / horizon), after n more rollouts."""
    error = min(0.2, max(-0.2, kl / target - 1))
    return coef * (1 + error * n / horizon)
