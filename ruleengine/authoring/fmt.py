"""`decide fmt`: put the keys of policy files in canonical order, changing nothing else.

Keys are reordered where the language fixes an order (``CANONICAL``: sections, rule fields,
comparisons, thresholds, GPU entries, use-case rows, verdicts, messages, method defaults); keys it
does not know keep their order after the known ones, and lists are never reordered. Everything
else is kept byte for byte: comments, blank lines, quoting, flow or block style, line breaks. A
pair moves with the comment lines directly above it and a comment at the end of its last line.

Written on PyYAML's node positions rather than a round-trip YAML library: the text between keys is
copied, never re-emitted, so the only possible change is the order. Every result is parsed again
and must hold the same data in the canonical order, or the file is left alone (``fmt-unsafe``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..diagnostics import Diagnostic, DiagnosticError, Location

TOP = ("language", "name", "version", "owner", "description", "include", "settings", "memory", "cost", "gpus",
       "thresholds", "defaults", "use_cases", "rules")
RULE = ("id", "kind", "priority", "when", "then", "waives", "warn", "note", "rationale", "source")
VERDICT = ("use_case", "method", "rank", "alpha", "dropout", "target_modules", "num_virtual_tokens", "adapter_size",
           "training")
TRAINING = ("learning_rate", "precision", "optimizer", "micro_batch_size", "max_micro_batch_size", "auto_headroom_gb",
            "seq_len", "gradient_checkpointing", "sharding", "lr_scheduler", "warmup_ratio", "epochs",
            "effective_batch_size", "layerwise_lr_decay")
METHOD_DEFAULTS = ("rank", "init_rank", "alpha_per_rank", "dropout", "target_modules", "num_virtual_tokens",
                   "adapter_size", "quantization", "training", "why_not")
# (path pattern, key order); "*" matches any key or index, "**" any number of them
CANONICAL: list[tuple[tuple, tuple]] = [
    ((), TOP),
    (("settings",), ("rank_power_of_two", "rank_min", "rank_max", "major_flip_percent")),
    (("gpus", "*"), ("memory_gb", "bf16", "fp8", "tflops", "price_per_hour", "label", "aliases", "source")),
    (("thresholds", "*"), ("value", "unit", "description", "source")),
    (("defaults",), ("facts", "training", "methods", "multitask")),
    (("defaults", "training"), TRAINING),
    (("defaults", "methods", "*"), METHOD_DEFAULTS),
    (("defaults", "methods", "*", "training"), TRAINING),
    (("defaults", "methods", "*", "quantization"), ("bits", "quant_type", "double_quant", "compute_dtype")),
    (("use_cases", "*"), ("label", "method", "rank", "alpha", "target_modules", "num_virtual_tokens", "shift", "notes",
                          "source")),
    (("rules", "*"), RULE),
    (("rules", "*", "then"), VERDICT),
    (("rules", "*", "then", "training"), TRAINING),
    (("rules", "*", "warn", "*"), ("code", "message")),
    (("rules", "*", "note", "*"), ("code", "message")),
    (("rules", "*", "when", "**"), ("fact", "op", "value")),
]


def order_for(path: tuple) -> tuple | None:
    """Return the canonical key order of the mapping at ``path`` in a policy file, or None (keep its order)."""
    for pattern, order in CANONICAL:
        if _match(pattern, path):
            return order
    return None


def _match(pattern: tuple, path: tuple) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_match(pattern[1:], path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    return (pattern[0] == "*" or pattern[0] == path[0]) and _match(pattern[1:], path[1:])


@dataclass
class FormatResult:
    """One file: its text before and after, and why it was left alone (``error``)."""

    path: str
    before: str
    after: str
    error: Diagnostic | None = None

    @property
    def changed(self) -> bool:
        """Return True when formatting changes the file."""
        return self.error is None and self.before != self.after

    def diff(self) -> str:
        """Return a unified diff of the change ('' when there is none)."""
        return "".join(difflib.unified_diff(self.before.splitlines(True), self.after.splitlines(True),
                                            f"a/{self.path}", f"b/{self.path}"))


class _Formatter:
    def __init__(self, text: str):
        self.src = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def _line(self, index: int) -> int:
        lo, hi = 0, len(self.line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def end(self, node: yaml.Node) -> int:
        """Return where the node's content ends: trailing blank lines excluded, a comment ending the last line of a
        block collection included (it moves with the collection's last pair)."""
        if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
            return self._trailing_comment(self.end(node.value[-1][1]))
        if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
            return self._trailing_comment(self.end(node.value[-1]))
        start, stop = node.start_mark.index, node.end_mark.index
        return start + len(self.src[start:stop].rstrip())

    def render(self, node: yaml.Node, path: tuple) -> str:
        """Return the source of ``node`` (start to ``end``) with its mappings in canonical order."""
        start, stop = node.start_mark.index, self.end(node)
        if isinstance(node, yaml.SequenceNode):
            return self._splice(start, stop, [(c, path + (i,)) for i, c in enumerate(node.value)])
        if not isinstance(node, yaml.MappingNode):
            return self.src[start:stop]
        pairs = node.value
        keys = [k.value if isinstance(k, yaml.ScalarNode) else None for k, _ in pairs]
        chunks: list[tuple[int, int, str]] = []
        for i, (k, v) in enumerate(pairs):
            chunk_start = k.start_mark.index if i == 0 or node.flow_style else self._comments_above(k)
            chunk_end = self.end(v) if node.flow_style else self._trailing_comment(self.end(v))
            text = self._splice(chunk_start, chunk_end, [(k, path), (v, path + (keys[i],))])
            chunks.append((chunk_start, chunk_end, text))
        order = order_for(path)
        permutation = list(range(len(pairs)))
        if order is not None and None not in keys:
            known = {name: n for n, name in enumerate(order)}
            permutation.sort(key=lambda i: (known.get(keys[i], len(order)), i))
        out = [self.src[start:chunks[0][0]]]
        for slot, i in enumerate(permutation):
            out.append(chunks[i][2])
            if slot + 1 < len(chunks):
                out.append(self.src[chunks[slot][1]:chunks[slot + 1][0]])
        out.append(self.src[chunks[-1][1]:stop])
        return "".join(out)

    def _splice(self, start: int, stop: int, children: list[tuple[yaml.Node, tuple]]) -> str:
        out, pos = [], start
        for child, path in children:
            c0 = child.start_mark.index
            if c0 < pos:  # e.g. an empty value positioned before its key's end
                continue
            out.append(self.src[pos:c0])
            out.append(self.render(child, path))
            pos = self.end(child)
        out.append(self.src[pos:stop])
        return "".join(out)

    def _comments_above(self, key: yaml.Node) -> int:
        """Return where the run of whole-line comments directly above ``key`` starts (its first ``#``)."""
        line = key.start_mark.line
        start = key.start_mark.index
        while line > 0:
            text = self.src[self.line_starts[line - 1]:self.line_starts[line]]
            if not text.strip().startswith("#"):
                break
            line -= 1
            start = self.line_starts[line] + (len(text) - len(text.lstrip()))
        return start

    def _trailing_comment(self, index: int) -> int:
        """Extend ``index`` to the end of its line when only a comment follows on it."""
        line_end = self.src.find("\n", index)
        line_end = len(self.src) if line_end < 0 else line_end
        rest = self.src[index:line_end]
        return line_end if rest.strip().startswith("#") else index


def format_text(text: str, name: str = "<text>") -> str:
    """Return ``text`` (one policy file) with its keys in canonical order.

    Raises DiagnosticError for YAML that cannot be read, and ``fmt-unsafe`` when the result would not
    hold the same data (which leaves the file alone).
    """
    from ..yamlsafe import load_yaml_text

    load_yaml_text(text, name)  # located errors for invalid YAML, limits on size and depth
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return text
    f = _Formatter(text)
    start, stop = node.start_mark.index, f.end(node)
    out = text[:start] + f.render(node, ()) + text[stop:]
    _verify(text, out, name)
    return out


def _verify(before: str, after: str, name: str) -> None:
    a, b = yaml.safe_load(before), yaml.safe_load(after)
    if a != b or _canonical_errors(b, ()):
        raise DiagnosticError([Diagnostic("fmt-unsafe", "reordering would not keep the same data in canonical order",
                                          Location(name, 1, 1), "leave the file as it is and report this")])


def _canonical_errors(data: Any, path: tuple) -> bool:
    if isinstance(data, dict):
        order = order_for(path)
        if order is not None:
            known = {name: n for n, name in enumerate(order)}
            ranks = [known.get(k, len(order)) for k in data]
            if ranks != sorted(ranks):
                return True
        return any(_canonical_errors(v, path + (k,)) for k, v in data.items())
    if isinstance(data, list):
        return any(_canonical_errors(v, path + (i,)) for i, v in enumerate(data))
    return False


def policy_files(path: str) -> list[Path]:
    """Return the files of the policy at ``path``: the file, or a bundle's policy.yaml and its includes."""
    p = Path(path)
    if p.is_file():
        return [p]
    from ..yamlsafe import load_yaml_file

    root = p / "policy.yaml"
    files = [root]
    try:
        data = load_yaml_file(str(root)).data or {}
    except DiagnosticError:
        return files
    for name in (data.get("include") or []) if isinstance(data, dict) else []:
        if isinstance(name, str) and "/" not in name and (p / name).is_file():
            files.append(p / name)
    return files


def format_policy(path: str) -> list[FormatResult]:
    """Return the formatting of every file of the policy at ``path`` (nothing is written)."""
    out = []
    for f in policy_files(path):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.append(FormatResult(str(f), "", "", Diagnostic("file-unreadable", f"cannot read: {exc}",
                                                                Location(str(f)))))
            continue
        try:
            out.append(FormatResult(str(f), text, format_text(text, str(f))))
        except DiagnosticError as exc:
            out.append(FormatResult(str(f), text, text, exc.diagnostics[0]))
    return out
