"""Getting a model's answer to a prompt, for offline evaluation.

* :class:`OpenAICompatibleGenerator`: chat completions through the ``openai`` SDK against
  OpenAI or any OpenAI-compatible host (Together, vLLM, a local server).
* :class:`SandboxGenerator`: the SANDBOX stand-in used by the demo and tests, where no model
  can be called. A ``sandbox:`` model answers with the training example (from the file it
  was fine-tuned on) whose prompt is closest to the question, so its answers reflect its
  training data; any other model id answers with one fixed, generic template. Every answer
  it gives is labelled as coming from the sandbox in the evaluation metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

_WORD = re.compile(r"\w+")

GENERIC_ANSWER = ("Subject: Quick question\n\nHello,\n\nWe offer a FREE analytics platform with GUARANTEED "
                  "results. Act now!! Our product is used by many companies around the world and has many "
                  "features that help teams do many things better every single day.\n\nRegards")


class Generator(Protocol):
    name: str

    def generate(self, model_id: str, messages: list[dict]) -> str: ...


class OpenAICompatibleGenerator:
    name = "openai-compatible"

    def __init__(self, api_key: str, base_url: str | None = None, *, temperature: float = 0.0,
                 max_tokens: int = 600):
        import openai

        self.client = openai.OpenAI(api_key=api_key, base_url=base_url)
        self.temperature, self.max_tokens = temperature, max_tokens

    def generate(self, model_id: str, messages: list[dict]) -> str:
        response = self.client.chat.completions.create(model=model_id, messages=messages,
                                                       temperature=self.temperature, max_tokens=self.max_tokens)
        return response.choices[0].message.content or ""


class SandboxGenerator:
    name = "sandbox"

    def __init__(self, training_files: dict[str, Path] | None = None):
        self._memory: dict[str, list[tuple[set[str], str]]] = {}
        for model_id, path in (training_files or {}).items():
            self.remember(model_id, path)

    def remember(self, model_id: str, train_file: Path) -> None:
        rows = []
        with open(train_file, encoding="utf-8") as fh:
            for line in fh:
                example = json.loads(line)
                if "messages" in example:  # chat (SFT)
                    messages = example["messages"]
                    answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
                else:  # preference (DPO): the preferred output is what the model learned to prefer
                    messages = example["input"]["messages"]
                    answer = example["preferred_output"][0]["content"]
                prompt = " ".join(m["content"] for m in messages if m["role"] != "assistant")
                rows.append((set(_WORD.findall(prompt.lower())), answer))
        self._memory[model_id] = rows

    def generate(self, model_id: str, messages: list[dict]) -> str:
        memory = self._memory.get(model_id)
        if not memory:
            return GENERIC_ANSWER
        words = set(_WORD.findall(" ".join(m["content"] for m in messages).lower()))
        return max(memory, key=lambda row: (len(row[0] & words), -len(row[1])))[1]
