from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from annotation.administration import admin_api
from annotation.web import annotator_api as api
from annotation.web import pages as views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("annotate/", views.annotate_next, name="annotate"),
    path("annotate/<int:assignment_id>/", views.annotate, name="annotate-assignment"),
    re_path(r"^images/(?P<sha256>[0-9a-f]{64})$", views.image_file, name="image-file"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

api_urlpatterns = [
    path("me/", api.MeApi.as_view(), name="api-me"),
    path("assignments/next/", api.NextAssignmentApi.as_view(), name="api-next-assignment"),
    path("assignments/<int:assignment_id>/", api.AssignmentApi.as_view(), name="api-assignment"),
    path("assignments/<int:assignment_id>/judgement/", api.JudgementApi.as_view(), name="api-judgement"),
    path("assignments/<int:assignment_id>/correction/", api.CorrectionApi.as_view(), name="api-correction"),
    path("assignments/<int:assignment_id>/diff/", api.DiffApi.as_view(), name="api-diff"),
    path("assignments/<int:assignment_id>/skip/", api.SkipApi.as_view(), name="api-skip"),
    path("admin/jobs/", admin_api.JobListApi.as_view(), name="api-admin-jobs"),
    path("admin/jobs/healthcheck/", admin_api.HealthcheckApi.as_view(), name="api-admin-healthcheck"),
    path("admin/jobs/<int:job_id>/", admin_api.JobDetailApi.as_view(), name="api-admin-job"),
    path("admin/jobs/<int:job_id>/retry/", admin_api.JobRetryApi.as_view(), name="api-admin-job-retry"),
    path("admin/jobs/<int:job_id>/cancel/", admin_api.JobCancelApi.as_view(), name="api-admin-job-cancel"),
    path("admin/jobs/<int:job_id>/download/", admin_api.JobDownloadApi.as_view(), name="api-admin-job-download"),
    path("admin/versions/", admin_api.VersionListApi.as_view(), name="api-admin-versions"),
    path("admin/rounds/", admin_api.RoundListApi.as_view(), name="api-admin-rounds"),
    path("admin/rounds/<int:number>/", admin_api.RoundDetailApi.as_view(), name="api-admin-round"),
    path("admin/rounds/<int:number>/open/", admin_api.RoundChangeApi.as_view(change="open"), name="api-admin-open"),
    path(
        "admin/rounds/<int:number>/freeze/", admin_api.RoundChangeApi.as_view(change="freeze"), name="api-admin-freeze"
    ),
    path("admin/rounds/<int:number>/train/", admin_api.TrainApi.as_view(), name="api-admin-train"),
    path("admin/rounds/<int:number>/quality/", admin_api.QualityApi.as_view(), name="api-admin-quality"),
    path("admin/training-runs/<int:run_id>/", admin_api.TrainingRunApi.as_view(), name="api-admin-training-run"),
    path("admin/exports/", admin_api.ExportApi.as_view(), name="api-admin-exports"),
    path("admin/imports/", admin_api.ImportApi.as_view(), name="api-admin-imports"),
    path("admin/versions/<str:name>/deploy/", admin_api.VersionDeployApi.as_view(), name="api-admin-version-deploy"),
]
