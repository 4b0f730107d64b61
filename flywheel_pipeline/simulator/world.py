"""The demo-world SIMULATOR: the world outside the product, for demos and tests only.

It invents organizations, campaigns and leads; an outreach app that writes messages with
several models of different (hidden) quality; recipients who open, click, reply
(out-of-office auto-replies included), book and hold meetings and close deals with
realistic rates and delays; and providers that behave like real ones: SendGrid posts each
event about three times on average, late and out of order, Apple Mail Privacy Protection
pre-fetches pixels (``sg_machine_open``), security scanners click every link within
seconds of delivery, and a rare line arrives truncated.

It writes only to the landing zone, in the formats real sources use, one file per source
per simulated day (``sim-<seed>-<source>-<date>.jsonl``). Everything is deterministic in the
seed: each message's fate comes from its own RNG, so writing more days later (a larger
``end``) extends the same world, and days already written are skipped.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.templates import length_instruction
from flywheel_pipeline.core.templates import render as render_template

SIMULATOR_TAG = "demo-world simulator"

INDUSTRIES = ("saas", "fintech", "healthcare", "logistics", "manufacturing", "retail")
ROLES = ("vp_sales", "head_of_growth", "cto", "founder", "sales_ops", "marketing_director")
FIRST = ("Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemi", "Luca", "Maya", "Nils", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq")
LAST = ("Alvarez", "Brown", "Chen", "Dubois", "Eze", "Fischer", "Garcia", "Haddad", "Ivanova",
        "Jensen", "Kim", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Schmidt")
FRAMEWORKS = ("AIDA", "PAS", "BAB", "QVC")
TONES = ("friendly", "formal", "direct")


@dataclass(frozen=True)
class SimModel:
    model_id: str
    model_version: str
    quality: float  # hidden multiplier on engagement; the flywheel should discover it
    share: float  # share of traffic in its active period
    start_day: int = 0  # first simulated day (0-based) it sends
    ab_group: str = "control"
    latency_ms: float | None = None  # its typical latency (None: every model 400-2,500 ms, as before)


DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel("gpt-4o-mini-2024-07-18", "1.0.0", 1.00, 0.55, 0, "control"),
    SimModel("gpt-4.1-mini-2025-04-14", "1.0.0", 1.12, 0.30, 0, "control"),
    SimModel("ft:gpt-4o-mini-2024-07-18:acme::flywheel-v1", "1.1.0", 1.30, 0.15, 30, "challenger"),
)


@dataclass
class SimConfig:
    seed: int = 7
    days: int = 90
    end: date | None = None  # last simulated day is end - 1; default: today (UTC)
    # Day 0 of the world (models' start_day counts from it). Default: the first day already
    # written for this seed, else end - days; so extending a world keeps it the same world.
    epoch: date | None = None
    organizations: int = 3
    leads_per_org: int = 800
    messages_per_day: int = 120
    models: tuple[SimModel, ...] = DEFAULT_MODELS
    duplicate_mean_copies: float = 3.0
    malformed_rate: float = 0.0005
    crm_with_message_id: float = 0.5
    # The outreach app follows the routing table (routing.json as a dict): routing_history
    # lists (first day, table) in date order, and a message sent on a day uses the latest table
    # in force, with the model flywheel_pipeline.routing.choose_model picks for its lead (and
    # records the experiment and allocation in its metadata). A sandbox model's hidden quality
    # is SANDBOX_MODEL_QUALITY (a simulator assumption: trained on the best outcomes, it writes
    # somewhat better e-mails than the baseline).
    routing_history: tuple[tuple[date, dict], ...] = ()
    # Share of messages a person rates (landing/feedback, 1-5, correlated with the model's hidden
    # quality). Drawn from each message's own feedback RNG, so the other sources stay the same.
    feedback_rate: float = 0.03
    # The text's hidden effect on the reply probability (TEXT_EFFECTS); False: the text varies
    # exactly as before but moves no outcome (a null world for the text features).
    text_effects: bool = True
    # False: messages carry no cost_usd, so cost_analysis prices them from their tokens and the
    # model catalog (each model at its own price; True: every model at gpt-4o-mini's, as before).
    record_cost: bool = True

    def routing_on(self, day: date) -> dict | None:
        table = None
        for since, routing in self.routing_history:
            if since <= day:
                table = routing
        return table


SANDBOX_MODEL_QUALITY = 1.25

# The hidden truth about the text (docs/learning.md). Each message's text is drawn from its own
# RNG (seeded by the world's seed and the message id, so the rest of the world's randomness is
# unchanged): a question in the subject (half of the messages), a body of 0, 1 or 3 extra
# paragraphs (about 35, 85 and 170 words), and personalization (60%: the lead's first name and
# company in the body). Three of them move the probability of a reply, multiplicatively:
TEXT_EFFECTS = {"question_in_subject": 1.30, "body_over_150_words": 0.70, "personalized": 1.25}
# ... normalized by the mean factor, so the world's average reply rate stays what it was.
# Framework, tone, prompt template and version, send hour and weekday move nothing (besides the
# models' hidden quality, which drives everything).
QUESTION_SUBJECTS = ("{company}: worth a quick chat?", "Are your {industry} emails booking meetings?")
STATEMENT_SUBJECTS = ("{company}: quick question", "Outreach analytics for {company}")
BODY_PARAGRAPHS = (
    "Most teams we talk to send thousands of emails a month and only learn which ones worked from a "
    "spreadsheet someone updates by hand. We connect your sending tool and your CRM, and every reply, "
    "meeting and deal is traced back to the message that started it.",
    "That lets you compare models, prompts and templates on what they actually produce: replies that "
    "turn into meetings, not opens inflated by privacy proxies or clicks from security scanners. The "
    "numbers come with intervals, so nobody bets a quarter on noise.",
    "Setup takes an afternoon. We read events from SendGrid and your CRM through webhooks, keep the raw "
    "records for audit, and never train on a message without your consent. Your data stays yours and "
    "can be exported or deleted at any time, in one click, with a full log.",
)
_PARAGRAPH_CHOICES = (0, 1, 3)  # short, medium, long


@dataclass(frozen=True)
class TextChoices:
    question: bool
    subject: int
    paragraphs: int
    personalized: bool
    template: str
    template_version: str

    @property
    def reply_factor(self) -> float:
        factor = ((TEXT_EFFECTS["question_in_subject"] if self.question else 1.0)
                  * (TEXT_EFFECTS["body_over_150_words"] if self.paragraphs == 3 else 1.0)
                  * (TEXT_EFFECTS["personalized"] if self.personalized else 1.0))
        return factor / _MEAN_TEXT_FACTOR


_MEAN_TEXT_FACTOR = ((1 + TEXT_EFFECTS["question_in_subject"]) / 2
                     * (2 + TEXT_EFFECTS["body_over_150_words"]) / 3
                     * (0.4 + 0.6 * TEXT_EFFECTS["personalized"]))


# The demo world's outreach app writes with this template once routing.json names one (`flywheel demo`
# adds it as the champion); the simulated model follows a length instruction in the rendered prompt
# (core/templates.length_instruction), so a template that asks for a length moves the body length,
# and through TEXT_EFFECTS the reply rate: nothing else about a template's text moves outcomes.
DEMO_TEMPLATE_ID = "outreach-email"
DEMO_TEMPLATE = (
    "Write a short B2B outreach e-mail to {{ first_name }} {{ last_name }}, {{ role }} at {{ company }}, a "
    "{{ industry }} company, about our outreach analytics product.\n"
    "Open with something specific to {{ company }}, end with one clear question, and sign it {{ sender_name }}.\n")


def lead_fields(lead: Lead) -> dict[str, str]:
    """The lead's fields a template renders with (core/templates.LEAD_FIELDS)."""
    return {"first_name": lead.first_name, "last_name": lead.last_name, "company": lead.company,
            "industry": lead.industry, "role": lead.role.replace("_", " "), "sender_name": "Jordan"}


