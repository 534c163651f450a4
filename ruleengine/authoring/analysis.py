"""Rule-level analysis shared by `decide check`, `decide test` (coverage) and `decide diff`.

* ``RuleInfo``: each rule's region as boxes (``intervals.Space``), over- and under-approximated
  where it compares two facts;
* ``verdict_spec``: what a select rule's ``then`` resolves to for one use case (language v1:
  the use-case row, then the rule's own fields);
* ``advise_reachable``: whether an advise rule can ever match, given which methods the select
  rules can choose and where (exact box algebra);
* ``MemoryProbe``: minimal per-GPU estimates of a verdict under the policy's own memory model,
  cached; used for fit dominance and never-fits searches (sampled);
* ``example_facts``: a concrete facts document for a point of the fact space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..units import format_count
from .intervals import CUSTOM_GPU, INF, Box, Interval, Space, box_get

ROW_VERDICT_KEYS = ("method", "rank", "alpha", "target_modules", "num_virtual_tokens")
MODEL_GRID = (0.5e9, 1.1e9, 3e9, 7e9, 13e9, 34e9, 70e9)
COUNT_GRID = (1, 2, 4, 8)
MIN_MODEL_PARAMS = 1e8  # never-fits searches start at 100M parameters


@dataclass
class RuleInfo:
    """A rule with its region: ``over`` (fact-vs-fact comparisons taken as true) and ``under`` (as false)."""

    rule: Any
    over: list[Box]
    under: list[Box]
    opaque: bool

    @property
    def id(self) -> str:
        """Return the rule id."""
        return self.rule.id

    @property
    def never_holds(self) -> bool:
        """Return True when the conditions can never hold (exact: even the over-approximation is empty)."""
        return not self.over


@dataclass
class Analysis:
    """The policy, its fact space and every rule's region."""

    policy: Any
    space: Space
    rules: dict[str, RuleInfo] = field(default_factory=dict)

    @property
    def select(self) -> list[RuleInfo]:
        """Return the select rules in evaluation order."""
        return [self.rules[r.id] for r in self.policy.select_rules]

    @property
    def advise(self) -> list[RuleInfo]:
        """Return the advise rules in evaluation order."""
        return [self.rules[r.id] for r in self.policy.advise_rules]

    @property
    def chosen(self) -> set[str]:
        """Return every method some select rule can choose."""
        return chosen_methods(self)


def analyse(policy: Any) -> Analysis:
    """Return the box regions of every rule of ``policy``. Raises AnalysisLimit on a blow-up."""
    space = Space(policy)
    out = Analysis(policy, space)
    for rule in policy.rules:
        opaque = space.has_opaque(rule.when)
        over = space.dnf(rule.when, opaque=True, rule_id=rule.id)
        under = space.dnf(rule.when, opaque=False) if opaque else over
        out.rules[rule.id] = RuleInfo(rule, over, under, opaque)
    # make sure the use-case dimension exists: `use_case: true` verdicts depend on it
    space.dim("task.use_case")
    return out


# --- verdict specs ---------------------------------------------------------------------------

def verdict_spec(policy: Any, then: dict, use_case: str | None) -> dict:
    """Return the verdict fields a select rule's ``then`` yields for ``use_case`` (row, then the rule's own).

    Two rules with equal specs produce identical candidates (and memory estimates) for the same facts.
    """
    spec: dict[str, Any] = {}
    if then.get("use_case") and use_case is not None:
        row = policy.use_cases.get(use_case, {})
        spec.update({k: row[k] for k in ROW_VERDICT_KEYS if k in row})
    spec.update({k: v for k, v in then.items() if k != "use_case"})
    return spec


def spec_key(spec: dict) -> str:
    """Return a hashable canonical text of a verdict spec."""
    return json.dumps(spec, sort_keys=True, default=str)


# the two fact sets a verdict is resolved for to compare verdicts exactly (see ``resolved_key``)
_PLAIN_TRAINING: dict[str, Any] = {}
_USER_TRAINING = {"lora_rank": 8, "target_modules": ["q_proj", "v_proj"], "num_virtual_tokens": 8,
                  "precision": "fp32", "optimizer": "sgd", "micro_batch_size": 2, "seq_len": 333,
                  "gradient_checkpointing": False, "sharding": "zero2", "epochs": 7}


