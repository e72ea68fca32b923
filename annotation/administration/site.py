"""FactLoop's admin site: Django's, with the loop dashboard (annotation/administration/dashboard.py) as its
index page, above the usual list of models."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from annotation.administration.dashboard import dashboard_context


class FactLoopAdminSite(admin.AdminSite):
    site_header = "FactLoop administration"
    site_title = "FactLoop"
    index_title = "The loop"
    index_template = "admin/annotation/dashboard.html"
    # The dashboard lists the models; the sidebar's 300 px go to the tables (the rounds
    # list is cut off beside it in a 1400-px window).
    enable_nav_sidebar = False

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        return super().index(request, {**dashboard_context(), **(extra_context or {})})