def _follow_length(cfg: SimConfig, mid: str, text: TextChoices, words, body_of) -> TextChoices:
    """The simulated model follows a prompt's length instruction: among the bodies it can write, one
    within the range (drawn from the message's own RNG), else the closest."""
    lengths = {p: len(body_of(p).split()) for p in _PARAGRAPH_CHOICES}
    fitting = [p for p, n in lengths.items() if words.contains(n)]
    if fitting:
        paragraphs = random.Random(f"{cfg.seed}:length:{mid}").choice(fitting)
    else:
        def distance(n: int) -> int:
            return max(words.low - n, 0, n - words.high if words.high is not None else 0)
        paragraphs = min(lengths, key=lambda p: (distance(lengths[p]), p))
    return replace(text, paragraphs=paragraphs)


def _text_choices(cfg: SimConfig, mid: str) -> TextChoices:
    rng = random.Random(f"{cfg.seed}:text:{mid}")
    return TextChoices(question=rng.random() < 0.5, subject=rng.randrange(2),
                       paragraphs=rng.choice(_PARAGRAPH_CHOICES), personalized=rng.random() < 0.6,
                       template=rng.choice(("pain_first", "value_first")), template_version=rng.choice(("1", "2")))


@dataclass
class SimResult:
    days_written: int = 0
    days_skipped: int = 0
    messages: int = 0
    sendgrid_lines: int = 0
    crm_lines: int = 0
    reply_lines: int = 0
    feedback_lines: int = 0
    malformed_lines: int = 0
    files: list[Path] = field(default_factory=list)


