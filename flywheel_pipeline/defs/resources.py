"""The resources and their binding per environment, in one place: ``local`` (embedded defaults
under FLYWHEEL_HOME) and ``production`` (locations from paths.py, services and secrets from the
environment)."""

import contextlib
import os
import time
from collections.abc import Iterator

import dagster as dg
import duckdb
from pydantic import Field

from flywheel_pipeline import paths
from flywheel_pipeline.core.label_policy import DEFAULT_STAGE_SCORES, LabelPolicy
from flywheel_pipeline.landing_store import LandingStore, open_store
from flywheel_pipeline.warehouse import schema

WAREHOUSE_POOL = "duckdb_warehouse"
_DEFAULT_POLICY = LabelPolicy()


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse: a DuckDB file or a DuckLake catalog (warehouse/lake.py). Connections are
    short-lived: DuckDB allows one writing process per file, so every asset that writes it is in
    the ``duckdb_warehouse`` pool (limit 1), and a connection that finds the file locked by
    another process retries for a while. On DuckLake several processes write at once (write
    conflicts are retried by the warehouse code, warehouse/concurrency.py)."""

    database: str = Field(description="Path of the DuckDB file, an md: MotherDuck URL or a "
                                      "ducklake:postgres:... catalog URI.")
    data_path: str | None = Field(None, description="DuckLake: the data directory or s3:// prefix.")
    memory_limit: str | None = Field(None, description="DuckDB memory_limit, e.g. '2GB'.")
    threads: int | None = Field(None, description="DuckDB threads (default: all cores).")
    lock_timeout_s: float = Field(120.0, description="How long to wait for another process's lock.")

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.2
        while True:
            try:
                con = schema.connect(self.database, read_only=read_only, data_path=self.data_path,
                                     memory_limit=self.memory_limit, threads=self.threads)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            yield con
        finally:
            con.close()


class LandingZoneResource(dg.ConfigurableResource):
    """The landing zone: ``<path>/<source>/*.jsonl`` (see core/landing.py), a directory or
    ``s3://bucket/prefix/`` (landing_store.py)."""

    path: str

    def store(self) -> LandingStore:
        return open_store(self.path)


class ExportsResource(dg.ConfigurableResource):
    """Where fine-tuning files go: ``<path>/<dataset_version>/``."""

    path: str


class FineTuningResource(dg.ConfigurableResource):
    """Which fine-tuning backend trains models. ``sandbox`` (default) trains nothing and says so;
    ``openai`` uses the openai SDK against ``base_url`` (any OpenAI-compatible host);
    ``together`` uses Together AI's REST API (LoRA unless ``lora`` is off); ``trl`` trains a LoRA
    adapter locally with transformers + peft + TRL (extra ``[local]``) under ``local_output``."""

    backend: str = Field("sandbox", description="'sandbox', 'openai', 'together' or 'trl'.")
    local_output: str | None = Field(None, description="trl: where adapters go (default $FLYWHEEL_HOME/models).")
    lora: bool = Field(True, description="Together: LoRA (default) or full fine-tuning.")
    api_key: str | None = Field(None, description="Provider API key; bind with EnvVar, never in code.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (default: api.openai.com).")
    poll_s: float = Field(30.0, description="First poll interval while a job runs (doubles up to 10 min).")
    wait_timeout_s: float = Field(7200.0, description="Stop waiting after this long; materialize again to "
                                                      "re-attach to the same job (it is never resubmitted).")

    def client(self):
        from flywheel_pipeline.core.finetune.openai_backend import OpenAIBackend
        from flywheel_pipeline.core.finetune.sandbox import SandboxBackend
        from flywheel_pipeline.core.finetune.together_backend import TogetherBackend

        if self.backend == "sandbox":
            return SandboxBackend()
        if self.backend == "trl":
            from flywheel_pipeline.core.finetune.trl_backend import TrlBackend

            return TrlBackend(self.local_output or paths.models_dir())
        if self.backend not in ("openai", "together"):
            raise ValueError(f"unknown fine-tuning backend {self.backend!r}; expected sandbox, openai, together "
                             "or trl")
        if not self.api_key:
            raise ValueError(f"the {self.backend} backend needs api_key (bind it with EnvVar, e.g. "
                             "EnvVar('FLYWHEEL_FINETUNE_API_KEY'))")
        if self.backend == "openai":
            return OpenAIBackend(self.api_key, self.base_url)
        return TogetherBackend(self.api_key, self.base_url, lora=self.lora)


class GenerationResource(dg.ConfigurableResource):
    """How models answer evaluation prompts: ``sandbox`` (default, SANDBOX stand-in answers) or
    ``openai`` (chat completions on any OpenAI-compatible ``base_url``)."""

    mode: str = Field("sandbox", description="'sandbox' or 'openai'.")
    api_key: str | None = Field(None, description="Bind with EnvVar.")
    base_url: str | None = None

    def client(self):
        from flywheel_pipeline.core.generation import OpenAICompatibleGenerator, SandboxGenerator

        if self.mode == "sandbox":
            return SandboxGenerator()
        if self.mode == "openai":
            if not self.api_key:
                raise ValueError("generation mode 'openai' needs api_key (bind it with EnvVar)")
            return OpenAICompatibleGenerator(self.api_key, self.base_url)
        raise ValueError(f"unknown generation mode {self.mode!r}; expected 'sandbox' or 'openai'")


class JudgeResource(dg.ConfigurableResource):
    """Who judges offline evaluations: ``heuristic`` (default, offline, core/judge.py) or ``geval``
    (deepeval's G-Eval with ``model`` on any OpenAI-compatible ``base_url``; extra ``[judge]``)."""

    mode: str = Field("heuristic", description="'heuristic' or 'geval'.")
    model: str | None = Field(None, description="G-Eval: the judge model's name on the endpoint.")
    api_key: str | None = Field(None, description="G-Eval: bind with EnvVar.")
    base_url: str | None = Field(None, description="G-Eval: an OpenAI-compatible base URL (None = OpenAI).")
    tie_margin: float | None = Field(None, description="Score differences below this are ties (default: heuristic "
                                                       "0.02 on its 0-1 score, G-Eval 0.1 = one point of ten).")

    def judge(self):
        from flywheel_pipeline.core.judge import HeuristicJudge

        if self.mode == "heuristic":
            return HeuristicJudge(0.02 if self.tie_margin is None else self.tie_margin)
        if self.mode == "geval":
            if not self.model or not self.api_key:
                raise ValueError("judge mode 'geval' needs model and api_key (bind the key with EnvVar)")
            from flywheel_pipeline.core.geval_judge import GEvalJudge
            from flywheel_pipeline.core.llm_judge import CRITERIA, EMAIL_FAMILY

            # the e-mail family's criteria: the ones message_judgements calibrates (core/judge_gate.py)
            email = CRITERIA[EMAIL_FAMILY]
            return GEvalJudge(self.model, self.api_key, self.base_url,
                              tie_margin=0.1 if self.tie_margin is None else self.tie_margin,
                              criteria=email.criteria, steps=list(email.steps))
        raise ValueError(f"unknown judge mode {self.mode!r}; expected 'heuristic' or 'geval'")


class MessageJudgeResource(dg.ConfigurableResource):
    """The LLM judge of every delivered message (asset ``message_llm_judgements``): ``off`` (default,
    nothing leaves the machine) or ``geval`` (deepeval's G-Eval with per-task criteria on ``model`` at
    any OpenAI-compatible ``base_url``; extra ``[judge]``), paying at most ``budget_usd`` per run at
    the model catalog's prices."""

    mode: str = Field("off", description="'off' or 'geval'.")
    model: str | None = Field(None, description="The judge model's name on the endpoint (priced by the catalog).")
    api_key: str | None = Field(None, description="Bind with EnvVar.")
    base_url: str | None = Field(None, description="An OpenAI-compatible base URL (None = OpenAI).")
    budget_usd: float = Field(1.0, gt=0, description="Most a run may spend (USD, at catalog prices); what is left "
                                                     "unjudged is judged by the next run.")
    concurrency: int = Field(4, ge=1, description="Judge calls in flight at once.")
    max_attempts: int = Field(3, ge=1, description="Calls per message before it is recorded unjudged.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one answer.")
    max_tokens: int = Field(600, ge=50, description="Most tokens of one answer (also bounds its cost).")
    backoff_s: float = Field(1.0, ge=0, description="Wait before the second attempt; doubles, at most 30 s.")
    page_size: int = Field(100, ge=1, description="Distinct contents judged between two warehouse writes.")

    @property
    def enabled(self) -> bool:
        if self.mode not in ("off", "geval"):
            raise ValueError(f"unknown message judge mode {self.mode!r}; expected 'off' or 'geval'")
        return self.mode == "geval"

    def settings(self):
        from flywheel_pipeline.core.llm_judge import JudgeSettings

        if not self.model or not self.api_key:
            raise ValueError("message judge mode 'geval' needs model and api_key (FLYWHEEL_JUDGE_MODEL, "
                             "FLYWHEEL_JUDGE_API_KEY)")
        return JudgeSettings(self.model, self.api_key, self.base_url, timeout_s=self.timeout_s,
                             max_attempts=self.max_attempts, max_tokens=self.max_tokens, backoff_s=self.backoff_s)


class MlflowResource(dg.ConfigurableResource):
    tracking_uri: str = Field(description="MLflow tracking URI.")
    ui_url: str = Field("http://127.0.0.1:5000", description="Where the MLflow UI is served, for links.")


class LabelPolicyResource(dg.ConfigurableResource):
    """The outcome-labelling policy (docs/labelling.md); defaults are the product's policy."""

    # defaults come from LabelPolicy, the single source of the policy's numbers
    stage_scores: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STAGE_SCORES))
    deal_bonus: float = _DEFAULT_POLICY.deal_bonus
    deal_value_cap: float = _DEFAULT_POLICY.deal_value_cap
    negative_score: float = _DEFAULT_POLICY.negative_score
    maturity_days: int = _DEFAULT_POLICY.maturity_days
    scanner_click_window_s: float = _DEFAULT_POLICY.scanner_click_window_s
    attribution_window_days: int = _DEFAULT_POLICY.attribution_window_days

    def policy(self) -> LabelPolicy:
        return LabelPolicy(**{name: getattr(self, name) for name in LabelPolicy.model_fields})


def configured_warehouse() -> WarehouseResource:
    """The warehouse the environment names (paths.py), the same in every environment."""
    return WarehouseResource(database=paths.warehouse_database(), data_path=paths.warehouse_data_path(),
                             memory_limit=paths.duckdb_memory_limit())


def local_resources() -> dict[str, dg.ConfigurableResource]:
    """Embedded defaults: everything under $FLYWHEEL_HOME."""
    return {
        "warehouse": configured_warehouse(),
        "landing": LandingZoneResource(path=paths.landing_location()),
        "label_policy": LabelPolicyResource(),
        "exports": ExportsResource(path=str(paths.exports_dir())),
        "fine_tuning": FineTuningResource(),
        "generation": GenerationResource(),
        "judge": JudgeResource(),
        "message_judge": _message_judge(),
        "mlflow": MlflowResource(tracking_uri=_default_tracking_uri()),
    }


def _default_tracking_uri() -> str:
    from flywheel_pipeline.tracking import default_tracking_uri

    return default_tracking_uri()


def _production_judge() -> JudgeResource:
    mode = os.environ.get("FLYWHEEL_JUDGE", "heuristic")
    if mode != "geval":
        return JudgeResource(mode=mode)
    return JudgeResource(mode=mode, model=os.environ.get("FLYWHEEL_JUDGE_MODEL"),
                         api_key=dg.EnvVar("FLYWHEEL_JUDGE_API_KEY"), base_url=os.environ.get("FLYWHEEL_JUDGE_BASE_URL"))


def _message_judge() -> MessageJudgeResource:
    """Off unless FLYWHEEL_MESSAGE_JUDGE=geval (in every environment: the LLM judge costs money); the
    model, key and URL are the G-Eval judge's (FLYWHEEL_JUDGE_MODEL, _API_KEY, _BASE_URL)."""
    mode = os.environ.get("FLYWHEEL_MESSAGE_JUDGE", "off")
    if mode != "geval":
        return MessageJudgeResource(mode=mode)
    return MessageJudgeResource(
        mode=mode, model=os.environ.get("FLYWHEEL_JUDGE_MODEL"), api_key=dg.EnvVar("FLYWHEEL_JUDGE_API_KEY"),
        base_url=os.environ.get("FLYWHEEL_JUDGE_BASE_URL"),
        budget_usd=_env_number("FLYWHEEL_MESSAGE_JUDGE_BUDGET_USD", "1.0", float),
        concurrency=_env_number("FLYWHEEL_MESSAGE_JUDGE_CONCURRENCY", "4", int))


def _env_number(name: str, default: str, kind: type):
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number above 0, got {raw!r}")
    return value


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Production: locations and limits from the environment (secrets never in code)."""
    return {
        "warehouse": configured_warehouse(),
        "landing": LandingZoneResource(path=paths.landing_location()),
        "label_policy": LabelPolicyResource(),
        "exports": ExportsResource(path=str(paths.exports_dir())),
        "fine_tuning": FineTuningResource(backend=os.environ.get("FLYWHEEL_FINETUNE_BACKEND", "openai"),
                                          api_key=dg.EnvVar("FLYWHEEL_FINETUNE_API_KEY"),
                                          base_url=os.environ.get("FLYWHEEL_FINETUNE_BASE_URL")),
        "generation": GenerationResource(mode=os.environ.get("FLYWHEEL_GENERATION_MODE", "openai"),
                                         api_key=dg.EnvVar("FLYWHEEL_GENERATION_API_KEY"),
                                         base_url=os.environ.get("FLYWHEEL_GENERATION_BASE_URL")),
        "judge": _production_judge(),
        "message_judge": _message_judge(),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
    }


ENVIRONMENTS = {"local": local_resources, "production": production_resources}


def resources_for(environment: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources of ``environment`` (default: FLYWHEEL_ENV, else local)."""
    name = (environment or os.environ.get("FLYWHEEL_ENV") or "local").lower()
    if name not in ENVIRONMENTS:
        raise ValueError(f"FLYWHEEL_ENV must be 'local' or 'production', got {name!r}")
    return ENVIRONMENTS[name]()

