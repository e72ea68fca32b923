"""FactLoop's data model. Rules about one row live here; workflows live in the rooms (labeling, data, loop)."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class Job(models.Model):
    """One unit of background work run by a Celery worker, with its state and progress.

    The row is the source of truth (Celery keeps no results): the admin and the API show
    progress from it, and a task decides whether to run by claiming it. A claim is a
    conditional UPDATE from `queued` to `running`; only the process whose UPDATE matched the
    row goes on, so a message delivered twice runs the work once.
    """

    class Kind(models.TextChoices):
        HEALTHCHECK = "healthcheck", "Worker health check"
        GENERATE = "generate_candidates", "Generate a round's candidates"
        EXPORT = "export_dataset", "Export a dataset"
        TRAIN = "train_round", "Train a round"
        IMPORT = "import_archive", "Import an uploaded archive"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    queue = models.CharField(max_length=32, help_text="The Celery queue the job was sent to.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    params = models.JSONField(default=dict, blank=True, help_text="The job's input, as given when queued.")
    result = models.JSONField(default=dict, blank=True, help_text="What the job reported when it finished.")
    error = models.TextField(blank=True, help_text="Why the job failed (empty unless failed).")
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, help_text="Host name of the worker that ran it.")
    claim_token = models.CharField(
        max_length=32,
        blank=True,
        default="",
        db_default="",
        help_text="The token of the running claim: only the process holding it may beat, report or finish.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="When the worker running the job last said it was alive."
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="How many times a worker claimed the job.")
    history = models.JSONField(
        default=list, blank=True, help_text="Recoveries, retries and cancellations: when, what, why, by whom."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress_done__lte=F("progress_total")) | Q(progress_total=0),
                name="job_progress_within_total",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["succeeded", "failed", "cancelled"], finished_at__isnull=False)
                | Q(status__in=["queued", "running"], finished_at__isnull=True),
                name="job_finished_at_iff_finished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def progress_percent(self) -> float | None:
        if not self.progress_total:
            return None
        return round(100.0 * self.progress_done / self.progress_total, 1)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    # Single-row state changes. Each is one conditional UPDATE, so two processes racing on
    # the same job cannot both win, and the return value says whether this one did.

    @classmethod
    def claim(cls, job_id: int, worker: str, kind: str | None = None) -> str | None:
        """queued -> running. The claim's token for the caller whose UPDATE changed the row,
        else None. With `kind`, only a job of that kind is claimed: a stale message (from
        another database, or a row id reused) never starts work of another kind.

        The token, not the worker's name, says whose run it is: a job taken back and claimed
        again (by a sibling process of the same worker, or after a restart) has a new one, so
        the first process's next beat, report or finish finds the job lost to it."""
        rows = cls.objects.filter(pk=job_id, status=cls.Status.QUEUED)
        if kind is not None:
            rows = rows.filter(kind=kind)
        now, token = timezone.now(), uuid.uuid4().hex
        updated = rows.update(
            status=cls.Status.RUNNING,
            worker=worker[:255],
            claim_token=token,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
        )
        return token if updated == 1 else None

    @classmethod
    def _held(cls, job_id: int, claim: str) -> models.QuerySet[Job]:
        return cls.objects.filter(pk=job_id, status=cls.Status.RUNNING, claim_token=claim)

    @staticmethod
    def check_progress(done: int, total: int) -> None:
        if total < 0 or done < 0 or (total and done > total):
            raise ValueError(f"progress {done}/{total} is out of range")

    @classmethod
    def report_progress(cls, job_id: int, claim: str, done: int, total: int) -> bool:
        """Record progress; False when the job is no longer running under this claim
        (cancelled, or taken back from a worker presumed dead), which tells the caller to stop."""
        cls.check_progress(done, total)
        return (
            cls._held(job_id, claim).update(progress_done=done, progress_total=total, heartbeat_at=timezone.now()) == 1
        )

    @classmethod
    def beat(cls, job_id: int, claim: str, progress: tuple[int, int] | None = None) -> bool:
        """The process running the job is alive (and, with `progress`, this far along); False
        when the job is no longer its own."""
        fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if progress is not None:
            fields["progress_done"], fields["progress_total"] = progress
        return cls._held(job_id, claim).update(**fields) == 1

    @classmethod
    def succeed(cls, job_id: int, claim: str, result: dict[str, Any]) -> bool:
        return (
            cls._held(job_id, claim).update(status=cls.Status.SUCCEEDED, result=result, finished_at=timezone.now()) == 1
        )

    @classmethod
    def fail(cls, job_id: int, error: str, claim: str | None = None) -> bool:
        """queued or running -> failed; with `claim`, only the run holding that claim."""
        rows = (
            cls._held(job_id, claim)
            if claim is not None
            else cls.objects.filter(pk=job_id, status__in=[cls.Status.QUEUED, cls.Status.RUNNING])
        )
        return rows.update(status=cls.Status.FAILED, error=error[:10_000], finished_at=timezone.now()) == 1


