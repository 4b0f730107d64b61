"""Cues in a reply's own words: named patterns (an offered time, a request for material, a
refusal, a deferral, a contrast after warm words, a condition, an opt-out, someone who left,
an out-of-office notice, sarcasm) and the word features around them, with negation marked.

These are the features of the offline ``cue_model`` classifier (core/reply_cue_model.py):
the linear model weighs them, so no single keyword decides a reply (the first-match rules of
``rule_based`` call "Would love to, but our contract runs until 2028." positive). Cues cover
English and the common phrasings in German, French, Spanish, Dutch, Portuguese and Italian.
Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata

# Bump when cues or features change: it is part of the classifier's version, so stored
# intents are re-classified (warehouse/reply_intents.py).
FEATURES_VERSION = "1"

_DAYS = (r"mon(day)?|tue(s(day)?)?|wed(nesday)?|thu(rs(day)?)?|fri(day)?|sat(urday)?|sun(day)?|"
         r"montag|dienstag|mittwoch|donnerstag|freitag|lundi|mardi|mercredi|jeudi|vendredi|lunes|martes|"
         r"miércoles|jueves|viernes|maandag|dinsdag|woensdag|donderdag|vrijdag|segunda|terça|quarta|"
         r"quinta|sexta(-feira)?|lunedì|martedì|mercoledì|giovedì|venerdì")
_MONTHS = (r"jan(uary)?|feb(ruary)?|march|apr(il)?|may|june|july|aug(ust)?|sep(t(ember)?)?|oct(ober)?|"
           r"nov(ember)?|dec(ember)?|januar|februar|märz|juni|juli|oktober|dezember|janvier|février|mars|"
           r"avril|mai|juin|juillet|août|septembre|octobre|novembre|décembre|enero|febrero|marzo|abril|"
           r"mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre")

# Patterns are lower-case and matched against the lower-cased text (faster than IGNORECASE).
CUES: dict[str, re.Pattern[str]] = {name: re.compile(pattern) for name, pattern in {
    # a concrete time or day offered
    "offers_time": rf"\b({_DAYS})\b|\b\d{{1,2}}(:\d\d)?\s?(am|pm|uhr|h)\b|\b\d{{1,2}}[:.]\d\d\b|"
                   r"\b(tomorrow|today|tonight|morgen|demain|mañana|morgen)\b|\bthe \d{1,2}(st|nd|rd|th)\b|"
                   r"\b(this|next) week\b|\bweek of\b|\b(nächste|volgende) woche|\bvolgende week\b|"
                   r"\b(any ?time|afternoons?|mornings?)\b|\bslot\b",
    "meeting_word": r"\b(call|meet(ing)?|demo|chat|talk|calendar|invite|zoom|teams link|walkthrough|"
                    r"book(ing)?|schedule|appointment|telefonieren|termin|appel|rendez-vous|llamada|hablemos|"
                    r"reunión|afspraak|chamada|reunião|chiamata|jump on|hop on|sit down|availability|available|free|"
                    r"when (can|could|are|shall) (you|we)|show (it|me|us))\b",
    "send_request": r"\b(send|share|forward me|email me|mail me|shoot me|schick\w*|envoy\w*|mand\w*|"
                    r"stuur|enviar|manda)\b",
    "material": r"\b(pric(e|es|ing)|quote|deck|info(rmation|rmationen)?|details|case stud(y|ies)|proposal|"
                r"trial|pilot|docs|documentation|one-pager|sandbox|contract|terms|roi|references?|video|"
                r"sample|beta|tarifs|precios|preços|presentazione|informatie|unterlagen|documentation)\b",
    "interest_word": r"\b(interested|interesting|intrigued|curious|keen|relevant|promising|useful|"
                     r"love (to|it)|like to|want to (see|try|understand)|need this|count me in|sign me up|"
                     r"i'?m in|i'?ll bite|you'?ve got my attention|timely|great timing|right moment|"
                     r"interessiert|interessant|intéress\w+|me interesa|interessante|klinkt goed|tell me (more|how)|"
                     r"(learn|know|hear) more|now is a good time|glad to review)\b",
    "affirmative_start": r"^\W*(yes|yep|yeah|sure|absolutely|definitely|of course|ok(ay)?|certainly|"
                         r"great|perfect|fine|ja|oui|sí|si|claro|sim|gerne|graag|works for me|sounds good|"
                         r"go ahead|go on|happy to|let'?s)\b",
    "bare_yes": r"^\W*(yes|yep|yeah|sure|absolutely|definitely|ok(ay)?|of course|why not)\W*"
                r"(please|thanks|thank you|go ahead)?\W*$",
    "rhetorical_no": r"\?\s*(no|nope|nah)\b",
    "accepts": r"\b(works for me|is perfect|sounds good|i accepted|accepted|see you then|talk (then|thursday|"
               r"tomorrow)|your pick|i'?ll take)\b",
    "refusal": r"\b(not interested|no interest|not for us|no thanks|no,? thank you|thanks,? but no|"
               r"(we'?ll|i'?ll|will) pass|hard pass|decline|not a fit|isn'?t a fit|not (something|anything) "
               r"we|won'?t be (moving|pursuing|investing)|not (be )?pursu|not relevant|wouldn'?t apply|"
               r"don'?t need|no need|not looking|answer is (still )?no|a no from|say no|rather not|"
               r"not useful|kein interesse|ne nous intéresse pas|no nos interesa|geen interesse|"
               r"não temos interesse|non siamo interessati|non merci|^\W*(no|nope|pass)\W*$)",
    "already_have": r"\b(already (use|have|tried|signed|committed)|happy with (our|what)|stick(ing)? with|"
                    r"all set|fully covered|in-house|we'?re good|we have (that|one)|locked in|committed "
                    r"(elsewhere|to))\b",
    "deferral": r"\b(until|till|through|in) (20\d\d|end of)\b|\b(runs|contract ends)\b|"
                rf"\b(next|this coming) (quarter|year|month|spring|summer|autumn|fall|winter|fiscal)\b|"
                r"\bq[1-4]\b|\bh[12]\b|\b(after|until|before) (the|our|christmas|new year|then)\b|"
                rf"\b(in|after|around|until|before) ({_MONTHS})\b|\b(circle|check|get) back\b|"
                r"\b(follow up|reach out|ping me|try (me|again)|drop me a line|remind me)\b.{0,30}"
                r"\b(in|after|then|later|next|when|around)\b|"
                r"\b(later|not (right )?now|not at the moment|not this (year|quarter)|not before|"
                r"down the line|wrong moment|bad timing|timing'?s off|budget|freeze|frozen|bandwidth|"
                r"too (busy|early)|swamped|revisit|reassess|on hold|keep (me|in) (posted|touch|on your list))\b|"
                r"\b(nächsten quartal|aktuell|pour le moment|en septembre|ahora no|después|op dit moment|"
                r"later dit jaar|agora não|próximo trimestre)\b",
    "contrast": r"\b(but|however|although|though|unfortunately|sadly|aber|leider|mais|pero|maar|mas|ma)\b",
    "conditional": r"\b(if|assuming|provided|as long as|only if|unless|wenn|falls|si|se|als)\b",
    "opt_out": r"\b(unsubscribe|remove (me|my|this|us|our)|take me off|(stop|quit) (emailing|sending|"
               r"contacting|writing)|opt (me )?out|do not (contact|email)|don'?t (contact|email)|"
               r"no more emails|delete my|cease|please stop|off (your|whatever|this) list|update your records|"
               r"aus ihrem verteiler|retirer de|elimíname|uitschrijven|rimuovetemi)\b|^\W*(stop|remove)\W*$",
    "left_or_wrong": r"\b(no longer (with|at|works|work|manages|there)|i left|has left|left (the|us|in|acme)|"
                     r"wrong (person|email|address|company|department)?|retired|moved to a new|changed jobs|"
                     r"let go|haven'?t worked|not there anymore|i'?m (a|an|the) (intern|student|receptionist|"
                     r"contractor)|confused with someone|not responsible for|don'?t work in|not (in )?sales|"
                     r"(i|he|she|they) (left|quit)|i'?m in (hr|finance|it|legal|accounting|engineering)|"
                     r"persona indicada|not my (area|department)|"
                     r"nicht mehr bei|ne travaille plus|ya no trabajo|no longer exists|late husband|"
                     r"have no say|no say in)\b",
    "points_elsewhere": r"[\w.+-]+@[\w-]+\.[\w.]+|\b(cc|cc'?d|cc'?ing|copying|copied|looping in|loop in|"
                        r"forward(ing|ed)?|passed|pass(ing)? (this|it|your)|sent this on|connect you|"
                        r"reach out to|contact|talk to|speak to|email \w+ instead|right person|best person|"
                        r"best bet|direct this|better luck|the one to ask|over to you|decides?|you want \w+|"
                        r"sending this (over|on)|"
                        r"wenden sie sich|contactez|escríbele)\b|^\s*\+\w",
    "away_notice": r"\b(out of (the )?office|ooo|on (annual |parental |sick )?leave|vacation|holidays?|away|"
                   r"back on|return(ing)? on|upon my return|limited (access|connectivity)|automat(ed|ic)|"
                   r"do not reply|not monitored|ticket|business days|offsite|sabbatical|trade show|"
                   r"will (respond|reply|get back)|responses may take|working day|closed|inbox rules|delayed|"
                   r"nicht im büro|absent|fuera de la oficina|afwezig|férias|fuori ufficio)\b",
    "sarcasm_or_abuse": r"\b(spam\w*|report(ed|ing)?|harassment|said no one|lol|wow|oh (great|sure)|"
                        r"seriously|joking|chatgpt|bot|embarrassing|generic|nice try|root canal|lose my|"
                        r"legal|complaint|phishing|impressive|yeah,? right|bold of you|fascinating|"
                        r"laugh|permission|scrape\w*|another day|revolutionary|it didn'?t|please\.$)\b|"
                        r"\bnot\.\s*$|'[^']{3,40}'",
    "question_mark": r"\?",
    "wh_question": r"^\W*(how|what|who|where|which|why|is|are|do|does|did|can you (tell|clarify)|"
                   r"(hi|hello),? can you tell|"
                   r"wie|was|c'est quoi|¿)\b",
}.items()}

_NEGATORS = {"not", "no", "never", "don't", "dont", "won't", "wont", "can't", "cant", "isn't", "aren't",
             "wouldn't", "nothing", "nicht", "kein", "keine", "pas", "nunca", "niet", "geen", "não", "non"}
_NEGATION_WINDOW = 3
_TOKEN = re.compile(r"[a-z0-9à-ÿ']+|[?!]", re.IGNORECASE)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower().replace("’", "'").replace("‘", "'")
    return re.sub(r"\d", "0", text)


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; up to three words after a negator carry a ``not_`` prefix."""
    out: list[str] = []
    negated = 0
    for token in _TOKEN.findall(_normalise(text)):
        if token in _NEGATORS:
            out.append(token)
            negated = _NEGATION_WINDOW
            continue
        if token in ("?", "!"):
            negated = 0
            out.append(token)
            continue
        out.append(f"not_{token}" if negated else token)
        negated = max(0, negated - 1)
    return out


def cues(text: str) -> list[str]:
    """Names of the cues found in ``text`` (a reply's own words)."""
    lowered = text.lower().replace("’", "'")
    found = [name for name, pattern in CUES.items() if pattern.search(lowered)]
    # a warm opening followed by a contrast ("Would love to, but ...") is not a yes
    if "contrast" in found and ("interest_word" in found or "affirmative_start" in found):
        found.append("warm_then_contrast")
    return found


def features(text: str) -> list[str]:
    """The classifier's features: word unigrams and bigrams, the cues, the cue pairs that
    change meaning together, and the reply's length band."""
    words = tokens(text)
    found = cues(text)
    out = [f"w:{w}" for w in words]
    out += [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
    out += [f"cue:{name}" for name in found]
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            out.append(f"pair:{a}+{b}")
    n = len(words)
    out.append("len:empty" if n == 0 else "len:1-3" if n <= 3 else "len:4-12" if n <= 12
               else "len:13-40" if n <= 40 else "len:41+")
    return out
