"""Method names and metric keys, as both sides spell them."""

from __future__ import annotations

from typing import Final, Literal

# Offline methods from pairs (rlhf.cli dpo; rlhf/objectives.py has the losses beyond DDPO
# and DPO) and online RL (rlhf.cli rl).
DPO_METHODS: Final = ("ddpo", "dpo", "sft", "mdpo", "hsa_dpo", "halva")
RL_METHODS: Final = ("ppo", "grpo", "rloo")
METHODS: Final = DPO_METHODS + RL_METHODS

# Evaluation metrics (rlhf/hallucination.py writes them; the gate and the plots read them).
CHAIR_I: Final = "chair_i"
CHAIR_S: Final = "chair_s"
POPE_F1: Final = "pope_f1"
MEAN_WORDS: Final = "mean_words"
EMPTY_SHARE: Final = "empty_share"
OBJECT_HALBENCH: Final = "object_halbench_response"
COVERAGE: Final = "coverage"  # AMBER's "Cover" (arXiv:2311.07397): the share of an image's objects named
QA_ACCURACY: Final = "qa_accuracy"
REWARD_MEAN: Final = "reward_mean"  # a registered reward model's mean score of the answers
# AMBER's generative-task metrics (arXiv:2311.07397), its own reading (rlhf/amber.py).
AMBER_CHAIR: Final = "amber_chair"
AMBER_COVER: Final = "amber_cover"
AMBER_HAL: Final = "amber_hal"
AMBER_COG: Final = "amber_cog"
# Training metrics a registered version carries (RunResult.registry_metrics).
REWARD: Final = "reward"
KL: Final = "kl"
REWARD_MODEL_ACCURACY: Final = "reward_model_accuracy"

Direction = Literal["lower", "higher"]
# The metrics a gate may compare, and which way is better.
GATE_METRICS: Final[dict[str, Direction]] = {
    CHAIR_I: "lower",
    CHAIR_S: "lower",
    POPE_F1: "higher",
    COVERAGE: "higher",
    AMBER_CHAIR: "lower",
    AMBER_COVER: "higher",
    AMBER_HAL: "lower",
    AMBER_COG: "lower",
}
# How a person reads them.
METRIC_NAMES: Final[dict[str, str]] = {
    CHAIR_I: "CHAIR_i",
    CHAIR_S: "CHAIR_s",
    POPE_F1: "POPE F1",
    COVERAGE: "coverage",
    AMBER_CHAIR: "AMBER CHAIR",
    AMBER_COVER: "AMBER Cover",
    AMBER_HAL: "AMBER Hal",
    AMBER_COG: "AMBER Cog",
}
# The gate's default: fewer hallucinated objects must not come from naming fewer objects.
DEFAULT_GATE: Final = f"{CHAIR_I},{COVERAGE}"