def _utc(d: date) -> datetime:
    return datetime.combine(d, time(0), tzinfo=timezone.utc)


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Lead:
    lead_id: str
    organization_id: str
    first_name: str
    last_name: str
    email: str
    company: str
    industry: str
    role: str
    apple_mail: bool
    has_scanner: bool
    affinity: float


def build_leads(cfg: SimConfig) -> list[Lead]:
    rng = random.Random(f"{cfg.seed}:leads")
    leads = []
    for o in range(cfg.organizations):
        org = f"org_{o + 1:02d}"
        for i in range(cfg.leads_per_org):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            company = f"{rng.choice(LAST)} {rng.choice(('Labs', 'Systems', 'Group', 'Logistics', 'Health'))}"
            domain = company.lower().replace(" ", "") + ".example"
            leads.append(Lead(
                lead_id=f"{org}-lead-{i:05d}", organization_id=org, first_name=first, last_name=last,
                email=f"{first.lower()}.{last.lower()}{i}@{domain}", company=company,
                industry=rng.choice(INDUSTRIES), role=rng.choice(ROLES),
                apple_mail=rng.random() < 0.45, has_scanner=rng.random() < 0.15,
                affinity=rng.lognormvariate(0, 0.5)))
    return leads


def _pick_model(models: tuple[SimModel, ...], day: int, rng: random.Random) -> SimModel:
    active = [m for m in models if m.start_day <= max(day, 0)]
    total = sum(m.share for m in active)
    x = rng.random() * total
    for m in active:
        x -= m.share
        if x <= 0:
            return m
    return active[-1]


REPLY_TEXTS = {
    "meeting_request": ("Sounds interesting - let's set up a call. What time works next week?",
                        "Happy to chat. Send me a calendar invite for Thursday."),
    "interested": ("Interested, tell me more about pricing.", "This sounds good, can you send details?"),
    "not_now": ("Not right now, maybe next quarter.", "Bad timing for us, circle back in a few months."),
    "not_interested": ("Not interested, thanks.", "We already use a tool for this. No thanks."),
    "unsubscribe_request": ("Please remove me from your list.", "Unsubscribe."),
    "question": ("How is this different from what we have?",),
}