# ---------------------------------------------------------------------------------------
# Data: images, prompts, rounds, candidates


def image_path(image: Image, filename: str) -> str:
    """Content-addressed: the file's name is its SHA-256, fanned out by its first two digits."""
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    return f"images/{image.sha256[:2]}/{image.sha256}.{suffix}"


class Image(models.Model):
    """An image, stored once per content (its SHA-256), with what is known to be in it."""

    sha256 = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the file's bytes.")
    file = models.FileField(upload_to=image_path, max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    facts = models.JSONField(
        default=dict,
        blank=True,
        help_text="Known facts (objects, captions): the fact-augmented reward model reads them, the policy never does.",
    )
    source = models.CharField(max_length=255, blank=True, help_text="Where the image came from (a path, a dataset id).")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.source or self.sha256[:12]


class Vocabulary(models.Model):
    """An object vocabulary of the user's own (register_vocabulary): its classes in order,
    each with the synonyms a text may name it by. CHAIR, Object HalBench, POPE and object
    coverage read answers through it. "coco" and "toyworld" are built in and not stored."""

    name = models.SlugField(max_length=64, unique=True)
    classes = models.JSONField(help_text='The classes in order: [["cat", ["kitten", "kitty"]], ["dog", []], ...].')
    associations = models.JSONField(
        null=True,
        blank=True,
        help_text='AMBER\'s reading of it (import_amber): {"associations": {"grass": ["ground"], ...}, '
        '"safe_words": ["orange", ...]}; the amber protocol scores by it.',
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "vocabularies"

    def __str__(self) -> str:
        return self.name


class Dataset(models.Model):
    """A named held-out set: the prompts an evaluation scores, their images' objects named
    in one vocabulary. An import names the dataset its held-out rows join."""

    name = models.SlugField(max_length=64, unique=True)
    vocabulary = models.CharField(
        max_length=64, help_text='The object vocabulary its facts are named in: "coco", "toyworld" or a registered one.'
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        HELDOUT = "heldout", "Held out"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="prompts")
    text = models.TextField(help_text="The user turn the candidates answer.")
    context = models.JSONField(
        default=list,
        blank=True,
        help_text='The conversation before it: a list of {"role": "user"|"assistant", "content": "..."}.',
    )
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN, db_index=True)
    dataset = models.ForeignKey(
        Dataset,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="prompts",
        help_text="The held-out dataset it belongs to (held-out prompts only; evaluations score one dataset).",
    )
    meta = models.JSONField(
        default=dict, blank=True, help_text="Anything known about the prompt (question kind, answer)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(dataset__isnull=True) | Q(split="heldout"), name="prompt_dataset_heldout_only"
            )
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Round(models.Model):
    """One turn of the loop: candidates from one policy version, labelled, then trained on.

    Only an open round's tasks are handed out; a frozen round's labels are final."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft (collecting candidates)"
        OPEN = "open", "Open for annotation"
        FROZEN = "frozen", "Frozen"

    number = models.PositiveIntegerField(unique=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT, db_index=True)
    policy_version = models.CharField(
        max_length=255, blank=True, help_text="The model version (registry name) whose candidates the round labels."
    )
    prompts: models.ManyToManyField[Prompt, RoundPrompt] = models.ManyToManyField(
        Prompt, through="RoundPrompt", related_name="rounds", blank=True
    )
    candidates_per_prompt = models.PositiveSmallIntegerField(default=2, help_text="K: candidates sampled per prompt.")
    # LLaVA-RLHF sampled its candidates at temperature 0.7 (docs/methods.md 1a).
    sampling = models.JSONField(
        default=dict, blank=True, help_text='Sampling for candidates: {"temperature", "top_p", "max_tokens", "seed"}.'
    )
    # What the round becomes once its candidates are in (annotation.loop.generation.make_round_tasks): empty
    # task_kinds means tasks are made by hand (synthetic rounds, tests).
    task_kinds = models.JSONField(
        default=list, blank=True, help_text='Task kinds made from the candidates: ["rank"], ["correct"] or both.'
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="k: annotators per task.")
    gold_rate = models.FloatField(
        default=0.0, help_text="Share of the round's tasks that are gold tasks (known answers) for quality control."
    )
    open_when_ready = models.BooleanField(
        default=False, help_text="Open the round for annotation as soon as every prompt has its candidates."
    )
    # AI feedback (annotation/loop/ai_labels.py; RLAIF-V): who labels the candidates once they
    # are in, shown to annotators as suggestions and exportable as pairs of its own.
    ai_labeller = models.CharField(
        max_length=255,
        blank=True,
        help_text='The AI labeller: "policy" (the round\'s own policy, self-feedback), a registered version '
        "name (a judge), or empty for none.",
    )
    # Active selection (contract/selection.py): which prompts get human tasks.
    selection = models.CharField(
        max_length=16,
        choices=[("all", "All prompts"), ("random", "Random"), ("disagreement", "Most disagreeing samples")],
        default="all",
        help_text="Which prompts humans see: all, or human_prompts of them at random or by disagreement.",
    )
    human_prompts = models.PositiveIntegerField(
        null=True, blank=True, help_text="The human budget in prompts when selection is not 'all'."
    )
    # A ranking of identical responses is a tie by construction: generation asks again for a
    # candidate that repeats another of its prompt's (FACTLOOP_DISTINCT_TRIES); a ranking task
    # still without two distinct candidates is made a correction task of its prompt, or left out.
    identical_rankings = models.CharField(
        max_length=8,
        choices=[("convert", "Make a correction task of it"), ("drop", "Leave it out")],
        default="convert",
        help_text="A ranking task whose candidates are still identical after generation asked again.",
    )
    task_report = models.JSONField(
        default=dict,
        blank=True,
        help_text="What making the round's tasks found: identical rankings converted or left out.",
    )
    heldout = models.ForeignKey(
        Dataset,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="rounds",
        help_text="The held-out dataset its training is evaluated on, recorded when the round starts.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    frozen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.CheckConstraint(condition=Q(candidates_per_prompt__gte=1), name="round_k_positive"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="round_overlap_positive"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lt=1), name="round_gold_rate_range"),
        ]

    def __str__(self) -> str:
        return f"Round {self.number}"


class RoundPrompt(models.Model):
    """A prompt of a round and where its candidate generation stands."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="round_prompts")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, help_text="Why generation failed (empty unless failed).")
    attempts = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "prompt"], name="round_prompt_unique")]

    def __str__(self) -> str:
        return f"{self.round} · prompt {self.prompt_id} ({self.status})"


