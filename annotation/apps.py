from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "FactLoop"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import pre_save

        from annotation.authentication import revoke_tokens_on_credential_change
        from webapp.celery import ensure_broker_folders

        pre_save.connect(revoke_tokens_on_credential_change, sender=get_user_model(), dispatch_uid="factloop-tokens")

        # The embedded broker writes messages as files: the web app may publish before any
        # worker has started, so the folders must exist from the first request on.
        ensure_broker_folders()
