"""
``make demo``: generate images offline, on embedded defaults, and show where they landed.

Starts the emulator on a free loopback port, defines the ``imggen_default`` connection through the
environment (as a deployment would), generates images with :class:`ImageGenerationHook`, downloads them
from their signed URLs into the output folder and prints each file's size, dimensions and checksum.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

DEMO_API_KEY = "sk-demo-emulator"
DEMO_REQUESTS = [
    {
        "prompt": "A C4D-style e-commerce poster in blue tones, bold 3D text 'Double 11 pre-sale'",
        "model": "qwen-image",
        "size": "1328x1328",
        "seed": 123456,
    },
    {
        "prompt": "Product shot of a ceramic coffee mug on a wooden table, morning light",
        "model": "wan2.2-t2i-flash",
        "size": "1024*768",
        "n": 2,
        "seed": 42,
        "negative_prompt": "low resolution, blurry",
    },
]


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="folder for the images")
    args = parser.parse_args(argv)

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="imggen-demo-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

    import requests

    from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

    args.output.mkdir(parents=True, exist_ok=True)
    with EmulatorServer(EmulatorConfig(api_key=DEMO_API_KEY)) as emulator:
        print(f"Emulator listening on {emulator.base_url}")
        os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"] = json.dumps(
            {"conn_type": "imggen", "host": f"{emulator.base_url}/v1", "password": DEMO_API_KEY}
        )
        hook = ImageGenerationHook()
        for request in DEMO_REQUESTS:
            params = dict(request)
            prompt = str(params.pop("prompt"))
            result = hook.generate_images(prompt, **params)  # type: ignore[arg-type]
            print(f"\n{result.model} request_id={result.request_id}: {prompt!r}")
            for image in result.images:
                assert image.url is not None
                data = requests.get(image.url, timeout=30).content
                seed = int(result.parameters["seed"]) + image.index
                path = args.output / f"{result.model}-seed{seed}-{image.index}.png"
                path.write_bytes(data)
                width, height = png_dimensions(data)
                print(
                    f"  {path}  {len(data):>9,} bytes  {width}x{height}  "
                    f"sha256={hashlib.sha256(data).hexdigest()}"
                )
                print(f"    from {image.masked_url} (expires {image.url_expires_at:%Y-%m-%d %H:%M} UTC)")
        print(f"\nBilled images (emulator request log): {emulator.billed_images()}")
    print(f"Images are in {args.output.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
