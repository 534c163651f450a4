"""Chat templates: which one a run uses, rendering samples with it, and where the trained tokens are.

Conversations (alpaca, chat, sharegpt and conversational prompt/completion records) are rendered
with a Jinja chat template, the way ``tokenizer.apply_chat_template`` renders them at serving time:

* the model's own template (``tokenizer.chat_template``) when it has one (``--chat-template auto``);
* otherwise a built-in template, ``chat`` (``<|role|>`` headers) or ``alpaca`` (``### Instruction:`` /
  ``### Response:``, chosen by ``auto`` when every data file is alpaca);
* or a template file (``--chat-template FILE.jinja``).

The template is recorded in the plan (text and sha256) and set on the tokenizer that is saved with
the adapter, so ``apply_chat_template`` on the saved tokenizer reproduces the training text.

The loss covers the assistant messages only. Where the template marks them with
``{% generation %}`` (the built-in ones do), those spans are used; otherwise each assistant message
is located by rendering the conversation up to it with ``add_generation_prompt=True`` and up to its
end, which works for every template whose rendering of a conversation prefix is a prefix of the
rendering of the whole (a :class:`TemplateError` says when a template is not).

This module imports transformers inside the functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .formats import Sample

#: the project's conversation format as a chat template: ``<|role|>`` headers, EOS after each reply
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|tools|>\\n' + (tools | tojson) + '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>' + ({'name': fn['name'], 'arguments': fn['arguments']} | tojson) + '</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: the alpaca prompt format as a chat template (system text first, one instruction/response pair per turn)
ALPACA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'developer'] %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}{{ '\\n\\n' }}"
    "{% else %}{{ '### Input:\\n' + message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
)

BUILTIN = {"chat": CHAT_TEMPLATE, "alpaca": ALPACA_TEMPLATE}
CHOICES = ("auto", "model", "chat", "alpaca")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """A conversation cannot be rendered with the template, or its assistant tokens cannot be located."""


@dataclass
class TemplateSpec:
    """The chat template of a run: where it came from, its text and its sha256."""

    source: str  # "model", "builtin:chat", "builtin:alpaca" or "file:<path>"
    text: str
    sha256: str

    @property
    def has_generation_tags(self) -> bool:
        """Return True when the template marks assistant output with ``{% generation %}``."""
        return bool(_GENERATION.search(self.text))

    def to_dict(self) -> dict[str, Any]:
        """Return the plan's ``chat_template`` entry."""
        return {"source": self.source, "sha256": self.sha256, "text": self.text,
                "masking": "generation-tags" if self.has_generation_tags else "prefix-render"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateSpec:
        """Return the spec stored in a plan."""
        return cls(data["source"], data["text"], data["sha256"])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def choose_template(choice: str | None, model_template: str | None, formats: list[str]) -> TemplateSpec:
    """Return the chat template for ``choice`` (``auto``, ``model``, ``chat``, ``alpaca`` or a file path).

    ``auto`` is the model's template when it has one, else ``alpaca`` when every data file is
    alpaca, else ``chat``. Raises TemplateError for ``model`` without a model template or an
    unreadable file.
    """
    choice = choice or "auto"
    if choice == "model" or (choice == "auto" and model_template):
        if not model_template:
            raise TemplateError("the model's tokenizer has no chat_template")
        return TemplateSpec("model", model_template, _sha(model_template))
    if choice == "auto":
        choice = "alpaca" if formats and all(f == "alpaca" for f in formats) else "chat"
    if choice in BUILTIN:
        return TemplateSpec(f"builtin:{choice}", BUILTIN[choice], _sha(BUILTIN[choice]))
    path = os.path.abspath(choice)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise TemplateError(f"cannot read the chat template {choice}: {exc.strerror}") from None
    if not text.strip():
        raise TemplateError(f"the chat template {choice} is empty")
    return TemplateSpec(f"file:{path}", text, _sha(text))


def _template_messages(messages: list[dict]) -> list[dict]:
    """Return messages as chat templates expect them: tool-call arguments as objects, not JSON text."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = dict(m)
            calls = []
            for call in m["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function", call))
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.loads(fn["arguments"]) if fn["arguments"].strip() else {}
                fn.setdefault("arguments", {})
                if "function" in call:
                    call["function"] = fn
                else:
                    call = {"type": "function", "function": fn}
                calls.append(call)
            m["tool_calls"] = calls
        out.append(m)
    return out


class Renderer:
    """Renders samples with one chat template and returns the character spans the loss covers."""

    def __init__(self, tokenizer: Any, template: TemplateSpec):
        self.tokenizer = tokenizer
        self.template = template
        self.special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        self.bos = tokenizer.bos_token or ""
        self.eos = tokenizer.eos_token or ""
        self._render_jinja: Any = None
        try:
            from transformers.utils.chat_template_utils import render_jinja_template

            self._render_jinja = render_jinja_template
        except ImportError:  # pragma: no cover - older transformers: apply_chat_template(tokenize=False)
            pass

    def _render(self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool = False,
                spans: bool = False) -> tuple[str, list[tuple[int, int]]]:
        try:
            if self._render_jinja is not None:
                out = self._render_jinja(conversations=[messages], tools=tools, chat_template=self.template.text,
                                         return_assistant_tokens_mask=spans, add_generation_prompt=generation_prompt,
                                         **self.special)
                rendered, indices = out
                return rendered[0], [(int(a), int(b)) for a, b in indices[0]] if spans else []
            text = self.tokenizer.apply_chat_template(messages, tools=tools, chat_template=self.template.text,
                                                      tokenize=False, add_generation_prompt=generation_prompt)
            return text, []
        except Exception as exc:  # noqa: BLE001 - jinja raises anything (TemplateError, TypeError, raise_exception)
            raise TemplateError(f"the chat template ({self.template.source}) cannot render this conversation: "
                                f"{type(exc).__name__}: {exc}") from None

    def render(self, sample: Sample) -> tuple[str, list[tuple[int, int]]]:
        """Return the text of ``sample`` and the ``[start, end)`` character spans the loss covers.

        Raises TemplateError when the template cannot render the conversation or the assistant
        messages cannot be located in its output.
        """
        if sample.kind == "text":
            text = self.bos + sample.text + self.eos
            return text, [(len(self.bos), len(text))]
        if sample.kind == "completion":
            start = len(self.bos) + len(sample.prompt)
            text = self.bos + sample.prompt + sample.completion + self.eos
            return text, [(start, len(text))]
        messages = _template_messages(sample.messages)
        assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if self.template.has_generation_tags:
            text, generated = self._render(messages, sample.tools, spans=True)
            if len(generated) == len(assistant):
                return text, [span for span, i in zip(generated, assistant, strict=True) if sample.trained[i]]
        return self._render_by_prefix(messages, sample)

    def _render_by_prefix(self, messages: list[dict], sample: Sample) -> tuple[str, list[tuple[int, int]]]:
        full, _ = self._render(messages, sample.tools)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant" or not sample.trained[i]:
                continue
            before, _ = self._render(messages[:i], sample.tools, generation_prompt=True)
            upto, _ = self._render(messages[: i + 1], sample.tools)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    f"the chat template ({self.template.source}) renders the conversation up to message {i} "
                    "differently from the whole conversation, so the assistant tokens cannot be located; use a "
                    "template with {% generation %} tags (--chat-template FILE)")
            end = len(upto)
            while end > len(before) and upto[end - 1].isspace():
                end -= 1  # the newline a template puts between turns is not part of the reply
            if end > len(before):
                spans.append((len(before), end))
        return full, spans


def tokenize_rendered(tokenizer: Any, texts: list[str], spans: list[list[tuple[int, int]]],
                      seq_len: int) -> list[tuple[list[int], list[int]] | None]:
    """Return ``(input_ids, labels)`` per text (labels -100 outside ``spans``), truncated to ``seq_len``.

    The texts are tokenized in one batch without adding special tokens (the template wrote them). A
    token is trained when it starts inside a span. Returns None for an example left without any
    trained token after truncation.
    """
    from .data import IGNORE_INDEX

    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out: list[tuple[list[int], list[int]] | None] = []
    for ids, offsets, regions in zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True):
        ids = list(ids[:seq_len])
        labels = [IGNORE_INDEX] * len(ids)
        if regions:
            r = 0
            for t, (start, end) in enumerate(offsets[: len(ids)]):
                while r < len(regions) and regions[r][1] <= start:
                    r += 1
                if r == len(regions):
                    break
                if regions[r][0] <= start < regions[r][1] and end > start:
                    labels[t] = ids[t]
        out.append((ids, labels) if any(label != IGNORE_INDEX for label in labels) else None)
    return out