def resolved_key(policy: Any, then: dict, use_case: str | None) -> str:
    """Return the verdict a select rule's ``then`` resolves to for ``use_case``, as comparable text.

    Two rules with equal keys produce the same candidate (verdict and memory) for *every* fact set:
    each verdict field is taken from the first source that gives it (user facts, ``then``, the row,
    method defaults, policy defaults: ``derive.resolve_spec``), so resolving once without any user
    training setting and once with all of them (on a GPU without bf16, on two GPUs, several tasks)
    exercises both branches of every field; the fields depend on each other only through the rank
    (alpha, AdaLoRA's initial rank), which both resolutions vary.
    """
    from ..derive import GpuSpec, resolve_spec

    keys = []
    uc = use_case or next(iter(policy.use_cases), None)
    for training, gpu, tasks in ((_PLAIN_TRAINING, GpuSpec("a", 80.0, True, None, None, 1), 1),
                                 (_USER_TRAINING, GpuSpec("b", 80.0, False, None, None, 2), 2)):
        facts = {"task": {"use_case": uc}, "data": {"num_tasks": tasks}, "training": dict(training)}
        try:
            spec = resolve_spec(policy, then if use_case or not then.get("use_case") else
                                {k: v for k, v in then.items() if k != "use_case"}, facts, gpu)
        except (KeyError, ValueError):
            return spec_key(verdict_spec(policy, then, use_case))
        data = {k: v for k, v in spec.__dict__.items() if k != "notes"}
        keys.append(json.dumps(data, sort_keys=True, default=str))
    return "|".join(keys)


def memory_key(spec: dict) -> str:
    """Return the part of a verdict spec the memory estimate depends on, as text (alpha does not change memory:
    ``methods.MethodConfig`` has no alpha)."""
    return spec_key({k: v for k, v in spec.items() if k != "alpha"})


def spec_label(spec: dict) -> str:
    """Return a short label of a spec, e.g. ``lora r=16`` or ``full_ft``."""
    method = spec.get("method", "?")
    return f"{method} r={spec['rank']}" if spec.get("rank") else method


def rule_use_cases(space: Space, info: RuleInfo, boxes: list[Box] | None = None) -> list[str]:
    """Return the use cases for which some box of the rule's region holds, in table order."""
    allowed: set = set()
    for b in (info.over if boxes is None else boxes):
        allowed |= set(space.values(b, "task.use_case"))
    return [uc for uc in space.use_cases if uc in allowed]


def producers(analysis: Analysis, method: str) -> list[Box]:
    """Return the region where some select rule's conditions hold and its verdict would be ``method``."""
    space = analysis.space
    out: list[Box] = []
    for info in analysis.select:
        then = info.rule.then
        if not then.get("use_case"):
            if then.get("method") == method:
                out.extend(info.over)
            continue
        ucs = frozenset(uc for uc in space.use_cases if verdict_spec(analysis.policy, then, uc).get("method") == method)
        if not ucs:
            continue
        for b in info.over:
            r = space.restrict(b, "task.use_case", ucs)
            if r is not None:
                out.append(r)
    return out


def chosen_methods(analysis: Analysis) -> set[str]:
    """Return every method some select rule can choose (over the use cases its region allows)."""
    out: set[str] = set()
    for info in analysis.select:
        if info.never_holds:
            continue
        then = info.rule.then
        if then.get("use_case"):
            out.update(str(verdict_spec(analysis.policy, then, uc).get("method"))
                       for uc in rule_use_cases(analysis.space, info))
        elif then.get("method"):
            out.add(then["method"])
    out.discard(None)
    return out


VERDICT_DIMS = ("verdict.method", "verdict.rank", "verdict.sharding", "verdict.memory_gb", "verdict.headroom_gb")
MAX_USER_RANK = 1024  # facts.schema.json: training.lora_rank


