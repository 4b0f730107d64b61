"""The prompt optimizer: a new template version from ``outcome_drivers`` guidance (pure: the
champion's text and the guidance in, the proposal out; defs/experiments/templates.py deploys it,
only ever as a challenger).

Deterministic by default: the champion's text with one instruction added (or replaced) saying
the body length the best-performing messages share (core/drivers.guidance: the highest-rate
body-length bucket significantly above the rest, or, when none is, below the shortest bucket
significantly worse). Optionally an LLM rewrites the champion with the same guidance through
any OpenAI-compatible endpoint; its answer must pass the same checks as ``templates add``
(renders with the lead's fields) and keep the instruction, else the deterministic text is used
and the reason is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flywheel_pipeline.core.generation import Generator
from flywheel_pipeline.core.templates import (TemplateRefused, WordRange, check_template, length_instruction,
                                              with_length_instruction)
from flywheel_pipeline.core.versioning import next_version


@dataclass(frozen=True)
class Proposal:
    text: str
    version: str
    words: WordRange
    rationale: str  # one sentence, from the guidance's figures
    method: str  # 'deterministic' or 'llm:<model>'
    notes: list[str] = field(default_factory=list)  # e.g. why an LLM rewrite was not used


class NoProposal(ValueError):
    """Nothing to propose (no significant length guidance, or the champion already says it)."""


def word_range(advice: dict) -> tuple[WordRange, str]:
    """The length to ask for and why, from one task scope of core/drivers.guidance()."""
    best = advice.get("best")
    if best:
        low, high = best["word_range"]
        if high is not None:
            return WordRange(int(low), int(high)), (
                f"(Messages of {low}-{high} words had a reply rate of {best['rate']:.1%}, "
                f"{best['estimate']:+.1%} against the rest within organizations, BH p = {best['p_adjusted']:.2g}.)")
    avoid = sorted(advice.get("avoid") or [], key=lambda a: a["word_range"][0])
    if avoid:
        low = int(avoid[0]["word_range"][0])
        if low > 0:
            return WordRange(0, low - 1), (
                f"(Messages of {avoid[0]['bucket']} words had a reply rate {avoid[0]['estimate']:+.1%} against "
                "the rest within organizations.)")
    raise NoProposal("the drivers show no body length whose reply rate is significantly different "
                     f"({advice.get('messages', 0)} mature messages in scope)")


def propose(champion_text: str, champion_version: str, taken_versions: list[str], advice: dict,
            generator: Generator | None = None, model: str | None = None) -> Proposal:
    """The next minor version of the champion (the next free one) with the guidance's length."""
    words, why = word_range(advice)
    current = length_instruction(champion_text)
    if current == words:
        raise NoProposal(f"the champion already asks for {words.instruction().lower()}")
    version = next_version(max([champion_version, *taken_versions], key=_key), "minor")
    text = with_length_instruction(champion_text, words, why)
    check_template(text)
    notes: list[str] = []
    if generator is not None and model:
        try:
            rewritten = _llm_rewrite(generator, model, champion_text, text)
            check_template(rewritten)
            if length_instruction(rewritten) != words:
                raise TemplateRefused("the rewrite dropped or changed the length instruction")
            return Proposal(rewritten, version, words, why, f"llm:{model}", notes)
        except TemplateRefused as exc:
            notes.append(f"LLM rewrite by {model} refused ({exc}); the deterministic text is proposed")
        except Exception as exc:  # noqa: BLE001 - a provider failure falls back, and says so
            notes.append(f"LLM rewrite by {model} failed ({type(exc).__name__}: {exc}); the deterministic text "
                         "is proposed")
    return Proposal(text, version, words, why, "deterministic", notes)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


REWRITE_SYSTEM = (
    "You improve Jinja2 prompt templates for B2B outreach e-mails. Keep every {{ variable }} exactly as "
    "written, add no new variables, and keep the line that starts with 'Keep the body of the email' verbatim. "
    "Answer with the template only.")


def _llm_rewrite(generator: Generator, model: str, champion_text: str, instructed_text: str) -> str:
    answer = generator.generate(model, [
        {"role": "system", "content": REWRITE_SYSTEM},
        {"role": "user", "content": "Current template:\n\n" + champion_text + "\n\nRewrite it so that it follows "
                                    "this version's length guidance, which must stay in it verbatim:\n\n"
                                    + instructed_text}])
    return answer.strip().removeprefix("```jinja").removeprefix("```").removesuffix("```").strip() + "\n"
