"""Operations: ``GET /healthz`` (status, open landing segments, which sources are
unauthenticated, whether the published files exist) and ``GET /metrics`` (Prometheus text:
requests, accepted and ignored events, refusals by reason, landed bytes, latency). Neither
can be switched off or needs a key."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import Response

from flywheel_pipeline.service.dependencies import State

router = APIRouter()


@router.get("/healthz")
async def healthz(state: State) -> dict:
    writer, spool = state.writer, state.spool
    status = "starting" if writer is None else "landing_unavailable" if spool and not spool.available else "ok"
    return {"status": status, "pid": os.getpid(), "landing": str(state.settings.landing),
            **({"replica_id": spool.replica, "spool_pending": spool.pending(), "uploaded": spool.uploaded,
                "landing_error": spool.last_error} if spool else {}),
            "open_segments": writer.open_segments() if writer else {},
            "unauthenticated": state.settings.unverified_sources(),
            "hubspot_enrichment": state.hubspot is not None,
            "routing_published": state.routing.path.exists(),
            "leaderboard_published": state.leaderboard.path.exists()}


@router.get("/metrics")
async def prometheus_metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
