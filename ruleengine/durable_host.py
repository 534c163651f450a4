"""A durable-rules host that works at any policy size, is thread-safe and fast.

A :class:`RuleProgram` is one compiled policy: its select rules (first hit by order) and its advise
rules (every hit, in order). It drives durable-rules' C extension (``durable_rules_engine``)
directly, without ``durable.engine.Host`` (whose JSON round trips, state updates and background
dispatch threads cost most of a call and can take another caller's action).

durable-rules 2.0.28 has hard limits (docs/engine-limits.md gives the C source lines). The program
is compiled around them:

* Rules are split, in order, into chunks; each chunk is one durable-rules ruleset. The alpha
  network of a chunk is rebuilt here exactly as rete.c builds it (shared comparisons, one
  forward node per ``$or``), and a rule joins the current chunk only while the deepest stack the
  matcher could need, with *every* comparison true, stays within ``MAX_STACK_SIZE`` (64,
  else error 303), no node exceeds its child lists (511 / 127 / 255, else a hang or a crash)
  and the chunk's messages stay within ``MAX_OBJECT_PROPERTIES`` (252 fields + id + sid).
* ``first_hit`` posts an event to each select chunk in order and stops at the first that fires;
  the event is consumed by the first action (durable-rules runs actions by ``pri``), so a chunk
  answers with its first rule by order. ``all_hits`` asserts a fact to every advise chunk,
  collects every action and retracts the fact.
* Each message carries only the fields its chunk reads, a unique ``id`` and the implicit session
  ``sid`` "0": one fixed session per ruleset; states are never deleted (``delete_state`` on a
  session no rule matched corrupts the heap in 2.0.28).
* Numbers are written so that durable-rules' JSON parser reads them exactly (it rejects ``1e+30``
  with error 204); values it cannot compare exactly raise :class:`MessageValueError`.

Calls on one chunk are serialised by the chunk's lock, so concurrent callers never see each
other's results. Registration (``program_for``) is guarded by a process-wide lock.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import durable_rules_engine as _engine

# --- limits of durable-rules 2.0.28 (see docs/engine-limits.md for the source lines) ----------

MAX_STACK_SIZE = 64  # events.c:18, the alpha-network DFS stack of handleAlpha (error 303)
NEXT_BUCKET_LENGTH = 512  # rules.h:47, hashset of an alpha node's children, linear probing
NEXT_LIST_LENGTH = 128  # rules.h:48, list of an alpha node's forward ($or) nodes, 0-terminated
BETA_LIST_LENGTH = 256  # rules.h:49, list of rules ending at one alpha node, 0-terminated
MAX_OBJECT_PROPERTIES = 255  # state.h:20, properties per message (error 302)
MAX_SEQUENCE_EXPRESSIONS = 32  # rete.h:41, $and/$or markers per rule (error 113)
MAX_HANDLES = 131072  # rules.h:56, rulesets per process
MAX_STRING_BYTES = 65535  # events.c:73, reduceString takes unsigned short lengths
MAX_SAFE_INT = 2**53  # ints are parsed with atoll and compared with doubles as doubles

#: Children an alpha node may have: a full hashset makes probing loop forever (rete.c:1001, events.c:1749).
MAX_CHILDREN = NEXT_BUCKET_LENGTH - 1
#: Forward nodes an alpha node may have: the list is read until a 0 entry (events.c:1728).
MAX_FORWARDS = NEXT_LIST_LENGTH - 1
#: Rules that may end at one alpha node (identical conditions): 256 overflows and crashes.
MAX_BETAS = BETA_LIST_LENGTH - 1
#: Fields per message besides ``id`` and the implicit ``sid`` (propertiesLength reaches 255 -> 302).
MAX_FIELDS = MAX_OBJECT_PROPERTIES - 3
#: ``$and``/``$or`` operators per rule: each appends two markers to a 32-entry sequence (rete.c:47).
MAX_OPERATORS = (MAX_SEQUENCE_EXPRESSIONS - 1) // 2
#: Messages per C call in the batch forms; also each rule's ``cap`` (an unsigned short).
BATCH_SIZE = 256


class EngineLimit(NamedTuple):
    """One limit of durable-rules that still applies to a policy: its value and what it bounds."""

    value: int | float | str
    meaning: str


ENGINE_LIMITS: dict[str, EngineLimit] = {
    "operators_per_rule": EngineLimit(
        MAX_OPERATORS, "all/any/in/not_in groups in one rule's condition, after nested groups of the same "
        "kind are merged (each `in` and `any` is one, `not_in` merges into its enclosing `all`)"),
    "simultaneous_comparisons_per_rule": EngineLimit(
        MAX_STACK_SIZE, "comparisons of one rule that could hold at once, e.g. the items of an `any` of numeric "
        "comparisons (an `in` list of strings, booleans or integers counts once: only one value can match)"),
    "in_list_values": EngineLimit(
        MAX_CHILDREN, "values of one `in` list (more distinct comparisons at one point of a condition hang "
        "durable-rules)"),
    "fields_per_rule": EngineLimit(MAX_FIELDS, "distinct facts one rule refers to"),
    "integer_range": EngineLimit(
        MAX_SAFE_INT, "integers in facts and rules must lie in [-2**53, 2**53]: beyond that durable-rules "
        "saturates (atoll) or rounds (int/double comparison)"),
    "float_range": EngineLimit("finite", "floats must be finite (no NaN or infinity); any finite float is exact"),
    "string_bytes": EngineLimit(
        MAX_STRING_BYTES, "bytes of a JSON-escaped string value; longer strings compare on a truncated length"),
    "rulesets_per_process": EngineLimit(
        MAX_HANDLES - 1, "durable-rules rulesets per process (a program uses one per chunk; never freed)"),
}


class DurableHostError(RuntimeError):
    """durable-rules returned an error or an impossible result: a bug, never a decision."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EngineLimitError(ValueError):
    """A rule cannot be compiled within durable-rules' limits; ``rule`` names it, ``limit`` the limit."""

    def __init__(self, message: str, rule: str | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.limit = limit


class MessageValueError(ValueError):
    """A value that durable-rules cannot read or compare exactly; ``field`` names it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


_ERRORS = {
    102: "unexpected type", 104: "unexpected value", 105: "unexpected name", 106: "rule limit exceeded",
    107: "exists limit exceeded", 108: "beta limit exceeded", 111: "invalid handle", 112: "handle limit exceeded",
    113: "expression limit exceeded", 201: "parse value", 202: "parse string", 203: "parse number",
    204: "parse object (a number in exponent form without a '.')", 205: "parse array",
    302: "too many properties in a message", 303: "alpha stack overflow (MAX_STACK_SIZE)",
    304: "too many messages in a frame", 305: "message not found", 307: "node deleted",
    308: "node dispatching", 309: "session not found", 310: "no action available", 311: "property not found",
}
_CODE = re.compile(r"error code: (\d+)")


def _engine_error(exc: Exception, where: str) -> DurableHostError:
    m = _CODE.search(str(exc))
    code = int(m.group(1)) if m else None
    what = _ERRORS.get(code, "unknown") if code is not None else str(exc)
    return DurableHostError(f"durable-rules failed on {where}: error {code} ({what})", code)


# --- JSON the way durable-rules parses it ------------------------------------------------------

_STRINGS: dict[str, str] = {}  # encoded string values (enum values repeat); bounded below
_STRINGS_MAX = 4096


def encode_value(value: Any, field: str = "") -> str:
    """Return ``value`` as JSON text that durable-rules reads exactly.

    Floats always carry a ``.`` before any exponent (durable-rules' parser stops a number at an
    ``e`` that follows an integer part and then fails with error 204). Raises MessageValueError
    for NaN, infinities, integers beyond +-2**53, strings over 65535 bytes and other types.
    """
    t = type(value)
    if t is bool:
        return "true" if value else "false"
    if t is str:
        s = _STRINGS.get(value)
        if s is None:
            s = _encode_str(value, field)
        return s
    if t is float:
        if 1e-4 <= value < 1e16 or -1e16 < value <= -1e-4 or value == 0.0:
            return repr(value)  # no exponent in this range
        return _encode_float(value, field)
    if t is int:
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return str(value)
        raise MessageValueError(f"{field or 'value'} = {value}: integers must lie in [-2**53, 2**53] for "
                                "durable-rules to compare them exactly", field)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return encode_value(str(value), field)
    if isinstance(value, float):
        return encode_value(float(value), field)
    if isinstance(value, int):
        return encode_value(int(value), field)
    raise MessageValueError(f"{field or 'value'} = {value!r}: durable-rules messages hold only strings, "
                            f"booleans and numbers, not {t.__name__}", field)


class _NotFast(Exception):
    """A value _fast_value leaves to encode_value."""


def _fast_value(value: Any) -> str:
    """Return the JSON of a common value (str, float or int in the plain ranges); else raise _NotFast."""
    t = type(value)
    if t is str:
        s = _STRINGS.get(value)
        if s is not None:
            return s
    elif t is float:
        if 1e-4 <= value < 1e16 or -1e16 < value <= -1e-4 or value == 0.0:
            return repr(value)
    elif t is int and -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return str(value)
    raise _NotFast


def _encode_str(value: str, field: str) -> str:
    s = json.dumps(value)  # ASCII-only: every string is escaped the same way on both sides
    if len(s) - 2 > MAX_STRING_BYTES:
        raise MessageValueError(f"{field or 'value'}: a string of {len(s) - 2} bytes (JSON-escaped); durable-rules "
                                f"compares at most {MAX_STRING_BYTES}", field)
    if len(_STRINGS) < _STRINGS_MAX:
        _STRINGS[value] = s
    return s


def _encode_float(value: float, field: str) -> str:
    if not math.isfinite(value):
        raise MessageValueError(f"{field or 'value'} = {value}: durable-rules cannot compare NaN or infinity "
                                "(NaN reads as null, infinity fails to parse)", field)
    r = repr(value)
    mantissa, _, exponent = r.partition("e")
    if exponent and "." not in mantissa:
        r = f"{mantissa}.0e{exponent}"
    return r


def encode_json(value: Any) -> str:
    """Return ``value`` (dicts, lists, strings, booleans, numbers) as JSON text durable-rules reads exactly."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode_key(k)}:{encode_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    return encode_value(value)


def _encode_key(key: str) -> str:
    return json.dumps(key)


def fnv1a_32(name: str) -> int:
    """Return durable-rules' hash of a property name (FNV-1a over the bytes, as signed chars)."""
    h = 0x811C9DC5
    for b in name.encode():
        h ^= b if b < 128 else (b - 256) & 0xFFFFFFFF
        h = (h * 16777619) & 0xFFFFFFFF
    return h


# names durable-rules uses itself: a field hashing to one of these would be read as it
_RESERVED_HASHES = {fnv1a_32(n): n for n in ("id", "sid", "$s", "$forward", "$i")}
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- the alpha network of a chunk, rebuilt as rete.c builds it ----------------------------------

_OPS = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">=", "$neq": "!=", "$eq": "=="}