class Candidate(models.Model):
    """One response of the round's policy to a prompt (model output: untrusted text)."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="candidates")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="candidates")
    index = models.PositiveSmallIntegerField(help_text="Sample number among the prompt's candidates in this round.")
    text = models.TextField()
    model_version = models.CharField(max_length=255, blank=True)
    params = models.JSONField(default=dict, blank=True, help_text="Sampling parameters (temperature, top_p, seed).")
    ai_feedback = models.JSONField(
        null=True, blank=True, help_text="The AI labeller's claims and verdicts (contract/feedback.py), if any."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "prompt", "index"], name="candidate_unique_sample")]

    def __str__(self) -> str:
        return f"{self.round} · prompt {self.prompt_id} · #{self.index}"


# ---------------------------------------------------------------------------------------
# Work: tasks, assignments (leases) and their results


class Task(models.Model):
    """A unit of annotation: rank 2+ candidates, or correct one. Judged by `overlap` people.

    `taken` counts the task's live leases plus its submissions. A claim is the conditional
    UPDATE `taken = taken + 1 WHERE taken < overlap`, so no interleaving of claims can give a
    task more than `overlap` people; a skip or an expired lease gives the slot back."""

    class Kind(models.TextChoices):
        RANK = "rank", "Rank candidates (LLaVA-RLHF)"
        CORRECT = "correct", "Correct hallucinated spans (RLHF-V)"

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    candidates: models.ManyToManyField[Candidate, TaskCandidate] = models.ManyToManyField(
        Candidate, through="TaskCandidate", related_name="tasks"
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="How many annotators judge the task (k).")
    # Submissions are not counted on the row: that would add a write, and a lock on the task,
    # to every submission; the admin and exports count them.
    taken = models.PositiveSmallIntegerField(default=0, help_text="Live leases plus submissions.")
    # A copy of "its round is open", kept by annotation.labeling.rounds.open_round and freeze_round, so that the
    # queue's index holds only tasks it may hand out: tasks left unfinished in frozen rounds
    # would otherwise be walked past by every claim, forever.
    in_open_round = models.BooleanField(default=False, db_default=False, help_text="Whether the task's round is open.")
    is_gold = models.BooleanField(default=False, help_text="A task with a known answer, for quality control.")
    # The known answer, by position (so it survives copying the task into a later round):
    # rank {"best_positions": [0]}; correct {"no_hallucination": false}. Set on gold tasks,
    # and on tasks an admin adjudicated (which become the pool of later rounds' gold tasks).
    gold_answer = models.JSONField(default=dict, blank=True)
    adjudicated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    adjudicated_at = models.DateTimeField(null=True, blank=True)
    origin = models.JSONField(
        default=dict,
        blank=True,
        help_text="For an imported label: the file's fields FactLoop has no column for (the released id, "
        "origin_dataset, origin_split, idx, unknown keys), written back on export.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="task_overlap_positive"),
            models.CheckConstraint(condition=Q(taken__lte=F("overlap")), name="task_taken_within_overlap"),
        ]
        indexes = [
            # The queue walks the open rounds' tasks with a free slot, oldest first, and stops at
            # the first one this annotator may take: an ordered scan of this small index, no sort.
            models.Index(
                fields=["id"], condition=Q(taken__lt=F("overlap"), in_open_round=True), name="task_open_free_slots"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} task #{self.pk}"


class TaskCandidate(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(help_text="0 = A, 1 = B, ... as shown to the annotator.")

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "position"], name="task_candidate_unique_position"),
            models.UniqueConstraint(fields=["task", "candidate"], name="task_candidate_unique_candidate"),
        ]

    def __str__(self) -> str:
        return f"{chr(ord('A') + self.position)}: candidate {self.candidate_id}"


class Assignment(models.Model):
    """One annotator's lease on one task, and what became of it."""

    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="assignments")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Never the same task twice to one annotator, whatever became of the first lease.
            models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once_per_annotator"),
            # One live lease per annotator: `next` resumes it instead of hoarding tasks.
            models.UniqueConstraint(
                fields=["annotator"], condition=Q(status="leased"), name="assignment_one_lease_per_annotator"
            ),
            models.CheckConstraint(
                condition=Q(status="leased", finished_at__isnull=True)
                | (~Q(status="leased") & Q(finished_at__isnull=False)),
                name="assignment_finished_at_iff_finished",
            ),
        ]
        indexes = [models.Index(fields=["expires_at"], condition=Q(status="leased"), name="assignment_live_leases")]

    def __str__(self) -> str:
        return f"Assignment #{self.pk} ({self.status})"

    def is_expired(self, now: Any = None) -> bool:
        return self.status == self.Status.LEASED and self.expires_at <= (now or timezone.now())


