"""The survey's other offline methods (rlhf/objectives.py) and synthetic negatives
(rlhf/synthetic.py): each loss against a hand computation, each method's loss through the
trainer against log-probabilities computed by hand from the model's logits, and a few
training steps of each on the tiny model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from contract.spans import changed_spans
from rlhf import objectives
from rlhf.config import ConfigError
from tests.rlhf.conftest import dpo_config, hand_sequence_scores, pair_batch, randomise_adapter, rlhf_cli


def _nls(x: float) -> float:
    """-log sigma(x)."""
    return math.log1p(math.exp(-x))


def _t(*values: float) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float64)


def test_dpo_and_hsa_dpo_match_a_hand_computation() -> None:
    policy_w, policy_l, ref_w, ref_l = _t(-3.0, -5.0), _t(-4.0, -4.5), _t(-3.5, -5.0), _t(-3.8, -4.0)
    # Log-ratios: chosen 0.5 and 0.0, rejected -0.2 and -0.5; beta 0.5.
    dpo = objectives.dpo_loss(policy_w, policy_l, ref_w, ref_l, 0.5)
    assert dpo.tolist() == pytest.approx([_nls(0.35), _nls(0.25)])
    # Severity weights 2 and 0.5 scale the rejected side only: 0.25 + 2 * 0.1 and 0 + 0.5 * 0.25.
    hsa = objectives.hsa_dpo_loss(policy_w, policy_l, ref_w, ref_l, _t(2.0, 0.5), beta=0.5)
    assert float(hsa) == pytest.approx((_nls(0.45) + _nls(0.125)) / 2)
    ones = objectives.hsa_dpo_loss(policy_w, policy_l, ref_w, ref_l, _t(1.0, 1.0), beta=0.5)
    assert float(ones) == pytest.approx(float(dpo.mean()))  # h = 1 is DPO
    assert objectives.severity_weights(_t(1.0, 3.0), 2.0).tolist() == [0.5, 1.5]


def test_mdpo_matches_a_hand_computation() -> None:
    args = (_t(-3.0), _t(-4.0), _t(-3.5), _t(-3.8), _t(-6.0), _t(-5.5))
    # Chosen reward 0.5 * 0.5 = 0.25; given the corrupted image 0.5 * -0.5 = -0.25.
    loss, parts = objectives.mdpo_loss(*args, beta=0.5)
    assert float(parts["dpo"]) == pytest.approx(_nls(0.35))
    assert float(parts["conditional"]) == pytest.approx(_nls(0.5))
    assert float(parts["anchor"]) == pytest.approx(_nls(0.25))
    assert float(loss) == pytest.approx(_nls(0.35) + _nls(0.5) + _nls(0.25))
    weighted, _ = objectives.mdpo_loss(*args, beta=0.5, delta=0.1, conditional_weight=2.0, anchor_weight=0.5)
    assert float(weighted) == pytest.approx(_nls(0.35) + 2 * _nls(0.5) + 0.5 * _nls(0.15))


def test_sft_kl_and_halva_match_a_hand_computation() -> None:
    import torch

    token_logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(objectives.sft_loss(token_logps, mask)) == pytest.approx(3.5 / 3)
    # One position: the reference says (0.75, 0.25), the policy (0.5, 0.5); a masked one counts nothing.
    policy = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    ref = torch.tensor([[[math.log(3.0), 0.0], [0.0, 5.0]]])
    kl = objectives.token_kl(policy, ref, torch.tensor([[1.0, 0.0]]))
    assert float(kl) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    loss, parts = objectives.halva_loss(_t(-1.0, -2.0), _t(-3.0, -2.0), _t(0.2)[0], alpha=0.5)
    assert float(parts["contrast"]) == pytest.approx((_nls(2.0) + _nls(0.0)) / 2)
    assert float(loss) == pytest.approx((_nls(2.0) + _nls(0.0)) / 2 + 0.1)


# ---------------------------------------------------------------------------------------
# Through the trainer, against the model's own logits


def _hand_token_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits[:, :-1]
    token = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return token * batch["completion_mask"][:, 1:], logits


def _expected(method: str, trainer: Any, batch: dict[str, Any], beta: float) -> Any:
    import torch

    model = trainer.model
    n = batch["input_ids"].size(0) // 2
    mask = batch["completion_mask"][:, 1:].float()
    if method == "sft":
        token, _ = _hand_token_logps(model, batch)
        return objectives.sft_loss(token[:n], mask[:n])
    if method == "halva":
        token, logits = _hand_token_logps(model, batch)
        with model.disable_adapter():
            _, ref_logits = _hand_token_logps(model, batch)
        phrase = batch["changed_mask"][:, 1:] * mask
        assert phrase[:n].sum(dim=1).gt(0).sum() == 2 and phrase[n - 1].sum() == 0  # the ranking has no spans
        # The ranking's pair contrasts the tokens where its responses part: the first
        # response tokens that differ, found here by hand from the two texts' tokens.
        for row in (n - 1, 2 * n - 1):
            phrase[row] = 0
        chosen = batch["input_ids"][n - 1, 1:][mask[n - 1].bool()].tolist()
        rejected = batch["input_ids"][2 * n - 1, 1:][mask[2 * n - 1].bool()].tolist()
        part = next(i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
        phrase[n - 1, mask[n - 1].nonzero().flatten()[part]] = 1
        phrase[2 * n - 1, mask[2 * n - 1].nonzero().flatten()[part]] = 1
        sums = (token * phrase).sum(dim=1)
        kl = objectives.token_kl(logits[:n], ref_logits[:n], mask[:n])
        return objectives.halva_loss(sums[:n], sums[n:], kl, alpha=1.0)[0]
    policy = hand_sequence_scores(model, batch, weighted=False)
    with model.disable_adapter():
        ref = hand_sequence_scores(model, batch, weighted=False)
    if method == "hsa_dpo":
        weights = batch["severity"] / trainer.mean_severity
        return objectives.hsa_dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], weights, beta=beta)
    corrupted = batch["corrupted"]
    policy_c = hand_sequence_scores(model, corrupted, weighted=False)[:n]
    with model.disable_adapter():
        ref_c = hand_sequence_scores(model, corrupted, weighted=False)[:n]
    assert torch.equal(corrupted["input_ids"], batch["input_ids"])  # the same tokens, another image
    assert not torch.allclose(corrupted["pixel_values"], batch["pixel_values"])
    return objectives.mdpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], policy_c, ref_c, beta=beta)[0]


@pytest.mark.parametrize("method", ["sft", "mdpo", "hsa_dpo", "halva"])
def test_the_trainers_loss_matches_the_hand_computation(
    base_policy: Path, oracle_export: Path, tmp_path: Path, method: str
) -> None:
    import torch

    from rlhf.train_dpo import build_trainer

    trainer = build_trainer(dpo_config(base_policy, oracle_export, tmp_path, f"method={method}"), report_to=[])
    randomise_adapter(trainer.model)
    trainer.model.eval()
    batch = pair_batch(trainer)
    if method == "hsa_dpo":
        counts = [max(1, len(row["rejected_spans"])) for row in trainer.train_dataset]
        assert trainer.mean_severity == pytest.approx(sum(counts) / len(counts)) and len(set(counts)) > 1
    loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    expected = _expected(method, trainer, batch, trainer.objective.beta)
    assert torch.isclose(loss.detach(), expected.to(loss.dtype), atol=1e-5), (float(loss), float(expected))
    assert abs(float(expected) - 0.6931) > 1e-3  # not the untrained DPO value: a real check


def test_halva_contrasts_a_deletion_where_the_responses_part(
    base_policy: Path, oracle_export: Path, tmp_path: Path
) -> None:
    """A correction that only deleted a sentence: the chosen side's phrase is empty. Its
    log-probability 0 against a whole sentence's would saturate the contrast (no gradient);
    HALVA's contrast is instead between the two tokens where the responses part: the
    corrected response's end against the first token of the deleted sentence, in the same
    context."""
    import torch

    from contract.export import assistant_turn
    from rlhf.train_dpo import build_trainer

    trainer = build_trainer(dpo_config(base_policy, oracle_export, tmp_path, "method=halva"), report_to=[])
    randomise_adapter(trainer.model)
    trainer.model.eval()
    rejected, chosen = "A red ball is at the top. A blue kite is at the left.", "A red ball is at the top."
    spans = changed_spans(rejected, chosen)
    assert [s.corrected_start == s.corrected_end for s in spans] == [True]  # a pure deletion
    row = next(r for r in trainer.train_dataset if r["source"] == "correction") | {
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        "chosen_spans": [[s.corrected_start, s.corrected_end] for s in spans],
        "rejected_spans": [[s.original_start, s.original_end] for s in spans],
    }
    batch = dict(trainer.data_collator([row]))
    loss = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)
    token, logits = _hand_token_logps(trainer.model, batch)
    with trainer.model.disable_adapter():
        _, ref_logits = _hand_token_logps(trainer.model, batch)
    phrase = batch["changed_mask"][:, 1:]
    assert phrase[0].sum() == 0 and phrase[1].sum() > 0
    mask = batch["completion_mask"][:, 1:].float()
    ids = batch["input_ids"][:, 1:]
    chosen_at, rejected_at = (mask[row].nonzero().flatten() for row in (0, 1))
    part = len(chosen_at) - 1  # the corrected response's last token: its end
    assert torch.equal(ids[0, chosen_at[:part]], ids[1, rejected_at[:part]])  # the same text until then
    assert ids[0, chosen_at[part]] != ids[1, rejected_at[part]]
    kl = objectives.token_kl(logits[:1], ref_logits[:1], mask[:1])
    expected = objectives.halva_loss(
        token[0, chosen_at[part]].reshape(1), token[1, rejected_at[part]].reshape(1), kl, alpha=1.0
    )[0]
    assert torch.isclose(loss.detach(), expected.to(loss.dtype), atol=1e-5), (float(loss), float(expected))
    assert float(expected) > 0.05  # not saturated: the contrast has a gradient


@pytest.mark.parametrize(
    "overrides",
    [
        ("method=sft",),
        ("method=mdpo",),
        ("method=hsa_dpo",),
        ("method=halva",),
        ("method=dpo", "synthetic=inject", "synthetic_vocabulary=toyworld"),
        ("method=ddpo", "synthetic=noised_image", "synthetic_ratio=0.25"),
    ],
    ids=["sft", "mdpo", "hsa_dpo", "halva", "dpo+inject", "ddpo+noised_image"],
)
def test_each_method_lowers_its_loss_in_a_few_steps(
    base_policy: Path, oracle_export: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    """The mean loss over the training pairs falls after two epochs (loss moves the right
    way); with synthetic negatives, the run trains on them and keeps them on record."""
    import torch

    from rlhf.train_dpo import build_trainer

    config = dpo_config(base_policy, oracle_export, tmp_path, "learning_rate=2e-3", "epochs=2", *overrides)
    trainer = build_trainer(config, report_to=[])
    rows = list(trainer.train_dataset)
    batches = [dict(trainer.data_collator(rows[i : i + 4])) for i in range(0, len(rows), 4)]

    def loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return sum(
                float(trainer._compute_loss(trainer.model, dict(b), return_outputs=False)) for b in batches
            ) / len(batches)

    before = loss()
    trainer.train()
    after = loss()
    assert after < before - 0.05, (before, after)
    if config.synthetic is not None:
        from datasets import load_from_disk  # type: ignore[import-untyped]

        made = load_from_disk(str(tmp_path / "synthetic"))
        human = sum(source != "synthetic" for source in trainer.train_dataset["source"])
        assert len(made) == round(config.synthetic_ratio * human)
        assert trainer.train_dataset["source"].count("synthetic") == len(made)
        assert set(made["source"]) == {"synthetic"} and set(made["annotator"]) == {f"synthetic:{config.synthetic}"}
        manifest = json.loads((tmp_path / "synthetic" / "manifest.json").read_text())
        assert manifest["filters"]["kind"] == config.synthetic and manifest["counts"]["pairs"] == len(made)
        for row in made:
            assert row["chosen"] != row["rejected"] and row["rejected_spans"]


def test_ld_alpha_discounts_the_longer_responses_tail(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    """LD-DPO through trl's loss: alpha 1 is DPO exactly; alpha 0 drops the tail tokens, so
    the loss equals DPO's on log-probs summed over each pair's shared length only."""
    import torch
    import torch.nn.functional as F

    from rlhf.train_dpo import build_trainer

    losses, trainer = {}, None
    for alpha in ("null", "1.0", "0.0"):
        trainer = build_trainer(
            dpo_config(base_policy, oracle_export, tmp_path / alpha, "method=dpo", f"ld_alpha={alpha}"), report_to=[]
        )
        randomise_adapter(trainer.model)
        trainer.model.eval()
        losses[alpha] = float(trainer._compute_loss(trainer.model, pair_batch(trainer), return_outputs=False))
    assert trainer is not None and trainer.ld_alpha == 0.0
    assert losses["1.0"] == pytest.approx(losses["null"], abs=1e-6) and abs(losses["0.0"] - losses["null"]) > 1e-4
    batch = pair_batch(trainer)
    token, _ = _hand_token_logps(trainer.model, batch)
    with trainer.model.disable_adapter():
        ref, _ = _hand_token_logps(trainer.model, batch)
    mask = batch["completion_mask"][:, 1:]
    n = mask.size(0) // 2
    shared = torch.minimum(mask[:n].sum(dim=1), mask[n:].sum(dim=1)).repeat(2)
    keep = (mask.cumsum(dim=1) <= shared.unsqueeze(1)) * mask
    ratio = ((token - ref) * keep).sum(dim=1)
    expected = -F.logsigmoid(0.5 * (ratio[:n] - ratio[n:])).mean()
    assert losses["0.0"] == pytest.approx(float(expected), abs=1e-5)


# ---------------------------------------------------------------------------------------
# Synthetic negatives


def test_injection_puts_absent_objects_and_wrong_counts_in() -> None:
    from rlhf.synthetic import image_classes, inject
    from rlhf.vocabularies import vocabulary

    table = vocabulary("toyworld")
    facts = {"classes": ["moon", "star"], "objects": [{"cls": "moon"}, {"cls": "star"}]}
    present = image_classes(facts, set(table.order))
    assert present == {"moon", "star"}
    rng = random.Random(0)
    for _ in range(20):
        made = inject("There are two moons and a red star.", present, table.reader, list(table.order), rng)
        assert made is not None and made != "There are two moons and a red star."
        named = {m.cls for m in table.reader.mentions(made)}
        # What changed is an object the image lacks, a count or a colour; nothing else moves.
        assert named - present or "two" not in made or "red" not in made
        assert "moon" in made or any(m.surface.endswith("s") for m in table.reader.mentions(made))
    assert inject("Nothing to see.", present, table.reader, list(table.order), rng) is None


def test_noised_images_are_seeded_and_keep_their_size() -> None:
    from PIL import Image

    from rlhf.synthetic import noised

    image = Image.new("RGB", (32, 24), (200, 40, 40))
    first, again = noised(image, 0.5, random.Random(3)), noised(image, 0.5, random.Random(3))
    assert first.size == image.size and first.tobytes() == again.tobytes()
    assert first.tobytes() != image.tobytes()


def test_bad_settings_of_the_new_methods_are_refused(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    for overrides, message in [
        (("method=sft", "gamma=3"), "weighs every token 1"),
        (("method=mdpo", "mdpo_crop=1.5"), "mdpo_crop"),
        (("synthetic=bogus",), "synthetic must be one of"),
        (("synthetic=inject", "synthetic_ratio=0"), "synthetic_ratio"),
        (("sources=[humans]",), "sources must be among"),
        (("halva_alpha=-1",), "halva_alpha"),
        (("ld_alpha=1.5",), "ld_alpha must be in"),
        (("method=halva", "ld_alpha=0.5"), "ld_alpha applies to ddpo and dpo"),
    ]:
        with pytest.raises(ConfigError, match=message):
            dpo_config(base_policy, oracle_export, tmp_path, *overrides)


def test_rating_pairs_drop_ties_and_read_vlfeedbacks_shape(tmp_path: Path) -> None:
    from rlhf.ratings import RatingsError, mean_rating, rating_pairs, read_ratings

    assert mean_rating({"Helpfulness": {"Rating": "4"}, "Visual Faithfulness": 2, "Ethics": {"Rating": "N/A"}}) == 3.0
    assert mean_rating({"Helpfulness": "N/A"}) is None
    pairs = rating_pairs([("a", 3.0), ("b", 4.5), ("c", 3.0), ("b", 1.0)])
    # a-c tie and the two "b"s are one text: dropped; every other unequal pair, the better one first.
    assert pairs == [("b", "a"), ("a", "b"), ("b", "c"), ("c", "b")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "image": "x.png", "prompt": "p", "completions": []}\n{"id": 2}\n')
    with pytest.raises(RatingsError, match="no image"):
        read_ratings(bad)
    bad.write_text('\n{"id": 2, "prompt": "p"}\n')
    with pytest.raises(RatingsError, match=r"bad.jsonl:2: expected id, image"):
        read_ratings(bad)


def _ratings_file(folder: Path) -> Path:
    from rlhf.toy_pairs import training_scenes
    from testbed.toyworld import render

    lines = []
    for i, scene in enumerate(training_scenes(4)):
        render(scene, 64).save(folder / f"{i}.png")
        rated = [
            {
                "response": "A small red ball is at the top.",
                "annotations": {"Helpfulness": 4, "Visual Faithfulness": 2},
            },
            {"response": f"Scene {i} holds a tent.", "annotations": {"Helpfulness": {"Rating": "5"}}},
            {"response": "A box.", "annotations": {"Helpfulness": 3, "Visual Faithfulness": 3}},  # ties the first
        ]
        lines.append(json.dumps({"id": i, "image": f"{i}.png", "prompt": "Describe the image.", "completions": rated}))
    path = folder / "ratings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_cli_trains_a_new_method_on_human_rated_and_synthetic_pairs(
    base_policy: Path, oracle_export: Path, tmp_path: Path
) -> None:
    """`pairs` turns ratings into a `trl` export (source "rating"); `dpo` trains HSA-DPO on the
    human pairs, those and injected ones together."""
    from datasets import load_from_disk

    ratings = _ratings_file(tmp_path)
    made = rlhf_cli("pairs", "--ratings", str(ratings), "--out", str(tmp_path / "rated"))
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads(made.stdout) == {"pairs": 8, "prompts": 4}  # two unequal pairs per prompt, the tie dropped
    rated = load_from_disk(str(tmp_path / "rated"))
    assert set(rated["source"]) == {"rating"}
    assert {(row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]) for row in rated} >= {
        ("Scene 0 holds a tent.", "A box.")
    }
    again = rlhf_cli("pairs", "--ratings", str(ratings), "--out", str(tmp_path / "rated"))
    assert again.returncode == 2 and "exists" in again.stderr
    missing = rlhf_cli("pairs", "--ratings", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "other"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and not (tmp_path / "other").exists()

    out = tmp_path / "run"
    sets = [
        "method=hsa_dpo",
        "synthetic=inject",
        "synthetic_vocabulary=toyworld",
        "lora.r=4",
        f"extra_data=[{tmp_path / 'rated'}]",
        f"model={base_policy}",
        f"data={oracle_export}",
        f"output_dir={out}",
    ]
    done = rlhf_cli("dpo", *[arg for item in sets for arg in ("--set", item)])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    synthetic = load_from_disk(str(out / "synthetic"))
    assert result["method"] == "hsa_dpo" and (out / "adapter").is_dir()
    assert result["pairs"] == 20 + 8 + len(synthetic) and len(synthetic) == 14  # half of the 28 pairs
    assert result["synthetic_pairs"] == 14
