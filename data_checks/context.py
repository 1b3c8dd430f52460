"""One ephemeral GX context per process (GX needs an active context to build suites and run validations)."""

from __future__ import annotations

from functools import lru_cache

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig


@lru_cache(maxsize=1)
def context():
    ctx = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation; in pipeline logs that is noise.
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


@lru_cache(maxsize=1)
def dataframe_batch_definition():
    source = context().data_sources.add_pandas("mufasa")
    return source.add_dataframe_asset("frame").add_batch_definition_whole_dataframe("whole")
