"""
Where the result types and the decoding of every answer used to live together: they now have a module
each (:mod:`.results`, :mod:`.wire`). Re-exported while callers move.
"""

from airflow_provider_imggen.results import *  # noqa: F403
from airflow_provider_imggen.wire.errors import decode_response  # noqa: F401
from airflow_provider_imggen.wire.gateway import gateway_ignored_fields, parse_generation_result  # noqa: F401
from airflow_provider_imggen.wire.multimodal import parse_multimodal_result  # noqa: F401
from airflow_provider_imggen.wire.native import (  # noqa: F401
    flatten_native_request,
    parse_submitted_task,
    parse_task_list,
    parse_task_state,
)
