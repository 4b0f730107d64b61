"""The ingestion service's configuration, read from the environment (secrets never logged).

=====================================  =========================================================
``FLYWHEEL_HOME``                      the published ``routing.json``, ``leaderboard.json`` and
                                       ``judges.json`` it reads, ``catalog.yaml`` (the model catalog's
                                       overrides), and the landing zone at ``$FLYWHEEL_HOME/landing`` (every path
                                       from flywheel_pipeline/paths.py)
``FLYWHEEL_LANDING``                   the landing zone elsewhere (the one ingestion reads): a
                                       directory or ``s3://bucket/prefix/`` (with the standard
                                       ``AWS_*`` settings; see service/spool.py)
``FLYWHEEL_SPOOL``                     with an s3:// landing zone, the replicas' local spool
                                       (default ``$FLYWHEEL_HOME/spool``; a persistent disk)
``FLYWHEEL_REPLICA_ID``                this replica's name in its objects' names and its spool
                                       (default ``<hostname>-<pid>-<start time>``; with several
                                       workers, ``<FLYWHEEL_REPLICA_ID>-w<k>`` per worker)
``FLYWHEEL_SERVE_WORKERS``             processes answering on the one port (default 1; as
                                       ``flywheel serve --workers``; service/server.py)
``FLYWHEEL_SENDGRID_PUBLIC_KEY``       SendGrid's verification key (base64 DER, as SendGrid
                                       shows it), or several separated by commas while it is
                                       rotated; unset = events accepted unsigned
``FLYWHEEL_SENDGRID_MAX_AGE_S``        timestamp tolerance, default 300 (as Stripe and HubSpot);
                                       0 disables the check (a non-finite timestamp is always refused)
``FLYWHEEL_HUBSPOT_CLIENT_SECRET``     the HubSpot app's client secret (signature v3)
``FLYWHEEL_HUBSPOT_ACCESS_TOKEN``      token for reading deals/meetings/contacts (HubSpot's
                                       webhooks carry ids only); unset = no enrichment
``FLYWHEEL_HUBSPOT_API_BASE``          default ``https://api.hubapi.com``
``FLYWHEEL_HUBSPOT_WON_STAGES``        comma-separated deal stage ids, default ``closedwon``
``FLYWHEEL_HUBSPOT_LOST_STAGES``       default ``closedlost``
``FLYWHEEL_HUBSPOT_MESSAGE_ID_PROPERTY``  deal/contact property holding our message id,
                                       default ``flywheel_message_id``
``FLYWHEEL_PUBLIC_BASE_URL``           the URL HubSpot calls (scheme://host[:port]) when a proxy
                                       sits in front; the v3 signature covers the full URI
``FLYWHEEL_PIPEDRIVE_USER`` / ``_PASSWORD``  HTTP Basic credentials set on the Pipedrive webhook
``FLYWHEEL_PIPEDRIVE_MESSAGE_ID_FIELD``  key of the deal/activity custom field with our message id
``FLYWHEEL_API_KEYS``                  ``org-a=key1,org-b=key2``: API keys per organization (an
                                       organization named twice has two valid keys: rotation)
``FLYWHEEL_ADMIN_KEYS``                admin keys of the control API (/training/*): ``ops=key1,ci=key2`` (an id
                                       the audit names) or bare keys (named by fingerprint); several
                                       at once for rotation; at least 16 characters, never an
                                       organization's key; unset = the control API refuses everyone
``FLYWHEEL_AUTH_FAILURES_PER_MINUTE``  failed authentications a client may make per minute before
                                       it gets 429 without its credentials being checked (30; 0 off)
``FLYWHEEL_MESSAGE_ID_DOMAINS``        domains of our Message-IDs, default ``outreach.example``
``FLYWHEEL_DEFAULT_MODEL``             the model /route returns when nothing is routed
``FLYWHEEL_ROUTE_STRATEGY``            the strategy /route uses when the request names none (unset:
                                       the routing table decides, as before)
``FLYWHEEL_ROUTE_FALLBACKS``           length of /route's fallback chain (3)
``FLYWHEEL_ROUTE_TOLERANCE``           ``balanced``: how far below the best quality bound a model may be (0.10)
``FLYWHEEL_RATE_LIMIT_PER_MINUTE``     per organization, default 100 (0 disables)
``FLYWHEEL_MAX_BODY_BYTES``            default 4 MiB
``FLYWHEEL_SEGMENT_MAX_BYTES`` / ``FLYWHEEL_SEGMENT_MAX_AGE_S`` / ``FLYWHEEL_FSYNC_INTERVAL_S``
                                       landing segment rotation (8 MiB / 60 s) and fsync cadence (1 s)
``FLYWHEEL_DISABLED_ROUTES``           routes switched off (404): any of ``sendgrid``, ``hubspot``,
                                       ``pipedrive``, ``messages``, ``replies``, ``route``, ``leaderboard``,
                                       ``feedback``, ``council``, ``models``, ``metrics_api`` (the /api/v1 endpoints)
``FLYWHEEL_COUNCIL_TIMEOUT_S``         POST /council: each model's answer within it (30 s; a request may ask less)
``FLYWHEEL_COUNCIL_MAX_COST_USD``      POST /council: estimated cost cap per request (0.05; a request may ask less)
``FLYWHEEL_COUNCIL_MAX_TOKENS``        POST /council: max_tokens per answer unless the request says (512)
``FLYWHEEL_COUNCIL_MODELS``            POST /council: how many catalog models sit when the request names none (3)
``FLYWHEEL_COUNCIL_LLM_JUDGE``         POST /council: a catalog model that judges through G-Eval (deepeval) when
                                       judge_calibration trusts ``geval:<family>@<model>`` for the task type
``FLYWHEEL_COUNCIL_PAIR_MARGIN``       POST /council: judge points (0-100) by which the winner must beat an
                                       answer for the two to land as a preference pair (10)
``FLYWHEEL_HEADER_TIMEOUT_S``          a connection's request line and headers must arrive within it (10 s)
``FLYWHEEL_BODY_TIMEOUT_S``            a request's body must arrive within it (30 s; 408 ``body_timeout``)
``FLYWHEEL_MAX_CONNECTIONS``           concurrent connections and requests; beyond it 503 (default 200)
=====================================  =========================================================
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from flywheel_pipeline import paths
from flywheel_pipeline.core.signatures import load_sendgrid_public_key

# the routes that can be switched off (FLYWHEEL_DISABLED_ROUTES); /healthz and /metrics cannot
ROUTES = ("sendgrid", "hubspot", "pipedrive", "messages", "replies", "route", "leaderboard", "feedback", "council",
          "models", "metrics_api")


def _csv(value: str | None, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_api_keys(value: str | None) -> dict[str, tuple[SecretStr, ...]]:
    """``org-a=key1,org-b=key2,org-a=key3`` -> {org: keys}: an organization may have several
    keys at once (rotation: add the new key, move the clients, remove the old one); refuses
    malformed pairs and a key given twice."""
    keys: dict[str, tuple[SecretStr, ...]] = {}
    for pair in _csv(value):
        org, sep, key = pair.partition("=")
        if not sep or not org.strip() or not key.strip():
            raise ValueError("FLYWHEEL_API_KEYS must look like 'org-a=key1,org-b=key2'")
        keys[org.strip()] = (*keys.get(org.strip(), ()), SecretStr(key.strip()))
    secrets = [k.get_secret_value() for org_keys in keys.values() for k in org_keys]
    if len(set(secrets)) != len(secrets):
        raise ValueError("FLYWHEEL_API_KEYS gives the same key twice")
    return keys


ADMIN_KEY_MIN_LENGTH = 16
_ADMIN_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def key_fingerprint(key: str) -> str:
    """What the audit records of a key: the first 16 hex digits of its sha256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_admin_keys(value: str | None) -> dict[str, SecretStr]:
    """``ops=key1,ci=key2`` or bare ``key1,key2`` -> {key id: key}: an entry is ``id=key`` when the part
    before its first ``=`` is an id (letters, digits, ``_.@-``) and the rest is not only ``=`` padding;
    a bare key's id is ``key-<fingerprint>``. Refuses short keys and a key or an id given twice."""
    keys: dict[str, SecretStr] = {}
    for entry in _csv(value):
        name, sep, key = entry.partition("=")
        if not (sep and _ADMIN_ID.fullmatch(name.strip()) and key.strip().strip("=")):
            name, key = "", entry
        key = key.strip()
        if len(key) < ADMIN_KEY_MIN_LENGTH:
            raise ValueError(f"FLYWHEEL_ADMIN_KEYS: a key of {len(key)} characters; admin keys need at least "
                             f"{ADMIN_KEY_MIN_LENGTH}")
        name = name.strip() or f"key-{key_fingerprint(key)}"
        if name in keys:
            raise ValueError(f"FLYWHEEL_ADMIN_KEYS names {name!r} twice")
        keys[name] = SecretStr(key)
    secrets = [k.get_secret_value() for k in keys.values()]
    if len(set(secrets)) != len(secrets):
        raise ValueError("FLYWHEEL_ADMIN_KEYS gives the same key twice")
    return keys


