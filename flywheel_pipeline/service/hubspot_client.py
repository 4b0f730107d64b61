"""Reads what HubSpot's webhooks leave out: a deal's amount and currency, and who it is about.

HubSpot webhook events carry object ids only. For each deal or meeting event this client
reads the object (``GET /crm/v3/objects/{deals|meetings}/{id}``) with our message-id property
and its associated contacts, then the first contact's email and message-id property. The
message id found on the object wins over the contact's; the contact's email is the fallback
attribution (ingestion attributes it to the latest message to that address).

Errors: a deleted object (404) leaves the fact unattributed (ingestion quarantines it with the
reason, nothing is lost); anything else (network, 401/403, 429, 5xx) raises
:class:`HubSpotUnavailable`, and the service answers 503 so HubSpot retries the delivery.
"""

from __future__ import annotations

import httpx

from flywheel_pipeline.core.crm_webhooks import HUBSPOT_DEAL_TYPE, HUBSPOT_MEETING_TYPE, CrmFact

_PATHS = {HUBSPOT_DEAL_TYPE: "deals", HUBSPOT_MEETING_TYPE: "meetings"}


class HubSpotUnavailable(RuntimeError):
    pass


class HubSpotClient:
    def __init__(self, base_url: str, access_token: str, message_id_property: str, *,
                 timeout_s: float = 4.0, transport: httpx.BaseTransport | None = None):
        self.message_id_property = message_id_property
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport,
                                  headers={"Authorization": f"Bearer {access_token}"})

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict) -> dict | None:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise HubSpotUnavailable(f"HubSpot API unreachable: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise HubSpotUnavailable(f"HubSpot API answered {response.status_code} for {path}")
        try:
            return response.json()
        except ValueError as exc:
            raise HubSpotUnavailable(f"HubSpot API sent a body that is not JSON for {path}") from exc

    def enrich(self, fact: CrmFact) -> None:
        """Fill in message id, email, deal value and currency where HubSpot has them."""
        object_path = _PATHS.get(fact.object_type)
        if object_path is None:
            return
        properties = [self.message_id_property]
        if fact.type == "deal_closed":
            properties += ["amount", "deal_currency_code"]
        obj = self._get(f"/crm/v3/objects/{object_path}/{fact.object_id}",
                        {"properties": ",".join(properties), "associations": "contacts"})
        if obj is None:
            return
        props = obj.get("properties") or {}
        fact.message_id = fact.message_id or (props.get(self.message_id_property) or None)
        if fact.type == "deal_closed":
            try:
                fact.deal_value = float(props["amount"]) if props.get("amount") not in (None, "") else None
            except ValueError:
                fact.deal_value = None
            fact.currency = props.get("deal_currency_code") or None
        contacts = ((obj.get("associations") or {}).get("contacts") or {}).get("results") or []
        if not contacts:
            return
        contact = self._get(f"/crm/v3/objects/contacts/{contacts[0]['id']}",
                            {"properties": f"email,{self.message_id_property}"})
        if contact is None:
            return
        cprops = contact.get("properties") or {}
        fact.message_id = fact.message_id or (cprops.get(self.message_id_property) or None)
        email = cprops.get("email")
        fact.email = email.strip().lower() if email else None
        fact.external["contact_id"] = str(contacts[0]["id"])
