"""MUFASA: a multimodal long-sequence recommender.

Layers (see ``../shared/DESIGN.md``): ``mufasa.data`` (schemas, loaders, synthetic data, sequences),
``mufasa.pipeline`` (stage functions, params, MLflow adapter, data checks), ``mufasa.cli`` (the ``mufasa``
command that DVC runs). Dagster lives in ``orchestration/``, GX suites in ``data_checks/``.
"""

import os as _os

# Telemetry off before any of the stack is imported (GX reads its flag at import time).
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    _os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