def verdict_boxes(analysis: Analysis, method: str) -> list[Box]:
    """Return the region where the verdict can be ``method`` (``""``: infeasible), with what the other verdict
    facts can then be: the rank (0 for methods without one; any rank up to 1024 a user may give for ranked
    methods), the sharding (the user's, the rule's or the defaults', ``auto`` resolving to none, or zero3 on
    several GPUs), the memory estimate (positive) and the headroom (not negative: the verdict fits).
    """
    from ..methods import get as method_spec

    space = analysis.space
    for name in VERDICT_DIMS:
        space.dim(name)
    if method == "":
        return [_box({"verdict.method": frozenset({""}), "verdict.rank": Interval(0, 0),
                      "verdict.sharding": frozenset({"none"}), "verdict.memory_gb": Interval(0, 0),
                      "verdict.headroom_gb": Interval(0, 0)})]
    ranked = method_spec(method).uses("rank")
    out: list[Box] = []
    for box in producers(analysis, method):
        extra = {"verdict.method": frozenset({method}),
                 "verdict.rank": Interval(1, MAX_USER_RANK) if ranked else Interval(0, 0),
                 "verdict.sharding": _shardings(analysis, box, method),
                 "verdict.memory_gb": Interval(0, INF, True, False), "verdict.headroom_gb": Interval(0, INF)}
        met = space.meet(box, _box(extra))
        if met is not None:
            out.append(met)
    return out


def _box(d: dict) -> Box:
    return tuple(sorted(d.items()))


def _shardings(analysis: Analysis, box: Box, method: str) -> frozenset:
    """Return the shardings a verdict of ``method`` can resolve to inside ``box`` (an over-approximation)."""
    space = analysis.space
    policy = analysis.policy
    user = space.values(box, "training.sharding")
    counts = space.values(box, "hardware.gpu_count")
    several = counts.hi > 1
    configured = set()
    for rule in policy.select_rules:
        configured.add((rule.then.get("training") or {}).get("sharding"))
    md = (((policy.defaults.get("methods") or {}).get(method) or {}).get("training") or {}).get("sharding")
    base = (policy.defaults.get("training") or {}).get("sharding", "auto")
    out: set[str] = set()
    for value in user:
        if value != "auto":
            out.add(value)
            continue
        for chosen in {c for c in configured if c} | {md or base}:
            if chosen != "auto":
                out.add(chosen)
            else:
                out.add("none")
                if several:
                    out.add("zero3")
    return frozenset(out)


def advise_reachable(analysis: Analysis, info: RuleInfo) -> tuple[bool, str]:
    """Return whether an advise rule can match, and if not, why (exact box algebra over the verdict facts).

    ``verdict.method == m`` can only hold where a select rule that chooses ``m`` has its conditions
    hold, and then the other verdict facts can only take the values ``verdict_boxes`` gives
    (``verdict.rank`` is 0 for methods without a rank, the headroom of a verdict is never negative
    ...); ``""`` (infeasible) can hold anywhere, with rank, memory and headroom 0. The region of each
    select rule is an over-approximation of where it is chosen (earlier rules and the fit guard are
    ignored), so a rule found unreachable is unreachable.
    """
    space = analysis.space
    if info.never_holds:
        return False, "its conditions contradict each other"
    reasons = []
    unchosen: set[str] = set()
    chosen = analysis.chosen
    for b in info.over:
        if not any(n in VERDICT_DIMS for n, _ in b):
            return True, ""
        methods = box_get(b, "verdict.method")
        rest = tuple((n, c) for n, c in b if n != "verdict.method")
        plain = tuple((n, c) for n, c in b if n not in VERDICT_DIMS)
        wanted = tuple((n, c) for n, c in rest if n in VERDICT_DIMS)
        for m in sorted(methods if methods is not None else frozenset(chosen | {""})):
            if m and m not in chosen:
                unchosen.add(m)
                continue
            region = verdict_boxes(analysis, m)
            if any(space.meet(b, p) is not None for p in region):
                return True, ""
            if m == "":
                reasons.append(f"an infeasible decision has verdict rank, memory and headroom 0, which excludes "
                               f"{space.describe(wanted)}")
            elif any(space.meet(plain, p) is not None for p in region):
                reasons.append(f"where the select rules choose {m}, {space.describe(wanted)} cannot hold "
                               f"({_verdict_text(space, region, {n for n, _ in wanted})})")
            else:
                where = [tuple((n, c) for n, c in p if n not in VERDICT_DIMS) for p in region]
                reasons.append(f"the select rules choose {m} only where {_region_text(space, where)}, "
                               f"which excludes {space.describe(plain) or 'this rule'}")
    if unchosen and (not reasons or len(unchosen) <= 2):
        reasons.insert(0, "no select rule chooses " + ", ".join(sorted(unchosen)))
    return False, "; ".join(dict.fromkeys(reasons))