class _Alpha:
    """An alpha node: children by (field, operator, typed value), forward nodes, rules ending here."""

    __slots__ = ("children", "forwards", "betas", "depth")

    def __init__(self) -> None:
        self.children: dict[tuple, _Alpha] = {}
        self.forwards: list[_Alpha] = []
        self.betas = 0
        self.depth: int | None = None  # memo of _stack_depth


def _stack_depth(node: _Alpha) -> int:
    """Return the most entries handleAlpha's stack can hold while matching below ``node`` (just popped).

    Every child that matches is pushed at once, then children are popped one by one (LIFO), so
    with ``k`` children matching the stack holds ``k`` and then ``k - 1`` plus the depth needed
    below the child processed first (the worst child, in the worst order). Forward nodes always
    match. Equalities of one field with distinct string, boolean or integer literals are
    exclusive: durable-rules compares a value with them as one string (or one number), so at
    most one of each such group matches; doubles are not grouped (a string value is compared
    with their ``%f`` forms, which can coincide).
    """
    if node.depth is None:
        groups = set()
        k = len(node.forwards)
        for field, op, key in node.children:
            if op == "==" and key[0] in ("s", "b", "i"):
                groups.add((field, key[0]))
            else:
                k += 1
        k += len(groups)
        kids = [*node.children.values(), *node.forwards]
        node.depth = max(k, k - 1 + max(_stack_depth(c) for c in kids)) if k else 0
    return node.depth


