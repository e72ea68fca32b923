"""Training data from exported labels, and DDPO's token weights.

`load_pairs` reads `trl` exports (annotation/data/exporters.py; a `datasets` directory with a
manifest). Each pair carries the changed segments of its two responses as character
offsets (`chosen_spans`, `rejected_spans`), so the weights can be computed for any
tokenizer: `WeightedPreferenceCollator` tokenizes each response as trl's vision collator
does and gives the tokens that overlap a changed segment the weight gamma, the others 1
(RLHF-V, arXiv:2312.00849, eq. 3; docs/methods.md 2c), in both chosen and
rejected. The collator's `token_scale` is what the trainer multiplies the per-token
log-probabilities by before they are summed; with normalisation it already holds
w_t / (|U| + gamma |C|).

With `released_weighting` the changed tokens are instead those RLHF-V's released code
would weight: the two responses' token ids diffed by its rules (contract/spans.py,
`released_changes`: autojunk on, every match shorter than 3 tokens merged into the change,
replacements only). Pairs without spans (from rankings) weigh every token 1 either way.

Nothing here imports torch, datasets or trl until it is used.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.export import EXPORT_FORMAT, EXPORT_SCHEMA, MANIFEST
from contract.spans import released_changes


class DataError(ValueError):
    """Training data that cannot be used; the message says which and why."""


def load_pairs(folders: Sequence[str | Path], *, sources: Sequence[str], max_pairs: int | None = None) -> Any:
    """The pairs of one or more `trl` exports, concatenated in order, keeping `sources`."""
    from datasets import concatenate_datasets, load_from_disk  # type: ignore[import-untyped]

    parts = []
    for folder in map(Path, folders):
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{folder}: no manifest.json; expected an export of format {EXPORT_FORMAT!r}")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != EXPORT_FORMAT or manifest.get("schema_version") != EXPORT_SCHEMA:
            raise DataError(
                f"{folder}: format {manifest.get('format')!r} schema {manifest.get('schema_version')!r}; "
                f"expected format {EXPORT_FORMAT!r} schema {EXPORT_SCHEMA}"
            )
        parts.append(load_from_disk(str(folder)))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    wanted = set(sources)
    dataset = dataset.filter(lambda source: source in wanted, input_columns="source")
    if max_pairs is not None:
        dataset = dataset.select(range(min(max_pairs, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"no pairs of source {', '.join(sources)} in {', '.join(map(str, folders))}")
    return dataset


def weigh_source(dataset: Any, source: str, weight: float, *, seed: int) -> Any:
    """`dataset` with each row of `source` repeated `weight` times on average: its whole
    part as copies, one more copy with the fractional part's probability (seeded); weight 1
    is the dataset as it is, 0 drops the source's rows. Other rows stay once, in order."""
    import math
    import random

    if weight == 1:
        return dataset
    rng = random.Random(seed)
    whole, part = math.floor(weight), weight - math.floor(weight)
    indices = []
    for index, row_source in enumerate(dataset["source"]):
        copies = 1 if row_source != source else whole + (rng.random() < part)
        indices.extend([index] * copies)
    if not indices:
        raise DataError(f"no pairs left after weighing the {source!r} pairs by {weight}")
    return dataset.select(indices)


def load_prompts(folders: Sequence[str | Path], *, max_prompts: int | None = None) -> Any:
    """The distinct (image, prompt) pairs of one or more `trl` exports, in export order, as a
    dataset of `prompt`, `images`, `image_facts` and `reference_words` (the rollout prompts of
    online RL). `reference_words` is the mean length in words of the responses the prompt's
    pairs hold (both sides): the round's candidates, sampled from the policy at its start,
    so what the policy's answers to the prompt measured before training."""
    pairs = load_pairs(folders, sources=["ranking", "correction"])
    first: dict[str, int] = {}
    lengths: dict[str, list[int]] = {}
    columns = zip(pairs["image_sha256"], pairs["prompt"], pairs["chosen"], pairs["rejected"], strict=True)
    for i, (image, prompt, chosen, rejected) in enumerate(columns):
        key = image + json.dumps(prompt, sort_keys=True)
        first.setdefault(key, i)
        lengths.setdefault(key, []).extend(len(message_text(side).split()) for side in (chosen, rejected))
    keys = list(first)[:max_prompts] if max_prompts is not None else list(first)
    prompts = pairs.select([first[key] for key in keys]).select_columns(["prompt", "images", "image_facts"])
    return prompts.add_column("reference_words", [sum(lengths[key]) / len(lengths[key]) for key in keys])


