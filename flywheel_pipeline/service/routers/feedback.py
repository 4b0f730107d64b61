"""People's ratings of a message: ``POST /feedback``.

The caller's API key names its organization (``ThrottledCaller``: authenticated, then rate
limited per organization); the body is one rating or an array of at most 1,000, each checked by
core/inbound_records.check_feedback and refused whole with the failing record's index: a rating
that is not an integer from 1 to 5 is a 422 ``invalid_rating``, any other problem (a missing or
malformed ``message_id``, an unknown field, a bad ``rated_at``, a comment too long) a 422
``invalid_record``. A rating lands with the key's ``organization_id`` (one naming another
organization is refused, 403, as for /replies), so it attaches to that organization's message
only; ``rated_at`` defaults to the time of receipt and ``feedback_id``, when absent, is derived
(core/inbound_records.feedback_id) so that a retried post is a duplicate; an empty ``rater`` is none.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from flywheel_pipeline.core.inbound_records import RatingError, RecordError, check_feedback
from flywheel_pipeline.service.dependencies import Records, State, ThrottledCaller, check_org, switchable
from flywheel_pipeline.service.errors import Rejected

router = APIRouter()


async def own_ratings(state: State, org: ThrottledCaller, records: Records) -> list[Any]:
    received = datetime.now(timezone.utc)
    for i, record in enumerate(records):
        if org is not None and isinstance(record, dict):  # the rating is the key's organization's
            if record.get("organization_id") is not None:
                check_org(state, org, record["organization_id"], f"record {i}")
            record["organization_id"] = org
        try:
            check_feedback(record, received=received)
        except RatingError as exc:
            raise Rejected(422, "invalid_rating", f"record {i}: {exc}") from exc
        except RecordError as exc:
            raise Rejected(422, "invalid_record", f"record {i}: {exc}") from exc
    return records


@router.post("/feedback")
@switchable("feedback")
async def feedback(state: State, records: Annotated[list[Any], Depends(own_ratings)]) -> dict:
    await state.land("feedback", records)
    return {"accepted": len(records), "feedback_ids": [r["feedback_id"] for r in records]}
