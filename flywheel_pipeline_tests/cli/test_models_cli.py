"""`flywheel models [--json]` and `flywheel route`: the catalog with measured quality and cost from
the published model_stats.json; a strategy's pick with its reasons; bad input one line, exit 2."""

from __future__ import annotations

import json

from flywheel_pipeline.cli import main
from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.routing import write_model_stats
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.warehouse.test_model_choice import CHEAP, DOUBLES, FAST, measure, plant_world


def test_models_lists_the_catalog_and_route_picks_by_strategy(home, tmp_path, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "nothing measured yet" in out and "claude-sonnet-4-5-20250929" in out
    con = connect(tmp_path / "wh.duckdb")
    plant_world(con, per_model=1000)
    write_model_stats(measure(con), home / "model_stats.json")
    con.close()
    assert main(["models", "--json", "--task-type", "follow_up"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = {m["model_id"]: m for m in listed["models"]}
    assert set(rows) == {m for m, e in load_catalog().entries.items() if "follow_up" in e.task_types}
    assert rows[CHEAP]["measured"]["cost_per_message"] == 0.0008 and rows["gpt-4.1-nano"]["measured"] is None
    assert main(["models"]) == 0
    assert "measured (reply_rate) as of" in capsys.readouterr().out
    for strategy, expected in (("best_quality", DOUBLES), ("best_cost", CHEAP), ("fastest", FAST)):
        assert main(["route", "--lead-id", "l1", "--organization", "org_a", "--task-type", "follow_up",
                     "--strategy", strategy, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["model_id"] == expected
    assert main(["route", "--lead-id", "l1", "--organization", "org_a", "--task-type", "follow_up",
                 "--strategy", "best_cost"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == CHEAP and "lowest pessimistic cost per positive outcome" in out


def test_bad_input_is_one_line_and_exit_2(home, capsys):
    base = ["route", "--lead-id", "l1", "--organization", "org_a", "--task-type", "follow_up"]
    for extra, words in ((["--strategy", "cheapest"], "unknown strategy 'cheapest'"),
                         (["--strategy", "best_cost", "--candidates", "gpt-4o,gpt-4o-mni"], "did you mean gpt-4o-mini"),
                         (["--strategy", "best_cost", "--candidates", ","], "the candidate list is empty"),
                         (["--strategy", "fastest", "--max-latency-ms", "10"], "closest:")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("flywheel route: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert main(["models", "--task-type", "astrology"]) == 2
    assert capsys.readouterr().err.strip() == "flywheel models: no catalog model lists task type 'astrology'"
    (home / "catalog.yaml").parent.mkdir(parents=True, exist_ok=True)
    (home / "catalog.yaml").write_text("models: [{model_id: gpt-4o, input_per_million: -1}]\n")
    assert main(["models"]) == 2
    assert "models[0] (gpt-4o)" in capsys.readouterr().err
