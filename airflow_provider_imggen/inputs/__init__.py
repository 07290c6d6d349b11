"""
Input images: what ``images=`` names (:mod:`~airflow_provider_imggen.inputs.references`, parse time) and
how the worker reads, checks and hands them to the service (:mod:`~airflow_provider_imggen.inputs.resolve`).
"""
