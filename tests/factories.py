"""Row factories for tests."""

from __future__ import annotations

import io
import zipfile
from typing import Any

from django.contrib.auth.models import User
from PIL import Image as PILImage

from annotation.data.images import add_image, add_prompt
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, open_round
from annotation.models import Image, Job, Round, Task
from annotation.rules.accounts import Role, ensure_user

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, role: Role | None, password: str = PASSWORD) -> User:
    """A user with the role ("annotator", "admin") or none (an outsider)."""
    if role is None:
        return User.objects.create_user(username=username, password=password)
    user = ensure_user(username, role=role, password=password).user
    assert isinstance(user, User)
    return user


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"kind": Job.Kind.HEALTHCHECK, "queue": "generate"}
    defaults.update(fields)
    return Job.objects.create(**defaults)


def png_bytes(colour: tuple[int, int, int] = (200, 40, 40), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], **options: Any) -> io.BytesIO:
    """A zip archive in memory, named like an upload."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **options) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    buffer.seek(0)
    buffer.name = "upload.zip"
    return buffer


def make_image(colour: tuple[int, int, int] = (200, 40, 40)) -> Image:
    return add_image(png_bytes(colour), facts={"objects": [{"cls": "ball"}]}, source=f"test-{colour}")


def make_round(
    *,
    tasks: int = 3,
    kind: str = Task.Kind.RANK,
    overlap: int = 1,
    per_task: int = 2,
    texts: list[str] | None = None,
    open_it: bool = True,
) -> Round:
    """A round with `tasks` tasks of `kind`, one prompt each, over one shared image.

    Candidate texts cycle through `texts` (default: "response N")."""
    round_ = create_round(policy_version="test-policy")
    image = make_image()
    size = per_task if kind == Task.Kind.RANK else 1
    for number in range(tasks):
        prompt = add_prompt(image, f"Describe the image ({number}).")
        chosen = texts or [f"response {number}.{i}" for i in range(size)]
        add_candidates(round_, prompt, [chosen[i % len(chosen)] for i in range(size)])
    create_tasks(round_, kind=kind, overlap=overlap, per_task=per_task)
    if open_it:
        open_round(round_)
    return round_


def make_generation_round(
    version: str,
    *,
    prompts: int = 4,
    k: int = 3,
    seed: int = 77,
    prefix: str = "gen",
    sampling: dict[str, Any] | None = None,
) -> Round:
    """A draft round of `prompts` toy-world descriptions for `version` to answer, K each."""
    from annotation.labeling.rounds import add_prompts_to_round
    from testbed.toyworld import sample_scenes
    from testbed.toyworld.render import png_of_scene

    round_ = create_round(policy_version=version)
    Round.objects.filter(pk=round_.pk).update(
        candidates_per_prompt=k, sampling=sampling if sampling is not None else {"temperature": 1.0, "seed": 7}
    )
    round_.refresh_from_db()
    chosen = []
    for scene in sample_scenes(seed, prompts, prefix=prefix):
        image = add_image(png_of_scene(scene, 96), facts=scene.facts(), source=scene.scene_id)
        chosen.append(add_prompt(image, "Describe the image."))
    add_prompts_to_round(round_, chosen)
    return round_


def machine_feedback(
    text: str, doubted: str | None = None, *, fix: str | None = "", labeller: str = "ai:judge"
) -> dict[str, Any]:
    """An AI labeller's stored feedback (contract/feedback.py) doubting the words `doubted`
    of `text` (default: its first word), proposing to replace them with `fix` ("" deletes
    them; None proposes nothing), as annotation/loop/ai_labels.py stores it on a candidate."""
    from contract.feedback import ClaimVerdict, Feedback

    words = doubted if doubted is not None else text.split()[0]
    start = text.index(words)
    claim = ClaimVerdict(
        "exist",
        "ball",
        "yes",
        start,
        start + len(words),
        "Is there a ball in the image?",
        answer="No, there is no ball.",
        supported=False,
        fix=None if fix is None else (start, start + len(words), fix),
    )
    return Feedback("0", labeller, (claim,)).as_dict()