WORKERS_VARIABLE = "FLYWHEEL_SERVE_WORKERS"  # also how `flywheel serve --workers` reaches its workers


class ServiceSettings(BaseModel):
    landing: str  # a directory or s3://bucket/prefix/ (paths.landing_location)
    spool: Path  # the replicas' spools, with an s3:// landing zone
    replica_id: str | None = None
    workers: int = Field(1, ge=1, le=64)  # processes of `flywheel serve` on one socket (service/server.py)
    home: Path
    routing_path: Path  # the published routing table GET /route reads
    leaderboard_path: Path  # the published leaderboard GET /leaderboard reads
    judges_path: Path | None = None  # the published judge trust table POST /council reads (home/judges.json)
    model_stats_path: Path | None = None  # the published measurements (/route strategies, /models, /api/v1)
    catalog_path: Path | None = None  # $FLYWHEEL_HOME/catalog.yaml
    sendgrid_public_key: str | None = None
    sendgrid_max_age_s: float = Field(300.0, ge=0, allow_inf_nan=False)
    hubspot_client_secret: SecretStr | None = None
    hubspot_access_token: SecretStr | None = None
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_won_stages: tuple[str, ...] = ("closedwon",)
    hubspot_lost_stages: tuple[str, ...] = ("closedlost",)
    hubspot_message_id_property: str = "flywheel_message_id"
    public_base_url: str | None = None
    pipedrive_user: str | None = None
    pipedrive_password: SecretStr | None = None
    pipedrive_message_id_field: str | None = None
    api_keys: dict[str, tuple[SecretStr, ...]] = Field(default_factory=dict)
    message_id_domains: tuple[str, ...] = ("outreach.example",)
    default_model: str | None = None
    route_strategy: str | None = None
    route_fallbacks: int = Field(3, ge=0, le=20)
    route_tolerance: float = Field(0.10, ge=0, le=1, allow_inf_nan=False)
    rate_limit_per_minute: int = Field(100, ge=0)
    max_body_bytes: int = Field(4 << 20, ge=0)
    segment_max_bytes: int = Field(8 << 20, ge=0)
    segment_max_age_s: float = Field(60.0, ge=0)
    fsync_interval_s: float = Field(1.0, ge=0)
    disabled_routes: tuple[str, ...] = ()
    header_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    body_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    max_connections: int = Field(200, ge=1)
    auth_failures_per_minute: int = Field(30, ge=0)
    council_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    council_max_cost_usd: float = Field(0.05, gt=0, allow_inf_nan=False)
    council_max_tokens: int = Field(512, ge=1, le=16_384)
    council_models: int = Field(3, ge=1, le=8)
    council_pair_margin: float = Field(10.0, gt=0, le=100, allow_inf_nan=False)
    council_llm_judge: str | None = None

    admin_keys: dict[str, SecretStr] = Field(default_factory=dict)  # key id -> admin key (the control API)

    @model_validator(mode="after")
    def _admin_keys_are_not_organization_keys(self) -> ServiceSettings:
        org_keys = {k.get_secret_value() for keys in self.api_keys.values() for k in keys}
        if any(k.get_secret_value() in org_keys for k in self.admin_keys.values()):
            raise ValueError("FLYWHEEL_ADMIN_KEYS: an admin key is also an organization's key (FLYWHEEL_API_KEYS)")
        return self

    @field_validator("landing")
    @classmethod
    def _valid_landing(cls, value: str) -> str:
        if value.startswith(paths.S3_SCHEME):
            from flywheel_pipeline.landing_store import parse_s3_url

            parse_s3_url(value)  # ValueError: said at start
        return value

    @field_validator("sendgrid_public_key")
    @classmethod
    def _valid_sendgrid_key(cls, value: str | None) -> str | None:
        for key in _csv(value):
            load_sendgrid_public_key(key)  # ValueError: a configuration error, said at start
        return value

    @field_validator("route_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        from flywheel_pipeline.core.model_choice import STRATEGIES
        if value is not None and value not in STRATEGIES:
            raise ValueError(f"FLYWHEEL_ROUTE_STRATEGY: unknown strategy {value!r}; known: {', '.join(STRATEGIES)}")
        return value

    def sendgrid_public_keys(self) -> tuple[str, ...]:
        """The verification keys in force (several while SendGrid's key is rotated)."""
        return _csv(self.sendgrid_public_key)

    @field_validator("disabled_routes")
    @classmethod
    def _known_routes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - set(ROUTES)
        if unknown:
            raise ValueError(f"FLYWHEEL_DISABLED_ROUTES: unknown route(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(ROUTES)}")
        return value

    @property
    def object_storage(self) -> bool:
        """The landing zone is in object storage: the service writes a spool and uploads it."""
        return self.landing.startswith(paths.S3_SCHEME)

    def enabled(self, route: str) -> bool:
        return route not in self.disabled_routes

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"FLYWHEEL_{name}")
            return value if value not in (None, "") else None

        values: dict = {"home": paths.flywheel_home(env), "landing": paths.landing_location(env),
                        "spool": paths.spool_dir(env),
                        "routing_path": paths.routing_path(env), "leaderboard_path": paths.leaderboard_path(env),
                        "judges_path": paths.judges_path(env), "model_stats_path": paths.model_stats_path(env),
                        "catalog_path": paths.catalog_path(env),
                        "api_keys": parse_api_keys(get("API_KEYS")), "admin_keys": parse_admin_keys(get("ADMIN_KEYS"))}
        scalar = {"sendgrid_public_key": "SENDGRID_PUBLIC_KEY", "sendgrid_max_age_s": "SENDGRID_MAX_AGE_S",
                  "hubspot_client_secret": "HUBSPOT_CLIENT_SECRET",
                  "hubspot_access_token": "HUBSPOT_ACCESS_TOKEN", "hubspot_api_base": "HUBSPOT_API_BASE",
                  "hubspot_message_id_property": "HUBSPOT_MESSAGE_ID_PROPERTY",
                  "public_base_url": "PUBLIC_BASE_URL", "pipedrive_user": "PIPEDRIVE_USER",
                  "pipedrive_password": "PIPEDRIVE_PASSWORD",
                  "pipedrive_message_id_field": "PIPEDRIVE_MESSAGE_ID_FIELD",
                  "default_model": "DEFAULT_MODEL", "route_strategy": "ROUTE_STRATEGY",
                  "route_fallbacks": "ROUTE_FALLBACKS", "route_tolerance": "ROUTE_TOLERANCE",
                  "rate_limit_per_minute": "RATE_LIMIT_PER_MINUTE",
                  "max_body_bytes": "MAX_BODY_BYTES", "segment_max_bytes": "SEGMENT_MAX_BYTES",
                  "segment_max_age_s": "SEGMENT_MAX_AGE_S", "fsync_interval_s": "FSYNC_INTERVAL_S",
                  "header_timeout_s": "HEADER_TIMEOUT_S", "body_timeout_s": "BODY_TIMEOUT_S",
                  "max_connections": "MAX_CONNECTIONS", "auth_failures_per_minute": "AUTH_FAILURES_PER_MINUTE",
                  "council_timeout_s": "COUNCIL_TIMEOUT_S", "council_max_cost_usd": "COUNCIL_MAX_COST_USD",
                  "council_max_tokens": "COUNCIL_MAX_TOKENS", "council_models": "COUNCIL_MODELS",
                  "council_pair_margin": "COUNCIL_PAIR_MARGIN", "council_llm_judge": "COUNCIL_LLM_JUDGE",
                  "replica_id": "REPLICA_ID", "workers": WORKERS_VARIABLE.removeprefix("FLYWHEEL_")}
        for field, name in scalar.items():
            if (value := get(name)) is not None:
                values[field] = value
        for field, name in (("hubspot_won_stages", "HUBSPOT_WON_STAGES"),
                            ("hubspot_lost_stages", "HUBSPOT_LOST_STAGES"),
                            ("message_id_domains", "MESSAGE_ID_DOMAINS"),
                            ("disabled_routes", "DISABLED_ROUTES")):
            if (value := get(name)) is not None:
                values[field] = _csv(value)
        return cls(**values)

    def unverified_sources(self) -> list[str]:
        """Enabled routes that accept requests without a signature, credentials or API key (said
        at start and in /healthz; a non-loopback bind refuses to start while there is one)."""
        unauthenticated = {"sendgrid": not self.sendgrid_public_key,
                           "hubspot": self.hubspot_client_secret is None,
                           "pipedrive": not (self.pipedrive_user and self.pipedrive_password),
                           "messages": not self.api_keys, "replies": not self.api_keys,
                           "route": not self.api_keys, "leaderboard": not self.api_keys,
                           "feedback": not self.api_keys, "council": not self.api_keys, "models": not self.api_keys,
                           "metrics_api": not self.api_keys}
        return [route for route in ROUTES if unauthenticated[route] and self.enabled(route)]
