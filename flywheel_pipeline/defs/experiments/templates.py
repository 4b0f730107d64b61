"""The prompt optimizer: a new template version proposed from outcome_drivers' guidance and deployed
only as a challenger arm (first rollout step) of its task type's template experiment; and the
``propose_templates`` job (`flywheel templates propose`) that refreshes the drivers first."""

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.assignment import DEFAULT_ROLLOUT_STEPS
from flywheel_pipeline.core.drivers import guidance
from flywheel_pipeline.core.template_optimizer import NoProposal, propose
from flywheel_pipeline.defs.experiments.assets import EXPERIMENTS_GROUP
from flywheel_pipeline.defs.learn.drivers import outcome_drivers
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, GenerationResource, WarehouseResource
from flywheel_pipeline.routing import write_template_families
from flywheel_pipeline.warehouse import templates
from flywheel_pipeline.warehouse.outcome_drivers import read_drivers
from flywheel_pipeline.warehouse.template_routing import build_template_families

PROPOSE_JOB_NAME = "propose_templates"


class PromptOptimizerConfig(dg.Config):
    task_type: str = Field("all", description="The task type whose champion template is improved (its guidance "
                                              "scope; 'all' = every task type together).")
    first_step_pct: float = Field(DEFAULT_ROLLOUT_STEPS[0], description="Traffic the proposed challenger starts "
                                                                        "with (the first rollout step).")
    rewrite_model: str | None = Field(None, description="Have this model rewrite the proposal through the "
                                                        "generation resource's OpenAI-compatible endpoint (mode "
                                                        "'openai'); default: the deterministic text only.")


@dg.asset(group_name=EXPERIMENTS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "json"}, deps=[outcome_drivers],
          description="Proposes the task type's next template version from outcome_drivers' body-length guidance "
                      "(the champion's text plus the length the best messages share; optionally rewritten by an "
                      "LLM) and deploys it only as the challenger arm at the first rollout step of the template "
                      "experiment (routing.json's template_families); never straight to all traffic.")
def prompt_optimizer(context: dg.AssetExecutionContext, config: PromptOptimizerConfig, warehouse: WarehouseResource,
                     generation: GenerationResource) -> dg.MaterializeResult:
    generator = None
    if config.rewrite_model:
        if generation.mode == "openai":
            generator = generation.client()
        else:
            context.log.warning(f"rewrite_model {config.rewrite_model} needs the generation resource in mode "
                                f"'openai' (it is {generation.mode!r}); proposing the deterministic text")
    with warehouse.connect() as con:
        champion = templates.champion(con, config.task_type)
        if champion is None:
            context.log.warning(f"no champion template for task type {config.task_type!r}: add one with "
                                "`flywheel templates add`")
            return dg.MaterializeResult(metadata={"proposed": False, "reason": "no champion template"})
        advice = guidance(read_drivers(con), include_all=True)["task_types"].get(config.task_type, {})
        try:
            running = templates.challenger(con, config.task_type)
            if running is not None:  # one experiment at a time: a new proposal would restart it
                raise NoProposal(f"challenger {running.key} is being tested at {running.traffic_pct:g}%")
            proposal = propose(champion.text, champion.version, templates.versions(con, champion.template_id),
                               advice, generator, config.rewrite_model)
            tested = templates.same_instruction(con, champion, proposal.words)
            if tested is not None:
                raise NoProposal(f"{tested.key} already asked the champion's text for this length "
                                 f"({tested.status}, {tested.ab_group or 'not routed'})")
        except NoProposal as exc:
            context.log.info(f"nothing proposed: {exc}")
            return dg.MaterializeResult(metadata={"proposed": False, "reason": str(exc),
                                                  "champion": champion.key, "guidance": dg.MetadataValue.json(advice)})
        for note in proposal.notes:
            context.log.warning(note)
        added = templates.add_template(con, template_id=champion.template_id, version=proposal.version,
                                       text=proposal.text, task_type=config.task_type, source=proposal.method,
                                       parent_version=champion.version, rationale=proposal.rationale,
                                       as_challenger_pct=config.first_step_pct)
        families, _ = build_template_families(con)
    write_template_families(families)
    context.log.info(f"proposed {added.template.key} ({proposal.method}): {added.deployment}")
    return dg.MaterializeResult(metadata={
        "proposed": True, "template": added.template.key, "champion": champion.key,
        "deployment": added.deployment, "method": proposal.method, "rationale": proposal.rationale,
        "word_range": f"{proposal.words.low}-{proposal.words.high}", "notes": "; ".join(proposal.notes),
        "text": dg.MetadataValue.md(f"```jinja\n{proposal.text}\n```"), "guidance": dg.MetadataValue.json(advice)})


propose_templates_job = dg.define_asset_job(
    PROPOSE_JOB_NAME, selection=dg.AssetSelection.assets(outcome_drivers, prompt_optimizer),
    description="Refresh outcome_drivers, then propose the next template version as a challenger arm.",
    executor_def=dg.in_process_executor, tags={"flywheel/kind": "templates"})
