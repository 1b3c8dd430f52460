"""Dagster definitions for MUFASA: thin assets and checks over ``mufasa.pipeline.stages``."""
