"""
Where the model table, the request and the coercions used to live together: they now have a module each
(:mod:`.model_table`, :mod:`.request`, :mod:`.coercion`, :mod:`.polling`). Re-exported while callers move.
"""

from airflow_provider_imggen.coercion import *  # noqa: F403
from airflow_provider_imggen.coercion import check_flag, coerce_bool, coerce_int, coerce_seconds, parse_size  # noqa: F401
from airflow_provider_imggen.model_table import *  # noqa: F403
from airflow_provider_imggen.model_table import ENDPOINTS, KNOWN_MODELS, check_endpoint, default_size_of  # noqa: F401
from airflow_provider_imggen.polling import *  # noqa: F403
from airflow_provider_imggen.polling import TASK_ACTIVE_STATUSES, check_poll_settings  # noqa: F401
from airflow_provider_imggen.request import *  # noqa: F403
from airflow_provider_imggen.request import (  # noqa: F401
    MAX_SEED,
    GenerationRequest,
    check_request_for_style,
    validate_generation_request,
)
