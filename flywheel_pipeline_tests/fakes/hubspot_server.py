"""A local server speaking the slice of HubSpot's CRM v3 objects API the service reads:
``GET /crm/v3/objects/{deals|meetings|contacts}/{id}?properties=...&associations=contacts``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request


class FakeHubSpot:
    def __init__(self, token: str = "pat-test") -> None:
        self.token = token
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self.app = self._build()

    def add(self, kind: str, oid: str, properties: dict[str, Any], contacts: list[str] = ()) -> None:
        self.objects[(kind, oid)] = {"properties": properties, "contacts": list(contacts)}

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/crm/v3/objects/{kind}/{oid}")
        async def read(kind: str, oid: str, request: Request, properties: str = "", associations: str = ""):
            self.requests.append(str(request.url.path) + "?" + request.url.query)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                raise HTTPException(401, {"status": "error", "category": "INVALID_AUTHENTICATION"})
            if self.fail_with:
                raise HTTPException(self.fail_with, {"status": "error", "message": "try later"})
            obj = self.objects.get((kind, oid))
            if obj is None:
                raise HTTPException(404, {"status": "error", "category": "OBJECT_NOT_FOUND"})
            wanted = [p for p in properties.split(",") if p]
            out: dict[str, Any] = {"id": oid, "archived": False,
                                   "properties": {p: obj["properties"].get(p) for p in wanted}}
            if "contacts" in associations.split(",") and obj["contacts"]:
                out["associations"] = {"contacts": {"results": [
                    {"id": c, "type": f"{kind[:-1]}_to_contact"} for c in obj["contacts"]]}}
            return out

        return app
