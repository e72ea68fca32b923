"""What an admin action takes, declared once: start a round, train it, export, import.

Each input is a DRF serializer. The admin API validates a request body with it, and the
admin pages with the same serializer: `page_form` derives the page's Django form from it
(the fields, their caps, choices, defaults, labels and help), and `validated` reads a
posted page through the serializer, so a page and the API accept and refuse the same
values with the same messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django import forms
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from rest_framework import serializers
from rest_framework.fields import empty

from annotation.data.archives import KINDS, queue_import
from annotation.data.exporters import AGGREGATIONS, FORMATS, queue_export
from annotation.loop.ai_labels import SELECTIONS
from annotation.loop.generation import start_round
from annotation.loop.training import Options, queue_run
from annotation.models import Job, Prompt, Round, Task, TrainingRun
from annotation.rules import selectors
from contract.methods import METHODS

HELDOUT_HELP = "The held-out dataset its training is evaluated on; empty: the previous round's, else the only one."
SELECTION_NAMES = {"all": "all prompts", "random": "random", "disagreement": "most disagreeing samples"}


class StartRoundInput(serializers.Serializer):
    policy_version = serializers.CharField(
        max_length=255,
        help_text="The registered policy version whose candidates the round labels (see Register a model).",
    )
    task_kinds = serializers.ListField(child=serializers.ChoiceField(choices=Task.Kind.choices), min_length=1)
    candidates_per_prompt = serializers.IntegerField(
        min_value=1, max_value=16, default=2, label="K (candidates per prompt)"
    )
    overlap = serializers.IntegerField(min_value=1, max_value=20, default=1, label="Overlap k (annotators per task)")
    gold_rate = serializers.FloatField(
        min_value=0, max_value=0.5, default=0.0, help_text="Share of gold tasks (known answers) mixed in."
    )
    split = serializers.ChoiceField(choices=Prompt.Split.choices, default=Prompt.Split.TRAIN)
    only_new = serializers.BooleanField(default=True, label="Only prompts no earlier round used")
    limit = serializers.IntegerField(
        min_value=1,
        max_value=selectors.MAX_ROUND_PROMPTS,
        required=False,
        help_text="At most this many prompts, oldest first.",
    )
    temperature = serializers.FloatField(min_value=0, max_value=2, default=0.7)
    max_tokens = serializers.IntegerField(min_value=1, max_value=4096, default=128)
    ai_labeller = serializers.CharField(
        max_length=255,
        default="",
        allow_blank=True,
        help_text='AI feedback (RLAIF-V): "policy" (the policy labels its own candidates), a registered version '
        "(a judge), or empty for none. Annotators see its doubts as machine suggestions.",
    )
    selection = serializers.ChoiceField(
        choices=[(name, SELECTION_NAMES.get(name, name)) for name in SELECTIONS],
        default="all",
        help_text="Which prompts get human tasks; disagreement needs an AI labeller.",
    )
    human_prompts = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="The human budget in prompts, for random or disagreement selection.",
    )
    heldout = serializers.SlugField(max_length=64, default="", allow_blank=True, help_text=HELDOUT_HELP)
    identical_rankings = serializers.ChoiceField(
        choices=list(Round._meta.get_field("identical_rankings").choices or ()),
        default="convert",
        help_text="A ranking task whose candidates are still the same answer after generation asked again "
        "(FACTLOOP_DISTINCT_TRIES times).",
    )


class TrainInput(serializers.Serializer):
    method = serializers.ChoiceField(choices=list(METHODS), default="ddpo")
    config = serializers.CharField(
        max_length=1000,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="A trainer settings file (YAML) on the server; empty: the defaults.",
    )
    overrides = serializers.ListField(
        child=serializers.CharField(max_length=500),
        default=list,
        help_text="Trainer settings, KEY=VALUE each (e.g. epochs=2); on the page, one a line.",
    )
    dataset = serializers.SlugField(
        max_length=64,
        default="",
        allow_blank=True,
        help_text="The held-out dataset to evaluate on; empty: the one the round recorded when it started.",
    )
    force = serializers.BooleanField(default=False, help_text="Deploy even if the gate refuses.")
    resume = serializers.BooleanField(default=False, help_text="Finish the round's unfinished run instead.")


class ExportInput(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(FORMATS))
    # A round number is a PositiveIntegerField: 2**31 - 1 at most on every database.
    rounds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**31 - 1), min_length=1)
    aggregate = serializers.ChoiceField(
        choices=list(AGGREGATIONS), default="none", help_text="Pair formats: merge a task's labels by majority vote."
    )
    min_gold_accuracy = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        allow_null=True,
        help_text="Keep only annotators whose gold accuracy passes this.",
    )
    include_gold = serializers.BooleanField(default=False, help_text="Pair formats: keep the gold tasks' labels.")
    ai_pairs = serializers.BooleanField(
        default=False, help_text="trl: add the AI labeller's pairs (source ai), after the people's."
    )


class ImportInput(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=[
            (kind, "Prompts (JSONL or CSV manifest with images, or a datasets directory)")
            if kind == "prompts"
            else (kind, f"Labels: {kind} JSON with images")
            for kind in KINDS
        ],
        help_text="prompts, or a label layout.",
    )
    archive = serializers.FileField(
        help_text="A .zip holding the manifest (or JSON, or datasets directory) and its images, or labels."
    )
    skip_bad = serializers.BooleanField(default=False, help_text="Import the good rows and report the bad ones.")
    dataset = serializers.SlugField(
        max_length=64,
        required=False,
        default="",
        allow_blank=True,
        help_text="The held-out dataset its held-out rows join (default heldout; created when new).",
    )


Choices = Callable[[], Sequence[tuple[Any, str]]]


def _initial(field: serializers.Field) -> Any:
    default = field.default
    if default is empty:
        return None
    return default() if callable(default) else default


def _choices_of(field: Any) -> Choices:
    """A DRF choice field's (value, name) pairs, read when a form is drawn."""
    return lambda: list(field.choices.items())


