"""
The Images view's routes. Every one authenticates first (401), then checks its parameters (400), then
asks Airflow's auth manager about the DAG (403), then looks the run, task and image up (404).

- ``GET /images``: the images of one task instance (every map index when ``map_index`` is unset)
- ``GET /gallery``: the images of one DAG run, each once (both pages take the thumbnails' ``size``)
- ``GET /thumbnail``: one tile's thumbnail (JPEG, ETag, ``Cache-Control: private``)
- ``GET /image``: one tile's full image, as stored or as generated
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Annotated, Any

from airflow.api_fastapi.core_api.security import get_user
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, StreamingResponse

from airflow_provider_imggen.ui import params
from airflow_provider_imggen.ui.access import authorize
from airflow_provider_imggen.ui.costs import TaskCost
from airflow_provider_imggen.ui.html import CONTENT_SECURITY_POLICY, render_page
from airflow_provider_imggen.ui.pixels import PixelsUnavailableError, ResultExpiredError, open_pixels
from airflow_provider_imggen.ui.run_data import RunNotFoundError, load_run, task_is_image_task
from airflow_provider_imggen.ui.thumbnails import ThumbnailCache, ThumbnailError, etag_for, make_thumbnail
from airflow_provider_imggen.ui.tiles import RunImages, Tile

log = logging.getLogger(__name__)
router = APIRouter()
thumbnails = ThumbnailCache()
User = Annotated[Any, Depends(get_user)]
Param = str | None

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Thumbnail and image URLs carry a version derived from the content (``v``): a long private max-age is safe.
IMAGE_CACHE_CONTROL = "private, max-age=86400"
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _checked(check: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return check(*args, **kwargs)
    except params.BadParameterError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None


def _run(dag_id: str, run_id: str) -> RunImages:
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            return load_run(session, dag_id, run_id)
    except RunNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None


def _page(
    title: str,
    dag_id: str,
    run_id: str,
    tiles: list[Tile],
    *,
    show_task: bool,
    empty: str,
    size: int,
    costs: list[TaskCost] | None = None,
    cost_total_label: str = "total",
) -> HTMLResponse:
    html = render_page(
        title=title,
        dag_id=dag_id,
        run_id=run_id,
        tiles=tiles,
        show_task=show_task,
        empty=empty,
        size=size,
        costs=costs or (),
        cost_total_label=cost_total_label,
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/images", response_class=HTMLResponse)
def task_instance_images(
    user: User,
    dag_id: Param = None,
    run_id: Param = None,
    task_id: Param = None,
    map_index: Param = None,
    size: Param = None,
) -> HTMLResponse:
    """The images of one task instance (of every map index of the task when ``map_index`` is unset)."""
    pixels = _checked(params.thumbnail_size, size)
    dag = _checked(params.dag_id, dag_id)
    run = _checked(params.run_id, run_id)
    task = _checked(params.task_id, task_id)
    index = _checked(params.map_index, map_index, required=False)
    authorize(user, dag)
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            is_image_task = task_is_image_task(session, dag, run, task)
    except RunNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    if is_image_task is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task!r} in DAG {dag!r}")
    title = f"Images · {task}" + (f" [{index}]" if index is not None and index >= 0 else "")
    if not is_image_task:
        empty = "This task does not generate or store images."
        return _page(title, dag, run, [], show_task=False, empty=empty, size=pixels)
    run_images = _run(dag, run)
    outputs = run_images.task_instances(task, index)
    tiles = [tile for output in outputs for tile in run_images.tiles(output)]
    return _page(
        title,
        dag,
        run,
        tiles,
        show_task=len(outputs) > 1,
        empty="No images yet: the task has not pushed its XCom (it has not finished, or failed).",
        size=pixels,
        costs=run_images.task_costs(outputs),
        cost_total_label="task total",
    )


@router.get("/gallery", response_class=HTMLResponse)
def dag_run_gallery(
    user: User, dag_id: Param = None, run_id: Param = None, size: Param = None
) -> HTMLResponse:
    """Every image of one DAG run, once: as stored when a transfer stored it, else as generated."""
    pixels = _checked(params.thumbnail_size, size)
    dag = _checked(params.dag_id, dag_id)
    run = _checked(params.run_id, run_id)
    authorize(user, dag)
    run_images = _run(dag, run)
    empty = "No images in this DAG run."
    return _page(
        f"Images · {run}",
        dag,
        run,
        run_images.gallery(),
        show_task=True,
        empty=empty,
        size=pixels,
        # Every generation of the run, stored or not: the run total is what the run was billed.
        costs=run_images.run_costs(),
        cost_total_label="run total",
    )


def _tile(address: params.TileAddress) -> Tile:
    run_images = _run(address.dag_id, address.run_id)
    for output in run_images.task_instances(address.task_id, address.map_index):
        tiles = run_images.tiles(output)
        if address.position < len(tiles):
            return tiles[address.position]
    raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image")


def _open(tile: Tile) -> IO[bytes]:
    if not tile.has_pixels:
        gone = tile.kind == "expired"
        raise HTTPException(
            status.HTTP_410_GONE if gone else status.HTTP_404_NOT_FOUND, tile.failure or "no image to show"
        )
    try:
        return open_pixels(tile)
    except ResultExpiredError as error:
        raise HTTPException(status.HTTP_410_GONE, str(error)) from None
    except PixelsUnavailableError as error:
        log.warning("Images view: %s/%s position %d: %s", tile.task_id, tile.map_index, tile.position, error)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(error)) from None


def _not_modified(request: Request, etag: str) -> bool:
    sent = request.headers.get("if-none-match", "")
    return etag in (part.strip() for part in sent.split(",")) or sent.strip() == "*"


@router.get("/thumbnail")
def thumbnail(
    request: Request,
    user: User,
    dag_id: Param = None,
    run_id: Param = None,
    task_id: Param = None,
    map_index: Param = None,
    n: Param = None,
    size: Param = None,
    v: Param = None,
) -> Response:
    """One tile's thumbnail: a JPEG of at most ``size`` (128, 256, 512) pixels on its longer side."""
    address = _checked(params.tile_address, dag_id, run_id, task_id, map_index, n)
    pixels = _checked(params.thumbnail_size, size)
    authorize(user, address.dag_id)
    tile = _tile(address)
    if not tile.has_pixels:
        _open(tile)  # raises the tile's 404/410
    etag = etag_for(tile.identity, pixels)
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    data = thumbnails.get(etag)
    if data is None:
        source = _open(tile)
        try:
            data = make_thumbnail(source, pixels)
        except ThumbnailError as error:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"no thumbnail: {error}") from None
        finally:
            source.close()
        thumbnails.put(etag, data)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/image")
def full_image(
    request: Request,
    user: User,
    dag_id: Param = None,
    run_id: Param = None,
    task_id: Param = None,
    map_index: Param = None,
    n: Param = None,
    v: Param = None,
) -> Response:
    """One tile's full image, streamed (PNG, JPEG or WebP only)."""
    from airflow_provider_imggen.transfers.image_check import sniff

    address = _checked(params.tile_address, dag_id, run_id, task_id, map_index, n)
    authorize(user, address.dag_id)
    tile = _tile(address)
    if not tile.has_pixels:
        _open(tile)
    etag = etag_for(tile.identity, 0)
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    source = _open(tile)
    kind = sniff(source.read(12))
    source.seek(0)
    if kind is None:
        source.close()
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "the content is not a PNG, JPEG or WebP image")

    def body() -> Iterator[bytes]:
        try:
            yield from iter(lambda: source.read(256 * 1024), b"")
        finally:
            source.close()

    return StreamingResponse(body(), media_type=_CONTENT_TYPES[kind], headers=headers)
