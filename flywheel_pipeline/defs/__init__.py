"""The Dagster layer: thin assets, checks, sensors and schedules over core/ and warehouse/."""