def _form_field(field: serializers.Field, choices: Choices | None, initial: Any) -> forms.Field:
    common: dict[str, Any] = {
        "required": field.required,
        "help_text": field.help_text or "",
        "initial": _initial(field) if initial is None else initial,
    }
    if field.label:
        common["label"] = field.label
    if isinstance(field, serializers.ListField):
        if choices is not None:  # what exists now (the rounds): a list to pick from
            return forms.MultipleChoiceField(choices=choices, **common)
        if isinstance(field.child, serializers.ChoiceField):
            return forms.MultipleChoiceField(
                choices=_choices_of(field.child), widget=forms.CheckboxSelectMultiple, **common
            )
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), **common | {"required": False})
    if isinstance(field, serializers.BooleanField):
        return forms.BooleanField(**common | {"required": False})
    if isinstance(field, serializers.ChoiceField) or choices is not None:
        listed = choices if choices is not None else _choices_of(field)
        return forms.ChoiceField(choices=listed, **common)
    if isinstance(field, serializers.IntegerField):
        return forms.IntegerField(min_value=field.min_value, max_value=field.max_value, **common)
    if isinstance(field, serializers.FloatField):
        return forms.FloatField(min_value=field.min_value, max_value=field.max_value, **common)
    if isinstance(field, serializers.FileField):
        return forms.FileField(**common)
    if isinstance(field, serializers.SlugField):
        return forms.SlugField(max_length=field.max_length, **common)
    if isinstance(field, serializers.CharField):
        return forms.CharField(max_length=field.max_length, **common)
    raise TypeError(f"no form field for {type(field).__name__}")


def page_form(
    serializer: type[serializers.Serializer],
    choices: Mapping[str, Choices] | None = None,
    initial: Mapping[str, Any] | None = None,
) -> type[forms.Form]:
    """The page's form, derived from the serializer: a field for each of its fields, in its
    order. `choices` turns a free field into a choice among what exists when the page is
    drawn (the registered versions, the rounds); `initial` pre-fills a field the API
    requires."""
    fields = {
        name: _form_field(field, (choices or {}).get(name), (initial or {}).get(name))
        for name, field in serializer().get_fields().items()
    }
    return type(f"{serializer.__name__}Form", (forms.Form,), fields)


