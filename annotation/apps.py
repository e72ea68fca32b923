from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "FactLoop"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import m2m_changed, pre_save

        from annotation.rules.audit import record_group_changes, record_role_fields
        from annotation.web.authentication import revoke_tokens_on_credential_change, revoke_tokens_on_logout
        from webapp.celery import ensure_broker_folders

        user_model = get_user_model()
        pre_save.connect(revoke_tokens_on_credential_change, sender=user_model, dispatch_uid="factloop-tokens")
        user_logged_out.connect(revoke_tokens_on_logout, dispatch_uid="factloop-tokens-logout")
        pre_save.connect(record_role_fields, sender=user_model, dispatch_uid="factloop-audit-roles")
        m2m_changed.connect(
            record_group_changes, sender=user_model.groups.through, dispatch_uid="factloop-audit-groups"
        )

        # The embedded broker writes messages as files: the web app may publish before any
        # worker has started, so the folders must exist from the first request on.
        ensure_broker_folders()


class FactLoopAdminConfig(admin_apps.AdminConfig):
    """Django's admin with FactLoop's site: the loop dashboard as its landing page."""

    default = False  # AnnotationConfig is this module's app; this one is named in settings
    default_site = "annotation.administration.site.FactLoopAdminSite"
