from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "FactLoop"

    def ready(self) -> None:
        from webapp.celery import ensure_broker_folders

        # The embedded broker writes messages as files: the web app may publish before any
        # worker has started, so the folders must exist from the first request on.
        ensure_broker_folders()