def _message_fate(cfg: SimConfig, lead: Lead, model: SimModel, mid: str, sent: datetime,
                  links: list[str], reply_factor: float = 1.0) -> dict[str, list[dict[str, Any]]]:
    """Every record the outside world produces about one message: {source: [(posted_at, record)]}."""
    rng = random.Random(f"{cfg.seed}:fate:{mid}")
    q = model.quality * lead.affinity
    out: dict[str, list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
    seq = 0

    def sg(event: str, ts: datetime, **extra: Any) -> None:
        nonlocal seq
        seq += 1
        record = {"email": lead.email, "timestamp": int(ts.timestamp()), "event": event,
                  "sg_event_id": f"sg-{mid}-{seq}", "sg_message_id": f"{mid}.filter0001",
                  "message_id": mid, "organization_id": lead.organization_id, **extra}
        copies = 1 + _poisson(rng, cfg.duplicate_mean_copies - 1)
        for c in range(copies):
            delay = timedelta(seconds=rng.uniform(1, 120)) if c == 0 else \
                timedelta(seconds=rng.expovariate(1 / 7200) + rng.uniform(60, 600))
            out["sendgrid"].append((ts + delay, record))

    sg("processed", sent)
    if rng.random() < 0.03:
        kind = rng.choice(("bounce", "bounce", "blocked"))
        sg("bounce", sent + timedelta(seconds=rng.uniform(2, 600)), type=kind,
           reason="550 5.1.1 The email account that you tried to reach does not exist")
        return out
    delivered = sent + timedelta(seconds=rng.uniform(1, 30))
    sg("delivered", delivered, response="250 OK")
    if lead.apple_mail:  # Apple MPP pre-fetches the pixel for every message
        sg("open", delivered + timedelta(seconds=rng.uniform(5, 900)), sg_machine_open=True)
    if lead.has_scanner:  # a security gateway clicks every tracked link at once
        at = delivered + timedelta(seconds=rng.uniform(0.5, 3))
        for url in links:
            sg("click", at, url=url, url_offset={"index": links.index(url), "type": "html"})
    opened = rng.random() < min(0.9, 0.32 * q)
    if not opened:
        if rng.random() < 0.002:
            sg("spamreport", delivered + timedelta(hours=rng.uniform(1, 48)))
        return out
    open_at = delivered + timedelta(minutes=rng.expovariate(1 / 600))
    for k in range(1 + _poisson(rng, 0.7)):
        sg("open", open_at + timedelta(minutes=30 * k * rng.random()), sg_machine_open=False)
    if links and rng.random() < min(0.8, 0.22 * q):
        url = rng.choice(links)
        sg("click", open_at + timedelta(seconds=rng.uniform(20, 600)), url=url,
           url_offset={"index": links.index(url), "type": "html"})
    if rng.random() < 0.012:
        sg("unsubscribe", open_at + timedelta(minutes=rng.uniform(1, 60)))
        return out
    if rng.random() < 0.003:
        sg("spamreport", open_at + timedelta(minutes=rng.uniform(1, 60)))
        return out
    if rng.random() < 0.06:  # out-of-office auto-reply
        at = delivered + timedelta(seconds=rng.uniform(5, 60))
        out["replies"].append((at, _reply(lead, mid, at, rng, "auto", auto=True)))
    if rng.random() >= min(0.95, 0.28 * q * reply_factor):  # the text's hidden effect (TEXT_EFFECTS)
        return out
    reply_at = open_at + timedelta(hours=rng.expovariate(1 / 20))
    p_pos = min(0.85, 0.42 * q)
    r = rng.random()
    if r < p_pos:
        intent = rng.choice(("meeting_request", "interested"))
    elif r < p_pos + 0.12:
        intent = "question"
    elif r < p_pos + 0.30:
        intent = "not_now"
    elif r < p_pos + 0.45:
        intent = "unsubscribe_request"
    else:
        intent = "not_interested"
    out["replies"].append((reply_at + timedelta(seconds=rng.uniform(1, 300)),
                           _reply(lead, mid, reply_at, rng, intent)))
    if intent not in ("meeting_request", "interested") or rng.random() >= min(0.9, 0.5 * q):
        return out
    booked = reply_at + timedelta(hours=rng.uniform(2, 72))
    crm_ref = _crm_ref(cfg, rng, lead, mid)
    out["crm"].append((booked, {"event_id": f"crm-{mid}-booked", "source": rng.choice(("hubspot", "pipedrive")),
                                "type": "meeting_booked", **crm_ref, "occurred_at": _iso(booked)}))
    if rng.random() >= 0.8:
        return out
    held = booked + timedelta(days=rng.uniform(1, 10))
    out["crm"].append((held, {"event_id": f"crm-{mid}-held", "source": "hubspot",
                              "type": "meeting_completed", **crm_ref, "occurred_at": _iso(held)}))
    closes = rng.random() < min(0.8, 0.28 * q)
    outcome_at = held + timedelta(days=rng.uniform(7, 60))
    if closes:
        value = round(min(250_000.0, rng.lognormvariate(math.log(18_000), 0.9)), 2)
        out["crm"].append((outcome_at, {"event_id": f"crm-{mid}-won", "source": "pipedrive",
                                        "type": "deal_closed", **crm_ref, "occurred_at": _iso(outcome_at),
                                        "deal_value": value, "currency": "USD"}))
    elif rng.random() < 0.5:
        out["crm"].append((outcome_at, {"event_id": f"crm-{mid}-lost", "source": "pipedrive",
                                        "type": "deal_lost", **crm_ref, "occurred_at": _iso(outcome_at)}))
    return out


FEEDBACK_COMMENTS = {1: "Generic and off-target.", 2: "Too long, no clear ask.", 3: "Fine, nothing special.",
                     4: "Clear and relevant.", 5: "Personal and to the point."}


def _feedback(cfg: SimConfig, lead: Lead, model: SimModel, mid: str, sent: datetime
              ) -> list[tuple[datetime, dict[str, Any]]]:
    """A person's rating of the message, for about ``feedback_rate`` of them: 1-5, higher on
    average for a model of higher hidden quality (about 2.8 at quality 1.0, 3.5 at 1.3), from
    the message's own feedback RNG (no other stream moves)."""
    rng = random.Random(f"{cfg.seed}:feedback:{mid}")
    if rng.random() >= cfg.feedback_rate:
        return []
    rating = max(1, min(5, round(3.0 + 2.5 * (model.quality - 1.1) + rng.gauss(0, 0.9))))
    at = sent + timedelta(hours=rng.uniform(0.5, 72))
    record: dict[str, Any] = {"feedback_id": f"fb-{mid}", "message_id": mid,
                              "organization_id": lead.organization_id, "rating": rating,
                              "rater": f"{lead.organization_id}-reviewer-{rng.randrange(4)}", "rated_at": _iso(at)}
    if rng.random() < 0.4:
        record["comment"] = FEEDBACK_COMMENTS[rating]
    return [(at, record)]


def _crm_ref(cfg: SimConfig, rng: random.Random, lead: Lead, mid: str) -> dict[str, str]:
    if rng.random() < cfg.crm_with_message_id:
        return {"message_id": mid, "lead_id": lead.lead_id}
    return {"lead_id": lead.lead_id} if rng.random() < 0.7 else {"email": lead.email}


def _reply(lead: Lead, mid: str, at: datetime, rng: random.Random, intent: str,
           auto: bool = False) -> dict[str, Any]:
    if auto:
        headers = rng.choice(({"Auto-Submitted": "auto-replied"}, {"X-Autoreply": "yes"},
                              {"Precedence": "auto_reply"}))
        subject, text = "Automatic reply: quick question", \
            f"I am out of the office until next week. For urgent matters contact {lead.company} support."
    else:
        headers = {"In-Reply-To": f"<{mid}@outreach.example>"}
        subject, text = "Re: quick question", rng.choice(REPLY_TEXTS[intent])
    record = {"reply_id": f"reply-{mid}-{intent}", "received_at": _iso(at), "from_email": lead.email,
              "subject": subject, "text": text, "headers": headers}
    if rng.random() < 0.85:  # the rest must be attributed by the sender's address
        record["message_id"] = mid
    return record


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _message(cfg: SimConfig, lead: Lead, model: SimModel, mid: str, sent: datetime,
             campaign: int, rng: random.Random, routed: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], list[str]]:
    framework, tone = rng.choice(FRAMEWORKS), rng.choice(TONES)
    n_links = rng.choice((1, 2, 2, 3))
    links = [f"https://{lead.organization_id}.example/l/{mid}/{k}?t={rng.getrandbits(32):08x}"
             for k in range(n_links)]
    task_type = "cold_email" if campaign < 2 else "follow_up"
    system_prompt = ("You write concise, honest B2B outreach emails. Never invent facts. "
                     f"Use the {framework} framework and a {tone} tone.")
    user_prompt = (f"Write a {task_type.replace('_', ' ')} to {{{{first_name}}}}, {lead.role.replace('_', ' ')} "
                   f"at a {lead.industry} company, about our outreach analytics product.")
    text = _text_choices(cfg, mid)
    greeting, like = (lead.first_name, lead.company) if text.personalized else ("there", "yours")

    def body_of(paragraphs: int) -> str:
        return (f"Hi {greeting},\n\nTeams in {lead.industry} like {like} use us to see which "
                f"outreach actually books meetings. ({framework}/{tone}, {model.model_id})\n\n"
                + "".join(f"{paragraph}\n\n" for paragraph in BODY_PARAGRAPHS[:paragraphs])
                + "\n".join(f"- {url}" for url in links)
                + "\n\nBest,\nJordan from Outreach Co")

    template = routed if routed and routed.get("template_text") else None
    if template is not None:  # the routed template arm: its prompt, and a model that follows its length rule
        user_prompt = render_template(template["template_text"], lead_fields(lead))
        words = length_instruction(user_prompt)
        if words is not None and not words.contains(len(body_of(text.paragraphs).split())):
            text = _follow_length(cfg, mid, text, words, body_of)
    body = body_of(text.paragraphs)
    subject = (QUESTION_SUBJECTS if text.question else STATEMENT_SUBJECTS)[text.subject].format(
        company=lead.company, industry=lead.industry)
    prompt_tokens, completion_tokens = rng.randint(180, 420), rng.randint(90, 240)
    record = {
        "message_id": mid, "organization_id": lead.organization_id,
        "campaign_id": f"{lead.organization_id}-camp-{campaign}", "lead_id": lead.lead_id,
        "recipient_email": lead.email, "channel": "email", "sent_at": _iso(sent),
        "model_id": model.model_id, "model_version": model.model_version, "ab_group": model.ab_group,
        "task_type": task_type, "system_prompt": system_prompt, "user_prompt": user_prompt,
        "subject": subject, "body": body, "framework": framework, "tone": tone,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "cost_usd": round(prompt_tokens * 0.15e-6 + completion_tokens * 0.6e-6, 8),
        "latency_ms": round(rng.uniform(400, 2500), 1),
        "metadata": {"industry": lead.industry, "role": lead.role, "company": lead.company,
                     "first_name": lead.first_name, "last_name": lead.last_name,
                     "sender_name": "Jordan", "simulated": True,
                     **({"prompt_template": text.template, "prompt_version": text.template_version}
                        if template is None else {"template_experiment_id": template["template_experiment_id"],
                                                  "template_allocation": template["template_allocation"]}),
                     **({"experiment_id": routed["experiment_id"], "allocation": routed["allocation"]}
                        if routed and routed.get("experiment_id") else {})},
    }
    if model.latency_ms is not None:  # drawn from the message's own text RNG: no other stream moves
        record["latency_ms"] = round(model.latency_ms * random.Random(f"{cfg.seed}:latency:{mid}").uniform(0.6, 1.4), 1)
    if not cfg.record_cost:
        del record["cost_usd"]
    if template is not None:
        record["template_id"], record["template_version"] = template["template_id"], template["template_version"]
    return record, links, text.reply_factor if cfg.text_effects else 1.0


