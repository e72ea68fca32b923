"""API authentication."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from annotation.roles import ANNOTATORS_GROUP


@cache
def _token_sql() -> tuple[str, list[str]]:
    User = get_user_model()
    fields = [field.attname for field in User._meta.concrete_fields]
    columns = ", ".join(f"u.{connection.ops.quote_name(field.column)}" for field in User._meta.concrete_fields)
    memberships = User.groups.through._meta.db_table
    sql = (
        f"SELECT {columns}, t.created, EXISTS (SELECT 1 FROM {memberships} m JOIN {Group._meta.db_table} g "
        f"ON g.id = m.group_id WHERE m.user_id = u.id AND g.name = %s) "
        f"FROM {Token._meta.db_table} t JOIN {User._meta.db_table} u ON u.id = t.user_id WHERE t.key = %s"
    )
    return sql, fields


class RoleTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, with the user's annotator role read in the same query.

    The annotation API checks the role on every request, and building this query through
    the ORM cost more than running it (bench/annotate.py), so it is written out once."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        sql, fields = _token_sql()
        with connection.cursor() as cursor:
            cursor.execute(sql, [ANNOTATORS_GROUP, key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        *values, created, annotator = row
        user: Any = get_user_model().from_db(connection.alias, fields, values)
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        user._factloop_groups = {ANNOTATORS_GROUP} if annotator else set()
        return user, Token(key=key, user=user, created=created)
