"""GET /route with routing strategies, GET /models and the /api/v1 metric endpoints over real HTTP
on 127.0.0.1, answering from a model_stats.json measured in SQL on a simulated world (one model
doubles replies, one is five times cheaper per reply, one is the fastest); every bad input a 422
with its reason (and the closest model); an experiment's sticky arm wins; the key's organization only."""

from __future__ import annotations

import httpx
import pytest

from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.model_snapshot import build_snapshot
from flywheel_pipeline.routing import write_model_stats, write_routing
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.warehouse.cost_analysis import registry_models
from flywheel_pipeline.warehouse.model_stats import cost_analysis_rows, recent_executions, stats_rows, task_tokens
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.fakes.http import serve_app
from flywheel_pipeline_tests.service.test_service import KEYS, settings_for
from flywheel_pipeline_tests.warehouse.test_model_choice import CHEAP, DOUBLES, FAST, measure, plant_world

ONE = {"Authorization": "Bearer key-one"}
TWO = {"Authorization": "Bearer key-two"}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """The world measured once: org-1 and org-2 share it; org-3 (no key) has its own rows."""
    path = tmp_path_factory.mktemp("world") / "wh.duckdb"
    con = connect(path)
    plant_world(con, per_model=3000, orgs=("org-1", "org-2"))
    plant_world(con, {FAST: (0.5, 0.001, 100.0)}, per_model=50, orgs=("org-3",), start_key=900_000)
    measure(con)
    snapshot = build_snapshot(stats_rows(con), generated_at="2026-12-03T06:00:00Z", registry_models=registry_models(con),
                              tokens=task_tokens(con), costs=cost_analysis_rows(con),
                              executions=recent_executions(con, 100))
    con.close()
    return snapshot


def route(http: httpx.Client, headers=ONE, **params) -> httpx.Response:
    return http.get("/route", params={"lead_id": "lead-1", "task_type": "follow_up", **params}, headers=headers)


def test_route_strategies_pick_by_measured_outcomes_and_say_why(tmp_path, published):
    home = tmp_path / "fw"
    write_model_stats(published, home / "model_stats.json")
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, httpx.Client(base_url=base) as http:
        assert route(http).json()["error"] == "no_route"  # no strategy, no routing table, no default: as before
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DEFAULT_MODEL="gpt-4o-mini-2024-07-18")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        three = ",".join((DOUBLES, CHEAP, FAST))
        for candidates in (three, None):
            extra = {"candidates": candidates} if candidates else {}
            picks = {s: route(http, strategy=s, **extra) for s in ("best_quality", "best_cost", "fastest")}
            assert {s: r.status_code for s, r in picks.items()} == dict.fromkeys(picks, 200)
            assert picks["best_quality"].json()["model_id"] == DOUBLES
            assert picks["best_cost"].json()["model_id"] == CHEAP
            assert picks["fastest"].json()["model_id"] == FAST
        body = picks["best_cost"].json()
        assert body["source"] == "strategy" and body["strategy"] == "best_cost" and len(body["fallback"]) == 3
        assert body["reasons"][0].startswith(f"best_cost: {CHEAP} has the lowest pessimistic cost per positive outcome")
        assert body["fallback"][0].startswith("gpt-")  # another provider first (CHEAP is Together's)
        # the organization defaults to the key's; another's is refused
        assert route(http, strategy="best_cost", organization_id="org-1").json() == body
        assert route(http, strategy="best_cost", organization_id="org-2").status_code == 403
        assert route(http, headers={}, strategy="best_cost").status_code == 401
        # constraints
        capped = route(http, strategy="best_quality", candidates=three, max_latency_ms=2000).json()
        assert capped["model_id"] in (CHEAP, FAST) and any(DOUBLES in r for r in capped["reasons"] if "excluded" in r)
        assert route(http, strategy="best_cost", capabilities="vision").json()["model_id"] in (FAST, DOUBLES)
        # no strategy: the routing table as before (here: the default model), with a fallback chain
        plain = route(http).json()
        assert plain["source"] == "default" and plain["model_id"] == "gpt-4o-mini-2024-07-18" and plain["fallback"]