def _routed_model(cfg: SimConfig, routing: dict, lead: Lead, task_type: str) -> tuple[SimModel, dict[str, Any]]:
    from flywheel_pipeline.core.routing import model_for_lead, template_for_lead

    pick = {**model_for_lead(routing, lead.lead_id, lead.organization_id, task_type),
            **template_for_lead(routing, lead.lead_id, lead.organization_id, task_type)}
    known = {m.model_id: m for m in cfg.models}
    if pick["model_id"] in known:
        quality = known[pick["model_id"]].quality
    else:
        quality = SANDBOX_MODEL_QUALITY if pick["model_id"].startswith("sandbox:") else 1.0
    latency = known[pick["model_id"]].latency_ms if pick["model_id"] in known else None
    return SimModel(pick["model_id"], pick["version"] or "1.0.0", quality, 0.0, 0, pick["ab_group"], latency), pick


def _existing_epoch(landing: Path, seed: int) -> date | None:
    prefix = f"sim-{seed}-messages-"
    days = [date.fromisoformat(f.name[len(prefix):-len(".jsonl")])
            for f in landing_zone.list_files(landing, "messages") if f.name.startswith(prefix)]
    return min(days) if days else None


def _file_name(seed: int, source: str, day: date) -> str:
    return f"sim-{seed}-{source}-{day.isoformat()}.jsonl"


