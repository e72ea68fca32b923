"""create_annotator / create_admin: idempotent, passwords printed or set, bad input refused
with nothing written."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.rules.roles import ANNOTATORS_GROUP, is_admin, is_annotator

User = get_user_model()


def run(command: str, *args: str, stdin: str | None = None) -> str:
    out = io.StringIO()
    if stdin is None:
        call_command(command, *args, stdout=out)
    else:
        import sys

        saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            call_command(command, *args, stdout=out)
        finally:
            sys.stdin = saved
    return out.getvalue()


@pytest.mark.django_db
def test_create_annotator_prints_a_generated_password_that_works() -> None:
    output = run("create_annotator", "carla")
    assert "Created annotator carla." in output
    password = output.split("Password: ", 1)[1].strip()
    user = User.objects.get(username="carla")
    assert user.check_password(password)
    assert is_annotator(user) and not is_admin(user)
    assert user.groups.filter(name=ANNOTATORS_GROUP).exists()


@pytest.mark.django_db
def test_create_annotator_is_idempotent_and_keeps_the_password() -> None:
    first = run("create_annotator", "carla")
    password = first.split("Password: ", 1)[1].strip()
    second = run("create_annotator", "carla")
    assert "already existed" in second
    assert "Password unchanged" in second
    assert User.objects.filter(username="carla").count() == 1
    user = User.objects.get(username="carla")
    assert user.check_password(password)
    assert user.groups.count() == 1


@pytest.mark.django_db
def test_create_annotator_sets_a_given_password() -> None:
    run("create_annotator", "dan", "--password", "a-long-enough-passphrase")
    assert User.objects.get(username="dan").check_password("a-long-enough-passphrase")
    output = run("create_annotator", "dan", "--password-stdin", stdin="another-long-passphrase\n")
    assert "Password set." in output
    assert User.objects.get(username="dan").check_password("another-long-passphrase")


@pytest.mark.django_db
def test_create_admin_makes_staff() -> None:
    run("create_admin", "root-admin", "--password", "a-long-enough-passphrase")
    user = User.objects.get(username="root-admin")
    assert user.is_staff and user.is_superuser and is_admin(user)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["bad name!"], None, "invalid username 'bad name!'"),
        (["x" * 200], None, "invalid username"),
        (["eve", "--password", "123"], None, "too short"),
        (["eve", "--password", "password123"], None, "too common"),
        (["eve", "--password-stdin"], "\n", "standard input held no password"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(args: list[str], stdin: str | None, message: str) -> None:
    users_before = User.objects.count()
    with pytest.raises(CommandError, match=message):
        run("create_annotator", *args, stdin=stdin)
    assert User.objects.count() == users_before
    assert not Group.objects.get(name=ANNOTATORS_GROUP).user_set.exists()


@pytest.mark.django_db
def test_refused_new_password_leaves_an_existing_user_untouched() -> None:
    run("create_annotator", "fay", "--password", "a-long-enough-passphrase")
    with pytest.raises(CommandError):
        run("create_annotator", "fay", "--password", "short")
    assert User.objects.get(username="fay").check_password("a-long-enough-passphrase")