class _Operand(NamedTuple):
    field: str
    op: str
    key: tuple  # the value as durable-rules compares it when sharing nodes (compareValue)
    value: Any  # the JSON value (a literal, or {"$m": field})


_ref_ids = itertools.count()


def _operand(expr: dict, rule: str) -> _Operand:
    """Return the comparison ``expr`` ({field: v} or {"$op": {field: v}}) as an operand."""
    (name, body), = expr.items()
    if name in _OPS:
        if not isinstance(body, dict) or len(body) != 1:
            raise EngineLimitError(f"rule {rule}: {name} takes one {{field: value}}", rule, "syntax")
        (field, value), = body.items()
        op = _OPS[name]
    else:
        field, value, op = name, body, "=="
    if not isinstance(field, str) or not _FIELD_NAME.match(field) or field in ("id", "sid"):
        raise EngineLimitError(f"rule {rule}: {field!r} is not a field name durable-rules can use "
                               "(letters, digits and _, not id or sid)", rule, "field_name")
    if isinstance(value, dict):
        if set(value) != {"$m"} or not isinstance(value["$m"], str):
            raise EngineLimitError(f"rule {rule}: {field} compares with {value!r}; only literals and "
                                   "{'$m': field} are supported", rule, "syntax")
        return _Operand(field, op, ("ref", next(_ref_ids)), value)  # never shared (rete.c compareValue)
    if isinstance(value, bool):
        key: tuple = ("b", value)
    elif isinstance(value, int):
        key = ("i", value)
    elif isinstance(value, float):
        key = ("d", value)
    elif isinstance(value, str):
        key = ("s", encode_value(value, field))
    else:
        raise EngineLimitError(f"rule {rule}: {field} compares with {value!r} (not a string, boolean or "
                               "number)", rule, "syntax")
    try:
        encode_value(value, field)
    except MessageValueError as exc:
        raise EngineLimitError(f"rule {rule}: {exc}", rule, "value") from None
    return _Operand(field, op, key, value)


