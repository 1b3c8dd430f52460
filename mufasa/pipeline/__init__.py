"""Pipeline layer: params parsing, stage functions, data validation and the MLflow tracking adapter.

The only part of ``mufasa`` that touches MLflow or runs the ``data_checks`` suites. DVC (through
``mufasa.cli``) and Dagster (``orchestration/``) both call :mod:`mufasa.pipeline.stages`.
"""
