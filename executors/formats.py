"""Record formats: detection, validation and normalisation to one conversation shape.

Five formats, detected from a record's keys or declared with ``--data-format``:

* ``alpaca``: ``instruction``, optional ``input``, ``output`` (or ``response``)
* ``chat``: OpenAI ``messages`` (roles system/developer/user/assistant/tool; assistant ``tool_calls``;
  a record-level ``tools`` list; an assistant message with ``"weight": 0`` is context, not trained)
* ``sharegpt``: ``conversations`` of ``{"from": human|gpt|system|function_call|observation, "value"}``,
  optional record-level ``system`` and ``tools``
* ``prompt_completion``: ``prompt`` and ``completion``, both strings (raw text, loss on the completion) or both
  message lists (conversational: loss on the completion's assistant messages only), as in TRL
* ``text``: ``text`` (raw text, loss on everything)

Any record may carry ``task`` (multi-task data). :func:`check_record` returns every problem of a
record; :func:`to_sample` turns a valid record into a :class:`Sample`, the one shape the tokenizer
sees. This module imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text")
FORMAT_ALIASES = {"messages": "chat", "openai": "chat", "conversations": "sharegpt", "completion": "prompt_completion"}
ROLES = ("system", "developer", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "function_call": "assistant", "observation": "tool",
                  "tool": "tool", "function": "tool"}
#: the key that identifies each format (a record with keys of two formats is ambiguous)
FORMAT_KEYS = (("alpaca", "instruction"), ("chat", "messages"), ("sharegpt", "conversations"),
               ("prompt_completion", "completion"), ("text", "text"))


@dataclass
class Sample:
    """One training example in the shape the tokenizer sees.

    ``kind`` is ``chat`` (``messages`` + ``tools`` + ``trained``: one flag per message, True for
    assistant messages whose tokens the loss covers), ``completion`` (``prompt`` + ``completion``,
    raw text) or ``text``.
    """

    kind: str
    messages: list[dict] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    tools: list[dict] | None = None
    prompt: str = ""
    completion: str = ""
    text: str = ""


def canonical_format(name: str | None) -> str | None:
    """Return the format name for ``name`` (aliases such as ``messages`` -> ``chat``); None stays None."""
    if name is None or name == "auto":
        return None
    return FORMAT_ALIASES.get(name, name)


def detect_format(record: dict) -> str | None:
    """Return the format a record's keys indicate, or None when none or several formats match."""
    found = [fmt for fmt, key in FORMAT_KEYS if key in record]
    if found == ["prompt_completion"] or (found == [] and "prompt" in record):
        return "prompt_completion"
    return found[0] if len(found) == 1 else None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _maybe_json(value: Any) -> Any:
    """Return a JSON string decoded (CSV/Parquet columns often hold nested data as JSON text)."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def strip_nulls(value: Any) -> Any:
    """Return ``value`` with null-valued keys removed from every nested dict.

    Arrow-backed loaders (CSV, Parquet, datasets) give every record every column, with nulls where a
    record had none; a chat template that tests ``message.tool_calls is defined`` would see them.
    """
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def normalize_record(record: dict) -> dict:
    """Return ``record`` with nulls dropped and JSON-text columns (messages, conversations, tools) decoded."""
    out = strip_nulls(record)
    for key in ("messages", "conversations", "tools", "prompt", "completion"):
        if key in out:
            out[key] = _maybe_json(out[key]) if key in ("messages", "conversations", "tools") else out[key]
    if isinstance(out.get("prompt"), str) and out["prompt"].strip()[:1] == "[":
        decoded = _maybe_json(out["prompt"])
        if isinstance(decoded, list):
            out["prompt"] = decoded
            out["completion"] = _maybe_json(out.get("completion"))
    return out


def _tool_call_problems(calls: Any, where: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not isinstance(calls, list) or not calls:
        return [("data-bad-type", f"{where}.tool_calls must be a non-empty list")]
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not _nonempty_str(fn.get("name")):
            problems.append(("data-bad-tool-call", f"{where}.tool_calls[{j}] needs function.name"))
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                problems.append(("data-bad-tool-call", f"{where}.tool_calls[{j}].function.arguments is not valid "
                                 f"JSON: {exc.msg}"))
                continue
        if not isinstance(args, dict):
            problems.append(("data-bad-tool-call", f"{where}.tool_calls[{j}].function.arguments must be an object"))
    return problems


def _message_problems(messages: Any, field_name: str, need_assistant: bool = True) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not isinstance(messages, list) or not messages:
        return [("data-bad-type", f"`{field_name}` must be a non-empty list of {{role, content}}")]
    for i, msg in enumerate(messages):
        where = f"{field_name}[{i}]"
        if not isinstance(msg, dict):
            problems.append(("data-bad-type", f"{where} must be an object with role and content"))
            continue
        role = msg.get("role")
        if role not in ROLES:
            problems.append(("data-bad-role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}"))
            continue
        if role == "assistant" and msg.get("tool_calls") is not None:
            problems.extend(_tool_call_problems(msg["tool_calls"], where))
            if msg.get("content") is not None and not isinstance(msg.get("content"), str):
                problems.append(("data-bad-type", f"{where}.content must be a string"))
        elif not _nonempty_str(msg.get("content")):
            problems.append(("data-empty-field", f"{where}.content is empty or not a string"))
        if "weight" in msg and msg["weight"] not in (0, 1):
            problems.append(("data-bad-weight", f"{where}.weight must be 0 or 1"))
    if need_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) != 0
                                  for m in messages):
        problems.append(("data-no-response", "no trained assistant message: nothing to learn from this conversation"))
    return problems


def _tools_problems(tools: Any) -> list[tuple[str, str]]:
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return [("data-bad-type", "`tools` must be a list of tool (function) schemas")]
    return []


def sharegpt_messages(record: dict) -> list[dict]:
    """Return the OpenAI-style messages of a ShareGPT record (``from``/``value`` turns, optional ``system``).

    ``function_call`` turns become assistant messages with ``tool_calls`` (their value is the JSON
    call, ``{"name", "arguments"}`` or a list of them); ``observation`` turns become tool messages.
    """
    out: list[dict] = []
    if _nonempty_str(record.get("system")):
        out.append({"role": "system", "content": record["system"]})
    for turn in record["conversations"]:
        speaker = turn.get("from")
        role = SHAREGPT_ROLES[speaker]
        if speaker == "function_call":
            call = json.loads(turn["value"]) if isinstance(turn["value"], str) else turn["value"]
            calls = call if isinstance(call, list) else [call]
            out.append({"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                for c in calls]})
        else:
            out.append({"role": role, "content": turn["value"]})
    return out


def _sharegpt_problems(record: dict) -> list[tuple[str, str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [("data-bad-type", "`conversations` must be a non-empty list of {from, value}")]
    problems: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(("data-bad-type", f"{where} must be an object with from and value"))
            continue
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            problems.append(("data-bad-role", f"{where}.from is {speaker!r}; expected one of "
                             + ", ".join(SHAREGPT_ROLES)))
            continue
        value = turn.get("value")
        if speaker == "function_call":
            try:
                call = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as exc:
                problems.append(("data-bad-tool-call", f"{where}.value is not a JSON function call: {exc.msg}"))
                continue
            calls = call if isinstance(call, list) else [call]
            if not all(isinstance(c, dict) and _nonempty_str(c.get("name")) for c in calls):
                problems.append(("data-bad-tool-call", f"{where}.value needs a function `name`"))
        elif not _nonempty_str(value):
            problems.append(("data-empty-field", f"{where}.value is empty or not a string"))
    if not any(isinstance(t, dict) and SHAREGPT_ROLES.get(str(t.get("from"))) == "assistant" for t in turns):
        problems.append(("data-no-response", "no gpt/assistant turn: nothing to learn from this conversation"))
    return problems


def check_record(record: dict, fmt: str) -> list[tuple[str, str]]:
    """Return the ``(code, message)`` problems of ``record`` read as format ``fmt`` (empty when valid)."""
    problems: list[tuple[str, str]] = []
    if fmt == "alpaca":
        if "instruction" not in record:
            problems.append(("data-missing-field", "missing field `instruction` (alpaca format)"))
        elif not _nonempty_str(record["instruction"]):
            problems.append(("data-empty-field", "`instruction` is empty or not a string"))
        if "input" in record and not isinstance(record["input"], str):
            problems.append(("data-bad-type", "`input` must be a string"))
        answer = "output" if "output" in record else "response" if "response" in record else None
        if answer is None:
            problems.append(("data-missing-field", "missing field `output` (or `response`) (alpaca format)"))
        elif not _nonempty_str(record[answer]):
            problems.append(("data-empty-field", f"`{answer}` is empty or not a string"))
    elif fmt == "chat":
        if "messages" not in record:
            problems.append(("data-missing-field", "missing field `messages` (chat format)"))
        else:
            problems.extend(_message_problems(record["messages"], "messages"))
        problems.extend(_tools_problems(record.get("tools")))
    elif fmt == "sharegpt":
        if "conversations" not in record:
            problems.append(("data-missing-field", "missing field `conversations` (sharegpt format)"))
        else:
            problems.extend(_sharegpt_problems(record))
        problems.extend(_tools_problems(record.get("tools")))
    elif fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if "prompt" not in record or "completion" not in record:
            missing = "prompt" if "prompt" not in record else "completion"
            problems.append(("data-missing-field", f"missing field `{missing}` (prompt_completion format)"))
        elif isinstance(prompt, list) or isinstance(completion, list):
            if not (isinstance(prompt, list) and isinstance(completion, list)):
                problems.append(("data-bad-type", "`prompt` and `completion` must both be strings or both be "
                                 "message lists"))
            else:
                problems.extend(_message_problems(prompt, "prompt", need_assistant=False))
                problems.extend(_message_problems(completion, "completion"))
        else:
            if not isinstance(prompt, str):
                problems.append(("data-bad-type", "`prompt` must be a string"))
            if not _nonempty_str(completion):
                problems.append(("data-empty-field", "`completion` is empty or not a string"))
        problems.extend(_tools_problems(record.get("tools")))
    elif fmt == "text":
        if "text" not in record:
            problems.append(("data-missing-field", "missing field `text` (text format)"))
        elif not _nonempty_str(record["text"]):
            problems.append(("data-empty-field", "`text` is empty or not a string"))
    if "task" in record and not _nonempty_str(record["task"]):
        problems.append(("data-bad-task", "`task` must be a non-empty string"))
    return problems


def _trained_flags(messages: list[dict], trainable: bool = True) -> list[bool]:
    return [trainable and m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages]


def _clean(messages: list[dict]) -> list[dict]:
    """Return the messages without the training-only ``weight`` key."""
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def to_sample(record: dict, fmt: str) -> Sample:
    """Return the :class:`Sample` of a valid record (check it with :func:`check_record` first).

    Alpaca records become a user turn (instruction, then the input after a blank line) and an
    assistant turn, so they are rendered by the same chat template as conversations.
    """
    if fmt == "alpaca":
        user = record["instruction"]
        if _nonempty_str(record.get("input")):
            user = f"{user}\n\n{record['input']}"
        answer = record["output"] if "output" in record else record["response"]
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return Sample("chat", messages, [False, True])
    if fmt in ("chat", "sharegpt"):
        raw = record["messages"] if fmt == "chat" else sharegpt_messages(record)
        return Sample("chat", _clean(raw), _trained_flags(raw), record.get("tools"))
    if fmt == "prompt_completion":
        if isinstance(record["prompt"], list):
            prompt, completion = record["prompt"], record["completion"]
            return Sample("chat", _clean(prompt + completion),
                          _trained_flags(prompt, False) + _trained_flags(completion), record.get("tools"))
        return Sample("completion", prompt=record["prompt"], completion=record["completion"])
    return Sample("text", text=record["text"])