def _page_values(serializer: serializers.Serializer, post: QueryDict, files: MultiValueDict) -> dict[str, Any]:
    """A posted page as the serializer reads a JSON body: lists from repeated fields (or, for
    text, one item a line), a checkbox left out as false, a blank optional field as left out."""
    data: dict[str, Any] = {}
    for name, field in serializer.get_fields().items():
        if isinstance(field, serializers.FileField):
            if name in files:
                data[name] = files[name]
        elif isinstance(field, serializers.BooleanField):
            data[name] = name in post and post.get(name) not in ("", "off", "false")
        elif isinstance(field, serializers.ListField):
            if isinstance(field.child, serializers.CharField) and not isinstance(field.child, serializers.ChoiceField):
                data[name] = [line.strip() for line in post.get(name, "").splitlines() if line.strip()]
            else:
                data[name] = post.getlist(name)
        elif post.get(name, "") != "":
            data[name] = post[name]
        elif getattr(field, "allow_blank", False):
            data[name] = ""
    return data


def validated(
    serializer_class: type[serializers.Serializer], form: forms.Form, post: QueryDict, files: MultiValueDict
) -> dict[str, Any] | None:
    """The posted page read by the action's serializer: its validated data, or None with
    the messages put on the form (on their fields, or above them). The form, derived from
    the serializer, checks first what the page adds: a choice among what exists now."""
    if not form.is_valid():
        return None
    serializer = serializer_class(data=_page_values(serializer_class(), post, files))
    if serializer.is_valid():
        return dict(serializer.validated_data)
    for name, messages in serializer.errors.items():
        listed = messages if isinstance(messages, list) else [messages]
        text = (
            [str(m) for m in listed] if not isinstance(messages, dict) else [f"{k}: {v}" for k, v in messages.items()]
        )
        target = name if name in form.fields else None
        for message in text:
            if target is None or message not in form.errors.get(target, []):
                form.add_error(target, message)
    return None


# What each action does with its validated input, for the page and the API alike.


def start(data: Mapping[str, Any], *, by: Any) -> tuple[Round, Job]:
    prompts = selectors.prompts_for_a_round(data["split"], only_new=data["only_new"], limit=data.get("limit"))
    return start_round(
        policy_version=data["policy_version"],
        prompts=prompts,
        task_kinds=data["task_kinds"],
        candidates_per_prompt=data["candidates_per_prompt"],
        overlap=data["overlap"],
        gold_rate=data["gold_rate"],
        sampling={"temperature": data["temperature"], "max_tokens": data["max_tokens"]},
        ai_labeller=data["ai_labeller"],
        selection=data["selection"],
        human_prompts=data.get("human_prompts"),
        identical_rankings=data["identical_rankings"],
        heldout=data["heldout"],
        created_by=by,
    )


def train(round_: Round, data: Mapping[str, Any], *, by: Any) -> TrainingRun:
    options = Options(
        method=data["method"],
        config=data.get("config") or None,
        overrides=list(data["overrides"]),
        force=data["force"],
        dataset=data["dataset"],
    )
    return queue_run(round_, options, resume=data["resume"], created_by=by)


def export(data: Mapping[str, Any], *, by: Any) -> Job:
    return queue_export(
        fmt=data["format"],
        rounds=data["rounds"],
        aggregate=data["aggregate"],
        min_gold_accuracy=data.get("min_gold_accuracy"),
        include_gold=data["include_gold"],
        ai_pairs=data["ai_pairs"],
        created_by=by,
    )


def import_upload(data: Mapping[str, Any], *, by: Any) -> Job:
    return queue_import(
        data["archive"], data["kind"], skip_bad=data["skip_bad"], dataset=data["dataset"], created_by=by
    )
