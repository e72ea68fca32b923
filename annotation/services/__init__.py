"""Workflows that write several rows, each in one transaction, by concern:

- `accounts`: annotators and admins (ensure_user);
- `images`: images and prompts (inspect_image, add_image, add_prompt, atomic_with_files);
- `rounds`: rounds, candidates, tasks, gold answers, their life and their jobs;
- `submissions`: rankings and corrections;
and, beside them, `annotation.jobs` (background jobs) and `annotation.deployment` (serving a
version). Every write to these rows goes through them; the names below are the public ones.
"""

from annotation.services.accounts import EnsuredUser, Role, ensure_label_account, ensure_user
from annotation.services.images import (
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    add_image,
    add_prompt,
    atomic_with_files,
    inspect_image,
)
from annotation.services.rounds import (
    add_candidates,
    add_prompts_to_round,
    adjudicate,
    create_imported_round,
    create_round,
    create_tasks,
    freeze_round,
    gold_answer_problem,
    gold_count,
    make_round_tasks,
    mark_gold,
    open_round,
    queue_export,
    queue_generation,
    start_round,
)
from annotation.services.submissions import (
    Shown,
    preview_spans,
    record_imported_label,
    submit_correction,
    submit_judgement,
)

__all__ = [
    "IMAGE_FORMATS",
    "MAX_IMAGE_PIXELS",
    "EnsuredUser",
    "Role",
    "Shown",
    "add_candidates",
    "add_image",
    "add_prompt",
    "add_prompts_to_round",
    "adjudicate",
    "atomic_with_files",
    "create_imported_round",
    "create_round",
    "create_tasks",
    "ensure_label_account",
    "ensure_user",
    "freeze_round",
    "gold_answer_problem",
    "gold_count",
    "inspect_image",
    "make_round_tasks",
    "mark_gold",
    "open_round",
    "preview_spans",
    "queue_export",
    "queue_generation",
    "record_imported_label",
    "start_round",
    "submit_correction",
    "submit_judgement",
]
