"""Drawing scenes with Pillow: each class its own shape, in its grid cell."""

from __future__ import annotations

import hashlib
import io
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from testbed.toyworld.world import GRID, Scene, SceneObject

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 180),
    "orange": (245, 135, 20),
}
BACKGROUND = (245, 245, 240)
MIN_SIZE, MAX_SIZE = 64, 224


def _star(cx: float, cy: float, outer: float, inner: float, points: int = 5) -> list[tuple[float, float]]:
    vertices = []
    for k in range(points * 2):
        radius = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        vertices.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return vertices


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float) -> None:
    fill = RGB[obj.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.cls == "ball":
        draw.ellipse(box, fill=fill)
    elif obj.cls == "box":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif obj.cls == "kite":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    elif obj.cls == "tent":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif obj.cls == "star":
        draw.polygon(_star(cx, cy, r, 0.45 * r), fill=fill)
    elif obj.cls == "moon":
        draw.ellipse(box, fill=fill)
        shift = 0.55 * r
        draw.ellipse((cx - r + shift, cy - r - 0.1 * r, cx + r + shift, cy + r - 0.1 * r), fill=BACKGROUND)
    elif obj.cls == "ring":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=BACKGROUND)
    elif obj.cls == "cross":
        arm = 0.32 * r
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
    else:
        raise ValueError(f"no drawing for class {obj.cls!r}")


def render(scene: Scene, size: int = 96, *, jitter: float = 0.0) -> Image.Image:
    """The scene as an RGB image of `size` x `size` pixels (64 to 224).

    Objects sit in the middle of their cells. `jitter` (0 to 1) moves them by up to that share
    of the free room in the cell, with a generator seeded by the scene id, so the same scene
    always renders to the same pixels. The tiny model trains on unjittered scenes: with 32 px
    patches on 32 px cells, each object is then one fixed pattern per cell, which a
    one-million-parameter model learns to read in minutes on a CPU.
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be between 0 and 1, got {jitter}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    rng = random.Random(int.from_bytes(hashlib.sha256(scene.scene_id.encode()).digest()[:8], "big"))
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for obj in scene.objects:
        radius = cell * (0.42 if obj.size == "large" else 0.24)
        slack = cell / 2 - radius - 1
        cx = (obj.col + 0.5) * cell + rng.uniform(-slack, slack) * jitter
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack) * jitter
        _draw(draw, obj, cx, cy, radius)
    return image


def png_of_scene(scene: Scene, size: int) -> bytes:
    """The scene drawn at `size` pixels square, as PNG bytes."""
    buffer = io.BytesIO()
    render(scene, size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def write_heldout_set(folder: Path, scenes: int, size: int = 96) -> Path:
    """The world's first `scenes` held-out scenes as a held-out folder (contract.heldout: a
    description prompt each, the objects known), as `import_toyworld` and the database
    export make it."""
    from contract.heldout import Item, image_name, write_heldout
    from testbed.toyworld.world import heldout_scenes

    items = []
    for scene in heldout_scenes(scenes):
        data = png_of_scene(scene, size)
        items.append(
            (Item(scene.scene_id, image_name(data, "png"), "Describe the image.", objects=tuple(scene.classes)), data)
        )
    write_heldout(folder, "toyworld", items)
    return folder
