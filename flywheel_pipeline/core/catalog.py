"""The model catalog: each model's provider, prices, context window, typical latency,
capabilities and task types. Pure: the packaged ``flywheel_pipeline/data/model_catalog.yaml`` is
merged with an override file (``$FLYWHEEL_HOME/catalog.yaml``, ``paths.catalog_path()``) by
``model_id`` field by field; fine-tuned models join it under their own ids.

Prices are exact ``Decimal`` USD per million tokens with at most 6 decimals, so a price per token
has at most 12 and a message's cost (integer tokens times that) is exact in ``DECIMAL(38, 12)``.
Bad input is a ``CatalogError`` naming the file and the entry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SHIPPED_FILE = "model_catalog.yaml"
PRICE_DECIMALS = 6
MILLION = Decimal(1_000_000)
# prefixes of fine-tuned model ids that name their base as the second ':'-separated part
FINE_TUNED_PREFIXES = ("ft:", "sandbox:")


class CatalogError(ValueError):
    """A catalog file that cannot be used, with the file and entry it is about."""


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    input_per_million: Decimal = Field(ge=0, description="USD per million input (prompt) tokens")
    output_per_million: Decimal = Field(ge=0, description="USD per million output (completion) tokens")
    fine_tuned_input_per_million: Decimal | None = Field(None, ge=0)
    fine_tuned_output_per_million: Decimal | None = Field(None, ge=0)
    context_window: int | None = Field(None, gt=0)
    typical_latency_ms: int | None = Field(None, ge=0)
    capabilities: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    prices_as_of: date | None = None
    base_model: str | None = None
    fine_tuned: bool = False
    notes: str | None = None
    # where the model answers (an OpenAI-compatible chat completions API) and the environment
    # variable holding its key; unset: the provider's defaults (PROVIDER_ENDPOINTS)
    base_url: str | None = Field(None, min_length=1)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("input_per_million", "output_per_million", "fine_tuned_input_per_million",
                     "fine_tuned_output_per_million")
    @classmethod
    def _at_most_six_decimals(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and (not value.is_finite() or value != value.quantize(Decimal(1).scaleb(-PRICE_DECIMALS))):
            raise ValueError(f"a price must be finite with at most {PRICE_DECIMALS} decimals, got {value}")
        return value


# Each provider's OpenAI-compatible endpoint and key variable, for entries that name neither.
PROVIDER_ENDPOINTS: dict[str, tuple[str | None, str]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY"),
    "together": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
}


def endpoint(entry: CatalogEntry) -> tuple[str | None, str | None]:
    """(base_url, api_key_env) of a model: its own, else its provider's (None: unknown)."""
    default_url, default_env = PROVIDER_ENDPOINTS.get(entry.provider.lower(), (None, None))
    return entry.base_url or default_url, entry.api_key_env or default_env


@dataclass(frozen=True)
class Price:
    """USD per million tokens, and the entry it came from."""
    model_id: str
    input_per_million: Decimal
    output_per_million: Decimal
    source: str  # 'catalog', 'fine-tuned of <base>', 'sandbox of <base>'

    @property
    def input_per_token(self) -> Decimal:
        return self.input_per_million / MILLION

    @property
    def output_per_token(self) -> Decimal:
        return self.output_per_million / MILLION


def message_cost(price: Price, prompt_tokens: int | None, completion_tokens: int | None) -> Decimal | None:
    """A message's exact cost in USD from its tokens; None when a count is missing or negative."""
    if prompt_tokens is None or completion_tokens is None or prompt_tokens < 0 or completion_tokens < 0:
        return None
    return (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / MILLION


class Catalog:
    """Entries by model_id, and the files they came from."""

    def __init__(self, entries: Mapping[str, CatalogEntry], sources: Iterable[str] = ()):
        self.entries = dict(entries)
        self.sources = tuple(sources)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, model_id: str | None) -> CatalogEntry | None:
        """The entry of a model id: its own, else (``ft:<base>:...``, ``sandbox:<base>:...``) its
        base's as a fine-tune."""
        if model_id is None:
            return None
        if model_id in self.entries:
            return self.entries[model_id]
        for prefix in FINE_TUNED_PREFIXES:
            if model_id.startswith(prefix):
                base = model_id[len(prefix):].split(":", 1)[0]
                if base in self.entries and not self.entries[base].fine_tuned:
                    return fine_tune_entry(self.entries[base], model_id, sandbox=prefix == "sandbox:")
        return None

    def price(self, model_id: str | None) -> Price | None:
        entry = self.get(model_id)
        if entry is None:
            return None
        source = "catalog"
        if entry.fine_tuned:
            source = f"fine-tune of {entry.base_model}"
        return Price(entry.model_id, entry.input_per_million, entry.output_per_million, source)

    def with_registry(self, models: Iterable[tuple[str, str, str | None]]) -> "Catalog":
        """The catalog joined by the registry's fine-tuned models: ``(model_id, base_model, backend)``.
        Each takes its base's entry under its own id (a registry id already in the catalog keeps
        its entry; a base not in the catalog adds nothing, and such a model stays unpriced)."""
        entries = dict(self.entries)
        for model_id, base_model, backend in models:
            if model_id in entries or base_model not in entries:
                continue
            sandbox = (backend or "").lower() == "sandbox" or model_id.startswith("sandbox:")
            entries[model_id] = fine_tune_entry(entries[base_model], model_id, sandbox=sandbox)
        return Catalog(entries, self.sources)


