"""Apache Airflow provider for text-to-image generation (qwen-image, wan2.2-t2i) with results landed in S3."""

__version__ = "0.1.0"
