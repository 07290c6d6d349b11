"""
Deterministic placeholder images for the emulator.

Every pixel is derived from a sha256 of the inputs, so the same request always yields byte-identical
PNGs (tests compare bytes; URLs and b64 payloads agree), while two prompts yield visibly different
pictures with the prompt written on them, so a person looking at a DAG's output can tell them apart.

An edit (input images) is drawn over its last input (blended into the background) with the thumbnails of
every input in order in a strip under the prompt panel, and names the inputs' sha256s, in order, as a JSON
list in a PNG ``tEXt`` chunk keyed ``imggen:inputs`` (:data:`INPUTS_CHUNK`): a test checks which inputs an
output was made from. A text-to-image PNG has no such chunk and is byte-identical to what it always was.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

# zlib level 1: the images are mostly smooth gradients, so level 1 is ~3x faster than the default
# for a few percent more bytes; the emulator must answer in tens of milliseconds, not hundreds.
_PNG_COMPRESS_LEVEL = 1
_FOOTER_FRACTION = 0.035
# The inputs' strip: this share of the picture above the footer; the last input's weight in the background.
_STRIP_FRACTION = 0.22
_BACKDROP_WEIGHT = 0.55
INPUTS_CHUNK = "imggen:inputs"
Color = tuple[int, int, int]
Thumbnails = tuple[tuple[str, bytes], ...]  # (sha256 hex, PNG thumbnail) per input image, in order


class _HashStream:
    """Endless deterministic bytes: sha256(key || counter) blocks, consumed a byte at a time."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0
        self._buffer = b""

    def byte(self) -> int:
        if not self._buffer:
            self._buffer = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        value, self._buffer = self._buffer[0], self._buffer[1:]
        return value

    def unit(self) -> float:
        """A float in [0, 1) with 16 bits of resolution (plenty for pixel positions)."""
        return ((self.byte() << 8) | self.byte()) / 65536.0

    def color(self, lo: int = 0, hi: int = 255) -> Color:
        span = hi - lo + 1
        return (lo + self.byte() % span, lo + self.byte() % span, lo + self.byte() % span)


def _digest_key(*parts: object) -> bytes:
    # Length-prefix each part so ("ab", "c") and ("a", "bc") hash differently.
    hasher = hashlib.sha256()
    for part in parts:
        encoded = repr(part).encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
    return hasher.digest()


