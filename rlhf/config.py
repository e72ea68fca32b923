"""Training configuration: dataclasses with every field documented, read from YAML with
command-line overrides, cross-checked in `__post_init__` (a bad value stops before any
model is loaded, with a message naming the field).

Defaults follow docs/methods.md 2c: DDPO with gamma 5, beta 0.5 and
normalisation on (RLHF-V paper, arXiv:2312.00849, section 3.2 and appendix); DPO is its
gamma = 1, unnormalised case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from contract.methods import DPO_METHODS, RL_METHODS

DTYPES = ("float32", "bfloat16", "float16")
# Where a pair comes from: an annotator's ranking or correction, or rlhf/synthetic.py.
PAIR_SOURCES = ("ranking", "correction", "rating", "synthetic", "ai")
SYNTHETIC_KINDS = ("inject", "noised_image")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


def coerce_numbers(obj: Any, prefix: str = "") -> None:
    """YAML 1.1 reads `1e-3` as text: turn text in number fields into numbers, or name the
    field that is not one."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = str(f.type)
        if isinstance(value, str) and kind.split(" ")[0] in ("float", "int"):
            try:
                setattr(obj, f.name, float(value) if kind.startswith("float") else int(value))
            except ValueError:
                raise ConfigError(f"{prefix}{f.name} must be a number, got {value!r}") from None


def normalise_run_inputs(config: Any) -> None:
    """What every run config accepts loosely from YAML: numbers written as text, one data
    folder as a string, LoRA settings as a mapping."""
    coerce_numbers(config)
    if isinstance(config.data, str):
        config.data = [config.data]
    if isinstance(getattr(config, "extra_data", None), str):
        config.extra_data = [config.extra_data]
    if isinstance(config.lora, dict):
        config.lora = LoraSettings(**config.lora)


