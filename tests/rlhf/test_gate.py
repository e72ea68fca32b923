"""The gate on real policies: one trained on labels inverted (chosen and rejected swapped)
is really worse, and the default gate (CHAIR_i and coverage, margin 0) refuses it."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from contract.comparison import gate, parse_gate
from contract.heldout import Item, image_name, read_heldout, write_heldout
from contract.methods import DEFAULT_GATE
from rlhf.config import load_config
from rlhf.hallucination import LocalResponder, evaluate
from testbed.demo import TOY_DDPO

TRAINING_SCENES = 150
HELDOUT_SCENES = 60


def toy_heldout(folder: Path, size: int) -> Path:
    """Held-out toy scenes as a held-out folder (the web app's export), each scene's classes
    its annotated objects."""
    from testbed.toyworld import heldout_scenes, render

    items = []
    for scene in heldout_scenes(HELDOUT_SCENES):
        buffer = io.BytesIO()
        render(scene, size).save(buffer, format="PNG")
        data = buffer.getvalue()
        items.append(
            (
                Item(
                    scene.scene_id, image_name(data, "png"), "Describe the image.", objects=tuple(sorted(scene.classes))
                ),
                data,
            )
        )
    write_heldout(folder, "toyworld", items, dataset="toyworld")
    return folder


@pytest.mark.slow
def test_a_policy_trained_on_inverted_labels_is_refused_by_the_default_gate(base_policy: Path, tmp_path: Path) -> None:
    import torch

    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from rlhf.train_dpo import train
    from testbed.tiny import image_size_of

    torch.set_num_threads(1)
    model, processor = load_policy(str(base_policy))
    size = image_size_of(processor)
    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(TRAINING_SCENES), questions=False, temperature=0.7, seed=1
    )
    inverted = [
        dataclasses.replace(
            pair,
            original=pair.corrected,
            corrected=pair.original,
            chosen_spans=pair.rejected_spans,
            rejected_spans=pair.chosen_spans,
        )
        for pair in toy_pairs.oracle_pairs(responses)
    ]
    assert len(inverted) > 100
    toy_pairs.write_export(inverted, tmp_path / "inverted", image_size=size)
    config = load_config(
        TOY_DDPO,
        ["epochs=4"],
        model=str(base_policy),
        data=[str(tmp_path / "inverted")],
        output_dir=str(tmp_path / "run"),
    )
    result = train(config, report_to=[])
    assert result.adapter_dir is not None

    heldout = read_heldout(toy_heldout(tmp_path / "heldout", size))
    current = evaluate(heldout, LocalResponder(model, processor), bootstrap=500)
    worse_model, worse_processor = load_policy(str(base_policy), adapter=Path(result.adapter_dir))
    new = evaluate(heldout, LocalResponder(worse_model, worse_processor), bootstrap=500)
    assert new.metrics["chair_i"] > current.metrics["chair_i"]

    decision = gate(new, current, parse_gate(DEFAULT_GATE), samples=500)
    assert not decision["passed"], decision["summary"]
    assert decision["summary"].startswith("refused: worse on CHAIR_i by ")
    [chair, coverage] = decision["criteria"]
    assert (chair["metric"], chair["margin"], chair["passed"]) == ("chair_i", 0.0, False)
    assert chair["worse_by_interval"][0] > 0  # worse with 95% confidence, no margin needed
    assert coverage["metric"] == "coverage"
    # The same policy against itself passes.
    assert gate(current, current, parse_gate(DEFAULT_GATE), samples=100)["passed"]
