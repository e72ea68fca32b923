from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from annotation.api import TokenApi
from annotation.urls import api_urlpatterns

admin.site.site_header = "FactLoop administration"
admin.site.site_title = "FactLoop"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/auth/token/", TokenApi.as_view(), name="api-token"),
    path("api/", include(api_urlpatterns)),
    path("", include("annotation.urls")),
]
