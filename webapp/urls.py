from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView

from annotation.rules.roles import IsAdmin
from annotation.urls import api_urlpatterns
from annotation.web.annotator_api import LogoutApi, SchemaApi, TokenApi

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaApi.as_view(), name="api-schema"),
    # Readable docs of the schema for admins: Swagger UI (its script a separate file, as the
    # Content-Security-Policy allows no inline script) and Redoc.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", permission_classes=[IsAdmin]),
        name="api-docs",
    ),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="api-schema", permission_classes=[IsAdmin]),
        name="api-redoc",
    ),
    path("api/auth/token/", TokenApi.as_view(), name="api-token"),
    path("api/auth/logout/", LogoutApi.as_view(), name="api-logout"),
    path("api/", include(api_urlpatterns)),
    path("", include("annotation.urls")),
]
