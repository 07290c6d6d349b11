"""
The Images view's HTML: a server-rendered grid of tiles, no script, every value escaped.

The page is shown in an iframe of the Airflow UI; it links only to the plugin's own routes (thumbnails,
full images), so the browser never sees a result URL, a bucket credential or an API key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from airflow_provider_imggen.ui.costs import TaskCost, per_image_text, render_costs
from airflow_provider_imggen.ui.thumbnails import DEFAULT_SIZE, etag_for
from airflow_provider_imggen.ui.tiles import Tile

# Sent with every page: no script at all, images only from the plugin, shown only inside Airflow's UI.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'self'; "
    "base-uri 'none'; form-action 'none'"
)

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1a202c;
background:#fff;font-size:13px}
h1{font-size:18px;margin:0 0 4px}p.summary{margin:0 0 16px;color:#4a5568}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(272px,1fr));gap:16px}
.tile{border:1px solid #e2e8f0;border-radius:8px;padding:8px;margin:0;background:#fafafa}
.tile img{display:block;max-width:100%;height:auto;border-radius:4px;background:#edf2f7}
.placeholder{display:flex;align-items:center;justify-content:center;width:256px;max-width:100%;
aspect-ratio:4/3;border-radius:4px;text-align:center;padding:8px;box-sizing:border-box;font-weight:600}
.expired .placeholder{background:#fefcbf;color:#744210}.failed .placeholder{background:#fed7d7;color:#822727}
.unavailable .placeholder{background:#e2e8f0;color:#2d3748}
.broken .placeholder{background:#feebc8;color:#7b341e}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 8px;margin:8px 0 0}
dt{color:#718096}dd{margin:0;overflow-wrap:anywhere}code{font-size:12px}
.task{font-weight:600;margin:8px 0 0}a{color:#2b6cb0}
table.costs{border-collapse:collapse;margin:0 0 16px}table.costs caption{text-align:left;font-weight:600}
table.costs th,table.costs td{border:1px solid #e2e8f0;padding:2px 8px;text-align:left}
@media (prefers-color-scheme: dark){body{background:#1a202c;color:#e2e8f0}
.tile{background:#2d3748;border-color:#4a5568}dt{color:#a0aec0}a{color:#90cdf4}p.summary{color:#a0aec0}}
"""


def _query(tile: Tile, dag_id: str, run_id: str, **extra: object) -> str:
    return urlencode(
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": tile.task_id,
            "map_index": tile.map_index,
            "n": tile.position,
            **extra,
        }
    )


def _value(value: object) -> str:
    return "—" if value is None or value == "" else escape(str(value))


def _metadata(tile: Tile) -> str:
    if tile.kind == "broken":  # nothing of an unreadable record is shown, only that it is one
        return f'<dl><dt>error</dt><dd data-field="error">{_value(tile.failure)}</dd></dl>'
    rows = [
        ("prompt", _value(tile.prompt)),
        ("negative prompt", _value(tile.negative_prompt)),
        ("model", _value(tile.model)),
        ("size", _value(tile.size)),
        ("seed", _value(tile.seed)),
        ("request id", f"<code>{_value(tile.request_id)}</code>"),
        ("sha256", f"<code>{_value(tile.sha256)}</code>"),
        ("S3 URI", f"<code>{_value(tile.s3_uri)}</code>"),
        ("bytes", _value(f"{tile.bytes:,}" if tile.bytes is not None else None)),
    ]
    if tile.kind == "failed":
        rows.append(("cost per image", "not billed"))  # the service bills only the images it made
    elif tile.kind != "input":  # an input image was not made here: it has no price
        rows.append(("cost per image", escape(per_image_text(tile.cost_per_image, tile.cost_currency))))
    if tile.failure and tile.kind == "failed":
        rows.append(("error", _value(tile.failure)))
    cells = "".join(f'<dt>{name}</dt><dd data-field="{name}">{value}</dd>' for name, value in rows)
    return f"<dl>{cells}</dl>"


