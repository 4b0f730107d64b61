"""The outreach app's own records: ``POST /messages`` and ``POST /replies``.

The caller's API key names its organization (``ThrottledCaller``: authenticated, then rate
limited per organization); the body is one record or an array of at most 1,000, each checked
by core/inbound_records.py as ingestion would check it and refused whole with the failing
record's index. A message must be the key's organization's (403 otherwise); a reply lands with
the key's ``organization_id``, its ``message_id`` threaded from its headers when it has none.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Depends

from flywheel_pipeline.core.inbound_records import RecordError, check_message, check_reply
from flywheel_pipeline.service.dependencies import Records, State, ThrottledCaller, check_org, switchable
from flywheel_pipeline.service.errors import Rejected

router = APIRouter()


async def own_messages(state: State, org: ThrottledCaller, records: Records) -> list[Any]:
    for i, record in enumerate(records):
        try:
            check_message(record)
        except RecordError as exc:
            raise Rejected(400, "invalid_record", f"record {i}: {exc}") from exc
        check_org(state, org, record.get("organization_id"), f"record {i}")
    return records


@router.post("/messages")
@switchable("messages")
async def messages(state: State, records: Annotated[list[Any], Depends(own_messages)]) -> dict:
    await state.land("messages", records)
    return {"accepted": len(records)}


class Replies(NamedTuple):
    records: list[Any]
    attributed_by_headers: int  # replies whose message_id came from In-Reply-To or References


async def own_replies(state: State, org: ThrottledCaller, records: Records) -> Replies:
    threaded = 0
    for i, record in enumerate(records):
        try:
            mid = check_reply(record, state.settings.message_id_domains)
        except RecordError as exc:
            raise Rejected(400, "invalid_record", f"record {i}: {exc}") from exc
        if mid:
            record["message_id"] = mid
            threaded += 1
        if org is not None:  # the reply is the key's organization's: it attaches to its messages only
            if record.get("organization_id") is not None:
                check_org(state, org, record["organization_id"], f"record {i}")
            record["organization_id"] = org
    return Replies(records, threaded)


@router.post("/replies")
@switchable("replies")
async def replies(state: State, batch: Annotated[Replies, Depends(own_replies)]) -> dict:
    await state.land("replies", batch.records)
    return {"accepted": len(batch.records), "attributed_by_headers": batch.attributed_by_headers}