class Judgement(models.Model):
    """A ranking (LLaVA-RLHF): candidates ordered by fewer hallucinations, then helpfulness."""

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="judgement")
    ranking = models.JSONField(help_text="Candidate ids, best first.")
    preferred = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="+")
    rejected = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="+", help_text="Ranked last.")
    hallucination_tie = models.BooleanField(
        default=False, help_text="Q1 (fewer hallucinations) was a tie: the order came from Q2 (more helpful)."
    )
    hallucinated = models.JSONField(
        default=list, blank=True, help_text="Ids of the candidates flagged as hallucinating."
    )
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text="Q1's answer: candidate ids grouped by hallucination, fewest first; a group of several "
        "is a tie, ordered by helpfulness (Q2) in the ranking.",
    )
    rejected_hallucinates = models.BooleanField(default=False)
    rationale = models.TextField(blank=True)
    time_spent_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Judgement of assignment {self.assignment_id}"


class Correction(models.Model):
    """A span correction (RLHF-V): chosen = corrected, rejected = original."""

    class Category(models.TextChoices):
        # RLHF-V's error types, with their share in its released data (docs/methods.md section 1b).
        OBJECTS = "objects", "Objects"
        POSITIONS = "positions", "Positions"
        NUMBERS = "numbers", "Numbers"
        ATTRIBUTES = "attributes", "Attributes"
        ACTIONS = "actions", "Actions"
        OTHER = "other", "Other"

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="correction")
    candidate = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="corrections")
    original = models.TextField()
    corrected = models.TextField()
    no_hallucination = models.BooleanField(default=False, help_text="Nothing was wrong: no preference pair.")
    spans = models.JSONField(default=list, blank=True, help_text="Changed spans, computed by the server.")
    suggestions = models.JSONField(
        default=dict,
        blank=True,
        help_text='The machine suggestions shown and what the annotator did: {"accepted": [i], "rejected": [i]} '
        "(indices into the candidate's suspected claims).",
    )
    time_spent_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Correction of assignment {self.assignment_id}"


