"""Judging outreach texts: an offline heuristic judge behind the :class:`PairwiseJudge`
interface, which the LLM judge (deepeval G-Eval, core/geval_judge.py) implements too.

A judge scores one answer at a time (the heuristic: in [0, 1] from five documented signals);
:func:`judge_pair` scores the candidate's and the champion's answers to the same prompt, in a
seeded random order, and a difference below the judge's ``tie_margin`` is a tie. Identical
answers are skipped, not judged.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

SPAM_WORDS = ("free", "guarantee", "guaranteed", "act now", "limited time", "risk-free", "winner", "100%",
              "no obligation", "click here", "urgent", "cash", "cheap")
CTA = re.compile(r"\b(call|chat|meet|meeting|demo|calendar|time next week|worth a|open to|interested|reply|"
                 r"would you|can we|shall we|let me know)\b|\?", re.IGNORECASE)
PERSONAL = re.compile(r"\{\{\s*(first_name|company|last_name)\s*\}\}", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")


@dataclass(frozen=True)
class HeuristicScore:
    total: float
    length: float
    personalization: float
    call_to_action: float
    spam: float
    readability: float


def heuristic_score(text: str, prompt: str = "") -> HeuristicScore:
    words = _WORD.findall(text or "")
    n = len(words)
    # length: best between 40 and 150 words, falling off linearly outside
    length = 1.0 if 40 <= n <= 150 else max(0.0, 1 - (40 - n) / 40) if n < 40 else max(0.0, 1 - (n - 150) / 150)
    # personalization: merge fields, or words of the prompt's context (industry, role) in the text
    context = {w.lower() for w in _WORD.findall(prompt or "") if len(w) > 4}
    overlap = len(context & {w.lower() for w in words}) / max(1, min(len(context), 5))
    personalization = min(1.0, (0.6 if PERSONAL.search(text or "") else 0.0) + 0.4 * min(1.0, overlap))
    call_to_action = 1.0 if CTA.search(text or "") else 0.0
    lowered = (text or "").lower()
    hits = sum(lowered.count(w) for w in SPAM_WORDS) + (text or "").count("!!") + \
        sum(1 for w in words if len(w) > 3 and w.isupper())
    spam = max(0.0, 1.0 - 0.25 * hits)
    sentences = max(1, len(_SENTENCE.findall(text or "")))
    per_sentence = n / sentences
    readability = 1.0 if per_sentence <= 20 else max(0.0, 1 - (per_sentence - 20) / 20)
    total = 0.15 * length + 0.25 * personalization + 0.25 * call_to_action + 0.2 * spam + 0.15 * readability
    return HeuristicScore(round(total, 4), length, personalization, call_to_action, spam, readability)


@dataclass(frozen=True)
class Verdict:
    winner: str  # "candidate", "champion", "tie" or "skipped"
    candidate_score: float | None
    champion_score: float | None
    shown_first: str


class PairwiseJudge(Protocol):
    """Scores each answer to a prompt on its own; :func:`judge_pair` compares two scores, and a
    difference below ``tie_margin`` is a tie."""
    name: str
    tie_margin: float

    def score(self, prompt: str, answer: str) -> float:
        ...


class HeuristicJudge:
    name = "heuristic:v1"

    def __init__(self, tie_margin: float = 0.02):
        self.tie_margin = tie_margin

    def score(self, prompt: str, answer: str) -> float:
        return heuristic_score(answer, prompt).total


def judge_pair(judge: PairwiseJudge, prompt: str, candidate: str, champion: str, rng: random.Random) -> Verdict:
    if candidate.strip() == champion.strip():
        return Verdict("skipped", None, None, "none")
    # the order the judge sees the two answers in is random, so no order effect of the judge
    # (an LLM's, or its cache's) favours either side
    candidate_first = rng.random() < 0.5
    if candidate_first:
        candidate_score = judge.score(prompt, candidate)
        champion_score = judge.score(prompt, champion)
    else:
        champion_score = judge.score(prompt, champion)
        candidate_score = judge.score(prompt, candidate)
    if abs(candidate_score - champion_score) < judge.tie_margin:
        winner = "tie"
    else:
        winner = "candidate" if candidate_score > champion_score else "champion"
    return Verdict(winner, candidate_score, champion_score, "candidate" if candidate_first else "champion")


@dataclass
class PairwiseEvaluation:
    """A candidate against its champion over the same prompts: who won each, mean scores, samples."""
    prompts: int
    tally: dict[str, int]  # candidate, champion, tie, skipped (identical answers)
    mean_candidate_score: float
    mean_champion_score: float
    samples: list[tuple]  # (prompt start, winner, candidate score, champion score), the first three

    @property
    def judged(self) -> int:
        return self.tally["candidate"] + self.tally["champion"] + self.tally["tie"]

    @property
    def win_rate(self) -> float:
        return self.tally["candidate"] / self.judged if self.judged else 0.0

    @property
    def loss_rate(self) -> float:
        return self.tally["champion"] / self.judged if self.judged else 0.0


def evaluate_pairwise(generate, judge: PairwiseJudge, candidate: str, champion: str,
                      prompts: list[tuple[str | None, str]], seed: int) -> PairwiseEvaluation:
    """Both models answer every (system, user) prompt (``generate(model, messages) -> text``); the
    judge compares each pair in random order, ties allowed, identical answers skipped."""
    rng = random.Random(seed)
    tally = {"candidate": 0, "champion": 0, "tie": 0, "skipped": 0}
    cand_scores, champ_scores, samples = [], [], []
    for system, user in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        verdict = judge_pair(judge, user, generate(candidate, messages), generate(champion, messages), rng)
        tally[verdict.winner] += 1
        if verdict.candidate_score is not None:
            cand_scores.append(verdict.candidate_score)
            champ_scores.append(verdict.champion_score)
        if len(samples) < 3:
            samples.append((user[:80], verdict.winner, verdict.candidate_score, verdict.champion_score))

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 4) if values else 0.0

    return PairwiseEvaluation(len(prompts), tally, mean(cand_scores), mean(champ_scores), samples)


class ScorerJudge:
    """The heuristic scorer of a task family (core/message_scorers.py, the judge ``heuristic:<family>``
    of ``message_judgements``) as a pairwise judge, so the offline evaluation can fall back to a
    judge whose calibration against outcomes is measured (``judge_calibration``). An answer is
    scored as the body of a message of ``task_type``; its score is the scorer's / 100."""

    def __init__(self, family: str, tie_margin: float = 0.02):
        from flywheel_pipeline.core.message_scorers import SCORERS

        if family not in SCORERS:
            raise ValueError(f"no heuristic scorer for family {family!r}")
        self._scorer = SCORERS[family]
        self.name = f"heuristic:{family}"
        self.tie_margin = tie_margin

    def score(self, prompt: str, answer: str) -> float:
        from flywheel_pipeline.core.message_scorers import MessageText

        return self._scorer.judge(MessageText(self._scorer.family, body=answer, prompt=prompt)).score / 100
