"""DDPO and DPO: span-to-token weights, the weighted log-likelihood against a hand
computation, DPO as DDPO's gamma = 1 case against trl's own loss, and a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.spans import changed_spans, released_changes
from rlhf.config import ConfigError, load_config
from rlhf.training_data import DataError, token_weights, usable_spans
from tests.rlhf.conftest import dpo_config, hand_sequence_scores, pair_batch, randomise_adapter, rlhf_cli

# ---------------------------------------------------------------------------------------
# Span-to-token mapping, with a byte-level BPE tokenizer trained here on awkward text


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = ["A café is here. A bluish ball is near the naïve kite.", "Un crème brûlée et un 北京 ball."] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw)


def weighted_pieces(tokenizer: Any, text: str, spans: list[tuple[int, int]], gamma: float = 5.0) -> str:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    weights = token_weights(encoded["offset_mapping"], usable_spans(text, spans), gamma)
    ids = [i for i, w in zip(encoded["input_ids"], weights, strict=True) if w == gamma]
    return tokenizer.decode(ids)


def test_multi_byte_characters_map_to_their_tokens(tokenizer: Any) -> None:
    text = "Un crème brûlée et un 北京 ball."
    start = text.index("brûlée")
    assert weighted_pieces(tokenizer, text, [(start, start + len("brûlée"))]).strip() == "brûlée"
    start = text.index("北京")
    assert weighted_pieces(tokenizer, text, [(start, start + 2)]).strip() == "北京"
    # Half of a character that byte-level BPE splits across tokens still weights its tokens.
    assert weighted_pieces(tokenizer, text, [(start, start + 1)]).strip().startswith("北")


def test_spaces_at_span_edges_do_not_weight_the_neighbours(tokenizer: Any) -> None:
    text = "A café is here."
    start = text.index(" café ")
    # An inserted word carries the space before it (contract/spans.py); the trimmed span
    # weights "café" and not "A" or "is".
    assert weighted_pieces(tokenizer, text, [(start, start + len(" café "))]).strip() == "café"
    assert usable_spans(text, [(start, start + 1)]) == []  # white space only: nothing
    assert usable_spans(text, [(3, 3)]) == []  # empty (a deletion's other side): nothing
    with pytest.raises(DataError, match="outside"):
        usable_spans(text, [(3, 99)])


def test_a_span_inside_a_word_weights_the_tokens_it_touches(tokenizer: Any) -> None:
    text = "A bluish ball is near the naïve kite."
    start = text.index("ish")
    pieces = weighted_pieces(tokenizer, text, [(start, start + 3)])
    assert "ish" in pieces and "ball" not in pieces and not pieces.strip().startswith("A ")


def test_token_weights() -> None:
    offsets = [(0, 1), (1, 5), (5, 9), (0, 0)]
    assert token_weights(offsets, [(2, 4)], 5.0) == [1.0, 5.0, 1.0, 1.0]
    assert token_weights(offsets, [], 5.0) == [1.0] * 4


# RLHF-V's released weighting (contract/spans.released_changes), on cases worked out by hand
# from its rules: difflib with autojunk on, every match shorter than 3 merged into the change
# wherever it sits, only replacements weighted. Letters stand for token ids.


def test_released_weighting_merges_a_short_match_at_the_start() -> None:
    # Matching blocks: "A" (size 1) at the start, "CDEF". The released code drops "A", so the
    # change is A B -> A X on both sides; FactLoop keeps the edge match: only B -> X.
    assert released_changes(list("ABCDEF"), list("AXCDEF")) == ({0, 1}, {0, 1})
    assert [(s.original_text, s.corrected_text) for s in changed_spans("A B C D E F", "A X C D E F")] == [("B", "X")]


def test_released_weighting_merges_a_short_match_at_the_end() -> None:
    # Blocks "ABC" and "E" (size 1, at the end): the change is D E -> X E.
    assert released_changes(list("ABCDE"), list("ABCXE")) == ({3, 4}, {3, 4})
    assert [(s.original_text, s.corrected_text) for s in changed_spans("A B C D E", "A B C X E")] == [("D", "X")]


def test_released_weighting_ignores_pure_insertions_and_deletions() -> None:
    assert released_changes(list("ABCDEF"), list("ABCXDEF")) == (set(), set())  # X inserted
    assert released_changes(list("ABCXDEF"), list("ABCDEF")) == (set(), set())  # X deleted
    # A short match between an insertion and the end is merged: D -> X Y D is a replacement.
    assert released_changes(list("ABCD"), list("ABCXYD")) == ({3}, {3, 4, 5})


def test_released_weighting_diffs_with_autojunk_on_long_responses() -> None:
    # 200 tokens each: "the" x4 then Q, against Q then "the" x4, then 195 shared tokens.
    # Without autojunk the matches are "the the the the" and the shared tail, leaving a
    # deleted Q and an inserted Q: nothing weighted. With autojunk (len(b) >= 200), "the"
    # occurs more than 200 // 100 + 1 = 3 times in b, so it is "popular" and cannot seed a
    # match: the longest match in the first five tokens is Q (size 1), which the released code
    # drops, so all five tokens on each side are one replaced stretch.
    tail = [f"f{i}" for i in range(195)]
    original, corrected = ["the"] * 4 + ["Q"] + tail, ["Q"] + ["the"] * 4 + tail
    assert released_changes(original, corrected) == (set(range(5)), set(range(5)))
    words = changed_spans(" ".join(original), " ".join(corrected))  # FactLoop: autojunk off
    assert [(s.kind, s.original_text, s.corrected_text) for s in words] == [("insert", "", "Q "), ("delete", "Q ", "")]


# ---------------------------------------------------------------------------------------
# Config


def test_config_defaults_checks_and_overrides(tmp_path: Path) -> None:
    base = {"model": "m", "data": ["d"], "output_dir": "o"}
    ddpo = load_config(None, **base)
    assert (ddpo.gamma, ddpo.normalize, ddpo.beta) == (5.0, True, 0.5)  # RLHF-V paper
    dpo = load_config(None, ["method=dpo"], **base)
    assert (dpo.gamma, dpo.normalize) == (1.0, False)
    with pytest.raises(ConfigError, match="method dpo weighs every token 1"):
        load_config(None, ["method=dpo", "gamma=5"], **base)
    with pytest.raises(ConfigError, match=r"unknown setting 'lora\.rank'"):
        load_config(None, ["lora.rank=4"], **base)
    with pytest.raises(ConfigError, match="beta must be positive"):
        load_config(None, ["beta=0"], **base)
    with pytest.raises(ConfigError, match="learning_rate must be a number"):
        load_config(None, ["learning_rate=fast"], **base)
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noutput_dir: o\nlearning_rate: 1e-3\nlora: {r: 4}\n")
    config = load_config(path, ["lora.alpha=8"])
    assert config.learning_rate == 1e-3 and config.lora is not None and (config.lora.r, config.lora.alpha) == (4, 8)
    with pytest.raises(ConfigError, match="missing setting"):
        load_config(None, ["beta=0.1"])


# ---------------------------------------------------------------------------------------
# With the tiny model


@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_log_likelihood_and_loss_match_a_hand_computation(
    base_policy: Path, oracle_export: Path, tmp_path: Path, normalize: bool
) -> None:
    import torch
    import torch.nn.functional as F

    from rlhf.train_dpo import build_trainer

    config = dpo_config(base_policy, oracle_export, tmp_path, "gamma=3", f"normalize={str(normalize).lower()}")
    trainer = build_trainer(config, report_to=[])
    randomise_adapter(trainer.model)
    trainer.model.eval()
    batch = pair_batch(trainer)
    scale, mask = batch["token_scale"], batch["completion_mask"]
    # The weights themselves: 1 or gamma on completion tokens (over N when normalised), 0 elsewhere.
    assert torch.all(scale[mask == 0] == 0)
    row = scale[0][mask[0] == 1]
    n_total = (row / row.min()).sum() if normalize else None
    assert set(torch.round(row / row.min(), decimals=4).tolist()) == {1.0, 3.0}
    if normalize:
        assert torch.isclose(row.sum(), torch.tensor(1.0))
        assert n_total is not None
    ranking_row = scale[2][mask[2] == 1]
    assert torch.all(ranking_row == 1.0)  # rankings: plain DPO, no weights, no normalisation

    loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    policy = hand_sequence_scores(trainer.model, batch)
    with trainer.model.disable_adapter():
        reference = hand_sequence_scores(trainer.model, batch)
    chosen, rejected = (policy - reference).chunk(2)
    expected = -F.logsigmoid(config.beta * (chosen - rejected)).mean()
    assert torch.isclose(loss.detach(), expected, atol=1e-5), (float(loss), float(expected))
    assert abs(float(expected) - 0.6931) > 1e-3  # policy and reference differ: a real check


@pytest.mark.parametrize(("released", "weighted"), [(False, ("green", "red")), (True, ("A green", "A red"))])
def test_the_collator_weights_the_released_way_on_token_ids(
    base_policy: Path, oracle_export: Path, tmp_path: Path, released: bool, weighted: tuple[str, str]
) -> None:
    """One correction through the trainer's collator: FactLoop's spans weight the replaced
    word; the released rules also weight the one-token match "A" at the start (see
    test_released_weighting_merges_a_short_match_at_the_start), on the tiny tokenizer's ids."""
    from contract.export import assistant_turn
    from rlhf.train_dpo import build_trainer

    flag = str(released).lower()
    config = dpo_config(
        base_policy, oracle_export, tmp_path, "gamma=3", "normalize=false", f"released_weighting={flag}"
    )
    trainer = build_trainer(config, report_to=[])
    rejected, chosen = "A red ball is left of a blue cube.", "A green ball is left of a blue cube."
    spans = changed_spans(rejected, chosen)
    row = next(r for r in trainer.train_dataset if r["source"] == "correction") | {
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        "chosen_spans": [[s.corrected_start, s.corrected_end] for s in spans],
        "rejected_spans": [[s.original_start, s.original_end] for s in spans],
    }
    batch = trainer.data_collator([row])
    tokenizer = trainer.processing_class.tokenizer
    found = tuple(tokenizer.decode(batch["input_ids"][i][batch["token_scale"][i] == 3.0]).strip() for i in (0, 1))
    assert found == weighted
    assert set(batch["token_scale"][batch["completion_mask"] == 1].tolist()) == {1.0, 3.0}


