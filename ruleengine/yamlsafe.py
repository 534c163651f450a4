"""YAML loading with safe_load semantics, node locations, and limits against hostile documents."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from .diagnostics import Diagnostic, DiagnosticError, Location

MAX_BYTES = 2 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64  # policies nest a dozen levels, facts four; deeper documents are refused, never recursed into

Path = tuple  # tuple[str | int, ...]
_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass
class LocatedDoc:
    """A parsed document plus where each value (and each mapping key) came from."""

    data: Any
    file: str
    values: dict[Path, Location] = field(default_factory=dict)
    keys: dict[Path, Location] = field(default_factory=dict)

    def loc(self, path: Path, key: bool = False) -> Location:
        """Return the location of ``path`` (its key when ``key``), walking up to the nearest known parent."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Location(self.file, 1, 1))


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.count = 0
        self.constructor = yaml.constructor.SafeConstructor()
        self.doc = LocatedDoc(None, file)
        self.diags: list[Diagnostic] = []

    def _loc(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise DiagnosticError([Diagnostic(
                "yaml-too-many-nodes", f"document expands to more than {MAX_NODES} nodes",
                self._loc(node), "remove anchors/aliases that multiply content (an alias bomb?)")])
        if len(path) > MAX_DEPTH:
            raise DiagnosticError([Diagnostic("yaml-too-deep", f"the document nests more than {MAX_DEPTH} levels",
                                              self._loc(node), "flatten the structure")])
        self.doc.values[path] = self._loc(node)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _COLLECTION_TAGS:
            self.diags.append(Diagnostic("yaml-bad-value", f"tag {node.tag} is not allowed", self._loc(node),
                                         "only plain YAML values are allowed (no tags)"))
            return None
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.diags.append(Diagnostic("yaml-complex-key", "mapping keys must be plain scalars",
                                                 self._loc(key_node)))
                    continue
                key = self.constructor.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    key = str(key)
                if key in out:
                    self.diags.append(Diagnostic(
                        "yaml-duplicate-key", f"key `{key}` appears twice in this mapping",
                        self._loc(key_node), "remove one of them; YAML would silently keep the last"))
                self.doc.keys[path + (key,)] = self._loc(key_node)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.diags.append(Diagnostic("yaml-bad-value", str(exc.problem or exc), self._loc(node),
                                         "only plain YAML values are allowed (no tags)"))
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.diags.append(Diagnostic("yaml-not-finite", f"`{node.value}` is not a finite number", self._loc(node),
                                         "NaN and infinity are not accepted; give a finite number (or quote text)"))
            return None
        return value


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml: the same nodes and marks, ten times faster


def _compose(text: str) -> list[Any]:
    """Return the node trees of every document in ``text``; raises yaml.YAMLError as PyYAML's own loader does.

    libyaml composes when PyYAML was built with it; a document it rejects is composed again by the
    Python loader, so every syntax error reads the same whichever parser found it.
    """
    if _FAST_LOADER is not None:
        try:
            return list(yaml.compose_all(text, Loader=_FAST_LOADER))
        except yaml.YAMLError:
            pass
    return list(yaml.compose_all(text, Loader=yaml.SafeLoader))


def load_yaml_text(text: str, file: str) -> LocatedDoc:
    """Parse one YAML document with safe_load semantics and return it with its locations.

    Raises DiagnosticError for syntax errors, oversized, too deep or alias-bomb documents, several
    documents in one stream, duplicate keys, unsafe tags and non-finite numbers (``.nan``, ``.inf``).
    """
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise DiagnosticError([Diagnostic("yaml-too-large", f"file is larger than {MAX_BYTES} bytes",
                                          Location(file, 1, 1), "split it or remove generated content")])
    try:
        nodes = _compose(text)
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise DiagnosticError([Diagnostic("yaml-too-deep", f"the document nests more than {MAX_DEPTH} levels",
                                          Location(file, 1, 1), "flatten the structure")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise DiagnosticError([Diagnostic("yaml-syntax", f"{exc.problem or exc.context}", loc,
                                          "fix the YAML syntax at this position")]) from None
    except yaml.YAMLError as exc:
        raise DiagnosticError([Diagnostic("yaml-syntax", str(exc), Location(file, 1, 1))]) from None
    if len(nodes) > 1:
        raise DiagnosticError([Diagnostic("yaml-multiple-documents", "expected one YAML document, found "
                                          f"{len(nodes)}", Location(file, 1, 1), "remove the extra `---`")])
    builder = _Builder(file)
    if not nodes or nodes[0] is None:
        builder.doc.data = None
        builder.doc.values[()] = Location(file, 1, 1)
        return builder.doc
    try:
        builder.doc.data = builder.build(nodes[0], ())
    except RecursionError:
        raise DiagnosticError([Diagnostic("yaml-too-deep", "document nests too deeply",
                                          Location(file, 1, 1))]) from None
    if builder.diags:
        raise DiagnosticError(builder.diags)
    return builder.doc


def load_yaml_file(path: str) -> LocatedDoc:
    """Read and parse a YAML (or JSON) file; raises DiagnosticError naming the file on any failure."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise DiagnosticError([Diagnostic("file-unreadable", f"cannot read file: {exc.strerror}",
                                          Location(str(path)), "check the path")]) from None
    if len(raw) > MAX_BYTES:
        raise DiagnosticError([Diagnostic("yaml-too-large", f"file is larger than {MAX_BYTES} bytes",
                                          Location(str(path), 1, 1))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DiagnosticError([Diagnostic("file-not-utf8", f"file is not UTF-8 text (byte {exc.start})",
                                          Location(str(path)), "save the file as UTF-8")]) from None
    return load_yaml_text(text, str(path))