def test_bad_route_input_is_a_422_with_the_reason_and_the_closest_model(tmp_path, published):
    home = tmp_path / "fw"
    write_model_stats(published, home / "model_stats.json")
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, httpx.Client(base_url=base) as http:
        r = route(http, strategy="cheapest")
        assert r.status_code == 422 and r.json()["error"] == "unknown_strategy" and "best_cost" in r.json()["detail"]
        r = route(http, strategy="best_cost", candidates=f"{DOUBLES},gpt-4o-mni")
        assert r.status_code == 422 and r.json() == {
            "error": "unknown_model", "closest": "gpt-4o-mini",
            "detail": "unknown model 'gpt-4o-mni': not in the model catalog; did you mean gpt-4o-mini?"}
        r = route(http, strategy="best_cost", candidates=" , ")
        assert r.status_code == 422 and r.json()["error"] == "no_candidates"
        r = route(http, strategy="fastest", candidates=f"{DOUBLES},{CHEAP},{FAST}", max_latency_ms=300)
        assert r.status_code == 422 and r.json()["error"] == "unsatisfiable" and r.json()["closest"] == FAST
        assert "latency" in r.json()["detail"] and "max_latency_ms 300" in r.json()["detail"]
        r = route(http, strategy="best_quality", min_quality=0.5)
        assert r.status_code == 422 and r.json()["closest"] == DOUBLES  # the nearest to 0.5
        r = route(http, strategy="best_quality", task_type="astrology")
        assert r.status_code == 422 and r.json()["error"] == "no_candidates" and "astrology" in r.json()["detail"]
        for bad in ({"min_quality": "2"}, {"max_latency_ms": "-1"}, {"max_cost_per_message": "nan"}):
            r = route(http, strategy="best_cost", **bad)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (bad, r.text)


def test_an_experiments_sticky_arm_wins_over_the_strategy(tmp_path, published):
    home = tmp_path / "fw"
    write_model_stats(published, home / "model_stats.json")
    arms = [{"model_id": "gpt-4.1-mini", "version": "1.1.0", "ab_group": "challenger", "traffic_pct": 50.0},
            {"model_id": FAST, "version": "1.0.0", "ab_group": "champion", "traffic_pct": 50.0}]
    write_routing({"version": 1, "families": {"flywheel-org-1-follow_up": {"experiment_id": "exp-9", "arms": arms}}},
                  home / "routing.json")
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_ROUTE_STRATEGY="best_cost")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        answers = [route(http, lead_id=f"lead-{i}").json() for i in range(40)]
        assert {a["model_id"] for a in answers} == {"gpt-4.1-mini", FAST}
        assert {a["source"] for a in answers} == {"experiment"} and {a["experiment_id"] for a in answers} == {"exp-9"}
        assert all(a["strategy"] == "best_cost" and f"best_cost would pick {CHEAP}" in a["reasons"][1]
                   for a in answers)
        assert all(a["model_id"] not in a["fallback"] for a in answers)
        # org-2 runs no experiment: the configured default strategy decides
        other = route(http, headers=TWO).json()
        assert other["model_id"] == CHEAP and other["source"] == "strategy"


def test_models_lists_the_catalog_with_measured_quality_and_cost(tmp_path, published):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, httpx.Client(base_url=base) as http:
        before = http.get("/models", headers=ONE).json()
        assert len(before["models"]) == len(load_catalog()) and all(m["measured"] is None for m in before["models"])
        write_model_stats(published, home / "model_stats.json")
        after = http.get("/models", headers=ONE, params={"task_type": "follow_up"}).json()
        rows = {m["model_id"]: m for m in after["models"]}
        assert all("follow_up" in m["task_types"] for m in rows.values())
        doubles = rows[DOUBLES]
        assert (doubles["provider"], doubles["input_per_million"], doubles["context_window"]) == ("openai", 2.5, 128000)
        assert doubles["measured"]["scope"] == "org-1" and doubles["measured"]["mature_messages"] == 1500
        assert doubles["measured"]["reply_rate"] == pytest.approx(0.2, abs=0.03)
        assert doubles["measured"]["cost_per_message"] == pytest.approx(0.01)
        assert rows["gpt-4.1-nano"]["measured"] is None
        assert http.get("/models").status_code == 401