@pytest.mark.parametrize("overrides", [("method=dpo",), ("gamma=3", "normalize=true")], ids=["dpo", "ddpo"])
def test_one_prefix_pass_per_pair_gives_trls_loss_and_gradients(
    base_policy: Path, oracle_export: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    """rlhf/prefix.py: the prompt and image once per pair, both responses from its cache,
    for the policy and the reference. The loss and the adapter's gradients equal trl's own
    path (share_prefix=false) on the same batch, to float rounding, and the shared path did
    run (for the policy and the reference alike)."""
    import torch

    import rlhf.prefix as prefix
    from rlhf.train_dpo import build_trainer

    results = {}
    for share in (False, True):
        config = dpo_config(
            base_policy, oracle_export, tmp_path / str(share), *overrides, f"share_prefix={str(share).lower()}"
        )
        trainer = build_trainer(config, report_to=[])
        randomise_adapter(trainer.model)
        trainer.model.train()
        batch = pair_batch(trainer)
        used: list[bool] = []
        towers: list[int] = []
        tower = trainer.model.get_base_model().model.vision_tower
        hook = tower.register_forward_hook(lambda *_, towers=towers: towers.append(1))
        real = prefix.shared_prefix_hidden

        def counting(*args: Any, real: Any = real, used: list[bool] = used, **kwargs: Any) -> Any:
            answer = real(*args, **kwargs)
            used.append(answer is not None)
            return answer

        prefix.shared_prefix_hidden = counting
        try:
            loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
        finally:
            prefix.shared_prefix_hidden = real
            hook.remove()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[share] = (float(loss.detach()), grads, used, len(towers))
    (plain, plain_grads, plain_used, plain_towers) = results[False]
    (shared, shared_grads, shared_used, shared_towers) = results[True]
    assert plain_used == [] and shared_used == [True, True]  # the policy's pass and the reference's
    # The frozen tower: trl runs it for the policy and the reference, the shared path once.
    assert (plain_towers, shared_towers) == (2, 1)
    assert abs(plain - shared) < 1e-5 and abs(plain - 0.6931) > 1e-3
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    scale = max(g.abs().max().item() for g in plain_grads.values())
    worst = max((plain_grads[n] - shared_grads[n]).abs().max().item() for n in plain_grads)
    assert worst <= 1e-4 * scale, (worst, scale)
    assert all(torch.isfinite(g).all() for g in shared_grads.values())


def test_the_shared_prefix_steps_aside_where_it_does_not_hold(
    base_policy: Path, oracle_export: Path, tmp_path: Path
) -> None:
    """An unchecked model type, an input it does not know, or rows whose chosen and rejected
    prompts differ: None, and trl's own path runs."""
    from types import SimpleNamespace

    from rlhf.prefix import shared_prefix_hidden
    from rlhf.train_dpo import build_trainer

    trainer = build_trainer(dpo_config(base_policy, oracle_export, tmp_path), report_to=[])
    batch = dict(pair_batch(trainer))
    for key in ("token_scale", "changed_mask", "severity"):  # the trainer takes these out
        batch.pop(key)
    labels = batch["input_ids"].masked_fill(batch.pop("completion_mask") == 0, -100)
    inputs = batch | {"labels": labels, "fused_lm_head": True, "use_cache": False}
    model = trainer.model.get_base_model()
    assert shared_prefix_hidden(model, **inputs) is not None
    paligemma = SimpleNamespace(config=SimpleNamespace(model_type="paligemma"))  # an unchecked type
    assert shared_prefix_hidden(paligemma, **inputs) is None
    assert shared_prefix_hidden(model, **inputs, image_grid_thw=None) is None  # an input it does not know
    other = inputs["input_ids"].clone()
    half = other.size(0) // 2
    first_prompt_token = int((inputs["attention_mask"][half] == 1).nonzero()[0])
    other[half, first_prompt_token] += 1  # the first rejected row's prompt no longer matches its chosen row's
    assert shared_prefix_hidden(model, **inputs | {"input_ids": other}) is None


def test_gamma_one_without_normalisation_is_exactly_trls_dpo(
    base_policy: Path, oracle_export: Path, tmp_path: Path
) -> None:
    import torch
    from trl import DPOTrainer

    from rlhf.train_dpo import build_trainer

    # Bitwise equal on trl's own path; the shared prefix equals it to rounding (the test above).
    config = dpo_config(base_policy, oracle_export, tmp_path, "method=dpo", "share_prefix=false")
    trainer = build_trainer(config, report_to=[])
    randomise_adapter(trainer.model, seed=1)
    trainer.model.eval()
    batch = pair_batch(trainer)
    ours = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    plain = dict(batch)
    for key in ("token_scale", "changed_mask", "severity"):
        del plain[key]
    theirs = DPOTrainer._compute_loss(trainer, trainer.model, plain, return_outputs=False)
    assert torch.equal(ours.detach(), theirs.detach())
    # And DDPO's weights do change it.
    ddpo = build_trainer(dpo_config(base_policy, oracle_export, tmp_path / "d", "gamma=5"), report_to=[])
    ddpo.model.load_state_dict(trainer.model.state_dict())
    ddpo.model.eval()
    weighted = ddpo._compute_loss(ddpo.model, pair_batch(ddpo), return_outputs=False)
    assert not torch.isclose(weighted.detach(), theirs.detach())


def test_a_tiny_run_lowers_the_loss_changes_only_the_adapter_and_resumes(
    base_policy: Path, oracle_export: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from rlhf.train_dpo import train

    out = tmp_path / "run"
    config = dpo_config(base_policy, oracle_export, out, "learning_rate=2.0e-3", "epochs=4", "save_steps=5")
    result = train(config, report_to=[])
    assert result.steps == 20 and result.first_loss is not None and result.last_loss is not None
    assert result.last_loss < result.first_loss - 0.05, (result.first_loss, result.last_loss)
    # Only adapter weights were trained: the base checkpoint's tensors are what the trainer ended with.
    base = AutoModelForImageTextToText.from_pretrained(str(base_policy), dtype=torch.float32).state_dict()
    assert result.adapter_dir is not None
    adapter = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)
    assert any(tensor.abs().sum() > 0 for key, tensor in adapter.items() if "lora_B" in key)
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(str(base_policy), dtype=torch.float32), str(result.adapter_dir)
    )
    for name, tensor in reloaded.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(tensor, base[key]), name
    recorded = json.loads((out / "result.json").read_text())
    assert recorded["git_revision"] and recorded["config"]["gamma"] == 5.0
    assert "gamma: 5.0" in (out / "config.yaml").read_text()
    # Resume: a checkpoint at step 15 continues to the same 20 steps.
    assert (out / "checkpoint-15").is_dir()
    for later in out.glob("checkpoint-20"):
        import shutil

        shutil.rmtree(later)
    resumed = train(config, resume=True, report_to=[])
    assert resumed.steps == 20