def _verdict_text(space: Space, boxes: list[Box], dims: set[str]) -> str:
    parts = sorted({space.dims[n].describe(c) for b in boxes for n, c in b if n in dims})
    return "there " + " or ".join(parts[:4]) + (" ..." if len(parts) > 4 else "")


def _region_text(space: Space, boxes: list[Box]) -> str:
    parts = [space.describe(b) for b in boxes[:3]]
    text = " or ".join(f"({p})" if " and " in p else p for p in parts)
    return text + (f" or {len(boxes) - 3} more" if len(boxes) > 3 else "")


# --- concrete facts ------------------------------------------------------------------------

def default_gpu(policy: Any) -> str:
    """Return the GPU used when an example needs one: the policy default, else a100-80gb, else the first."""
    hw = ((policy.defaults.get("facts") or {}).get("hardware") or {})
    if hw.get("gpu") in policy.gpus:
        return hw["gpu"]
    return "a100-80gb" if "a100-80gb" in policy.gpus else next(iter(policy.gpus), CUSTOM_GPU)


def base_facts(policy: Any) -> dict:
    """Return the facts an example starts from: 7B model, the default GPU, 50k examples, the default use case."""
    gpu = default_gpu(policy)
    hardware = {"gpu": gpu} if gpu else {"gpu_memory_gb": 80.0}
    task_defaults = ((policy.defaults.get("facts") or {}).get("task") or {})
    use_case = task_defaults.get("use_case") or next(iter(policy.use_cases), None)
    out = {"model": {"params": 7e9}, "hardware": hardware, "data": {"examples": 50000}, "task": {}}
    if use_case and not task_defaults.get("use_case"):
        out["task"]["use_case"] = use_case
    return out


def example_facts(policy: Any, point: dict[str, Any], base: dict | None = None) -> dict:
    """Return a given-facts document for ``point`` (dimension -> value) on top of ``base`` facts.

    Only given facts are set; derived dimensions in ``point`` are ignored (they follow from the rest).
    """
    import copy

    from ..vocabulary import GIVEN

    facts = copy.deepcopy(base if base is not None else base_facts(policy))
    for name, value in point.items():
        if name not in GIVEN:
            continue
        group, key = name.split(".")
        node = facts.setdefault(group, {})
        if name == "hardware.gpu":
            if value == CUSTOM_GPU:
                node.pop("gpu", None)
                node.setdefault("gpu_memory_gb", float(point.get("hardware.gpu_memory_gb", 24.0)))
            else:
                node["gpu"] = value
            continue
        if name == "training.sharding" and value == "auto":
            continue
        ft = GIVEN[name]
        if ft.kind == "integer" or name == "data.examples":
            value = int(value)
        elif ft.kind == "number":
            value = float(value)
        node[key] = value
    if "hardware.gpu_memory_gb" in point and facts.get("hardware", {}).get("gpu") is None:
        facts["hardware"]["gpu_memory_gb"] = float(point["hardware.gpu_memory_gb"])
    return facts


def facts_text(facts: dict) -> str:
    """Return a facts document as one line: ``model.params=7B hardware.gpu=a100-80gb ...``."""
    parts = []
    for group, values in facts.items():
        if not isinstance(values, dict):
            continue
        for key, v in values.items():
            if isinstance(v, bool):
                text = "true" if v else "false"
            elif isinstance(v, (int, float)) and key in ("params", "examples", "requests_per_day"):
                text = format_count(float(v))
            elif isinstance(v, float) and v.is_integer():
                text = str(int(v))
            else:
                text = str(v)
            parts.append(f"{group}.{key}={text}")
    return " ".join(parts)


# --- the memory model --------------------------------------------------------------------------

