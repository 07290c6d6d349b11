"""Apache Airflow provider for text-to-image generation (qwen-image, wan2.2-t2i) with results landed in S3."""

__version__ = "0.1.0"

# The connection every hook, operator, sensor, trigger and transfer of the provider uses unless told
# otherwise. Here, at the package's root, because DAG files import the operators that default to it.
DEFAULT_CONN_ID = "imggen_default"
