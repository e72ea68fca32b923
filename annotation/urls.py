from django.contrib.auth import views as auth_views
from django.urls import path

from annotation import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

api_urlpatterns = [
    path("me/", api.MeApi.as_view(), name="api-me"),
    path("admin/jobs/", api.JobListApi.as_view(), name="api-admin-jobs"),
    path("admin/jobs/healthcheck/", api.HealthcheckApi.as_view(), name="api-admin-healthcheck"),
    path("admin/jobs/<int:job_id>/", api.JobDetailApi.as_view(), name="api-admin-job"),
]
