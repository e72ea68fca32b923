"""PPO's losses and GAE against hand computations (rlhf/losses.py)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhf import losses  # noqa: E402


def t(*rows: list[float]) -> object:
    return torch.tensor(rows, dtype=torch.float64)


def test_k1_kl_is_clamped_at_zero() -> None:
    kl = losses.kl_k1(t([-1.0, -2.0]), t([-1.5, -1.0]))
    assert kl.tolist() == [[0.5, 0.0]]
    assert losses.kl_k1(t([-1.0, -2.0]), t([-1.5, -1.0]), clamp=False).tolist() == [[0.5, -1.0]]


def test_token_rewards_put_the_score_on_the_last_response_token() -> None:
    score = torch.tensor([2.0], dtype=torch.float64)
    rewards = losses.token_rewards(score, t([0.5, 0.0, 0.2, 9.0]), t([1, 1, 1, 0]), 0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.0, 2.0 - 0.02, 0.0])


def test_gae_by_hand() -> None:
    # gamma = lambda = 1: advantages are future rewards minus the value; returns the reward-to-go.
    advantages, returns = losses.gae(t([1.0, 0.0, 2.0]), t([0.5, 0.4, 0.3]), t([1, 1, 1]))
    assert advantages.tolist()[0] == pytest.approx([2.5, 1.6, 1.7])
    assert returns.tolist()[0] == pytest.approx([3.0, 2.0, 2.0])
    # gamma 0.9, lambda 0.5: d2 = 1.7, d1 = 0.9*0.3 - 0.4 = -0.13, d0 = 1 + 0.9*0.4 - 0.5 = 0.86;
    # A2 = 1.7, A1 = -0.13 + 0.45*1.7 = 0.635, A0 = 0.86 + 0.45*0.635 = 1.14575.
    advantages, _ = losses.gae(t([1.0, 0.0, 2.0]), t([0.5, 0.4, 0.3]), t([1, 1, 1]), gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([1.14575, 0.635, 1.7])
    # Padding after the end changes nothing and gets nothing.
    advantages, returns = losses.gae(t([1.0, 2.0, 99.0]), t([0.5, 0.4, 77.0]), t([1, 1, 0]))
    assert advantages.tolist()[0] == pytest.approx([2.5, 1.6, 0.0])
    assert returns.tolist()[0] == pytest.approx([3.0, 2.0, 0.0])


def test_clipped_policy_loss_by_hand() -> None:
    # ratio [1, 2], advantage 1: unclipped [-1, -2], clipped [-1, -1.2]; max -> [-1, -1.2].
    loss, clipped = losses.policy_loss(t([0.0, math.log(2.0)]), t([0.0, 0.0]), t([1.0, 1.0]), t([1, 1]))
    assert float(loss) == pytest.approx(-1.1) and float(clipped) == pytest.approx(0.5)
    # ratio 0.5, advantage -1: unclipped 0.5, clipped 0.8 -> 0.8, clipped.
    loss, clipped = losses.policy_loss(t([math.log(0.5)]), t([0.0]), t([-1.0]), t([1]))
    assert float(loss) == pytest.approx(0.8) and float(clipped) == 1.0
    # Masked tokens do not count.
    loss, _ = losses.policy_loss(t([0.0, 5.0]), t([0.0, 0.0]), t([1.0, 100.0]), t([1, 0]))
    assert float(loss) == pytest.approx(-1.0)


def test_clipped_value_loss_by_hand() -> None:
    # V = 1, V_old = 0, R = 1: unclipped 0; clipped V = 0.2 -> (0.2 - 1)^2 = 0.64; 0.5 * 0.64.
    assert float(losses.value_loss(t([1.0]), t([0.0]), t([1.0]), t([1]))) == pytest.approx(0.32)
    assert float(losses.value_loss(t([0.1]), t([0.0]), t([1.0]), t([1]))) == pytest.approx(0.5 * 0.81)


def test_entropy_and_explained_variance() -> None:
    uniform = torch.zeros((1, 2, 4), dtype=torch.float64)
    assert float(losses.entropy(uniform, t([1, 1]))) == pytest.approx(math.log(4))
    returns = t([1.0, 2.0, 3.0])
    assert float(losses.explained_variance(returns, returns, t([1, 1, 1]))) == pytest.approx(1.0)
    assert float(losses.explained_variance(t([2.0, 2.0, 2.0]), returns, t([1, 1, 1]))) == pytest.approx(0.0)


def test_masked_whiten() -> None:
    whitened = losses.masked_whiten(t([1.0, 3.0, 100.0]), t([1, 1, 0]))
    assert whitened.tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)


def test_adaptive_kl_controller_by_hand() -> None:
    from rlhf.losses import adaptive_kl_coef

    # KL twice the target: the error clips at +0.2; 100 rollouts over a horizon of 1000.
    assert adaptive_kl_coef(0.1, 2.0, 1.0, 100, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    # KL at 0.9 of the target: error -0.1.
    assert adaptive_kl_coef(0.1, 0.9, 1.0, 500, 1000) == pytest.approx(0.1 * (1 - 0.1 * 0.5))
