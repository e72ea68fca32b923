"""Images and prompts: stored once per content, checked in full, with what is known about them."""

from __future__ import annotations

import contextvars
import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotation.models import (
    Dataset,
    Image,
    Prompt,
    image_path,
)

# ---------------------------------------------------------------------------------------
# Data: images, prompts, rounds, candidates, tasks

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
MAX_IMAGE_PIXELS = 64_000_000


def inspect_image(data: bytes, source: str = "upload") -> tuple[str, int, int]:
    """(format, width, height) of image bytes, decoded in full: raises ValidationError for
    bytes that are not an image, a truncated file, a decompression bomb (over
    MAX_IMAGE_PIXELS) or a format other than PNG, JPEG, WebP and GIF."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            kind, (width, height) = probe.format, probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValidationError(
                    f"{source}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS} (a decompression bomb?)"
                )
            if kind not in IMAGE_FORMATS:
                raise ValidationError(
                    f"{source}: unsupported image format {kind}; use one of {', '.join(IMAGE_FORMATS)}"
                )
            # verify() checks the structure; load() decodes every pixel, which is what finds a
            # truncated JPEG.
            probe.verify()
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
    except PILImage.DecompressionBombError as error:
        raise ValidationError(f"{source}: {error}") from None
    except UnidentifiedImageError:
        # Pillow's own message names the in-memory buffer ("<_io.BytesIO object at 0x...>").
        raise ValidationError(f"{source}: not a readable image: not {', '.join(IMAGE_FORMATS)} data") from None
    except (OSError, SyntaxError) as error:
        raise ValidationError(f"{source}: not a readable image: {error}") from None
    return kind, width, height


def add_image(data: bytes, *, facts: dict[str, Any] | None = None, source: str = "") -> Image:
    """Store an image once per content. The same bytes again return the existing row (its
    facts are kept). Raises ValidationError as inspect_image does."""
    kind, width, height = inspect_image(data, source or "upload")
    digest = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(sha256=digest).first()
    if existing is not None:
        return existing
    image = Image(sha256=digest, width=width, height=height, facts=facts or {}, source=source[:255])
    # The file is written before the row: a failed insert (or a rolled-back transaction)
    # leaves at most an unreferenced, content-addressed file, which the next upload of the
    # same bytes reuses rather than storing a renamed copy.
    name = image_path(image, f"image.{IMAGE_FORMATS[kind]}")
    if image.file.storage.exists(name):
        image.file.name = name
    else:
        image.file.save(name.rsplit("/", 1)[-1], ContentFile(data), save=False)
        if (written := _NEW_FILES.get()) is not None:
            written.append(image.file.name)
    with transaction.atomic():
        image.save()
    return image


_NEW_FILES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("new_image_files", default=None)


@contextmanager
def atomic_with_files() -> Iterator[None]:
    """transaction.atomic() for work that stores images: when it rolls back, the image files
    it wrote (and no row references) are deleted too, so a refused import leaves no orphans."""
    written: list[str] = []
    token = _NEW_FILES.set(written)
    try:
        with transaction.atomic():
            yield
    except BaseException:
        kept = set(Image.objects.filter(file__in=written).values_list("file", flat=True))
        for name in set(written) - kept:
            default_storage.delete(name)
        raise
    finally:
        _NEW_FILES.reset(token)


def add_prompt(
    image: Image,
    text: str,
    *,
    split: str = Prompt.Split.TRAIN,
    context: Sequence[dict[str, str]] = (),
    meta: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
) -> Prompt:
    """A prompt on `image`; a held-out prompt may belong to a held-out `dataset`."""
    if not text.strip():
        raise ValidationError("a prompt needs text")
    if split not in Prompt.Split.values:
        raise ValidationError(f"unknown split {split!r}; expected one of {', '.join(Prompt.Split.values)}")
    if dataset is not None and split != Prompt.Split.HELDOUT:
        raise ValidationError("only a held-out prompt belongs to a held-out dataset")
    for turn in context:
        if set(turn) != {"role", "content"} or turn["role"] not in ("user", "assistant"):
            raise ValidationError('each context turn is {"role": "user"|"assistant", "content": "..."}')
    return Prompt.objects.create(
        image=image, text=text, split=split, context=list(context), meta=meta or {}, dataset=dataset
    )
