from annotation.management.commands._users import EnsureUserCommand


class Command(EnsureUserCommand):
    help = (
        "Create a FactLoop admin (staff and superuser), or make an existing user one. "
        "Idempotent; password handling as in create_annotator."
    )
    role = "admin"
