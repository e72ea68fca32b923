from annotation.management.commands._users import EnsureUserCommand


class Command(EnsureUserCommand):
    help = (
        "Create an annotator, or give an existing user the annotator role. Idempotent: a new "
        "user gets the given password or a generated one (printed once); an existing user "
        "keeps theirs unless --password/--password-stdin is given."
    )
    role = "annotator"
