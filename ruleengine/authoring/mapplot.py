"""`decide map`: a picture of the verdict regions of a policy over two facts (and `decide diff --map`).

Each cell of an X x Y grid is decided with the plain evaluator
(``engine.evaluate_policy(..., use_engine=False)``): facts are normalized once per combination of
categorical values and the numeric axis values are set on the normalized facts. Colour = method,
each connected region is labelled with its verdict (``lora r=16``), the infeasible region is grey
and hatched. Count axes (parameters, examples, GPUs, ...) are logarithmic. matplotlib is imported
only when a picture is drawn.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from .. import methods
from ..diagnostics import Diagnostic, DiagnosticError, Location
from ..units import format_count, parse_count
from ..vocabulary import GIVEN, METHODS

# fact -> (low, high, log scale, integer)
NUMERIC_AXES: dict[str, tuple[float, float, bool, bool]] = {
    "model.params": (0.5e9, 100e9, True, False),
    "hardware.gpu_memory_gb": (8.0, 192.0, False, False),
    "hardware.gpu_count": (1, 64, True, True),
    "data.examples": (100, 10e6, True, True),
    "data.avg_tokens": (32, 8192, True, False),
    "data.seq_len": (128, 32768, True, True),
    "serving.requests_per_day": (1e3, 1e9, True, False),
    "serving.avg_latency_ms": (10, 10000, True, False),
    "serving.adapters": (1, 1000, True, True),
    "training.micro_batch_size": (1, 64, True, True),
    "training.seq_len": (128, 32768, True, True),
}
INFEASIBLE_COLOUR = "#d9d9d9"
INVALID_COLOUR = "#ffffff"


@dataclass
class Axis:
    """One axis: a fact and its values (numbers, or categories)."""

    fact: str
    values: list
    log: bool = False
    categorical: bool = False

    def label(self) -> str:
        """Return the axis label."""
        return self.fact + (" (log scale)" if self.log else "")


@dataclass
class MapData:
    """The outcomes of a policy on an X x Y grid: ``cells[j][i]`` is (x_i, y_j)."""

    policy: Any
    x: Axis
    y: Axis
    cells: list[list[Any]]
    fixed: dict = field(default_factory=dict)


def _bad(message: str, flag: str, help: str = "") -> DiagnosticError:
    return DiagnosticError([Diagnostic("map-bad-axis", message, Location(flag), help)])


def make_axis(policy: Any, fact: str, flag: str, value_range: str | None, resolution: int) -> Axis:
    """Return the axis for ``fact``: numeric facts get ``resolution`` values over their range, enums every value.

    Raises DiagnosticError (exit 2) for an unknown or unsupported fact or a bad range.
    """
    from ..diagnostics import did_you_mean

    if fact in NUMERIC_AXES:
        lo, hi, log, integer = NUMERIC_AXES[fact]
        if value_range:
            try:
                a, b = value_range.split(":")
                lo, hi = parse_count(a), parse_count(b)
            except ValueError:
                raise _bad(f"{flag}-range `{value_range}` must be LOW:HIGH", f"{flag}-range",
                           "e.g. --x-range 1B:70B") from None
            if not 0 < lo < hi:
                raise _bad(f"{flag}-range needs 0 < LOW < HIGH", f"{flag}-range")
        n = max(2, resolution)
        if log:
            values: list[Any] = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / (n - 1)) for k in range(n)]
        else:
            values = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
        if integer:
            values = sorted({max(1, int(round(v))) for v in values})
        return Axis(fact, values, log)
    ft = GIVEN.get(fact)
    if ft is not None and ft.kind in ("enum", "bool"):
        if ft.kind == "bool":
            values = [False, True]
        elif ft.values is not None:
            values = list(ft.values)
        else:
            values = list(policy.use_cases if ft.values_from == "use_cases" else policy.gpus)
        return Axis(fact, values, categorical=True)
    choices = list(NUMERIC_AXES) + [n for n, t in GIVEN.items() if t.kind in ("enum", "bool")]
    raise _bad(f"{flag} {fact}: not a fact a map can vary", flag, did_you_mean(fact, choices))


def _set(facts: dict, fact: str, value: Any) -> None:
    group, key = fact.split(".")
    facts.setdefault(group, {})[key] = value


def _given_defaults(given: dict, axes: tuple[Axis, Axis]) -> dict:
    facts = copy.deepcopy(given)
    names = {a.fact for a in axes}
    model = facts.setdefault("model", {})
    if "params" not in model and "config" not in model and "model.params" not in names:
        model["params"] = 7e9
    hw = facts.setdefault("hardware", {})
    if "gpu" not in hw and "gpu_memory_gb" not in hw and not names & {"hardware.gpu", "hardware.gpu_memory_gb"}:
        hw["gpu_memory_gb"] = 80.0
    data = facts.setdefault("data", {})
    if "examples" not in data and "tasks" not in data and "data.examples" not in names:
        data["examples"] = 50000
    return facts


def compute_map(policy: Any, given: dict, x: Axis, y: Axis) -> MapData:
    """Return the outcome (``grid.Outcome``) of every cell, decided by the plain evaluator.

    Fixed facts come from ``given`` (plus a 7B model, an 80 GiB GPU and 50k examples where not
    given). Raises FactsError when the fixed facts are invalid.
    """
    from ..evaluate import evaluator_for
    from ..facts import FactsError, normalize_facts
    from .grid import Outcome

    evaluator = evaluator_for(policy)
    base = _given_defaults(given, (x, y))
    cells: list[list[Any]] = []
    normalized: dict[tuple, Any] = {}
    for yv in y.values:
        row = []
        for xv in x.values:
            cat_key = tuple((a.fact, v) for a, v in ((x, xv), (y, yv)) if a.categorical)
            if cat_key not in normalized:
                trial = copy.deepcopy(base)
                for fact, v in cat_key:
                    _set(trial, fact, v)
                    if fact == "hardware.gpu":
                        trial["hardware"].pop("gpu_memory_gb", None)
                for a, v in ((x, xv), (y, yv)):  # numeric values only need to pass validation once
                    if not a.categorical:
                        _set(trial, a.fact, v)
                try:
                    normalized[cat_key] = normalize_facts(trial, policy)
                except FactsError as exc:
                    normalized[cat_key] = exc
            norm = normalized[cat_key]
            if isinstance(norm, FactsError):
                if not cat_key:
                    raise norm
                row.append(Outcome(False, error=norm.diagnostics[0].code))
                continue
            facts = copy.deepcopy(norm)
            for a, v in ((x, xv), (y, yv)):
                if not a.categorical:
                    _set(facts, a.fact, float(v) if GIVEN[a.fact].kind == "number" and a.fact != "data.examples"
                         else int(v))
            try:
                rule, c = evaluator.choose(facts)
            except (FactsError, ValueError) as exc:
                row.append(Outcome(False, error=type(exc).__name__))
                continue
            row.append(Outcome(True, c.method, c.rank, rule) if c else Outcome(False))
        cells.append(row)
    return MapData(policy, x, y, cells, base)


def _regions(cells: list[list[Any]]) -> list[tuple[Any, list[tuple[int, int]]]]:
    """Return the connected regions (4-neighbour) of equal verdicts: (outcome, [(i, j), ...])."""
    ny, nx = len(cells), len(cells[0]) if cells else 0
    seen = [[False] * nx for _ in range(ny)]
    out = []
    for j in range(ny):
        for i in range(nx):
            if seen[j][i]:
                continue
            key = cells[j][i].verdict_key()
            stack, members = [(i, j)], []
            seen[j][i] = True
            while stack:
                a, b = stack.pop()
                members.append((a, b))
                for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    na, nb = a + da, b + db
                    if 0 <= na < nx and 0 <= nb < ny and not seen[nb][na] and cells[nb][na].verdict_key() == key:
                        seen[nb][na] = True
                        stack.append((na, nb))
            out.append((cells[j][i], members))
    return out


def _edges(axis: Axis) -> list[float]:
    if axis.categorical:
        return [k - 0.5 for k in range(len(axis.values) + 1)]
    v = [float(x) for x in axis.values]
    if len(v) == 1:
        return [v[0] * 0.9, v[0] * 1.1]
    if axis.log:
        logs = [math.log(x) for x in v]
        mids = [(a + b) / 2 for a, b in zip(logs, logs[1:], strict=False)]
        return [math.exp(x) for x in [2 * logs[0] - mids[0]] + mids + [2 * logs[-1] - mids[-1]]]
    mids = [(a + b) / 2 for a, b in zip(v, v[1:], strict=False)]
    return [2 * v[0] - mids[0]] + mids + [2 * v[-1] - mids[-1]]


def _fmt_tick(fact: str, value: float) -> str:
    if fact in ("model.params", "data.examples", "serving.requests_per_day"):
        return format_count(value)
    return f"{value:g}"


def render_map(data: MapData, out: str, title: str = "", changed: list[list[bool]] | None = None,
               subtitle: str = "") -> None:
    """Draw the map to ``out`` (.png or .svg): colour per method, labelled regions, hatched infeasible.

    ``changed`` marks cells whose verdict differs from another policy (drawn hatched and outlined).
    Raises ImportError when matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    x, y, cells = data.x, data.y, data.cells
    palette = [INFEASIBLE_COLOUR, INVALID_COLOUR] + [methods.get(m).colour for m in METHODS]
    index = {"infeasible": 0, "invalid": 1, **{m: k + 2 for k, m in enumerate(METHODS)}}

    def code(o: Any) -> int:
        return index["invalid"] if o.error else (index[o.method] if o.feasible else index["infeasible"])

    grid = [[code(o) for o in row] for row in cells]
    xe, ye = _edges(x), _edges(y)
    fig, ax = plt.subplots(figsize=(10, 7), dpi=110)
    ax.pcolormesh(xe, ye, grid, cmap=ListedColormap(palette), vmin=-0.5, vmax=len(palette) - 0.5,
                  shading="flat")
    # hatch the infeasible cells
    for j, row in enumerate(cells):
        for i, o in enumerate(row):
            if not o.feasible and not o.error:
                ax.add_patch(plt.Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], fill=False,
                                           hatch="xx", edgecolor="#8c8c8c", linewidth=0))
            if changed and changed[j][i]:
                ax.add_patch(plt.Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], fill=False,
                                           hatch="////", edgecolor="black", linewidth=0))
    # label each sizeable region with its verdict at the member cell nearest to its centre
    total = len(cells) * len(cells[0])
    for outcome, members in _regions(cells):
        if len(members) < max(2, total // 400):
            continue
        ci = sum(i for i, _ in members) / len(members)
        cj = sum(j for _, j in members) / len(members)
        i, j = min(members, key=lambda m: (m[0] - ci) ** 2 + (m[1] - cj) ** 2)
        cx = math.sqrt(xe[i] * xe[i + 1]) if x.log else (xe[i] + xe[i + 1]) / 2
        cy = math.sqrt(ye[j] * ye[j + 1]) if y.log else (ye[j] + ye[j + 1]) / 2
        ax.text(cx, cy, outcome.label() if not outcome.error else "invalid", ha="center", va="center", fontsize=9,
                fontweight="bold", color="black",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75, "linewidth": 0})
    for axis, setter, scale, ticks in ((x, ax.set_xlabel, ax.set_xscale, ax.set_xticks),
                                       (y, ax.set_ylabel, ax.set_yscale, ax.set_yticks)):
        setter(axis.label())
        if axis.categorical:
            ticks(range(len(axis.values)), [str(v) for v in axis.values], rotation=30 if axis is x else 0)
        elif axis.log:
            scale("log")
    if not x.categorical and x.fact in ("model.params", "data.examples", "serving.requests_per_day"):
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: _fmt_tick(x.fact, v)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if not y.categorical and y.fact in ("model.params", "data.examples", "serving.requests_per_day"):
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: _fmt_tick(y.fact, v)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    present = {o.method for row in cells for o in row if o.feasible}
    handles = [Patch(facecolor=methods.get(m).colour, label=m) for m in METHODS if m in present]
    if any(not o.feasible and not o.error for row in cells for o in row):
        handles.append(Patch(facecolor=INFEASIBLE_COLOUR, hatch="xx", edgecolor="#8c8c8c", label="infeasible"))
    if any(o.error for row in cells for o in row):
        handles.append(Patch(facecolor=INVALID_COLOUR, edgecolor="#8c8c8c", label="invalid facts"))
    if changed:
        n = sum(map(sum, changed))
        handles.append(Patch(facecolor="white", hatch="////", edgecolor="black",
                             label=f"verdict changed ({100.0 * n / total:.1f}% of cells)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_title(title, fontsize=12)
    if subtitle:
        fig.text(0.01, 0.01, subtitle, fontsize=8, color="#444444", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def fixed_facts_text(data: MapData) -> str:
    """Return the facts held fixed on a map, as one line."""
    from .analysis import facts_text

    fixed = copy.deepcopy(data.fixed)
    for a in (data.x, data.y):
        group, key = a.fact.split(".")
        (fixed.get(group) or {}).pop(key, None)
    return "fixed: " + (facts_text(fixed) + "; other facts: the policy's defaults" if facts_text(fixed)
                        else "the policy's defaults")


def changed_cells(a: MapData, b: MapData) -> list[list[bool]]:
    """Return, per cell, whether the two maps' verdicts (feasible, method, rank) differ."""
    return [[ca.verdict_key() != cb.verdict_key() for ca, cb in zip(ra, rb, strict=False)] for ra, rb in zip(a.cells, b.cells, strict=False)]