def test_metric_endpoints_answer_for_the_keys_organization_only(tmp_path, published):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, httpx.Client(base_url=base) as http:
        assert http.get("/api/v1/executions", headers=ONE).json()["error"] == "not_published"
        write_model_stats(published, home / "model_stats.json")
        runs = http.get("/api/v1/executions", headers=ONE, params={"limit": 30}).json()
        assert len(runs["executions"]) == 30 and {r["organization_id"] for r in runs["executions"]} == {"org-1"}
        assert runs["executions"][0]["sent_at"] >= runs["executions"][-1]["sent_at"]
        only = http.get("/api/v1/executions", headers=ONE, params={"model_id": CHEAP}).json()["executions"]
        assert only and {r["model_id"] for r in only} == {CHEAP}
        assert http.get("/api/v1/executions", headers=ONE, params={"organization_id": "org-3"}).status_code == 403
        assert http.get("/api/v1/executions").status_code == 401
        stats = http.get("/api/v1/models/stats", headers=ONE, params={"task_type": "follow_up"}).json()
        assert {m["model_id"] for m in stats["models"]} == {DOUBLES, CHEAP, FAST}
        assert all(m["mature_messages"] == 1500 for m in stats["models"])  # org-1's half, not org-3's
        cmp = http.get("/api/v1/models/compare", headers=ONE, params={"models": f"{FAST},{DOUBLES}"}).json()
        assert cmp["baseline"] == FAST and cmp["confidence"] == 0.95
        versus = cmp["models"][1]["vs_baseline"]
        assert versus["difference"] == pytest.approx(0.1, abs=0.03) and versus["ci_low"] > 0 and versus["p_value"] < 1e-6
        r = http.get("/api/v1/models/compare", headers=ONE, params={"models": f"{FAST},gpt-4o-mni"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_model"
        r = http.get("/api/v1/models/compare", headers=ONE, params={"models": FAST})
        assert r.status_code == 422 and r.json()["error"] == "no_candidates"
        r = http.get("/api/v1/models/compare", headers=ONE, params={"models": f"{FAST},{CHEAP}", "metric": "vibes"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_metric"
        costs = http.get("/api/v1/costs", headers=TWO).json()
        assert {r["organization_id"] for r in costs["costs"]} == {"org-2"} and len(costs["costs"]) == 3
        assert costs["cost_usd"] == pytest.approx(1500 * (0.01 + 0.004 + 0.0008))


def test_the_new_routes_can_be_switched_off(tmp_path, published):
    home = tmp_path / "fw"
    write_model_stats(published, home / "model_stats.json")
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DISABLED_ROUTES="models,metrics_api")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base, headers=ONE) as http:
        assert http.get("/models").status_code == 404
        assert http.get("/api/v1/costs").status_code == 404
        assert route(http, strategy="fastest").status_code == 200
    with pytest.raises(ValueError, match="FLYWHEEL_ROUTE_STRATEGY"):
        settings_for(home, FLYWHEEL_ROUTE_STRATEGY="cheapest")


def test_a_bad_catalog_stops_strategies_but_not_the_routing_table(tmp_path, published):
    home = tmp_path / "fw"
    write_model_stats(published, home / "model_stats.json")
    (home / "catalog.yaml").write_text("models: [{model_id: gpt-4o, input_per_million: -1}]\n")
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DEFAULT_MODEL="gpt-4o-mini-2024-07-18")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base, headers=ONE) as http:
        plain = route(http)
        assert plain.status_code == 200 and plain.json()["model_id"] == "gpt-4o-mini-2024-07-18"
        assert plain.json()["fallback"] == []
        r = route(http, strategy="best_cost")
        assert r.status_code == 503 and r.json()["error"] == "catalog_invalid" and "models[0] (gpt-4o)" in r.json()["detail"]
        assert http.get("/models").status_code == 503
        (home / "catalog.yaml").write_text("models: [{model_id: gpt-4.1-nano, typical_latency_ms: 10}]\n")  # fixed
        assert route(http, strategy="fastest").json()["model_id"] == "gpt-4.1-nano"  # re-read when it changes