def language_model_prefix(model: Any) -> str | None:
    """The name of the model's language model among its modules (what `get_decoder()`
    returns: transformers' image-text-to-text models point it at their text decoder), or
    None when the model has none apart from itself."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is model:
        return None
    return next((name for name, module in model.named_modules() if module is decoder and name), None)


DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _linear_leaves(model: Any, prefix: str) -> set[str]:
    """The last name parts of the linear layers under `prefix`."""
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear)
    }


@dataclass
class LoraSettings:
    """LoRA through peft (arXiv:2106.09685)."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names (suffixes) that get adapters; the defaults are the attention projections of
    Llama-style language models (LLaVA's vision tower uses the same names: see
    `language_model_only`). When the language model has none of the default names, the
    defaults mean all of its linear layers."""
    language_model_only: bool = True
    """Adapt only the language model's modules, not the vision tower's or the projector's:
    the module the model's `get_decoder()` returns, wherever the family keeps it
    (`model.language_model` in LLaVA and Qwen2-VL, `model.text_model` in Idefics3). The
    vision tower stays frozen unless this is off and `target_modules` name its layers."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full beside the adapter and saved with it (a projector, say:
    `multi_modal_projector` in LLaVA, `connector` in Idefics3). vLLM serves LoRA on the
    language model only: a policy adapter with these is for transformers."""

    def peft_config(self, task_type: str | None, model: Any = None, *, extra_to_save: Sequence[str] = ()) -> Any:
        """peft's LoraConfig for these settings (`CAUSAL_LM` for a policy; the reward model
        passes no task type and its score head in `extra_to_save`), for `model` (whose
        language model is found by name when `language_model_only`)."""
        from peft import LoraConfig

        to_save = list(dict.fromkeys([*self.modules_to_save, *extra_to_save])) or None
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.targets(model),
            modules_to_save=to_save,
            task_type=task_type,
        )

    def targets(self, model: Any = None) -> str | list[str]:
        """peft's `target_modules`: with `language_model_only`, a regex (peft full-matches
        it) for the language model's modules only, which is also what vLLM applies a LoRA
        adapter to; without a model to look into, any module under a `language_model`."""
        if not self.language_model_only:
            return list(self.target_modules)
        prefix = language_model_prefix(model) if model is not None else None
        leaves = list(self.target_modules)
        if prefix is not None and leaves == DEFAULT_TARGETS:
            linear = _linear_leaves(model, prefix)
            if linear and not linear & set(leaves):
                # The defaults are Llama's names; a language model that uses others (Persimmon's
                # query_key_value and dense, say) gets every one of its linear layers instead.
                leaves = sorted(linear)
        names = "|".join(re.escape(name) for name in leaves)
        if prefix is None:
            return rf".*language_model.*\.({names})"
        return rf"{re.escape(prefix)}\..*\.({names})"

    def __post_init__(self) -> None:
        coerce_numbers(self, "lora.")
        if self.r < 1:
            raise ConfigError(f"lora.r must be at least 1, got {self.r}")
        if self.alpha < 1:
            raise ConfigError(f"lora.alpha must be at least 1, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class DPOTrainConfig:
    """One run from preference pairs (DDPO, DPO, SFT, mDPO, HSA-DPO, HALVA): from exported labels to an adapter."""

    model: str
    """The policy at the start of the round: a local checkpoint folder or a hub id."""
    data: list[str]
    """`trl` export folders (annotation.data.exporters); their pairs are concatenated."""
    output_dir: str
    """Where checkpoints, TensorBoard logs and the final adapter are written."""
    extra_data: list[str] = field(default_factory=list)
    """More `trl` export folders trained on beside `data`: a ratings export (`rlhf.cli
    pairs`), an earlier round's labels. train_round sets `data` to the round's export; this
    adds to it."""
    method: str = "ddpo"
    """`ddpo` (RLHF-V's token-weighted DPO), `dpo` (its gamma = 1, unnormalised case), `sft`
    (the chosen responses' likelihood), `mdpo`, `hsa_dpo` or `halva` (rlhf/objectives.py;
    docs/methods.md 2d). All but ddpo weigh every token 1."""
    gamma: float | None = None
    """Weight of the corrected tokens in both responses; default 5 for ddpo (RLHF-V paper),
    1 for dpo. Pairs without spans (rankings) always train with weight 1."""
    normalize: bool | None = None
    """Divide a corrected pair's weighted log-likelihood by |U| + gamma |C| (the paper does,
    RLHF-V's released run does not); default true for ddpo, false for dpo."""
    released_weighting: bool = False
    """Weight the tokens RLHF-V's released code weights instead of the stored spans: the two
    responses' token ids diffed with autojunk on, every match under 3 tokens merged into the
    change, replacements only (contract/spans.released_changes); for comparison runs."""
    share_prefix: bool = True
    """Run each pair's prompt and image once, both responses continuing from its cache, for
    the policy and the reference (rlhf/prefix.py): the same log-probabilities as trl's path,
    less work. Applies to the model types it was checked on (LLaVA) and falls back to trl's
    path elsewhere; false always takes trl's path."""
    beta: float = 0.5
    """DPO temperature (RLHF-V paper: 0.5; its released script: 0.1); also mDPO's and
    HSA-DPO's."""
    ld_alpha: float | None = None
    """LD-DPO's length desensitisation (Liu et al., arXiv:2409.06411, eq. 7; trl's `ld_alpha`):
    the log-probabilities of the longer response's tokens beyond the shorter one's length
    count alpha times, so a pair's length difference pushes less. Corrections delete
    hallucinated sentences, so their chosen side is shorter and plain DPO learns "shorter";
    DDPO and DPO take it. None (or 1): off."""
    mdpo_crop: float = 0.2
    """mDPO: the corrupted image is a random crop keeping at most this share of the image's
    area, resized back (mDPO, arXiv:2406.11839 section 3: a crop of 0-20% of the image)."""
    mdpo_delta: float = 0.0
    """mDPO's anchor delta: the chosen response's implicit reward is pushed above it (paper: 0)."""
    mdpo_conditional_weight: float = 1.0
    """Weight of mDPO's conditional term (image versus corrupted image; paper: 1)."""
    mdpo_anchor_weight: float = 1.0
    """Weight of mDPO's anchor term (paper: 1)."""
    halva_alpha: float = 1.0
    """HALVA: weight of the token KL to the reference on the correct response, beside the
    phrase contrast (HALVA, arXiv:2405.18654 eq. 4, tunes it per model; 1 is FactLoop's
    default)."""
    synthetic: str | None = None
    """Synthetic rejected responses mixed with the human pairs (rlhf/synthetic.py): `inject`
    (POVID's and BPO's error injection: objects absent from the image and wrong counts put
    into a chosen response, arXiv:2402.11411, arXiv:2403.08730), `noised_image` (the policy's
    answer to the prompt given a noised image, POVID's and BPO's image weakening and STIC's
    corrupted image, arXiv:2405.19716), or null (human pairs only)."""
    synthetic_ratio: float = 0.5
    """Synthetic pairs per human pair (0.5: one synthetic pair for every two human ones)."""
    synthetic_vocabulary: str = "coco"
    """`inject`: the object vocabulary whose names are swapped (rlhf/vocabularies.py: coco,
    toyworld)."""
    synthetic_noise: float = 0.6
    """`noised_image`: the share of Gaussian noise, x' = sqrt(1 - s) x + sqrt(s) e, as a
    diffusion step's (POVID's noise schedule)."""
    init_adapter: str | None = None
    """The previous round's adapter: training continues it, and the reference is the
    policy with it (the policy at the start of the round). None: a new adapter."""
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    """LoRA settings; null for full fine-tuning (then a frozen copy is the reference)."""
    learning_rate: float = 5e-6
    """Peak learning rate (linear decay; the RLHF-V paper used 5e-7 for full fine-tuning
    of a 13B model)."""
    epochs: float = 1.0
    """Passes over the pairs."""
    batch_size: int = 8
    """Pairs per device step."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients add up before an update."""
    max_length: int | None = None
    """Truncate prompt + response to this many tokens; None keeps everything (truncation can
    cut image tokens, and the model then finds fewer image tokens than features)."""
    warmup_ratio: float = 0.0
    """Share of steps with a linearly rising learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    dtype: str = "float32"
    """Weights' dtype when loading: float32, bfloat16 or float16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower)."""
    logging_steps: int = 10
    """Log (console, TensorBoard) every this many updates."""
    save_steps: int = 0
    """Keep a resumable checkpoint every this many updates (0: only at the end)."""
    seed: int = 0
    """Seed for data order, dropout and adapter initialisation."""
    sources: list[str] = field(default_factory=lambda: list(PAIR_SOURCES))
    """Which pairs of the exports to train on, by source: ranking, correction, rating
    (rlhf/ratings.py), synthetic (rlhf/synthetic.py), ai (an AI labeller's pairs,
    rlhf/ai_feedback.py)."""
    ai_weight: float = 1.0
    """How much an AI labeller's pair (source "ai") counts beside a human one: each is seen
    `ai_weight` times an epoch on average (whole copies, and one more copy with the
    fractional part's probability, drawn with `seed`); 0 leaves them out."""
    max_pairs: int | None = None
    """Use at most this many pairs (the first ones, in export order)."""
    threads: int | None = None
    """torch CPU threads (None: torch's default). Tiny models on few cores want 1."""

    def __post_init__(self) -> None:
        normalise_run_inputs(self)
        if self.method not in DPO_METHODS:
            raise ConfigError(f"method must be one of {', '.join(DPO_METHODS)}, got {self.method!r}")
        if self.method != "ddpo":
            if self.gamma not in (None, 1, 1.0) or self.normalize:
                raise ConfigError(
                    f"method {self.method} weighs every token 1 (gamma = 1, normalize = false); leave them unset"
                )
            self.gamma, self.normalize = 1.0, False
        else:
            self.gamma = 5.0 if self.gamma is None else float(self.gamma)
            self.normalize = True if self.normalize is None else bool(self.normalize)
        if self.gamma <= 0:
            raise ConfigError(f"gamma must be positive, got {self.gamma}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be 0 or more, got {self.save_steps}")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError(f"max_length must be at least 16 or null, got {self.max_length}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.data:
            raise ConfigError("data must name at least one export folder")
        if self.ai_weight < 0:
            raise ConfigError(f"ai_weight must be 0 or more, got {self.ai_weight}")
        unknown = set(self.sources) - set(PAIR_SOURCES)
        if unknown or not self.sources:
            raise ConfigError(f"sources must be among {', '.join(PAIR_SOURCES)}; got {self.sources}")
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            raise ConfigError(f"ld_alpha must be in [0, 1] or null, got {self.ld_alpha}")
        if self.ld_alpha is not None and self.method not in ("ddpo", "dpo"):
            raise ConfigError(f"ld_alpha applies to ddpo and dpo (trl's loss), not {self.method}")
        if not 0 < self.mdpo_crop < 1:
            raise ConfigError(f"mdpo_crop must be in (0, 1), got {self.mdpo_crop}")
        for name in ("mdpo_conditional_weight", "mdpo_anchor_weight", "halva_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.synthetic not in (None, *SYNTHETIC_KINDS):
            raise ConfigError(f"synthetic must be one of {', '.join(SYNTHETIC_KINDS)} or null, got {self.synthetic!r}")
        if self.synthetic_ratio <= 0:
            raise ConfigError(f"synthetic_ratio must be positive, got {self.synthetic_ratio}")
        if not 0 < self.synthetic_noise < 1:
            raise ConfigError(f"synthetic_noise must be in (0, 1), got {self.synthetic_noise}")
        if self.init_adapter is not None and self.lora is None:
            raise ConfigError("init_adapter continues a LoRA adapter; it needs lora settings (not full fine-tuning)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RLTrainConfig:
    """One online RL run against a reward model: PPO (ours), or trl's GRPO or RLOO.

    Defaults follow LLaVA-RLHF (arXiv:2309.14525, section 3 and appendix; docs/methods.md 2b):
    KL coefficient 0.1 with the clamped k1 estimator, clip 0.2, value-loss coefficient 0.1,
    gamma = lambda = 1, 2 PPO epochs per rollout batch, lr 3e-5, temperature 1.0.
    """

    model: str
    """The policy at the start of the round: a local checkpoint folder or a hub id."""
    reward_model: str
    """A reward model: the output folder of a reward run, or its registered version folder."""
    data: list[str]
    """`trl` export folders; their distinct (image, prompt) pairs are the rollout prompts."""
    output_dir: str
    """Where the adapter, the per-step log, TensorBoard events and the result are written."""
    method: str = "ppo"
    """`ppo` (FactLoop's PPO with a critic), `grpo` or `rloo` (trl's trainers, no critic)."""
    init_adapter: str | None = None
    """The previous round's adapter to continue (the reference is then the policy with it)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(dropout=0.0))
    """LoRA settings of the policy (dropout off: PPO's ratios need a deterministic policy)."""
    learning_rate: float = 3e-5
    """Policy learning rate (LLaVA-RLHF: 3e-5), constant."""
    critic_learning_rate: float | None = None
    """Critic learning rate (PPO only); None: the policy's."""
    steps: int = 20
    """Rollout batches (PPO) or optimiser steps (GRPO/RLOO)."""
    rollout_batch_size: int = 16
    """Prompts per rollout batch (PPO), or completions per step (GRPO/RLOO), over all
    processes: each of N processes (accelerate launch) takes 1/N of them."""
    minibatch_size: int = 8
    """Rollouts per PPO update, over all processes (as rollout_batch_size)."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (LLaVA-RLHF: 2)."""
    num_generations: int = 4
    """Completions per prompt for GRPO/RLOO (their group baseline)."""
    max_new_tokens: int = 64
    """Longest response sampled; one that reaches it without the stop token is penalised."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (LLaVA-RLHF: 1.0)."""
    rollout_server: str | None = None
    """vLLM server URL(s), comma-separated, serving `model` as their base: rollouts are
    sampled there with the policy's LoRA adapter, loaded in place before the first rollout
    and after every update (rlhf/rollouts.py), instead of with transformers' generate. The
    servers read the adapter from output_dir, so they must see that folder at the same path
    (the same machine or a shared volume). Null: transformers' generate."""
    rollout_max_gap: float = 0.5
    """With rollout_server: the largest mean absolute difference per token between the
    server's and the trainer's log-probs of the sampled tokens; beyond it the run stops, as
    the server is not serving the trainer's policy."""
    kl_coef: float = 0.1
    """Per-token KL penalty to the reference (LLaVA-RLHF: 0.1); GRPO/RLOO's beta."""
    kl_target: float | None = None
    """With a value, PPO adapts kl_coef towards this KL per response (Ziegler et al., 2019)."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in rollouts."""
    clip: float = 0.2
    """PPO's ratio clip (LLaVA-RLHF: 0.2); also GRPO/RLOO's epsilon."""
    value_clip: float = 0.2
    """Clip of the value update around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss (LLaVA-RLHF: 0.1)."""
    gamma: float = 1.0
    """Discount of GAE (LLaVA-RLHF: 1)."""
    lam: float = 1.0
    """GAE's lambda (LLaVA-RLHF: 1)."""
    whiten_advantages: bool = True
    """Normalise advantages over each rollout batch."""
    reward_scale: float = 1.0
    """Multiplies the reward model's score before the symbolic terms are added."""
    length_penalty: float = 0.0
    """Subtracted from the reward per response token beyond `length_free` (LLaVA-RLHF's
    length penalty against the reward model's taste for long answers)."""
    length_free: int = 0
    """Response tokens the length penalty does not count."""
    length_anchor: float = 0.0
    """Subtracted from the reward per word a response falls short of `length_anchor_share`
    times its prompt's reference length (the mean length of the responses the prompt's
    exported pairs hold: the policy's own answers at the round's start). Keeps answers about
    as long as they were, so that cutting them is not a way to please the reward model."""
    length_anchor_share: float = 0.9
    """The share of the reference length below which `length_anchor` charges."""
    length_debias: bool = False
    """Regress response length out of the reward model's scores over each rollout batch
    (rlhf/scoring.py, `remove_length_trend`): a reward model that prefers shorter answers
    then cannot be gamed by cutting them."""
    missing_stop_penalty: float = 1.0
    """Subtracted when a response never emits the stop token (truncated)."""
    yes_no_bonus: float = 1.0
    """Added when a yes/no question whose answer is known gets the right answer."""
    released: bool = False
    """PPO as LLaVA-RLHF's released code computes it (its 13B run's settings; README, "Online
    RL"): responses padded to max_new_tokens and every column counted (the score at the last
    column, KL, values and whitening over padding too, plain means in the losses), the shaped
    rewards times 10, and its symbolic terms in place of the ones above: -10 x response
    tokens / max_new_tokens, -8 without a stop token, and twice its answer bonus (+0.5 for a
    "No" to a question whose answer is no, -0.5 for a "Yes" to it, +1 for the right option
    of a multiple-choice question). Off: FactLoop's PPO, where padding never counts."""
    max_prompts: int | None = None
    """Use at most this many distinct prompts."""
    dtype: str = "float32"
    """Weights' dtype when loading: float32, bfloat16 or float16."""
    logging_steps: int = 1
    """Log (console, TensorBoard, log.jsonl) every this many steps."""
    seed: int = 0
    """Seed of sampling, data order and adapter initialisation."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def __post_init__(self) -> None:
        normalise_run_inputs(self)
        if self.method not in RL_METHODS:
            raise ConfigError(f"method must be one of {', '.join(RL_METHODS)}, got {self.method!r}")
        for name in ("steps", "rollout_batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.method == "ppo" and self.minibatch_size > self.rollout_batch_size:
            raise ConfigError("minibatch_size cannot exceed rollout_batch_size")
        if self.released and self.method != "ppo":
            raise ConfigError(f"released is LLaVA-RLHF's PPO; method {self.method!r} has no released mode")
        if self.released and self.rollout_batch_size < 8:
            # LLaVA-RLHF's whiten() refuses fewer than 8 rows (ppo_trainer.py).
            raise ConfigError(
                f"released mode whitens over at least 8 rollouts; rollout_batch_size is {self.rollout_batch_size}"
            )
        if self.num_generations < 2:
            raise ConfigError(f"num_generations must be at least 2 (a group baseline), got {self.num_generations}")
        if self.method != "ppo" and self.rollout_batch_size % self.num_generations:
            raise ConfigError("rollout_batch_size must be a multiple of num_generations for grpo and rloo")
        for name in ("learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.critic_learning_rate is not None and self.critic_learning_rate <= 0:
            raise ConfigError(f"critic_learning_rate must be positive, got {self.critic_learning_rate}")
        if not 0 < self.length_anchor_share <= 1:
            raise ConfigError(f"length_anchor_share must be in (0, 1], got {self.length_anchor_share}")
        for name in (
            "kl_coef",
            "length_penalty",
            "missing_stop_penalty",
            "yes_no_bonus",
            "vf_coef",
            "length_free",
            "length_anchor",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be positive or null, got {self.kl_target}")
        if not 0 < self.clip < 1 or self.value_clip <= 0:
            raise ConfigError("clip must be in (0, 1) and value_clip positive")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError("gamma must be in (0, 1] and lam in [0, 1]")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.data:
            raise ConfigError("data must name at least one export folder")
        if self.rollout_server is not None and not any(u.strip() for u in self.rollout_server.split(",")):
            raise ConfigError("rollout_server must name at least one URL, or be null")
        if self.rollout_max_gap <= 0:
            raise ConfigError(f"rollout_max_gap must be positive, got {self.rollout_max_gap}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = {}
            target[key] = child
        target = child
    target[keys[-1]] = value


def _known(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    names = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting '{prefix}{key}'; known: {', '.join(sorted(names))}")
        if key == "lora" and isinstance(value, dict):
            _known(LoraSettings, value, prefix="lora.")


def load_config(path: Path | None, overrides: Sequence[str] = (), **base: Any) -> DPOTrainConfig:
    """A DDPO/DPO config (see `load_run_config`)."""
    config: DPOTrainConfig = load_run_config(DPOTrainConfig, path, overrides, **base)
    return config


def load_run_config(cls: type, path: Path | None, overrides: Sequence[str] = (), /, **base: Any) -> Any:
    """A config of class `cls` from a YAML file (optional), then `base` values, then
    `key=value` overrides (dotted keys reach nested settings: `lora.r=8`; values are read as
    YAML)."""
    data: dict[str, Any] = dict(base)
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read {path}: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        data.update(loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        _set(data, key.strip(), yaml.safe_load(raw))
    _known(cls, data)
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"missing setting(s): {', '.join(missing)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise ConfigError(str(error)) from None


def dump(config: Any) -> str:
    """The resolved config as YAML (what a run records next to its adapter)."""
    data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    return yaml.safe_dump(data, sort_keys=False)
