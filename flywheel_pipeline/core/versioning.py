"""Semantic versions of fine-tuned models.

A new version bumps ``minor`` for a new data batch (the default), ``major`` for a format or
method change (e.g. SFT -> DPO, another base model), ``patch`` for fixes (same data,
corrected hyperparameters); an explicit version overrides and must be greater than the
latest."""

from __future__ import annotations

import re

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
CHANGES = ("major", "minor", "patch")


def parse(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version or "")
    if not m:
        raise ValueError(f"not a semantic version (MAJOR.MINOR.PATCH): {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def next_version(latest: str | None, change: str = "minor", override: str | None = None) -> str:
    if change not in CHANGES:
        raise ValueError(f"change must be one of {CHANGES}, got {change!r}")
    if override:
        if latest and parse(override) <= parse(latest):
            raise ValueError(f"version {override} must be greater than the latest {latest}")
        parse(override)
        return override
    if latest is None:
        return "1.0.0"
    major, minor, patch = parse(latest)
    if change == "major":
        return f"{major + 1}.0.0"
    if change == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def change_kind(previous: dict | None, current: dict) -> str:
    """What a new training cycle changes relative to the previous model of the same family:
    base model or method -> major; new dataset -> minor; otherwise -> patch."""
    if previous is None:
        return "minor"
    if previous.get("base_model") != current.get("base_model") or previous.get("method") != current.get("method"):
        return "major"
    if previous.get("dataset_version") != current.get("dataset_version"):
        return "minor"
    return "patch"