def _thumbnail_height(tile: Tile, size: int) -> int:
    """The thumbnail's height at ``size`` wide, from the stored dimensions or the requested size."""
    width, height = tile.width, tile.height
    if not (width and height) and tile.size:
        parts = re.split(r"[x*]", tile.size)
        if len(parts) == 2 and all(part.isdigit() and 0 < int(part) < 100_000 for part in parts):
            width, height = int(parts[0]), int(parts[1])
    if not (width and height):
        return size
    return max(1, round(size * height / width))


def _placeholder(kind: str, text: str) -> str:
    return f'<div class="placeholder" role="img" aria-label="{kind}">{text}</div>'


def _tile(tile: Tile, dag_id: str, run_id: str, *, show_task: bool, size: int) -> str:
    noun = "input image" if tile.kind == "input" else "image"
    label = f"{noun} {tile.index}" if tile.index is not None else noun
    if tile.has_pixels:
        version = etag_for(tile.identity, size).strip('"')[:16]
        thumb = f"thumbnail?{_query(tile, dag_id, run_id, size=size, v=version)}"
        full = f"image?{_query(tile, dag_id, run_id, v=version)}"
        height = _thumbnail_height(tile, size)
        picture = (
            f'<a href="{escape(full)}" target="_blank" rel="noopener" title="Open the full image">'
            f'<img src="{escape(thumb)}" alt="{escape(label)}: {_value(tile.prompt)}" '
            f'width="{size}" height="{height}" decoding="async"></a>'
        )
    elif tile.kind == "expired":
        when = f" (URL expired {tile.expires_at:%Y-%m-%d %H:%M} UTC)" if tile.expires_at else ""
        picture = _placeholder("expired", f"expired, not stored{when}")
    elif tile.kind == "failed":
        picture = _placeholder("failed", f"generation failed: {_value(tile.failure)}")
    elif tile.kind == "input":
        picture = _placeholder("input", _value(tile.failure))
    elif tile.kind == "broken":
        picture = _placeholder("broken", _value(tile.failure))
    else:
        picture = _placeholder("unavailable", _value(tile.failure))
    task = ""
    if show_task:
        where = tile.task_id + (f" [{tile.map_index}]" if tile.map_index >= 0 else "")
        task = f'<p class="task">{escape(where)}</p>'
    return (
        f'<figure class="tile {tile.kind}" data-kind="{tile.kind}" data-task="{escape(tile.task_id)}" '
        f'data-position="{tile.position}">{picture}{task}{_metadata(tile)}</figure>'
    )


def render_page(
    *,
    title: str,
    dag_id: str,
    run_id: str,
    tiles: Sequence[Tile],
    show_task: bool,
    empty: str,
    size: int = DEFAULT_SIZE,
    costs: Sequence[TaskCost] = (),
    cost_total_label: str = "total",
) -> str:
    """
    The page: a summary, the cost of the generations shown (:func:`~airflow_provider_imggen.ui.costs.
    render_costs`: per generation task instance, then the total per currency) and the tiles.
    """
    counts = {kind: sum(1 for tile in tiles if tile.kind == kind) for kind in ("stored", "result", "broken")}
    counts["input"] = sum(1 for tile in tiles if tile.of_input)
    outputs = len(tiles) - counts["input"]
    others = outputs - counts["stored"] - counts["result"]
    summary = (
        f"{outputs} image(s): {counts['stored']} stored in S3, {counts['result']} not yet stored"
        + (f", {others} without a preview" if others else "")
        + (f" ({counts['broken']} unreadable XCom record(s))" if counts["broken"] else "")
        + (f"; made from {counts['input']} input image(s), shown first" if counts["input"] else "")
        if tiles
        else escape(empty)
    )
    body = "".join(_tile(tile, dag_id, run_id, show_task=show_task, size=size) for tile in tiles)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="summary">{summary}</p>'
        f"{render_costs(costs, total_label=cost_total_label)}"
        f'<div class="grid">{body}</div></body></html>'
    )
