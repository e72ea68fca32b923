"""The symbolic reward terms and the parsing around trl's reward-function calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.config import ConfigError, RLTrainConfig
from rlhf.scoring import (
    SymbolicTerms,
    completion_text,
    known_answer,
    last_user_text,
    locate_reward_model,
    remove_length_trend,
    said,
)

FACTS = {"classes": ["cat", "kite"], "objects": [{"cls": "cat"}, {"cls": "kite"}]}


def test_known_answers_come_from_the_facts() -> None:
    assert known_answer("Is there a cat in the image?", FACTS) == "yes"
    assert known_answer("is there an umbrella in the picture", FACTS) == "no"
    assert known_answer("Are there any kites in the image?", FACTS) == "yes"
    assert known_answer("What color is the cat?", FACTS) is None
    assert known_answer("Is there a cat in the image?", {}) is None  # nothing known
    explicit = {"answers": {"Is the cat asleep?": "No"}}
    assert known_answer("Is the cat asleep?", explicit) == "no"
    assert known_answer("Is the cat asleep?", FACTS) is None


def test_said_reads_the_opening_yes_or_no() -> None:
    assert said("Yes, there is a cat.") == "yes"
    assert said("  no.") == "no"
    assert said("There is no cat.") is None
    assert said("") is None


def test_symbolic_terms_add_up_by_hand() -> None:
    terms = SymbolicTerms(length_penalty=0.1, length_free=5, missing_stop_penalty=1.0, yes_no_bonus=2.0)
    # 8 tokens, 3 beyond the free 5: -0.3; stopped; right answer: +2.
    assert terms("Is there a cat in the image?", "Yes, there is a cat.", FACTS, 8, True) == pytest.approx(1.7)
    # wrong answer: no bonus; never stopped: -1; 4 tokens: no length penalty.
    assert terms("Is there a cat in the image?", "No.", FACTS, 4, False) == pytest.approx(-1.0)
    # not a yes/no question: only the length term.
    assert terms("Describe the image.", "Yes.", FACTS, 15, True) == pytest.approx(-1.0)


def test_the_length_trend_is_regressed_out_of_the_scores() -> None:
    """Scores 3, 2, 1 at lengths 10, 20, 30: a slope of -0.1 per token; without it all three
    score their mean, 2. What does not follow length stays: the middle one keeps its extra 0.5."""
    assert remove_length_trend([3.0, 2.0, 1.0], [10, 20, 30]) == pytest.approx([2.0, 2.0, 2.0])
    assert remove_length_trend([3.0, 2.5, 1.0], [10, 20, 30]) == pytest.approx([2.0, 2.5, 2.0])
    assert remove_length_trend([1.0, 4.0], [7, 7]) == [1.0, 4.0]  # equal lengths: no trend to remove
    assert remove_length_trend([2.0], [5]) == [2.0]


def test_prompts_and_completions_as_trl_passes_them() -> None:
    prompt = [{"role": "user", "content": [{"type": "image", "image": object()}, {"type": "text", "text": "Hi?"}]}]
    assert last_user_text(prompt) == "Hi?"
    assert last_user_text([{"role": "user", "content": "Plain"}]) == "Plain"
    assert completion_text("text") == "text"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]) == "A cat."


def test_rl_config_checks() -> None:
    base = {"model": "m", "reward_model": "r", "data": ["d"], "output_dir": "o"}
    config = RLTrainConfig(**base)  # type: ignore[arg-type]
    assert (config.kl_coef, config.clip, config.vf_coef, config.gamma, config.lam, config.ppo_epochs) == (
        0.1,
        0.2,
        0.1,
        1.0,
        1.0,
        2,
    )  # LLaVA-RLHF's settings
    for bad, match in (
        ({"method": "a2c"}, "method"),
        ({"minibatch_size": 32}, "minibatch_size"),
        ({"method": "grpo", "rollout_batch_size": 10, "num_generations": 4}, "multiple"),
        ({"kl_coef": -1}, "kl_coef"),
        ({"clip": 1.5}, "clip"),
        ({"learning_rate": "fast"}, "learning_rate"),
    ):
        with pytest.raises(ConfigError, match=match):
            RLTrainConfig(**(base | bad))


def test_a_folder_without_a_reward_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no reward-model adapter"):
        locate_reward_model(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a FactLoop reward model"):
        locate_reward_model(tmp_path)


def test_the_reward_function_regresses_length_out_with_length_debias(reward_model: Path) -> None:
    """The tests' reward model scores answers of several lengths; with `length_debias` its
    scores no longer follow length, and the same answers keep their order at equal length."""
    from PIL import Image

    from contract.export import user_turns
    from rlhf.scoring import RewardFunction, RewardModel

    scorer = RewardModel(reward_model)
    sentence = "A small red ball is at the top. "
    responses = [(sentence * n).strip() for n in (1, 2, 3, 4)] + ["A large blue kite is at the left."]
    tokens = [8 * n for n in (1, 2, 3, 4)] + [8]
    prompts = [user_turns([{"role": "user", "content": "Describe the image."}])] * len(responses)
    images = [Image.new("RGB", (32, 32), (200, 40, 40))] * len(responses)
    facts = [{"classes": ["ball"]}] * len(responses)
    terms = SymbolicTerms(missing_stop_penalty=0.0, yes_no_bonus=0.0)
    stopped = [True] * len(responses)
    raw = RewardFunction(scorer, terms).rewards(prompts, responses, images, facts, tokens, stopped)
    flat = RewardFunction(scorer, terms, length_debias=True).rewards(prompts, responses, images, facts, tokens, stopped)
    mean_t = sum(tokens) / len(tokens)
    covariance = sum((t - mean_t) * f for t, f in zip(tokens, flat, strict=True))
    assert abs(covariance) < 1e-6 * max(1.0, sum(abs(x) for x in raw))
    assert raw != pytest.approx(flat)
    assert flat[0] - flat[4] == pytest.approx(raw[0] - raw[4])  # same length, same difference


def test_the_length_anchor_charges_per_word_short_of_the_reference() -> None:
    """Reference 20 words, share 0.9: nothing from 18 words on; 8 words cost 0.5 x 10."""
    terms = SymbolicTerms(missing_stop_penalty=0.0, yes_no_bonus=0.0, length_anchor=0.5, length_anchor_share=0.9)
    eighteen, eight = " ".join(["word"] * 18), " ".join(["word"] * 8)
    assert terms("Describe the image.", eighteen, FACTS, 30, True, 20.0) == 0.0
    assert terms("Describe the image.", eight, FACTS, 12, True, 20.0) == pytest.approx(-5.0)
    assert terms("Describe the image.", eight, FACTS, 12, True, None) == 0.0  # no reference, no charge
    with pytest.raises(ConfigError, match="length_anchor_share"):
        RLTrainConfig(model="m", reward_model="r", data=["d"], output_dir="o", length_anchor_share=0)


def test_rollout_prompts_carry_their_reference_length(oracle_export: Path) -> None:
    """Each distinct prompt's reference length is the mean word count of both sides of its
    pairs, counted here by hand."""
    from rlhf.training_data import load_pairs, load_prompts

    pairs = load_pairs([oracle_export], sources=["ranking", "correction"])
    prompts = load_prompts([oracle_export])
    words: dict[str, list[int]] = {}
    for row in pairs:
        text = [row[side][0]["content"][0]["text"] for side in ("chosen", "rejected")]
        words.setdefault(row["image_sha256"], []).extend(len(t.split()) for t in text)
    assert len(prompts) == len(words)  # one prompt per image here: descriptions only
    for row, image in zip(prompts, dict.fromkeys(pairs["image_sha256"]), strict=True):
        assert row["reference_words"] == pytest.approx(sum(words[image]) / len(words[image]))
