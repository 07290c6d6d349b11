"""
Result files: the object store serving the signed URLs the API hands out (OSS V1 style query-string
signatures, ``Expires`` checks, XML errors), with download latency and truncated downloads as faults.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape as xml_escape

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_imggen.emulator.calls import Call, unauthenticated_call
from airflow_provider_imggen.emulator.images import render_png
from airflow_provider_imggen.emulator.objects import ImageParams
from airflow_provider_imggen.emulator.state import EmulatorState
from airflow_provider_imggen.emulator.transport import TruncatedResponse


def signed_url(
    state: EmulatorState, request: Request, params: ImageParams, issued_at: float | None = None
) -> str:
    """A signed URL of the image, valid ``url_ttl_seconds`` from ``issued_at`` (default: now)."""
    config = state.config
    identifier = state.objects.put(params)
    now = time.time() if issued_at is None else issued_at
    path = f"/results/{datetime.fromtimestamp(now, UTC):%Y%m%d}/{identifier}.png"
    # Whole seconds, rounded up, so a positive TTL never yields an already-expired URL.
    expires = math.ceil(now + config.url_ttl_seconds)
    query = urlencode(
        {
            "Expires": expires,
            "OSSAccessKeyId": config.access_key_id,
            "Signature": state.objects.sign(path, expires),
        }
    )
    # The Host header the client used, so the URL works from wherever the client is.
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}{path}?{query}"


def result_url(
    state: EmulatorState, request: Request, params: ImageParams, index: int, issued_at: float | None = None
) -> str:
    """
    Image ``index``'s result URL as an answer carries it: :func:`signed_url`, or, for the first
    ``unparsable_result_urls`` images, the same URL spoiled so that no URL parser accepts it (an unclosed
    IPv6 bracket: ``https://[host/...``). The image is generated and billed either way.
    """
    url = signed_url(state, request, params, issued_at)
    if index < state.faults.unparsable_result_urls:
        return url.replace("://", "://[", 1)
    return url


_NESTED = "__emulator_nested_image_list__"


def image_answer(state: EmulatorState, body: dict[str, Any], path: tuple[str, ...]) -> Response:
    """
    A 200 JSON answer whose image list (at ``path`` in ``body``) is wrapped in ``answer_nesting_depth`` more
    arrays. Written out as text: the JSON encoder would refuse the depth it is meant to show.
    """
    depth = state.faults.answer_nesting_depth
    if depth == 0:
        return JSONResponse(body)
    outer = json.loads(json.dumps(body))
    holder = outer
    for key in path[:-1]:
        holder = holder[key]
    images = json.dumps(holder[path[-1]])
    holder[path[-1]] = _NESTED
    text = json.dumps(outer).replace(json.dumps(_NESTED), "[" * depth + images + "]" * depth, 1)
    return Response(text, media_type="application/json")


def _oss_error(code: str, message: str, request_id: str, status: int) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
        f"<RequestId>{xml_escape(request_id)}</RequestId><HostId>emulator</HostId></Error>"
    )
    return Response(
        body, status_code=status, media_type="application/xml", headers={"x-oss-request-id": request_id}
    )


router = APIRouter()
DownloadCall = Annotated[Call, Depends(unauthenticated_call("download"))]


@router.get("/results/{date}/{image_key}.png")
async def download_image(date: str, image_key: str, call: DownloadCall) -> Response:
    state, request, request_id = call.state, call.request, call.request_id
    config = state.config
    params = request.query_params
    expires_text, signature = params.get("Expires"), params.get("Signature")
    path = request.url.path

    def deny(code: str, message: str, status: int = 403, outcome: str = "denied") -> Response:
        call.log(status, outcome=outcome)
        return _oss_error(code, message, request_id, status)

    key_id = params.get("OSSAccessKeyId")
    if key_id is not None and key_id != config.access_key_id:
        return deny("InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.")
    if (
        key_id is None
        or expires_text is None
        or signature is None
        or not expires_text.isdigit()
        or not hmac.compare_digest(state.objects.sign(path, int(expires_text)).encode(), signature.encode())
    ):
        return deny(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if time.time() > int(expires_text):
        return deny("AccessDenied", "Request has expired.", outcome="expired")
    image = state.objects.get(image_key)
    if image is None:
        return deny("NoSuchKey", "The specified key does not exist.", status=404, outcome="not_found")

    faults = state.faults
    if faults.download_latency_ms > 0:
        await asyncio.sleep(faults.download_latency_ms / 1000)
    png = await run_in_threadpool(
        render_png,
        image.model,
        image.prompt,
        image.negative_prompt,
        image.seed,
        image.width,
        image.height,
        image.watermark,
        image.input_thumbnails,
    )
    truncate = state.dice.draw_truncate()
    call.log(
        200,
        outcome="truncate" if truncate else "ok",
        model=image.model,
        fault="truncate" if truncate else None,
    )
    response_class = TruncatedResponse if truncate else Response
    return response_class(
        png,
        media_type="image/png",
        headers={"x-oss-request-id": request_id, "ETag": f'"{hashlib.md5(png).hexdigest().upper()}"'},
    )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def b64_image(params: ImageParams) -> str:
    """The image as base64 PNG (rendering and encoding take tens of ms: off the event loop)."""
    png = await run_in_threadpool(
        render_png,
        params.model,
        params.prompt,
        params.negative_prompt,
        params.seed,
        params.width,
        params.height,
        params.watermark,
        params.input_thumbnails,
    )
    return await run_in_threadpool(_b64encode, png)