def fine_tune_entry(base: CatalogEntry, model_id: str, *, sandbox: bool) -> CatalogEntry:
    """A fine-tune of ``base`` under its own id: priced at the base's fine-tuned prices when the
    catalog gives them (what the provider charges to serve a fine-tune), a sandbox model (which
    trained nothing) at the base's own prices."""
    update: dict[str, Any] = {"model_id": model_id, "base_model": base.model_id, "fine_tuned": True,
                              "fine_tuned_input_per_million": None, "fine_tuned_output_per_million": None,
                              "capabilities": tuple(c for c in base.capabilities if c != "fine_tuning")}
    if not sandbox and base.fine_tuned_input_per_million is not None and base.fine_tuned_output_per_million is not None:
        update["input_per_million"] = base.fine_tuned_input_per_million
        update["output_per_million"] = base.fine_tuned_output_per_million
    return base.model_copy(update=update)


def _read(text: str, name: str) -> tuple[list[tuple[int, dict]], date | None]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{name}: not valid YAML: {exc}") from None
    if document is None:
        return [], None
    if not isinstance(document, dict):
        raise CatalogError(f"{name}: the top level must be a mapping with a 'models' list")
    unknown = set(document) - {"models", "prices_as_of", "notes"}
    if unknown:
        raise CatalogError(f"{name}: unknown top-level field(s) {sorted(unknown)} (allowed: models, prices_as_of, notes)")
    models = document.get("models") or []
    if not isinstance(models, list):
        raise CatalogError(f"{name}: 'models' must be a list")
    default_date = document.get("prices_as_of")
    if default_date is not None:
        try:
            default_date = date.fromisoformat(str(default_date))
        except ValueError:
            raise CatalogError(f"{name}: prices_as_of must be a date (YYYY-MM-DD), got {default_date!r}") from None
    seen: dict[str, int] = {}
    out = []
    for i, raw in enumerate(models):
        if not isinstance(raw, dict):
            raise CatalogError(f"{name}: models[{i}] must be a mapping, got {type(raw).__name__}")
        model_id = raw.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise CatalogError(f"{name}: models[{i}] has no model_id")
        if model_id in seen:
            raise CatalogError(f"{name}: models[{i}] ({model_id}): duplicate model_id (also models[{seen[model_id]}])")
        seen[model_id] = i
        out.append((i, raw))
    return out, default_date


def _entry(fields: dict, name: str, i: int) -> CatalogEntry:
    try:
        return CatalogEntry.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"{name}: models[{i}] ({fields.get('model_id')}): {problems}") from None


def parse_catalog(text: str, name: str, base: Catalog | None = None) -> Catalog:
    """Read one catalog file's text; with ``base``, its entries extend or override ``base``'s by
    model_id (an override names only the fields it changes; a new model is a full entry)."""
    rows, default_date = _read(text, name)
    entries = dict(base.entries) if base is not None else {}
    for i, raw in rows:
        fields = dict(raw)
        if default_date is not None and "prices_as_of" not in fields and (
                "input_per_million" in fields or "output_per_million" in fields or fields["model_id"] not in entries):
            fields["prices_as_of"] = default_date
        previous = entries.get(fields["model_id"])
        if previous is not None:
            fields = {**previous.model_dump(exclude_unset=False), **fields}
        entries[fields["model_id"]] = _entry(fields, name, i)
    return Catalog(entries, (*(base.sources if base is not None else ()), name))


def shipped_text() -> str:
    return resources.files("flywheel_pipeline").joinpath("data", SHIPPED_FILE).read_text(encoding="utf-8")


def load_catalog(override: Path | None = None) -> Catalog:
    """The packaged catalog, extended or overridden by ``override`` when that file exists."""
    catalog = parse_catalog(shipped_text(), f"flywheel_pipeline/data/{SHIPPED_FILE}")
    if override is not None and Path(override).is_file():
        catalog = parse_catalog(Path(override).read_text(encoding="utf-8"), str(override), catalog)
    return catalog
