"""Token counting with the encoding the target model uses, offline.

The encoding follows the model family: ``o200k_base`` for gpt-4o, gpt-4.1, gpt-5 and the o-series,
``cl100k_base`` for gpt-4 and gpt-3.5; a fine-tuned id (``ft:<base>:...``) uses its base.
Counts are exact through ``bpe-openai``, whose wheels ship the BPE ranks (so no download is
needed, unlike ``tiktoken``). Where it is not installed, a documented approximation is used
and reported as such: one token per 4 UTF-8 bytes, rounded up, never less than the number of
words and punctuation marks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")

# Chat-format overheads, as OpenAI's chat fine-tuning data-prep guide counts them.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def base_model(model: str) -> str:
    """``ft:gpt-4o-mini-2024-07-18:org::id`` -> ``gpt-4o-mini-2024-07-18``; ``sandbox:`` ids too."""
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def encoding_name_for_model(model: str) -> str:
    name = base_model(model).lower()
    if name.startswith(O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"  # current OpenAI-style models; documented default


@dataclass(frozen=True)
class TokenCounter:
    encoding_name: str
    exact: bool

    def count(self, text: str | None) -> int:
        if not text:
            return 0
        encoding = _encoding(self.encoding_name) if self.exact else None
        if encoding is not None:
            return len(encoding.encode(text))
        return approximate_tokens(text)

    @property
    def method(self) -> str:
        return f"{self.encoding_name} (exact, bpe-openai)" if self.exact else \
            f"approximation of {self.encoding_name}: max(ceil(bytes/4), words+punctuation)"


def approximate_tokens(text: str) -> int:
    return max(math.ceil(len(text.encode("utf-8")) / 4), len(_WORDS.findall(text)))


@lru_cache(maxsize=None)
def _encoding(name: str):
    try:
        import bpe_openai
    except ImportError:
        return None
    try:
        return bpe_openai.get_encoding(name)
    except Exception:  # noqa: BLE001 - an unusable tokenizer means: fall back, reported as such
        return None


def counter_for_model(model: str) -> TokenCounter:
    name = encoding_name_for_model(model)
    return TokenCounter(name, exact=_encoding(name) is not None)


def count_chat_tokens(counter: TokenCounter, messages: list[dict]) -> int:
    """Tokens of a chat example as the data-prep guide counts them (per-message overhead,
    names, reply priming). Tool calls count their JSON arguments and function names."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "weight":
                continue
            if key == "tool_calls" and isinstance(value, list):
                for call in value:
                    fn = call.get("function", {}) if isinstance(call, dict) else {}
                    total += counter.count(str(fn.get("name", ""))) + counter.count(str(fn.get("arguments", "")))
            elif isinstance(value, str):
                total += counter.count(value)
            if key == "name":
                total += TOKENS_PER_NAME
    return total