def _gradient(width: int, height: int, start: Color, end: Color, angle: float) -> Image.Image:
    """Two-colour linear gradient at ``angle`` degrees from Pillow's 256-px ramp (no per-pixel loops)."""
    # Colour the small ramp through per-channel lookup tables, rotate it, keep the largest axis-aligned
    # square inside the rotated ramp (rotate() fills the corners with black), then scale it up. NEAREST
    # is fine: neighbouring blocks differ by at most one colour level, and it is 5x faster than BILINEAR.
    ramp = Image.linear_gradient("L")
    luts = [[s + (e - s) * i // 255 for i in range(256)] for s, e in zip(start, end, strict=True)]
    colored = Image.merge("RGB", [ramp.point(lut) for lut in luts])
    rotated = colored.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    radians = math.radians(angle)
    inner = ramp.width / (abs(math.cos(radians)) + abs(math.sin(radians)))
    inset = math.ceil((rotated.width - inner) / 2) + 1
    rotated = rotated.crop((inset, inset, rotated.width - inset, rotated.height - inset))
    return rotated.resize((width, height), Image.Resampling.NEAREST)


def _paste_translucent(image: Image.Image, color: Color, mask: Image.Image, origin: tuple[int, int]) -> None:
    """Blend ``color`` through an L-mode ``mask``: translucency without an RGBA full-frame composite."""
    image.paste(color, (origin[0], origin[1], origin[0] + mask.width, origin[1] + mask.height), mask)


def _draw_shapes(image: Image.Image, stream: _HashStream) -> None:
    width, height = image.size
    short = min(width, height)
    for _ in range(3 + stream.byte() % 4):
        size = int(short * (0.12 + 0.3 * stream.unit()))
        x = int((width - size // 2) * stream.unit()) - size // 4
        y = int((height - size // 2) * stream.unit()) - size // 4
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        opacity = 70 + stream.byte() % 110
        kind = stream.byte() % 3
        if kind == 0:
            draw.ellipse((0, 0, size - 1, size - 1), fill=opacity)
        elif kind == 1:
            draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=size // 6, fill=opacity)
        else:
            draw.polygon([(size // 2, 0), (size - 1, size - 1), (0, size - 1)], fill=opacity)
        # Clip to the canvas: paste() with a mask needs the box inside the image.
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + size, width), min(y + size, height)
        if right <= left or bottom <= top:
            continue
        clipped = mask.crop((left - x, top - y, right - x, bottom - y))
        _paste_translucent(image, stream.color(), clipped, (left, top))


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Greedy word wrap by rendered width; words longer than a line are split by characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while font.getlength(word) > max_width:
                cut = max(1, int(len(word) * max_width / font.getlength(word)))
                while cut > 1 and font.getlength(word[:cut]) > max_width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _fit_text(
    text: str, max_width: int, max_height: int, largest: int
) -> tuple[ImageFont.FreeTypeFont, list[str], int]:
    """Largest font size (down to 10 px) at which the wrapped text fits the box."""
    # Start near the answer: glyphs average about half the font size wide, lines are 1.25x the size tall.
    estimate = math.sqrt(max_width * max_height / (0.625 * max(len(text), 1))) * 1.1
    size = max(min(largest, int(estimate)), 10)
    while True:
        font = ImageFont.load_default(size=size)
        assert isinstance(font, ImageFont.FreeTypeFont)  # Pillow ships FreeType fonts in its wheels
        lines = _wrap(text, font, max_width)
        line_height = int(size * 1.25)
        if len(lines) * line_height <= max_height or size <= 10:
            keep = max(1, max_height // line_height)
            if len(lines) > keep:  # only at the minimum size: ellipsise rather than overflow the box
                lines = lines[:keep]
                lines[-1] = lines[-1][: max(0, len(lines[-1]) - 3)] + "..."
            return font, lines, line_height
        size = max(10, int(size * 0.92))


def _draw_text_panel(image: Image.Image, prompt: str, panel_color: Color, reserved: int = 0) -> None:
    """The prompt on a translucent panel, centred above the footer and the ``reserved`` strip."""
    width, height = image.size
    footer_height = max(14, int(height * _FOOTER_FRACTION)) + reserved
    margin = max(8, width // 14)
    padding = max(6, width // 40)
    box_width = width - 2 * margin
    box_max_height = int((height - footer_height) * 0.7)
    font, lines, line_height = _fit_text(
        prompt, box_width - 2 * padding, box_max_height - 2 * padding, largest=max(14, width // 20)
    )
    box_height = len(lines) * line_height + 2 * padding
    top = max(0, (height - footer_height - box_height) // 2)
    # Dark translucent panel so white text stays readable on any background colour.
    mask = Image.new("L", (box_width, box_height), 0)
    ImageDraw.Draw(mask).rounded_rectangle(
        (0, 0, box_width - 1, box_height - 1), radius=max(4, padding), fill=185
    )
    _paste_translucent(image, panel_color, mask, (margin, top))
    draw = ImageDraw.Draw(image)
    y = top + padding
    for line in lines:
        draw.text((margin + padding, y), line, font=font, fill=(255, 255, 255))
        y += line_height


def _draw_footer(image: Image.Image, model: str, seed: int, negative_prompt: str | None) -> None:
    width, height = image.size
    footer_height = max(14, int(height * _FOOTER_FRACTION))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height - footer_height, width, height), fill=(16, 16, 16))
    font = ImageFont.load_default(size=max(9, int(footer_height * 0.6)))
    text = f"imggen emulator | {model} | seed {seed} | {width}x{height}"
    if negative_prompt:
        text += f" | not: {negative_prompt}"
    while len(text) > 4 and draw.textlength(text, font=font) > width - footer_height:
        text = text[: int(len(text) * 0.9) - 3] + "..."
    draw.text(
        (footer_height // 2, height - footer_height // 2), text, font=font, fill=(230, 230, 230), anchor="lm"
    )


def _strip_height(height: int) -> int:
    return max(8, int((height - max(14, int(height * _FOOTER_FRACTION))) * _STRIP_FRACTION))


def _thumbnail(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as thumb:
        return thumb.convert("RGB")


def _backdrop(image: Image.Image, thumbnail: bytes) -> Image.Image:
    """The background blended with the last input, stretched over the whole picture."""
    stretched = _thumbnail(thumbnail).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image, stretched, _BACKDROP_WEIGHT)


def _draw_inputs(image: Image.Image, inputs: Thumbnails, strip: int) -> None:
    """Every input's thumbnail, in order and numbered from 1, on a dark strip just above the footer."""
    width, height = image.size
    bottom = height - max(14, int(height * _FOOTER_FRACTION))
    top = bottom - strip
    _paste_translucent(image, (12, 12, 12), Image.new("L", (width, strip), 170), (0, top))
    pad = max(2, strip // 10)
    thumbs = [_thumbnail(data) for _, data in inputs]
    inner = max(1, strip - 2 * pad)
    natural = [max(1, round(inner * thumb.width / thumb.height)) for thumb in thumbs]
    room = max(len(thumbs), width - 2 * pad - pad * (len(thumbs) - 1))
    scale = min(1.0, room / sum(natural))
    sizes = [(max(1, int(w * scale)), max(1, int(inner * scale))) for w in natural]
    x = (width - sum(w for w, _ in sizes) - pad * (len(sizes) - 1)) // 2
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, inner // 4))
    for index, (thumb, (w, h)) in enumerate(zip(thumbs, sizes, strict=True)):
        y = top + (strip - h) // 2
        image.paste(thumb.resize((w, h), Image.Resampling.BILINEAR), (x, y))
        draw.rectangle((x - 1, y - 1, x + w, y + h), outline=(255, 255, 255))
        draw.text(
            (x + 2, y + 1),
            str(index + 1),
            font=font,
            fill=(255, 255, 255),
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
        x += w + pad


def _draw_watermark(image: Image.Image) -> None:
    """The service's visible mark (watermark=true): a label in the bottom right corner."""
    draw = ImageDraw.Draw(image)
    size = max(9, min(image.width, image.height) // 24)
    font = ImageFont.load_default(size=size)
    draw.text(
        (image.width - size, image.height - 3 * size),
        "AI generated",
        font=font,
        fill=(255, 255, 255),
        anchor="rb",
    )


@functools.lru_cache(maxsize=64)
def render_png(
    model: str,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    width: int,
    height: int,
    watermark: bool = False,
    inputs: Thumbnails = (),
) -> bytes:
    """
    Render the emulator's PNG for one generated image: exactly ``width`` x ``height``, byte-identical for
    identical inputs (so it is cached: the same URL downloaded twice costs one render).

    The background colours depend on the prompt alone (one prompt keeps its palette across seeds); shapes
    depend on prompt, seed and model, so the n images of one request differ visibly. ``inputs``: an edit's
    input images (see the module docstring).
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    palette = _HashStream(_digest_key("palette", prompt))
    start, end = palette.color(20, 235), palette.color(20, 235)
    angle = palette.unit() * 360.0
    image = _gradient(width, height, start, end, angle)
    shas = tuple(sha for sha, _ in inputs)
    if inputs:
        image = _backdrop(image, inputs[-1][1])
    key = _digest_key("shapes", model, prompt, negative_prompt, seed, width, height, *shas)
    _draw_shapes(image, _HashStream(key))
    panel = tuple(channel // 5 for channel in start)
    strip = _strip_height(height) if inputs else 0
    _draw_text_panel(image, prompt, (panel[0], panel[1], panel[2]), strip)
    if inputs:
        _draw_inputs(image, inputs, strip)
    _draw_footer(image, model, seed, negative_prompt)
    if watermark:
        _draw_watermark(image)
    buffer = io.BytesIO()
    if not inputs:
        image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
        return buffer.getvalue()
    info = PngInfo()
    info.add_text(INPUTS_CHUNK, json.dumps(list(shas)))
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, pnginfo=info)
    return buffer.getvalue()
