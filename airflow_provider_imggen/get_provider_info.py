"""
Provider metadata for Airflow's providers manager.

Airflow imports this module whenever ``airflow`` itself is imported, so it must stay stdlib-only and cheap.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_imggen import __version__

INTEGRATION = "Image Generation"
# Kept in step with airflow_provider_imggen.model_table.KNOWN_MODELS (a test checks it); not imported from
# there because this module is loaded on every `import airflow`.
KNOWN_MODEL_NAMES = [
    "qwen-image",
    "qwen-image-plus",
    "qwen-image-max",
    "qwen-image-2.0",
    "qwen-image-2.0-pro",
    "wan2.5-t2i-preview",
    "qwen-image-2.1-pro",
    "qwen-image-3.0",
    "qwen-image-3.0-pro",
    "z-image-turbo",
    "qwen-image-edit",
    "qwen-image-edit-plus",
    "qwen-image-edit-max",
    "wan2.5-i2i-preview",
    "wan2.6-image",
    "wan2.6-t2i",
    "wan2.7-image",
    "wan2.7-image-pro",
    "wan2.2-t2i-flash",
    "wan2.2-t2i-plus",
    "wanx2.1-t2i-turbo",
    "wanx2.1-t2i-plus",
    "wanx2.0-t2i-turbo",
    "wan2.1-t2i-turbo",
    "wan2.1-t2i-plus",
]
# DashScope's regions (a key works only in its own region; docs/models.md, "Regions and workspaces"):
# the base URLs, said once for the form's placeholder and descriptions.
DASHSCOPE_REGIONS = (
    "Beijing https://dashscope.aliyuncs.com/api/v1, Singapore https://dashscope-intl.aliyuncs.com/api/v1, "
    "US (Virginia) https://dashscope-us.aliyuncs.com/api/v1 (another model list), or a workspace endpoint "
    "https://{WorkspaceId}.{region}.maas.aliyuncs.com/api/v1"
)
# Kept in step with airflow_provider_imggen.transfers.url_policy.DEFAULT_RESULT_HOSTS (a test checks it).
DEFAULT_RESULT_HOST_PATTERNS = [
    "dashscope-result-*.oss-*.aliyuncs.com",
    "dashscope-????.oss-accelerate.aliyuncs.com",
    "dashscope-????.oss-cn-*.aliyuncs.com",
]


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
                "python-modules": [
                    "airflow_provider_imggen.operators.image_generation",
                    "airflow_provider_imggen.operators.image_generation_batch",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_imggen.triggers.image_generation",
                    "airflow_provider_imggen.triggers.image_generation_batch",
                ],
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
        "extra-links": [
            "airflow_provider_imggen.transfers.image_generation_to_s3.ImagesViewLink",
            "airflow_provider_imggen.transfers.image_generation_to_s3.S3ImageLink",
        ],
        "connection-types": [
            {
                "connection-type": "imggen",
                "hook-class-name": "airflow_provider_imggen.hooks.image_generation.ImageGenerationHook",
                "hook-name": "Image Generation",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Key", "host": "Base URL"},
                    "placeholders": {
                        # A gateway's base URL, or (api_style dashscope) a region's: see api_style.
                        "host": "https://gateway.example.com/v1 or https://dashscope-intl.aliyuncs.com/api/v1",
                        "password": "sk-... (a DashScope key works only in its own region)",
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
                        "dashscope: DashScope's native API (the asynchronous task API, and the synchronous "
                        "multimodal generation for qwen-image-max and qwen-image 2.0); Base URL by region: "
                        f"{DASHSCOPE_REGIONS}. A key used in another region fails authentication.",
                        "schema": {"type": "string", "enum": ["openai", "dashscope"], "default": "openai"},
                    },
                    "workspace": {
                        "label": "Workspace ID",
                        "description": "Model Studio workspace to bill and run in, sent as the "
                        "X-DashScope-WorkSpace header on every request (e.g. ws-1a2b3c4d). Empty: the "
                        "key's default workspace.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "gateway_dialect": {
                        "label": "Gateway dialect (api_style openai)",
                        "description": "Where the gateway reads DashScope's own fields. openai: at the top "
                        "level (seed, negative_prompt, prompt_upsampling, watermark). nested: seed, "
                        "prompt_extend and watermark under 'parameters', negative_prompt under 'input', for "
                        "relays that drop them at the top level. A warning (and the XCom's 'warnings') says "
                        "when an answer shows the gateway ignored them.",
                        "schema": {"type": "string", "enum": ["openai", "nested"], "default": "openai"},
                    },
                    "retry_unknown_outcome": {
                        "label": "Retry requests whose outcome is unknown (may bill twice)",
                        "description": "Off by default: a billable request answered 5xx, timed out or cut "
                        "off after sending may have been billed, so it is not sent again. On: it is retried "
                        "like any transient failure, and you may pay twice for the same images.",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "ledger": {
                        "label": "Billing ledger (pay once across runs)",
                        "description": "Off when empty. s3://<aws_conn_id>@<bucket>/<prefix> or "
                        "postgres://<postgres_conn_id>/<table>: before paying, a generation looks its "
                        "request up there; images already stored in S3 (verified by sha256) are reused and "
                        "nothing is billed, and two runs asking for the same request at once pay once.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "price_list": {
                        "label": "Price list",
                        "description": "Which list prices the cost is computed from when the host does not "
                        "name a region (a private endpoint, a proxy): beijing (CNY) or singapore (USD). "
                        "Empty: from the host. Per-model prices of your own go in the extra 'prices'.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "budget": {
                        "label": "Budget (limits enforced before billing)",
                        "description": 'Off when empty. JSON, e.g. {"connection_per_day": "200 CNY", '
                        '"dag_run": 50}: scopes dag_run, dag_per_day, connection_per_day; limits in images '
                        "or CNY/USD. Every send on this connection reserves in it before it leaves, and one "
                        "that would exceed it is refused. Needs the billing ledger.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "result_hosts": {
                        "label": "Result hosts (ImageGenerationToS3Operator)",
                        "description": "Hosts the S3 transfer may download result images from besides the "
                        "API's own origin: one pattern per line, '*' standing for part of one DNS label, "
                        "'?' for one character, ':port' for a port other than 443; https only. Empty: the "
                        "DashScope result stores "
                        f"({', '.join(DEFAULT_RESULT_HOST_PATTERNS)}), in every region: allow the same "
                        "hosts in an egress firewall.",
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
