"""The control API's rules (pure: registry rows and numbers in, answers out; flywheel_pipeline/control.py
acts on them): what role a registry model plays, which traffic share a challenger may start at, and
what a refusal is.

Roles, from the registry's ``status`` and ``ab_group`` (warehouse/model_registry.py):

==============  ==============================================================================
``champion``    ``deployed``: serves its family's traffic but the challenger's share
``challenger``  ``ready`` in the ``challenger`` arm with a share of traffic (an experiment runs)
``candidate``   ``ready``, serving nothing yet (``flywheel deploy`` makes it a challenger)
``retired``     ``archived``; ``retired_as`` says why: ``rolled_back``, ``inconclusive``, ``replaced``
                (a challenger a newer one replaced) or ``former_champion`` (``flywheel rollback``
                can make it champion again)
``training``    a fine-tuning job in progress
``failed``      the job failed
==============  ==============================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ROLES = ("champion", "challenger", "candidate", "retired", "training", "failed")
REGISTRY_STATUSES = ("training", "ready", "deployed", "archived", "failed")
# A challenger starts at a harm step (a share below the champion's) or at the 50/50 efficacy step at
# most (core/stats/policy.py: equal shares are the efficacy step; more than half would make the
# champion the smaller arm, which the ramp never does).
MAX_DEPLOY_SHARE = 50.0

@dataclass(frozen=True)
class Actor:
    """Who acts (the audit's ``actor``): ``admin:<key id>`` with the key's fingerprint (HTTP), or
    ``cli:<user>@<host>`` (the CLI). Never a key."""

    name: str
    channel: str  # 'http' or 'cli'
    key_fingerprint: str | None = None


RefusalKind = Literal["not_found", "conflict", "invalid", "busy"]


class ControlRefused(Exception):
    """An action refused with its reason in words: ``not_found`` (an unknown version or run),
    ``conflict`` (the state does not allow it now: a retrain running, no significant winner, an
    experiment already running), ``invalid`` (bad input), ``busy`` (the warehouse stayed locked)."""

    def __init__(self, kind: RefusalKind, detail: str, *, run_id: str | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.run_id = kind, detail, run_id


def role_of(status: str, ab_group: str | None, traffic_pct: float | None) -> str:
    if status == "deployed":
        return "champion"
    if status == "ready":
        return "challenger" if ab_group == "challenger" and (traffic_pct or 0) > 0 else "candidate"
    if status == "archived":
        return "retired"
    return status  # training, failed


def retired_as(status: str, ab_group: str | None) -> str | None:
    """Why an archived model was retired (None for a model that is not)."""
    if status != "archived":
        return None
    return {"rolled_back": "rolled_back", "inconclusive": "inconclusive", "challenger": "replaced",
            "archived": "former_champion", "champion": "former_champion"}.get(ab_group or "", "retired")


def status_filter(value: str | None) -> set[str] | None:
    """``?status=`` of ``GET /training/models``: roles or registry statuses, comma-separated; None
    lists every model. Unknown names are ``invalid``."""
    if value is None or not value.strip():
        return None
    names = {v.strip() for v in value.split(",") if v.strip()}
    unknown = names - set(ROLES) - set(REGISTRY_STATUSES)
    if unknown:
        raise ControlRefused("invalid", f"unknown status {', '.join(sorted(unknown))}; one of "
                                        f"{', '.join(ROLES)} (roles) or {', '.join(REGISTRY_STATUSES)} (registry)")
    return names


def check_deploy_share(share: object) -> float:
    """The share a deployed challenger starts at: a finite number in (0, ``MAX_DEPLOY_SHARE``]."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
        raise ControlRefused("invalid", f"traffic_pct must be a finite number, got {share!r}")
    if not 0 < share <= MAX_DEPLOY_SHARE:
        raise ControlRefused("invalid", f"traffic_pct {share:g} is outside (0, {MAX_DEPLOY_SHARE:g}]: a challenger "
                                        f"starts at a harm step (below the champion's share) or at the 50/50 "
                                        "efficacy step; the experiments move it on")
    return float(share)