def test_the_cli_trains_and_refuses_a_bad_config(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    config = tmp_path / "ddpo.yaml"
    config.write_text(
        f"model: {base_policy}\ndata: [{oracle_export}]\noutput_dir: {tmp_path / 'out'}\n"
        "lora: {r: 4, dropout: 0}\nbatch_size: 10\nthreads: 1\nmax_pairs: 10\n"
    )
    done = rlhf_cli("dpo", "--config", str(config), "--set", "method=dpo")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["pairs"] == 10
    assert (tmp_path / "out/adapter/adapter_config.json").is_file()
    assert list((tmp_path / "out/runs").rglob("events.out.tfevents.*"))  # TensorBoard logs
    bad = rlhf_cli("dpo", "--config", str(config), "--set", "beta=-1", timeout=120)
    assert bad.returncode == 2 and "beta must be positive" in bad.stderr
    missing = rlhf_cli("dpo", "--config", str(config), "--set", f"data=[{tmp_path}]", timeout=300)
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr


def test_full_fine_tuning_weights_the_reference_too(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    import math

    from rlhf.train_dpo import build_trainer, train

    config = dpo_config(base_policy, oracle_export, tmp_path / "full", "lora=null", "max_pairs=8", "epochs=1")
    trainer = build_trainer(config, report_to=[])
    assert trainer.ref_model is not None and not hasattr(trainer.model, "peft_config")
    trainer.model.eval()
    # Policy = reference at the start: with the same weights on both sides every log-ratio
    # is 0 and the loss is log 2 (weighting only the policy would move it).
    loss = trainer._compute_loss(trainer.model, pair_batch(trainer), return_outputs=False)
    assert math.isclose(float(loss.detach()), math.log(2), abs_tol=1e-6)
    result = train(config, report_to=[])
    assert result.adapter_dir is not None and (Path(result.adapter_dir) / "model.safetensors").is_file()
