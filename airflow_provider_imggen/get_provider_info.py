"""
Provider metadata for Airflow's providers manager.

Airflow imports this module whenever ``airflow`` itself is imported, so it must stay stdlib-only and cheap.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_imggen import __version__

INTEGRATION = "Image Generation"
# Kept in step with airflow_provider_imggen.models.KNOWN_MODELS (a test checks it); not imported from
# there because this module is loaded on every `import airflow`.
KNOWN_MODEL_NAMES = ["qwen-image", "qwen-image-plus", "wan2.2-t2i-flash", "wan2.2-t2i-plus"]
# Kept in step with airflow_provider_imggen.transfers.url_policy.DEFAULT_RESULT_HOSTS (a test checks it).
DEFAULT_RESULT_HOST_PATTERNS = ["dashscope-result-*.oss-*.aliyuncs.com"]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-imggen",
        "name": "Image Generation",
        "description": "Generate images from text (qwen-image, wan2.2-t2i via OpenAI-compatible gateways "
        "or DashScope) and land them, with their metadata, in S3.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imggen.hooks.image_generation"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imggen.operators.image_generation"],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imggen.triggers.image_generation"],
            }
        ],
        "transfers": [
            {
                "source-integration-name": INTEGRATION,
                "target-integration-name": "Amazon Simple Storage Service (S3)",
                "python-module": "airflow_provider_imggen.transfers.image_generation_to_s3",
            }
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imggen.sensors.image_generation"],
            }
        ],
        "extra-links": ["airflow_provider_imggen.transfers.image_generation_to_s3.S3ImageLink"],
        "connection-types": [
            {
                "connection-type": "imggen",
                "hook-class-name": "airflow_provider_imggen.hooks.image_generation.ImageGenerationHook",
                "hook-name": "Image Generation",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://gateway.example.com/v1",
                        "password": "sk-...",
                    },
                },
                "conn-fields": {
                    "default_model": {
                        "label": "Default model",
                        "description": "Model used when a task names none, e.g. "
                        + ", ".join(KNOWN_MODEL_NAMES)
                        + " (any name the gateway serves is accepted).",
                        "schema": {"type": ["string", "null"], "examples": KNOWN_MODEL_NAMES},
                    },
                    "request_timeout": {
                        "label": "Request timeout (seconds)",
                        "description": "Read timeout of one generation request; slow models take tens "
                        "of seconds.",
                        "schema": {"type": ["number", "null"], "minimum": 1, "default": 180},
                    },
                    "max_retries": {
                        "label": "Maximum retries",
                        "description": "Retries of one request, with exponential backoff honouring "
                        "Retry-After: billable requests only when nothing was billed (429, connection never "
                        "opened); status queries on every transient failure.",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 20, "default": 3},
                    },
                    "api_style": {
                        "label": "API style",
                        "description": "openai: a gateway serving POST /v1/images/generations. "
                        "dashscope: the native asynchronous task API.",
                        "schema": {"type": "string", "enum": ["openai", "dashscope"], "default": "openai"},
                    },
                    "retry_unknown_outcome": {
                        "label": "Retry requests whose outcome is unknown (may bill twice)",
                        "description": "Off by default: a billable request answered 5xx, timed out or cut "
                        "off after sending may have been billed, so it is not sent again. On: it is retried "
                        "like any transient failure, and you may pay twice for the same images.",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "result_hosts": {
                        "label": "Result hosts (ImageGenerationToS3Operator)",
                        "description": "Hosts the S3 transfer may download result images from besides the "
                        "API's own origin: one pattern per line, '*' standing for part of one DNS label, "
                        "':port' for a port other than 443; https only. Empty: the DashScope result stores "
                        f"({', '.join(DEFAULT_RESULT_HOST_PATTERNS)}).",
                        "schema": {"type": ["array", "null"], "items": {"type": "string"}},
                    },
                    "allow_private_result_hosts": {
                        "label": "Allow private result hosts (ImageGenerationToS3Operator)",
                        "description": "Off by default: a result host resolving to a private, loopback or "
                        "link-local address is refused, so a hostile answer cannot make the transfer fetch "
                        "internal services. On: for result stores inside your own network.",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                },
            }
        ],
    }