def normalize(expr: dict, rule: str = "") -> dict:
    """Return ``expr`` with nested ``$and`` in ``$and`` (and ``$or`` in ``$or``) merged and one-item groups
    unwrapped: the same condition with fewer operators (each costs 2 of the 32 sequence slots)."""
    if not isinstance(expr, dict) or len(expr) != 1:
        raise EngineLimitError(f"rule {rule}: a condition is one {{operator: operand}} object, got {expr!r}",
                               rule, "syntax")
    (name, body), = expr.items()
    if name not in ("$and", "$or"):
        return expr
    if not isinstance(body, list) or not body:
        raise EngineLimitError(f"rule {rule}: {name} needs a non-empty list", rule, "syntax")
    items: list[dict] = []
    for item in body:
        n = normalize(item, rule)
        if next(iter(n)) == name:
            items.extend(n[name])
        else:
            items.append(n)
    return items[0] if len(items) == 1 else {name: items}


def _operators(expr: dict) -> int:
    (name, body), = expr.items()
    if name in ("$and", "$or"):
        return 1 + sum(_operators(e) for e in body)
    return 0


def _fields(expr: dict, out: set[str], rule: str) -> set[str]:
    (name, body), = expr.items()
    if name in ("$and", "$or"):
        for e in body:
            _fields(e, out, rule)
        return out
    op = _operand(expr, rule)
    out.add(op.field)
    if isinstance(op.value, dict):
        out.add(op.value["$m"])
    return out


