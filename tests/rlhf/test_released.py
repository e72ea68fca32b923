"""`released: true`: PPO and the fact-augmented reward model as LLaVA-RLHF's released code
computes them (llava-rlhf/LLaVA-RLHF: RLHF/models/ppo_trainer.py, RLHF/prompts/
fact_rlhf_reward_prompt.txt, RLHF/data_utils/constants.py, the 13B run's
train_rl_model.sh), each checked against a hand computation from those rules on a padded
batch; FactLoop's default, which masks padding, gives other numbers on the same batch."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from rlhf import losses
from rlhf.config import ConfigError, RLTrainConfig
from rlhf.reward import RELEASED, RewardConfig, encode_conversations, released_conversation
from rlhf.scoring import ReleasedTerms, released_answer_bonus

# A batch of 8 responses 5 columns wide (the release's response_len), real tokens 5, 4, 3,
# 1, 5, 2, 4, 3 long: the columns after them are padding.
LENGTHS = [5, 4, 3, 1, 5, 2, 4, 3]
WIDTH = 5
KL_COEF = 0.1


def batch() -> dict[str, list[list[float]]]:
    rng = random.Random(11)
    rows = range(len(LENGTHS))
    return {
        "logprobs": [[-rng.uniform(0.1, 3.0) for _ in range(WIDTH)] for _ in rows],
        "ref_logprobs": [[-rng.uniform(0.1, 3.0) for _ in range(WIDTH)] for _ in rows],
        "values": [[rng.uniform(-1.0, 1.0) for _ in range(WIDTH)] for _ in rows],
        "new_logprobs": [[-rng.uniform(0.1, 3.0) for _ in range(WIDTH)] for _ in rows],
        "new_values": [[rng.uniform(-1.0, 1.0) for _ in range(WIDTH)] for _ in rows],
        "scores": [[rng.uniform(-2.0, 2.0)] for _ in rows],
        "mask": [[1.0 if t < n else 0.0 for t in range(WIDTH)] for n in LENGTHS],
    }


def by_hand(data: dict[str, list[list[float]]]) -> dict[str, Any]:
    """The released rules written out with Python floats (ppo_trainer.py `_shape_reward`,
    `_estimate_advantage` with whiten_rewards False, `whiten`, `compute_policy_loss`,
    `compute_value_loss`): no mask anywhere."""
    rows, gamma, lam, clip, value_clip = len(LENGTHS), 1.0, 1.0, 0.2, 0.2
    rewards, advantages, returns = [], [], []
    for i in range(rows):
        kl = [max(0.0, data["logprobs"][i][t] - data["ref_logprobs"][i][t]) for t in range(WIDTH)]
        shaped = [-KL_COEF * k for k in kl]
        shaped[-1] += data["scores"][i][0]  # the last column, padding or not
        shaped = [10.0 * r for r in shaped]  # `rewards = rewards * 10.0`
        values = data["values"][i]
        row, last = [0.0] * WIDTH, 0.0
        for t in reversed(range(WIDTH)):
            following = values[t + 1] if t < WIDTH - 1 else 0.0
            last = shaped[t] + gamma * following - values[t] + gamma * lam * last
            row[t] = last
        rewards.append(shaped)
        advantages.append(row)
        returns.append([a + v for a, v in zip(row, values, strict=True)])
    flat = [a for row in advantages for a in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat))  # unbiased=False
    whitened = [[(a - mean) / (std + 1e-8) for a in row] for row in advantages]
    policy, value = [], []
    for i in range(rows):
        for t in range(WIDTH):
            ratio = math.exp(data["new_logprobs"][i][t] - data["logprobs"][i][t])
            a = whitened[i][t]
            policy.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
            old, new, target = data["values"][i][t], data["new_values"][i][t], returns[i][t]
            clipped = min(max(new, old - value_clip), old + value_clip)
            value.append(max((new - target) ** 2, (clipped - target) ** 2))
    return {
        "rewards": rewards,
        "advantages": whitened,
        "returns": returns,
        "policy_loss": sum(policy) / len(policy),
        "value_loss": 0.5 * sum(value) / len(value),
    }


def test_released_numbers_equal_the_released_rules_on_a_padded_batch() -> None:
    import torch

    data = batch()
    t = {key: torch.tensor(value, dtype=torch.float64) for key, value in data.items()}
    kl = losses.kl_k1(t["logprobs"], t["ref_logprobs"])
    rewards = losses.released_rewards(t["scores"][:, 0], kl, KL_COEF)
    scaled, advantages, returns = losses.released_advantages(rewards, t["values"])
    full = torch.ones_like(t["mask"])
    policy, _ = losses.policy_loss(t["new_logprobs"], t["logprobs"], advantages, full)
    value = losses.value_loss(t["new_values"], t["values"], returns, full)
    expected = by_hand(data)
    for name, ours in (("rewards", scaled), ("advantages", advantages), ("returns", returns)):
        assert torch.allclose(ours, torch.tensor(expected[name], dtype=torch.float64), atol=1e-6), name
    assert abs(float(policy) - expected["policy_loss"]) < 1e-6
    assert abs(float(value) - expected["value_loss"]) < 1e-6

    # FactLoop's default on the same batch: the score at the last real token, no x10,
    # padding masked out of GAE, the whitening and both means: other numbers.
    mask = t["mask"]
    own = losses.token_rewards(t["scores"][:, 0], kl, mask, KL_COEF)
    own_advantages, _ = losses.gae(own, t["values"] * mask, mask)
    assert not torch.allclose(losses.masked_whiten(own_advantages, mask), advantages, atol=1e-3)
    # The score of the one-token response sits in its padding under the release.
    assert scaled[3, 0] == pytest.approx(-10 * KL_COEF * float(kl[3, 0]))
    assert scaled[3, -1] == pytest.approx(10 * (float(t["scores"][3, 0]) - KL_COEF * float(kl[3, -1])))

    # The release refuses to whiten fewer than 8 rows.
    with pytest.raises(ValueError, match="at least 8 rows"):
        losses.released_advantages(rewards[:7], t["values"][:7])
    # Gathered rows (other processes') set the statistics, as its all_gather does: the same
    # rows twice leave them as they are; other rows move them.
    seen: list[Any] = []

    def twice(raw: Any) -> Any:
        seen.append(raw)
        return torch.cat([raw, raw])

    _, same, _ = losses.released_advantages(rewards, t["values"], gather=twice)
    assert torch.allclose(same, advantages) and seen[0].shape == advantages.shape
    pool = torch.cat([seen[0], seen[0] + 1.0])
    moved = losses.released_whiten(seen[0], stats=pool)
    assert torch.allclose(moved, (seen[0] - pool.mean()) / (pool.std(unbiased=False) + 1e-8))
    assert not torch.allclose(moved, advantages)


def test_released_symbolic_terms_and_answer_bonus() -> None:
    terms = ReleasedTerms(response_len=896)
    no_dog = {"classes": ["cat"]}
    # -10 x tokens / response_len; -8 without a stop token (added, not replacing).
    assert terms("Describe.", "A cat.", no_dog, 448, True) == pytest.approx(-5.0)
    assert terms("Describe.", "A cat.", no_dog, 896, False) == pytest.approx(-18.0)
    # A question whose answer is no: x2.0 of +0.5 for "No", -0.5 for "Yes", read at the start.
    assert terms("Is there a dog in the image?", "No, there is not.", no_dog, 0, True) == pytest.approx(1.0)
    assert terms("Is there a dog in the image?", "Yes.", no_dog, 0, True) == pytest.approx(-1.0)
    assert released_answer_bonus("Is there a dog in the image?", "I think no.", no_dog) == 0.0
    # A question whose answer is yes: nothing, either way (the release gives none yet).
    assert released_answer_bonus("Is there a cat in the image?", "Yes.", no_dog) == 0.0
    assert released_answer_bonus("Is there a cat in the image?", "No.", no_dog) == 0.0
    # Multiple choice: +1 (x2.0) for the right option's letter first, or "correct option is B.".
    choice = {"answers": {"Which animal? A. dog B. cat": "B"}}
    assert terms("Which animal? A. dog B. cat", "B. cat", choice, 0, True) == pytest.approx(2.0)
    assert released_answer_bonus("Which animal? A. dog B. cat", "So the correct option is B.", choice) == 1.0
    assert released_answer_bonus("Which animal? A. dog B. cat", "A. dog", choice) == 0.0


# RLHF/prompts/fact_rlhf_reward_prompt.txt as released, and FACTUAL_PROMPT (constants.py).
PROMPT_FILE = (
    "USER: Please evaluate the quality of your last response. There are several dimensions you should consider "
    "in your evaluation:\n\n1. Accurate: The AI should provide factual and accurate information from the image, and "
    "refrain from making statements that are not supported by the image or inconsistent with the image. "
    "{factual_prompt}\n2. Helpful: The AI\u2019s response should precisely serve the user's needs and interests, while "
    "grounding the response in the image.\n3. Language Natural: The AI should employ language that flows smoothly "
    "and is free from repetitive or awkward constructs.\n4. Concise: The AI should efficiently address the task or "
    "answer the question, communicating the necessary information with brevity and clarity.\n\nA good response "
    "should be accurate, helpful, language natural, and concise. ASSISTANT: Following your definitions, the quality "
    "score of my last response is"
)
FACTUAL_PROMPT = (
    "Specifically, the AI's response should be fully supported by the combination of the following captions:\n"
)


def test_the_released_reward_input_is_the_released_prompt_after_the_response(base_policy: Path) -> None:
    from transformers import AutoProcessor

    captions = ["A red ball.", "A ball on grass.", "Something round.", "A toy.", "Grass."]
    facts = {"captions": captions, "classes": ["ball"]}
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    response = [{"role": "assistant", "content": [{"type": "text", "text": "A red ball on grass."}]}]
    turns = released_conversation(prompt, response, facts, random.Random(5))

    # The release's rule: shuffle a copy of the captions, a "  - caption\n" line each.
    shuffled = captions[:]
    random.Random(5).shuffle(shuffled)
    filled = PROMPT_FILE.format(factual_prompt=FACTUAL_PROMPT + "".join(f"  - {c}\n" for c in shuffled))
    user, assistant = filled.removeprefix("USER: ").split(" ASSISTANT: ")
    assert turns[:2] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
        response[0],
    ]  # no facts in the prompt's own turn
    assert turns[2] == {"role": "user", "content": [{"type": "text", "text": user}]}
    assert turns[3] == {"role": "assistant", "content": [{"type": "text", "text": assistant}]}
    assert captions == [
        "A red ball.",
        "A ball on grass.",
        "Something round.",
        "A toy.",
        "Grass.",
    ]  # not shuffled in place
    # Shuffled again on every call (the module's own generator), the captions all there.
    texts = {released_conversation(prompt, response, facts)[2]["content"][0]["text"] for _ in range(12)}
    assert len(texts) > 1 and all(all(f"  - {c}\n" in text for c in captions) for text in texts)

    # Rendered, the input ends with the assistant's opening: the score is read at "is".
    processor = AutoProcessor.from_pretrained(str(base_policy))
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    inputs = encode_conversations(processor, [(prompt, response, image, facts)], RELEASED, random.Random(5))
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    text = processor.tokenizer.decode(ids)
    assert text.rstrip().endswith(assistant) and "A red ball on grass." in text
    assert text.index("A red ball on grass.") < text.index("Please evaluate the quality")


def test_released_settings_are_refused_where_the_release_has_no_such_thing(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "model": "m",
        "reward_model": "r",
        "data": [str(tmp_path)],
        "output_dir": str(tmp_path / "o"),
    }
    with pytest.raises(ConfigError, match="has no released mode"):
        RLTrainConfig(**base, method="grpo", released=True, rollout_batch_size=8, num_generations=2)
    with pytest.raises(ConfigError, match="at least 8 rollouts"):
        RLTrainConfig(**base, released=True, rollout_batch_size=4, minibatch_size=4)
    assert RLTrainConfig(**base, released=True).released
    with pytest.raises(ConfigError, match="needs fact_augmentation"):
        RewardConfig(
            model="m", data=[str(tmp_path)], output_dir=str(tmp_path / "o"), released=True, fact_augmentation=False
        )
    assert (
        RewardConfig(model="m", data=[str(tmp_path)], output_dir=str(tmp_path / "o"), released=True).facts_mode()
        == RELEASED
    )