class MemoryProbe:
    """Per-GPU memory estimates of verdict specs under the policy's own memory model, cached.

    ``min_estimate`` is the smallest estimate the engine can reach for the spec: ``derive`` tries
    its ``auto`` configurations (sharding none, then ZeRO-3 on several GPUs; micro-batches from the
    largest allowed down to 1) and keeps the first that fits, or the smallest when none does, so
    resolving with zero usable memory yields the minimum, and a verdict fits a GPU exactly when
    ``min_estimate <= usable(memory)``.
    """

    def __init__(self, policy: Any):
        from ..architecture import infer_from_params
        from ..derive import GpuSpec, candidate_from, resolve_spec
        from ..facts import normalize_facts
        from ..memory import MemoryConstants, profile, usable_gib

        self.policy = policy
        self._infer = infer_from_params
        self._gpu = GpuSpec
        self._resolve_spec = resolve_spec
        self._candidate = candidate_from
        self._profile = profile
        self._normalize = normalize_facts
        self._usable = usable_gib
        self.constants = MemoryConstants.from_policy(policy.memory)
        self._arch: dict[float, Any] = {}
        self._est: dict[tuple, float] = {}
        self._facts: dict[str, dict] = {}
        self._facts_keys: dict[int, tuple] = {}  # id(normalized facts) -> what of them an estimate depends on
        self._profiles: dict[tuple, Any] = {}
        self.evaluations = 0

    def usable(self, memory_gb: float) -> float:
        """Return the usable GiB of a GPU with ``memory_gb`` under the policy's constants."""
        return float(self._usable(memory_gb, self.constants))

    def arch(self, params: float) -> Any:
        """Return the architecture inferred from a parameter count (cached)."""
        if params not in self._arch:
            self._arch[params] = self._infer(float(params))
        return self._arch[params]

    def normalized(self, given: dict) -> dict:
        """Return normalized facts for a given-facts document (cached). Raises FactsError."""
        key = json.dumps(given, sort_keys=True, default=str)
        if key not in self._facts:
            facts = self._normalize(given, self.policy)
            self._facts[key] = facts
            self._facts_keys[id(facts)] = (json.dumps(facts.get("training") or {}, sort_keys=True),
                                           facts["data"].get("seq_len"), facts["data"].get("num_tasks", 1))
        return self._facts[key]

    def min_estimate(self, spec: dict, facts: dict, count: int, bf16: bool, key_of_spec: str | None = None) -> float:
        """Return the smallest per-GPU estimate (GiB) of ``spec`` for normalized ``facts`` on ``count`` GPUs.

        ``key_of_spec`` is ``memory_key(spec)`` when the caller has it already.
        """
        params = float(facts["model"]["params"])
        facts_key = self._facts_keys.get(id(facts))
        if facts_key is None:
            facts_key = (json.dumps(facts.get("training") or {}, sort_keys=True), facts["data"].get("seq_len"),
                         facts["data"].get("num_tasks", 1))
        key = (key_of_spec or memory_key(spec), params, int(count), bool(bf16), facts_key)
        found = self._est.get(key)
        if found is None:
            gpu = self._gpu("probe", 1.0, bool(bf16), None, None, int(count))
            resolved = self._resolve_spec(self.policy, spec, facts, gpu)
            arch = self.arch(params)

            def profile_of(setup: Any) -> Any:
                pkey = (params, resolved.cfg, setup)
                made = self._profiles.get(pkey)
                if made is None:
                    made = self._profile(arch, resolved.cfg, setup, self.constants)
                    self._profiles[pkey] = made
                return made

            cand = self._candidate(resolved, arch, gpu, self.constants, 0.0, profile_of)
            found = float(cand.estimate.total_gib)
            self._est[key] = found
            self.evaluations += 1
        return found


def numeric_samples(space: Space, box: Box, name: str, grid: tuple, lower: float | None = None) -> list[float]:
    """Return the values of ``grid`` inside the box's constraint of ``name`` plus its finite ends."""
    c = space.values(box, name)
    out = [float(v) for v in grid if c.contains(v)]
    if c.lo != -INF and c.lo not in out:
        lo = c.lo if not c.lo_open else c.lo * (1 + 1e-6) + (1 if space.dim(name).integer else 0)
        if lower is None or lo >= lower:
            out.append(float(lo))
    if c.hi != INF and c.hi not in out:
        out.append(float(c.hi if not c.hi_open else c.hi * (1 - 1e-6)))
    if lower is not None:
        out = [v for v in out if v >= lower] or ([max(lower, c.lo)] if c.contains(max(lower, c.lo)) else [])
    return sorted(set(out))