# ---------------------------------------------------------------------------------------
# Training: one alignment iteration per round (annotation/loop/training.py runs the steps)


class TrainingRun(models.Model):
    """`train_round` for one round: its settings, and each step's status, timing and outcome.

    The steps (annotation.loop.training.STEPS) run in order; each records itself in `steps` when it
    starts and when it ends, and each can run again after a crash without duplicating what
    it made (the export, checkpoint and version folders are written whole or not at all; the
    next round is created in the transaction that records it). At most one unfinished run
    per round."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (resume with --resume)"

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="training_runs")
    method = models.CharField(max_length=8)
    config = models.JSONField(default=dict, blank=True, help_text="Config file, overrides, gate and options.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING, db_index=True)
    steps = models.JSONField(default=dict, blank=True, help_text="Per step: status, started/finished, detail.")
    work_dir = models.CharField(max_length=1024, help_text="Where the run's files are.")
    version = models.CharField(max_length=255, blank=True, help_text="The model version the run registered.")
    deployed = models.BooleanField(default=False, help_text="Whether the version passed the gate and is served.")
    next_round = models.OneToOneField(
        Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="trained_from"
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["round"], condition=Q(status__in=["running", "failed"]), name="one_unfinished_run_per_round"
            )
        ]

    def __str__(self) -> str:
        return f"Training of {self.round} with {self.method} (#{self.pk}, {self.status})"


class AuditEvent(models.Model):
    """Who did what to the loop: exports, round changes, role changes, deployments and
    rollbacks, job retries and cancellations (annotation/rules/audit.py writes them; append-only)."""

    class Action(models.TextChoices):
        EXPORT = "export", "Export"
        ROUND = "round", "Round change"
        ROLE = "role", "Role change"
        REGISTER = "register", "Model registered"
        DEPLOY = "deploy", "Deployment"
        ROLLBACK = "rollback", "Rollback"
        JOB = "job", "Job retried or cancelled"
        IMPORT = "import", "Import"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, help_text="Who, as a name (kept if the account goes).")
    action = models.CharField(max_length=16, choices=Action.choices, db_index=True)
    target = models.CharField(max_length=255, help_text="What it was done to (a round, a user, a version, a job).")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name}: {self.get_action_display()} {self.target}"