def simulate(landing: Path, cfg: SimConfig | None = None) -> SimResult:
    """Write the simulated world's landing files for days [end - days, end)."""
    cfg = cfg or SimConfig()
    end = cfg.end or datetime.now(timezone.utc).date()
    start = end - timedelta(days=cfg.days)
    end_ts = _utc(end)
    epoch = cfg.epoch or _existing_epoch(landing, cfg.seed) or start
    leads = build_leads(cfg)
    by_org: dict[str, list[Lead]] = defaultdict(list)
    for lead in leads:
        by_org[lead.organization_id].append(lead)
    orgs = sorted(by_org)
    # Records are filed by the day they are posted; records posted after `end` are the future.
    posted: dict[str, dict[date, list[tuple[datetime, Any]]]] = {s: defaultdict(list) for s in landing_zone.SOURCES}
    # Only days with a missing file are written; outcomes of a message can land up to ~90 days
    # later, so simulate from well before the first of them (every day's randomness is seeded
    # by its date, so re-simulating a day reproduces it exactly).
    days = [start + timedelta(days=i) for i in range(cfg.days)]
    missing = [d for d in days if any(not (landing / source / _file_name(cfg.seed, source, d)).exists()
                                      for source in landing_zone.SOURCES)]
    history_start = missing[0] - timedelta(days=100) if missing else end
    day = history_start
    while day < end:
        day_index = (day - epoch).days
        rng = random.Random(f"{cfg.seed}:day:{day.isoformat()}")
        for n in range(cfg.messages_per_day):
            lead = rng.choice(by_org[rng.choice(orgs)])
            model = _pick_model(cfg.models, day_index, rng)
            campaign = rng.randrange(3)
            routed = None
            if (routing := cfg.routing_on(day)) is not None:
                model, routed = _routed_model(cfg, routing, lead, "cold_email" if campaign < 2 else "follow_up")
            mid = f"msg-{day.strftime('%Y%m%d')}-{n:05d}"
            sent = _utc(day) + timedelta(seconds=rng.uniform(8 * 3600, 18 * 3600))
            record, links, reply_factor = _message(cfg, lead, model, mid, sent, campaign, rng, routed)
            posted["messages"][day].append((sent, record))
            for source, items in _message_fate(cfg, lead, model, mid, sent, links, reply_factor).items():
                for at, rec in items:
                    if at < end_ts:
                        posted[source][at.date()].append((at, rec))
            for at, rec in _feedback(cfg, lead, model, mid, sent):
                if at < end_ts:
                    posted["feedback"][at.date()].append((at, rec))
        day += timedelta(days=1)

    result = SimResult()
    day = start
    while day < end:
        for source in landing_zone.SOURCES:
            name = _file_name(cfg.seed, source, day)
            target = landing / source / name
            if target.exists():
                result.days_skipped += source == "messages"
                continue
            rng = random.Random(f"{cfg.seed}:file:{name}")
            items = posted[source].get(day, [])
            if source == "sendgrid":  # providers batch and retry: order within a day is not time order
                items = list(items)
                rng.shuffle(items)
            else:
                items = sorted(items, key=lambda x: x[0])
            lines: list[Any] = []
            for _, rec in items:
                if source == "sendgrid" and rng.random() < cfg.malformed_rate:
                    text = json.dumps(rec)
                    lines.append(text[: len(text) // 2])  # a truncated post, as seen in the wild
                    result.malformed_lines += 1
                else:
                    lines.append(rec)
            result.files.append(landing_zone.write_jsonl(landing, source, lines, name=name))
            count = len(lines)
            if source == "messages":
                result.messages += count
                result.days_written += 1
            elif source == "sendgrid":
                result.sendgrid_lines += count
            elif source == "crm":
                result.crm_lines += count
            elif source == "replies":
                result.reply_lines += count
            else:
                result.feedback_lines += count
        day += timedelta(days=1)
    return result
