"""Loaded at the start of every Python process whose PYTHONPATH holds this folder: when
SHIFTED_CLOCK_START is set, Dagster's clock (dagster._time, the seam Dagster's own test
utilities freeze) starts at that UTC time and flows at its real pace. The scheduling tests run
the whole Dagster stack so, to reach a schedule tick in a minute instead of up to ten."""

import os

if os.environ.get("SHIFTED_CLOCK_START"):
    import time
    from datetime import datetime, timedelta

    import dagster._time as dagster_time

    offset = datetime.fromisoformat(os.environ["SHIFTED_CLOCK_START"]).timestamp() - time.time()
    real_datetime = dagster_time._mockable_get_current_datetime
    dagster_time._mockable_get_current_timestamp = lambda: time.time() + offset
    dagster_time._mockable_get_current_datetime = lambda: real_datetime() + timedelta(
        seconds=offset
    )