def _insert(expr: dict, parent: _Alpha, rule: str, touched: list[_Alpha]) -> _Alpha:
    """Add ``expr`` below ``parent`` as rete.c's createAlpha does; return the node the rule ends at."""
    touched.append(parent)
    (name, body), = expr.items()
    if name == "$and":
        cur = parent
        for item in body:
            cur = _insert(item, cur, rule, touched)
        return cur
    if name == "$or":
        forward = _Alpha()
        touched.append(forward)
        for item in body:
            end = _insert(item, parent, rule, touched)
            end.forwards.append(forward)
            touched.append(end)
        return forward
    op = _operand(expr, rule)
    k = (op.field, op.op, op.key)
    child = parent.children.get(k)
    if child is None:
        child = parent.children[k] = _Alpha()
    touched.append(child)
    return child


@dataclass(frozen=True)
class DurableRule:
    """A rule as durable-rules runs it: its id, its 1-based order among rules of its kind, its condition
    (durable-rules JSON over flat field names, e.g. ``conditions.to_durable`` output)."""

    id: str
    order: int
    condition: dict


class _Chunk:
    """One durable-rules ruleset holding consecutive rules (by order) of one kind."""

    def __init__(self, name: str, rules: list[tuple[DurableRule, dict]], fields: set[str]) -> None:
        self.name = name
        self.rules = [r for r, _ in rules]
        self.action_rule = {f"r{i}": r.id for i, (r, _) in enumerate(rules, 1)}
        definition = {f"r{i}": {"all": [{"m": cond}], "pri": i, "cap": BATCH_SIZE}
                      for i, (_, cond) in enumerate(rules, 1)}
        if not fields:
            raise EngineLimitError(f"{name}: rules that read no field", None, "syntax")
        self.fields = sorted(fields)
        self.prefixes = [f',"{f}":' for f in self.fields]
        self.if_true = [p + "true" for p in self.prefixes]
        self.if_false = [p + "false" for p in self.prefixes]
        names = self.fields
        self.values: Callable[[dict], tuple] = (
            operator.itemgetter(*names) if len(names) > 1 else lambda m: (m[names[0]],))
        self.lock = threading.Lock()
        try:
            self.handle = _engine.create_ruleset(name, encode_json(definition))
            # creates the session "0" (and its state fact) with a message no rule can match
            _, self.state = _engine.assert_event(self.handle, '{"id":"open"}')
        except _engine.error as exc:
            raise _engine_error(exc, f"creating ruleset {name}") from None

    def encode(self, message: dict, mid: int) -> str:
        """Return the JSON message for this chunk: ``id`` and the fields its rules read.

        Raises MessageValueError for a missing field or a value durable-rules cannot compare exactly.
        """
        try:
            values = self.values(message)
        except KeyError as exc:
            raise MessageValueError(f"the message has no field {exc.args[0]!r}, which rules of {self.name} "
                                    "read", str(exc.args[0])) from None
        try:
            body = "".join([t if v is True else f if v is False else p + _fast_value(v)
                            for p, t, f, v in zip(self.prefixes, self.if_true, self.if_false, values, strict=True)])
        except _NotFast:
            body = "".join([p + encode_value(v, name) for p, name, v in zip(self.prefixes, self.fields, values,
                                                                            strict=True)])
        return f'{{"id":{mid}{body}}}'

    def rule_of(self, result: str) -> str:
        """Return the rule id of a serialized action (``{"r3":[...]}``)."""
        return self.action_rule[result[2:result.index('"', 2)]]

    def recover(self, mids: Iterable[int], facts: bool) -> None:
        """After a failure: finish pending actions and retract ``mids``, so no later call sees them."""
        try:
            r = _engine.start_action_for_state(self.handle, self.state)
            for _ in range(100_000):
                if not r:
                    break
                r = _engine.complete_and_start_action(self.handle, self.state)
            if facts:
                _engine.retract_facts(self.handle, "[" + ",".join(f'{{"id":{m}}}' for m in mids) + "]")
        except _engine.error:
            pass

    def first(self, message: dict) -> str | None:
        """Return the first rule (by order) of this chunk that holds for ``message`` (as an event)."""
        mid = next(_message_ids)
        text = self.encode(message, mid)
        with self.lock:
            try:
                res, _ = _engine.assert_event(self.handle, text)
                if res == 1:  # ERR_EVENT_NOT_HANDLED: no rule matched, nothing stored
                    return None
                r = _engine.start_action_for_state(self.handle, self.state)
                if res != 0 or not r or f'"id":{mid},' not in r[1]:
                    raise DurableHostError(f"{self.name}: unexpected result {res} / {r!r} for message {mid}")
                rule = self.rule_of(r[1])
                more = _engine.complete_and_start_action(self.handle, self.state)
                if more is not None:
                    raise DurableHostError(f"{self.name}: a second action after the event was consumed: {more}")
                return rule
            except BaseException as exc:
                self.recover((mid,), facts=False)
                if isinstance(exc, _engine.error):
                    raise _engine_error(exc, f"{self.name} (select)") from None
                raise

    def every(self, message: dict, out: list[str]) -> None:
        """Append to ``out`` every rule of this chunk that holds for ``message`` (as a fact), in order."""
        mid = next(_message_ids)
        text = self.encode(message, mid)
        with self.lock:
            try:
                res, _ = _engine.assert_fact(self.handle, text)
                if res == 1:
                    return
                if res != 0:
                    raise DurableHostError(f"{self.name}: unexpected result {res} for message {mid}", res)
                r = _engine.start_action_for_state(self.handle, self.state)
                result = r[1] if r else None
                while result is not None:
                    if f'"id":{mid},' not in result:
                        raise DurableHostError(f"{self.name}: an action for another message: {result}")
                    out.append(self.rule_of(result))
                    result = _engine.complete_and_start_action(self.handle, self.state)
                _engine.retract_fact(self.handle, f'{{"id":{mid}}}')
            except BaseException as exc:
                self.recover((mid,), facts=True)
                if isinstance(exc, _engine.error):
                    raise _engine_error(exc, f"{self.name} (advise)") from None
                raise

    def run_batch(self, messages: Sequence[dict], as_facts: bool) -> list[list[str]]:
        """Return, per message, the rules of this chunk that fired (events: the first; facts: all)."""
        fired: list[list[str]] = [[] for _ in messages]
        for start in range(0, len(messages), BATCH_SIZE):
            part = messages[start:start + BATCH_SIZE]
            mids = [next(_message_ids) for _ in part]
            texts = [self.encode(m, mid) for m, mid in zip(part, mids, strict=True)]
            by_id = {mid: start + i for i, mid in enumerate(mids)}
            body = "[" + ",".join(texts) + "]"
            with self.lock:
                try:
                    if as_facts:
                        _engine.assert_facts(self.handle, body)
                    else:
                        _engine.assert_events(self.handle, body)
                    r = _engine.start_action_for_state(self.handle, self.state)
                    result = r[1] if r else None
                    while result is not None:
                        rule = self.rule_of(result)
                        for m in _FRAME_ID.finditer(result):
                            hits = fired[by_id[int(m.group(1))]]
                            if not hits or hits[-1] != rule:
                                hits.append(rule)
                        result = _engine.complete_and_start_action(self.handle, self.state)
                    if as_facts:
                        _engine.retract_facts(self.handle, "[" + ",".join(f'{{"id":{m}}}' for m in mids) + "]")
                except BaseException as exc:
                    self.recover(mids, facts=as_facts)
                    if isinstance(exc, _engine.error):
                        raise _engine_error(exc, f"{self.name} (batch)") from None
                    if isinstance(exc, KeyError):
                        raise DurableHostError(f"{self.name}: an action for a message of another call") from None
                    raise
        if not as_facts:
            for i, hits in enumerate(fired):
                if len(hits) > 1:
                    raise DurableHostError(f"{self.name}: event {i} fired {hits}")
        return fired


