"""Each admin action's input is declared once, as a serializer: the admin page's form is
derived from it (fields, caps, choices, defaults) and a posted page is read through it, so
the page and the admin API accept and refuse the same values with the same words."""

from __future__ import annotations

from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import User
from rest_framework import serializers
from rest_framework.test import APIClient

from annotation.administration import admin_pages, inputs
from annotation.data.images import add_prompt
from annotation.models import Job, Round
from annotation.rules.selectors import MAX_ROUND_PROMPTS
from models.registry import Registry
from tests.annotation.test_pages import client_for
from tests.factories import make_image, make_round

pytestmark = pytest.mark.django_db

PAGES = [
    (admin_pages.StartRoundForm, inputs.StartRoundInput),
    (admin_pages.TrainForm, inputs.TrainInput),
    (admin_pages.ExportForm, inputs.ExportInput),
    (admin_pages.ImportForm, inputs.ImportInput),
]


@pytest.mark.parametrize(("form", "serializer"), PAGES, ids=lambda p: p.__name__)
def test_each_admin_page_asks_what_its_serializer_declares(form: type[forms.Form], serializer: Any) -> None:
    fields = form().fields
    declared = serializer().get_fields()
    assert list(fields) == list(declared)
    for name, field in declared.items():
        page = fields[name]
        if isinstance(page, forms.ChoiceField) and not isinstance(
            field, (serializers.ChoiceField, serializers.ListField)
        ):
            continue  # a choice among what exists now (the registered versions): the page adds it
        for cap in ("min_value", "max_value", "max_length"):
            if getattr(field, cap, None) is not None:
                assert getattr(page, cap) == getattr(field, cap), (name, cap)
        if isinstance(field, serializers.ChoiceField):
            assert [value for value, _ in page.choices] == list(field.choices), name  # type: ignore[attr-defined]
        assert page.required == field.required, name


def test_the_page_and_the_api_refuse_a_limit_over_the_cap_alike(admin_user: User, settings: Any, tmp_path: Any) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    Registry(settings.FACTLOOP_MODEL_DIR).register("base", base_model="base")
    make_round(tasks=1)
    add_prompt(make_image(), "New prompt.")
    body = {"policy_version": "base", "task_kinds": ["rank"], "split": "train", "limit": MAX_ROUND_PROMPTS + 1}
    page = client_for(admin_user).post("/admin/annotation/round/start/", body | {"only_new": "on"})
    api = APIClient()
    api.force_authenticate(admin_user)
    answer = api.post("/api/admin/rounds/", body, format="json")
    message = f"Ensure this value is less than or equal to {MAX_ROUND_PROMPTS}."
    assert answer.status_code == 400 and answer.json() == {"limit": [message]}
    assert page.status_code == 200 and message in page.content.decode()
    assert not Round.objects.filter(number=2).exists() and not Job.objects.exists()


def test_a_page_reads_lines_checkboxes_and_blanks_as_the_api_reads_json(admin_user: User) -> None:
    """The train page's overrides (one a line), an unticked box and a blank optional field
    arrive at the serializer as the API's JSON would give them."""
    from django.http import QueryDict
    from django.utils.datastructures import MultiValueDict

    post = QueryDict(mutable=True)
    post.update({"method": "dpo", "overrides": "epochs=2\n\n beta=0.2 \n", "config": "", "dataset": ""})
    form = admin_pages.TrainForm(post)
    data = inputs.validated(inputs.TrainInput, form, post, MultiValueDict())
    assert data == {
        "method": "dpo",
        "config": "",
        "overrides": ["epochs=2", "beta=0.2"],
        "dataset": "",
        "force": False,
        "resume": False,
    }
    post["overrides"] = "x" * 501
    form = admin_pages.TrainForm(post)
    assert inputs.validated(inputs.TrainInput, form, post, MultiValueDict()) is None
    assert "Ensure this field has no more than 500 characters." in str(form.errors)


def test_a_config_name_too_long_for_the_file_system_is_a_refusal_not_a_server_error(admin_user: User) -> None:
    """The API fuzz's boundary case: a config path of the longest length the input allows."""
    make_round(tasks=1)
    api = APIClient()
    api.force_authenticate(admin_user)
    answer = api.post("/api/admin/rounds/1/train/", {"method": "ddpo", "config": "0" * 1000}, format="json")
    assert answer.status_code == 409 and "File name too long" in answer.json()["detail"]
    page = client_for(admin_user).post("/admin/annotation/round/1/train/", {"method": "ddpo", "config": "0" * 1000})
    assert page.status_code == 200 and "File name too long" in page.content.decode()
    assert not Job.objects.exists()


def test_a_method_the_base_models_family_cannot_train_is_refused_before_anything_is_queued(
    admin_user: User, settings: Any, tmp_path: Any
) -> None:
    """GRPO on a PaliGemma base model is a documented gap of the libraries: the admin's Train
    form and API refuse it with the reason, before a run is written or a job queued (not
    minutes later in the worker)."""
    from annotation.models import TrainingRun
    from testbed.family_checkpoints import build

    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    Registry(settings.FACTLOOP_MODEL_DIR).register("pali", base_model=str(build("paligemma", tmp_path / "pali")))
    round_ = make_round(tasks=1)
    Round.objects.filter(pk=round_.pk).update(policy_version="pali")
    api = APIClient()
    api.force_authenticate(admin_user)
    answer = api.post(f"/api/admin/rounds/{round_.number}/train/", {"method": "grpo"}, format="json")
    assert answer.status_code == 409, answer.content
    detail = answer.json()["detail"]
    assert "grpo is not available for paligemma models: PaliGemma's processor returns `labels`" in detail
    page = client_for(admin_user).post(f"/admin/annotation/round/{round_.number}/train/", {"method": "grpo"})
    assert page.status_code == 200 and "grpo is not available for paligemma models" in page.content.decode()
    assert not Job.objects.exists() and not TrainingRun.objects.exists()