def usable_spans(text: str, spans: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Changed segments with white space trimmed from their edges (an inserted or deleted word
    takes the space before it; that space must not weight the neighbouring token), empty ones
    dropped. Raises DataError for a segment outside the text."""
    out = []
    for start, end in spans:
        if not 0 <= start <= end <= len(text):
            raise DataError(f"span [{start}, {end}] lies outside a text of {len(text)} characters")
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            out.append((start, end))
    return out


def pair_severity(example: dict[str, Any]) -> float:
    """How wrong a pair's rejected response is: the number of its changed segments (each an
    error an annotator, or the injector, corrected), at least 1 (a ranking's pair has none)."""
    return float(max(1, len(example.get("rejected_spans") or [])))


def corrupted_image(image: Any, keep: float, rng: Any) -> Any:
    """mDPO's corrupted image (arXiv:2406.11839, section 3): a random crop keeping a share of
    the area drawn uniformly from (0, keep], resized back to the image's size (so every
    family's processor gives it as many image tokens as the original)."""
    width, height = image.size
    side = max(rng.uniform(0.0, keep), 1e-3) ** 0.5
    w, h = max(1, round(width * side)), max(1, round(height * side))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return image.crop((left, top, left + w, top + h)).resize((width, height))


def _has_spans(example: dict[str, Any]) -> bool:
    """Whether a pair carries changed segments (a correction), rather than none (a ranking)."""
    return bool(example.get("chosen_spans") or example.get("rejected_spans"))


def _response_positions(encoded: Any, offset: int, response: str, count: int) -> list[int]:
    """The indices of the completion's tokens that hold the response's characters."""
    end = offset + len(response)
    return [i for i, (s, e) in enumerate(encoded["offset_mapping"][:count]) if e > s and s < end and e > offset]


def _response_ids(encoded: Any, offset: int, response: str, count: int) -> list[int]:
    ids = encoded["input_ids"]
    return [ids[i] for i in _response_positions(encoded, offset, response, count)]


def token_weights(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], gamma: float) -> list[float]:
    """gamma for each token whose characters overlap a changed segment, 1 for the others.

    A token overlaps [s, e) when its [start, end) intersects it; a token that covers part of
    a changed word (a span inside a word) counts as changed. Tokens without characters
    (offsets (0, 0) of special tokens) are unchanged."""
    weights = []
    for start, end in offsets:
        changed = end > start and any(start < e and end > s for s, e in spans)
        weights.append(gamma if changed else 1.0)
    return weights


def message_text(message: list[dict[str, Any]]) -> str:
    """The text of a one-message conversation (an export's chosen, rejected or single-turn
    prompt), its content given as text or as parts."""
    content = message[0]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def _collator_base() -> type:
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    return DataCollatorForVisionPreference


PROCESSOR_LEAD = 3  # the most tokens a processor is looked for to have put before a completion