_message_ids = itertools.count(1)  # next() on a count is atomic under the GIL
_FRAME_ID = re.compile(r'"m":\{"id":(\d+),')  # a quote inside a string value is always escaped


class _Packer:
    """Packs rules, in order, into chunks whose worst case stays within durable-rules' limits."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chunks: list[tuple[list[tuple[DurableRule, dict]], set[str]]] = []
        self._reset()

    def _reset(self) -> None:
        self.root = _Alpha()
        self.rules: list[tuple[DurableRule, dict]] = []
        self.fields: set[str] = set()

    def _fits(self, rule: DurableRule, cond: dict, fields: set[str]) -> str | None:
        """Insert ``rule`` into the current chunk; return the limit it breaks (the chunk is then stale)."""
        if len(self.fields | fields) > MAX_FIELDS:
            return "fields_per_rule"
        touched: list[_Alpha] = []
        end = _insert(cond, self.root, rule.id, touched)
        end.betas += 1
        for node in touched:
            node.depth = None
            if len(node.children) > MAX_CHILDREN:
                return "in_list_values"
            if len(node.forwards) > MAX_FORWARDS:
                return "simultaneous_comparisons_per_rule"
        if end.betas > MAX_BETAS:
            return "identical_conditions"  # never for a rule alone: the next chunk takes it
        if _stack_depth(self.root) > MAX_STACK_SIZE:
            return "simultaneous_comparisons_per_rule"
        return None

    def add(self, rule: DurableRule) -> None:
        """Add ``rule`` (the next by order) to the current chunk, or start a new chunk with it."""
        cond = normalize(rule.condition, rule.id)
        if _operators(cond) > MAX_OPERATORS:
            raise EngineLimitError(
                f"{self.kind} rule {rule.id}: {_operators(cond)} all/any/in/not_in groups after merging; "
                f"durable-rules accepts at most {MAX_OPERATORS} per rule", rule.id, "operators_per_rule")
        fields = _fields(cond, set(), rule.id)
        for f in fields:
            other = _RESERVED_HASHES.get(fnv1a_32(f))
            if other is not None:
                raise EngineLimitError(f"{self.kind} rule {rule.id}: field {f} hashes like {other!r} in "
                                       "durable-rules", rule.id, "field_name")
        broken = self._fits(rule, cond, fields)
        if broken is None:
            self.rules.append((rule, cond))
            self.fields |= fields
            return
        if not self.rules:
            limit = ENGINE_LIMITS[broken]
            raise EngineLimitError(f"{self.kind} rule {rule.id}: alone it exceeds durable-rules' limit {broken} "
                                   f"({limit.value}: {limit.meaning})", rule.id, broken)
        self.close()
        self.add(rule)

    def close(self) -> None:
        """Finish the current chunk."""
        if self.rules:
            self.chunks.append((self.rules, self.fields))
        self._reset()


def _pack(rules: Sequence[DurableRule], kind: str) -> list[tuple[list[tuple[DurableRule, dict]], set[str]]]:
    ordered = sorted(rules, key=lambda r: r.order)
    seen: dict[int, str] = {}
    hashes: dict[int, str] = {}
    packer = _Packer(kind)
    for rule in ordered:
        if rule.order in seen:
            raise EngineLimitError(f"{kind} rules {seen[rule.order]} and {rule.id} share order {rule.order}",
                                   rule.id, "order")
        seen[rule.order] = rule.id
        packer.add(rule)
    packer.close()
    for _, fields in packer.chunks:
        for f in fields:
            other = hashes.setdefault(fnv1a_32(f), f)
            if other != f:
                raise EngineLimitError(f"fields {other} and {f} have the same durable-rules hash", None,
                                       "field_name")
    return packer.chunks


def check_rules(select: Sequence[DurableRule], advise: Sequence[DurableRule]) -> list[EngineLimitError]:
    """Return an EngineLimitError for every rule durable-rules cannot run (none: the program compiles).

    Registers nothing (for ``decide validate``); each error names its ``rule`` and ``limit``.
    """
    problems: list[EngineLimitError] = []
    for kind, rules in (("select", select), ("advise", advise)):
        before = len(problems)
        for rule in rules:
            try:
                _Packer(kind).add(rule)
            except EngineLimitError as exc:
                problems.append(exc)
        if len(problems) == before:
            try:
                _pack(rules, kind)
            except EngineLimitError as exc:
                problems.append(exc)
    return problems


class RuleProgram:
    """One compiled policy (select and advise rules), registered once in this process's durable-rules."""

    def __init__(self, key: str, select: Sequence[DurableRule], advise: Sequence[DurableRule]) -> None:
        """Compile and register ``select`` and ``advise``; raises EngineLimitError for a rule durable-rules
        cannot run, DurableHostError if durable-rules refuses a ruleset."""
        self.key = key
        safe = re.sub(r"[^A-Za-z0-9_]", "_", key)[:40]
        self.select = [_Chunk(f"fp_{safe}_select_{i}", rules, fields)
                       for i, (rules, fields) in enumerate(_pack(select, "select"))]
        self.advise = [_Chunk(f"fp_{safe}_advise_{i}", rules, fields)
                       for i, (rules, fields) in enumerate(_pack(advise, "advise"))]

    @property
    def chunk_sizes(self) -> dict[str, list[int]]:
        """Return the number of rules in each ruleset, per kind."""
        return {"select": [len(c.rules) for c in self.select], "advise": [len(c.rules) for c in self.advise]}

    def first_hit(self, message: dict) -> str | None:
        """Return the id of the first select rule (by order) that holds for ``message``, or None.

        Raises MessageValueError for a value durable-rules cannot compare exactly (or a missing
        field), DurableHostError if durable-rules fails.
        """
        for chunk in self.select:
            hit = chunk.first(message)
            if hit is not None:
                return hit
        return None

    def all_hits(self, message: dict) -> list[str]:
        """Return the ids of every advise rule that holds for ``message``, in order (errors as first_hit)."""
        out: list[str] = []
        for chunk in self.advise:
            chunk.every(message, out)
        return out

    def first_hits(self, messages: Sequence[dict]) -> list[str | None]:
        """Return first_hit of each message, posting up to BATCH_SIZE messages per durable-rules call."""
        result: list[str | None] = [None] * len(messages)
        pending = list(range(len(messages)))
        for chunk in self.select:
            if not pending:
                break
            fired = chunk.run_batch([messages[i] for i in pending], as_facts=False)
            still = []
            for i, hits in zip(pending, fired, strict=True):
                if hits:
                    result[i] = hits[0]
                else:
                    still.append(i)
            pending = still
        return result

    def all_hits_many(self, messages: Sequence[dict]) -> list[list[str]]:
        """Return all_hits of each message, asserting up to BATCH_SIZE facts per durable-rules call."""
        result: list[list[str]] = [[] for _ in messages]
        for chunk in self.advise:
            for out, hits in zip(result, chunk.run_batch(messages, as_facts=True), strict=True):
                out.extend(hits)
        return result


_PROGRAMS: dict[str, RuleProgram] = {}
_PROGRAMS_LOCK = threading.Lock()

Rules = Sequence[DurableRule] | Callable[[], Sequence[DurableRule]]


def program_for(key: str, select: Rules, advise: Rules) -> RuleProgram:
    """Return the RuleProgram registered under ``key`` (the policy content hash), compiling it on first use.

    ``select``/``advise`` are rule lists or zero-argument callables returning them (called only
    when ``key`` is new). Thread-safe: concurrent first calls register the program once. A key
    always maps to the program first registered under it. Raises as RuleProgram().
    """
    program = _PROGRAMS.get(key)
    if program is None:
        with _PROGRAMS_LOCK:
            program = _PROGRAMS.get(key)
            if program is None:
                program = RuleProgram(key, select() if callable(select) else select,
                                      advise() if callable(advise) else advise)
                _PROGRAMS[key] = program
    return program
