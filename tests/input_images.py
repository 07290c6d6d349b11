"""Input images for the editing tests: real PNG and JPEG files of chosen sizes, and their sha256."""

from __future__ import annotations

import hashlib
import io
import random


def png(width: int = 512, height: int = 512, *, seed: int = 1, noise: bool = False) -> bytes:
    """A PNG of ``width`` x ``height``: flat colour from ``seed``, or noise (which PNG cannot compress)."""
    from PIL import Image

    chooser = random.Random(seed)
    if noise:
        image = Image.frombytes("RGB", (width, height), chooser.randbytes(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), tuple(chooser.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgba_png(width: int = 512, height: int = 512) -> bytes:
    """A PNG with an alpha channel (colour type 6): half transparent."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 40, 40, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int = 512, height: int = 512, *, seed: int = 2) -> bytes:
    from PIL import Image

    chooser = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(chooser.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inputs_chunk(png_bytes: bytes) -> list[str] | None:
    """The input sha256s the emulator wrote into its output (the ``imggen:inputs`` text chunk), or None."""
    import json

    from PIL import Image

    with Image.open(io.BytesIO(png_bytes)) as image:
        text = image.text.get("imggen:inputs") if hasattr(image, "text") else None
    return None if text is None else list(json.loads(text))
