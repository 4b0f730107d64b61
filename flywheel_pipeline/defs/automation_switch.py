"""The switch that turns the unattended loop on or off: ``FLYWHEEL_AUTOMATION`` (``on`` by
default; ``off`` starts the retrain schedule, the new-outcomes sensor, the experiment sensor and
the daily lake maintenance (which expires history) stopped, so they run only when started in the
UI). The landing sensor and the daily refresh
always start running: they only keep the warehouse current."""

import os

import dagster as dg


def automation_on() -> bool:
    value = (os.environ.get("FLYWHEEL_AUTOMATION") or "on").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"FLYWHEEL_AUTOMATION must be 'on' or 'off', got {value!r}")
    return value == "on"


def sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_on() else dg.DefaultSensorStatus.STOPPED


def schedule_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED
