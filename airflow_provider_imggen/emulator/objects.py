"""
The images the service made and the object store holding them: deterministic image parameters (seeds, ids),
the registry of issued images that result URLs point at, and the store's URL signatures (OSS V1 style).

An edit's images carry their inputs (:class:`InputImage`: the sha256 of the bytes received and a thumbnail),
so the output is derived from them, visibly (the renderer shows the thumbnails) and checkably (the id and the
PNG's ``imggen:inputs`` chunk name their sha256s). Text-to-image parameters, seeds and ids are unchanged.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import threading
from dataclasses import dataclass

from airflow_provider_imggen.emulator.models import MAX_SEED
from airflow_provider_imggen.emulator.validation import ValidRequest

# Result URLs of evicted images answer 404 NoSuchKey, like objects past their lifecycle in a real bucket.
_MAX_REMEMBERED_IMAGES = 10_000
SEED_MODULUS = MAX_SEED + 1


@dataclass(frozen=True)
class InputImage:
    """One input image as the service received it: sha256 (hex) of its exact bytes, a PNG thumbnail."""

    sha256: str
    thumbnail: bytes
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class ImageParams:
    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int
    watermark: bool = False
    inputs: tuple[InputImage, ...] = ()

    @property
    def input_thumbnails(self) -> tuple[tuple[str, bytes], ...]:
        """(sha256, thumbnail) of each input, in order: what the renderer composites."""
        return tuple((item.sha256, item.thumbnail) for item in self.inputs)


def _digest(*parts: object) -> bytes:
    hasher = hashlib.sha256()
    for part in parts:
        encoded = repr(part).encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
    return hasher.digest()


def default_seed(
    model: str, prompt: str, negative_prompt: str | None, size: str, inputs: tuple[str, ...] = ()
) -> int:
    """The seed used when a request names none: derived from the request (and its inputs' sha256s)."""
    digest = _digest("seed", model, prompt, negative_prompt, size, *((inputs,) if inputs else ()))
    return int.from_bytes(digest[:8], "big") % SEED_MODULUS


def image_id(params: ImageParams) -> str:
    parts: tuple[object, ...] = (
        "image",
        params.model,
        params.prompt,
        params.negative_prompt,
        params.seed,
        params.width,
        params.height,
    )
    # A marked image, or an edit, is another object; the others keep the ids they always had.
    marked = ("watermark",) if params.watermark else ()
    edited = (("inputs", *(item.sha256 for item in params.inputs)),) if params.inputs else ()
    return _digest(*parts, *marked, *edited).hex()[:32]


def image_params(
    request: ValidRequest, count: int | None = None, inputs: tuple[InputImage, ...] = ()
) -> list[ImageParams]:
    """One image per index (``count``, default n); image ``i`` uses ``seed + i``; all share ``inputs``."""
    seed = request.seed
    if seed is None:
        shas = tuple(item.sha256 for item in inputs)
        seed = default_seed(request.model, request.prompt, request.negative_prompt, request.size, shas)
    return [
        ImageParams(
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=(seed + index) % SEED_MODULUS,
            width=request.width,
            height=request.height,
            watermark=request.watermark,
            inputs=inputs,
        )
        for index in range(request.n if count is None else count)
    ]


def upsampled_prompt(request: ValidRequest) -> str | None:
    """The prompt as the API rewrites it; prompt_upsampling (prompt_extend) defaults to true."""
    return f"{request.prompt}, highly detailed" if request.prompt_upsampling in (None, True) else None


class ObjectStore:
    """The issued images (by id) and the store's signing secret."""

    def __init__(self, signing_secret: bytes) -> None:
        self._secret = signing_secret
        self._lock = threading.Lock()
        self._images: collections.OrderedDict[str, ImageParams] = collections.OrderedDict()

    def put(self, params: ImageParams) -> str:
        """Keep an image (evicting the oldest past the limit); returns its id."""
        identifier = image_id(params)
        with self._lock:
            self._images[identifier] = params
            self._images.move_to_end(identifier)
            while len(self._images) > _MAX_REMEMBERED_IMAGES:
                self._images.popitem(last=False)
        return identifier

    def get(self, identifier: str) -> ImageParams | None:
        with self._lock:
            return self._images.get(identifier)

    def sign(self, path: str, expires: int) -> str:
        """OSS V1 query-string signature of a GET of ``path`` until ``expires``."""
        string_to_sign = f"GET\n\n\n{expires}\n{path}"
        digest = hmac.new(self._secret, string_to_sign.encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")