def make_collator(
    processor: Any,
    *,
    gamma: float,
    normalize: bool,
    released_weighting: bool = False,
    max_length: int | None = None,
    corrupt_keep: float | None = None,
) -> Any:
    """trl's vision preference collator, plus `token_scale` (see the module docstring),
    `changed_mask` (1 on the tokens of changed segments, both sides), `severity` (per pair,
    `pair_severity`) and, with `corrupt_keep`, `corrupted`: the same pairs collated with
    mDPO's corrupted images (`corrupted_image`, seeded by the pair's id)."""
    base = _collator_base()

    @dataclass
    class WeightedPreferenceCollator(base):  # type: ignore[valid-type,misc]
        gamma: float = 1.0
        normalize: bool = False
        released_weighting: bool = False
        corrupt_keep: float | None = None

        def _place(
            self,
            batch: dict[str, Any],
            mask: Any,
            row: int,
            side: str,
            example: dict[str, Any],
            rendered: dict[str, str],
        ) -> tuple[Any, int, str, int, int]:
            """Where one row's response sits among the tokens trl collated: the completion's
            encoding (with offsets), the response's character offset in it, the response,
            how many of the collated completion tokens the encoding accounts for, and how
            many tokens the processor put before it."""
            response = message_text(example[side])
            positions = mask[row].nonzero().flatten()
            collated = batch["input_ids"][row, positions].tolist()
            # The completion as trl rendered it, or with its leading white space gone
            # (Kosmos-2's processor strips it before tokenizing).
            for completion in dict.fromkeys((rendered[side], rendered[side].lstrip())):
                offset = completion.find(response)
                encoded = self.processor.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
                own = list(encoded["input_ids"])
                # A processor may add tokens of its own around the rendered completion: after
                # it (Chameleon's separator), or before it (Mllama's BOS on every text). They
                # are found by comparing the two encodings, and are unchanged tokens (weight 1).
                for lead in range(min(PROCESSOR_LEAD, len(collated)) + 1):
                    count = min(len(positions) - lead, len(own))
                    if collated[lead : lead + count] == own[:count]:
                        if offset < 0 and _has_spans(example):
                            raise DataError("the chat template changed the response text; its spans cannot be placed")
                        return encoded, offset, response, count, lead
            raise DataError(
                f"the processor encoded a {side} completion as {collated[:8]}... where its tokenizer gives "
                f"{own[:8]}...: the processor changed the completion's own tokens (not only added some before or "
                "after them), so its changed spans cannot be placed on trl's collated tokens"
            )

        def _along(self, batch: Any) -> Any:
            """trl's collator appends the completions to `input_ids` alone, then flushes
            each row left: every other processor output that runs along the (left-padded)
            prompts, by its shape (Mllama's cross-attention mask, Kosmos-2's image position
            mask), is laid out the same way and carried on over the completion."""
            import torch

            from rlhf.common import carried_on

            ids, mask = batch["input_ids"], batch["completion_mask"]
            starts = mask.float().argmax(dim=1).tolist()  # where each row's completion begins
            width = max(starts)  # the prompts' padded width: the longest prompt has no padding
            for key, value in list(batch.items()):
                if key in ("input_ids", "attention_mask", "completion_mask") or not hasattr(value, "shape"):
                    continue
                if len(value.shape) < 2 or tuple(value.shape[:2]) != (ids.shape[0], width) or width >= ids.shape[1]:
                    continue
                rows = []
                for row, start in enumerate(starts):
                    prompt = value[row : row + 1, width - start : width]
                    rows.append(carried_on(prompt, ids.shape[1] - start))
                batch[key] = torch.cat(rows)
            return batch

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            import torch
            from trl.data_utils import apply_chat_template, prepare_multimodal_messages

            keys = ("prompt", "chosen", "rejected", "images", "image")
            trimmed = [{k: example[k] for k in keys if k in example} for example in examples]
            # The completion strings exactly as trl's collator renders them (on copies: it
            # rewrites the examples it is given).
            rendered = []
            for example in copy.deepcopy(trimmed):
                images = example.pop("images", None) or ([example.pop("image")] if "image" in example else [])
                example["prompt"] = prepare_multimodal_messages(example["prompt"], images=images)
                example["chosen"] = prepare_multimodal_messages(example["chosen"])
                example["rejected"] = prepare_multimodal_messages(example["rejected"])
                rendered.append(apply_chat_template(example, self.processor))
            corrupted = self._corrupted(trimmed, examples) if self.corrupt_keep is not None else None
            batch = self._along(super().torch_call(trimmed))
            mask = batch["completion_mask"]
            scale = torch.zeros(mask.shape, dtype=torch.float32)
            changed = torch.zeros(mask.shape, dtype=torch.float32)
            n = len(examples)
            placed = [
                self._place(batch, mask, row, "chosen" if row < n else "rejected", examples[row % n], rendered[row % n])
                for row in range(2 * n)
            ]
            # RLHF-V's released rules on each pair's two responses' token ids, once per pair
            # (contract/spans.py): (rejected positions, chosen positions) that changed.
            released = {
                i: released_changes(_response_ids(*placed[i + n][:4]), _response_ids(*placed[i][:4]))
                for i, example in enumerate(examples)
                if self.released_weighting and _has_spans(example)
            }
            for row in range(2 * n):
                example, side = examples[row % n], ("chosen" if row < n else "rejected")
                has_spans = _has_spans(example)
                encoded, offset, response, count, lead = placed[row]
                # The tokens of the stored changed segments (what HALVA contrasts; DDPO's weights).
                spans = usable_spans(response, example.get(f"{side}_spans") or [])
                shifted = [(s + offset, e + offset) for s, e in spans]
                marked = [w > 1 for w in token_weights(encoded["offset_mapping"][:count], shifted, 2.0)]
                if self.released_weighting:
                    weights = [1.0] * count
                    if has_spans:
                        mine = _response_positions(*placed[row][:4])
                        for index in released[row % n][0 if side == "rejected" else 1]:
                            weights[mine[index]] = self.gamma
                else:
                    weights = [self.gamma if flag else 1.0 for flag in marked]
                positions = mask[row].nonzero().flatten()
                changed[row, positions[lead : lead + count]] = torch.tensor(marked, dtype=torch.float32)
                weights = [1.0] * lead + weights + [1.0] * (len(positions) - lead - len(weights))
                values = torch.tensor(weights, dtype=torch.float32)
                if self.normalize and has_spans:
                    values = values / values.sum()  # N = |U| + gamma |C| (docs/methods.md 2c)
                scale[row, positions] = values
            batch["token_scale"] = scale
            batch["changed_mask"] = changed
            batch["severity"] = torch.tensor([pair_severity(example) for example in examples], dtype=torch.float32)
            if corrupted is not None:
                batch["corrupted"] = corrupted
            return batch

        def _corrupted(self, trimmed: list[dict[str, Any]], examples: list[dict[str, Any]]) -> dict[str, Any]:
            import random
            import zlib

            assert self.corrupt_keep is not None
            out = []
            for example, original in zip(copy.deepcopy(trimmed), examples, strict=True):
                rng = random.Random(zlib.crc32(str(original.get("id", "")).encode()))
                key = "images" if "images" in example else "image"
                images = example[key] if key == "images" else [example[key]]
                crops = [corrupted_image(image, self.corrupt_keep, rng) for image in images]
                example[key] = crops if key == "images" else crops[0]
                out.append(example)
            return self._along(dict(super().torch_call(out)))

    return WeightedPreferenceCollator(
        processor=processor,
        max_length=max_length,
        gamma=gamma,
        normalize=normalize,
        released_weighting=released_weighting,
        corrupt_keep=corrupt_keep,
    )
