"""``decide eval RUN``: perplexity on held-out task data, a forgetting check, and format adherence.

* **Task perplexity**: ``exp`` of the mean loss over the trained tokens of the run's held-out split
  (the plan's deterministic split, read from the tokenization cache) or of ``--data`` files
  rendered the same way, for the base model (before) and the trained model (after).
* **Forgetting**: perplexity on a sample of general text (``--general FILE``, default: a bundled
  English sample, ``executors/eval_data/general.jsonl``) before and after; a relative increase above
  the policy's ``forgetting_ppl_increase`` threshold (10 % in the default policy) is flagged. A flag
  is a result, not an error: the command still exits 0 and says so.
* **Format adherence** (conversation data): the trained model answers held-out prompts (greedy;
  the turn is the conversation's first tool call if it makes one, else its last reply); the report
  counts answers that stop with the end-of-turn token, that do not run on into the template's next
  turn, that are valid JSON where the reference answer is JSON, and that contain a parseable tool
  call where the reference makes one.

Results go to ``RUN/eval.json`` and into the run manifest's ``evaluation``. The base model is the
trained one with its adapter disabled (the same 4-bit weights for a quantized run); a fully
fine-tuned run loads its base separately.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import get_executor
from .errors import DataError, Diagnostic, Location
from .plan import write_json_atomic

GENERAL_TEXT = str(Path(__file__).resolve().parent / "eval_data" / "general.jsonl")
DEFAULT_FORGETTING_THRESHOLD = 0.10
EVAL_FILE = "eval.json"


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def forgetting_threshold(policy_path: str | None) -> tuple[float, dict[str, Any]]:
    """Return the policy's ``forgetting_ppl_increase`` threshold and where it came from.

    Raises PolicyError (exit 3) for an invalid policy. A policy without the threshold gives the
    default 0.10 (the default policy's value), said in the returned description.
    """
    from ruleengine.policy import load_policy

    policy = load_policy(policy_path)
    value = policy.thresholds.get("forgetting_ppl_increase")
    source = {"policy": policy.name, "version": policy.version, "sha256": policy.sha256,
              "threshold": "forgetting_ppl_increase" if value is not None else "default (policy has none)"}
    return (float(value) if value is not None else DEFAULT_FORGETTING_THRESHOLD), source


def _rows_to_batches(rows: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[tuple[list[int], list[int]]]]:
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def token_nll(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Return the summed negative log-likelihood of the trained tokens (labels != -100) of ``rows`` and their count.

    ``rows`` are ``(input_ids, labels)`` pairs; batches are right-padded. Logits longer than the
    input (prompt tuning's virtual tokens) are aligned on the input's end.
    """
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _rows_to_batches(rows, batch_size):
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, :len(x)] = torch.tensor(x)
                mask[i, :len(x)] = 1
                labels[i, :len(y)] = torch.tensor(y)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            logits = logits[:, -width:, :]
            shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                     shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total, count


def perplexity(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Return ``{"loss", "perplexity", "tokens"}`` of ``model`` on ``rows`` (mean over trained tokens)."""
    nll, n = token_nll(model, rows, pad_id)
    loss = nll / n if n else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if n else None, "tokens": n}


def _table_rows(table: Any, limit: int | None) -> list[tuple[list[int], list[int]]]:
    if table is None:
        return []
    n = len(table) if limit is None else min(limit, len(table))
    part = table.select(range(n))
    return list(zip(part["input_ids"], part["labels"], strict=True))


def task_rows(plan: dict, tokenizer: Any, data_files: list[str] | None, limit: int | None) -> tuple[list, str]:
    """Return the held-out rows to measure task perplexity on, and what they are.

    With ``data_files``, every record of those files (rendered with the run's chat template);
    otherwise the run's own held-out split. Raises DataError for unreadable data.
    """
    from .chat_template import TemplateSpec
    from .data import scan_files
    from .tokenized import build_run_data, tokenized_source, tokenizer_fingerprint

    if data_files:
        template = TemplateSpec.from_dict(plan["data"]["chat_template"])
        sha = tokenizer_fingerprint(plan["model"]["path"])
        rows: list[tuple[list[int], list[int]]] = []
        for scan in scan_files(data_files):
            table = tokenized_source(scan, tokenizer, template, int(plan["data"]["seq_len"]), sha).table
            rows.extend((ids, labels) for ids, labels, keep in zip(table["input_ids"], table["labels"], table["keep"],
                                                                  strict=True) if keep)
        return (rows[:limit] if limit else rows), "--data " + ", ".join(data_files)
    unpacked = dict(plan["data"], packing=False)
    data = build_run_data(unpacked, tokenizer, plan["model"]["path"])
    if data.eval is None or len(data.eval) == 0:
        raise DataError([Diagnostic("eval-no-heldout", "the run has no held-out examples (eval fraction 0)",
                                    Location("RUN"), "give held-out data with --data FILE")])
    return _table_rows(data.eval, limit), f"held-out split of the run ({plan['data']['eval_fraction']:g})"


def general_rows(tokenizer: Any, path: str, seq_len: int, limit: int | None) -> list[tuple[list[int], list[int]]]:
    """Return the general-text rows (raw text, every token counted) of ``path`` (JSONL with ``text``, or plain text)."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        if path.endswith((".jsonl", ".json")):
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    if isinstance(record, dict) and isinstance(record.get("text"), str):
                        texts.append(record["text"])
        else:
            texts = [p.strip() for p in fh.read().split("\n\n") if p.strip()]
    if not texts:
        raise DataError([Diagnostic("eval-empty-general", f"no text in {path}", Location("--general"),
                                    "give JSONL with a `text` field, or plain text paragraphs")])
    texts = texts[:limit] if limit else texts
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    enc = tokenizer([bos + t + eos for t in texts], add_special_tokens=False)
    rows = []
    for ids in enc["input_ids"]:
        ids = list(ids[:seq_len])
        rows.append((ids, [-100] + ids[1:]))
    return rows


def _json_value(text: str) -> Any:
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```\w*\n?|```$", "", text).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _tool_call_in(text: str) -> bool:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return False
    value = _json_value(text[start:end + 1])
    return isinstance(value, dict) and isinstance(value.get("name") or (value.get("function") or {}).get("name"), str)


def format_adherence(model: Any, tokenizer: Any, plan: dict, n: int, max_new_tokens: int) -> dict[str, Any] | None:
    """Return how well the trained model's answers to held-out conversation prompts keep the trained format.

    None when the run has no conversation data.
    """
    import torch

    from .chat_template import Renderer, TemplateSpec
    from .data import examples_of, scan_files, split_and_mix
    from .formats import to_sample

    data = plan["data"]
    scans = scan_files([f["path"] for f in data["files"]], data.get("declared_format"), data.get("split"))
    mt = data.get("multitask") or {}
    split = split_and_mix(examples_of(scans), data["eval_fraction"], data["seed"], mt.get("temperature"), mt.get("cap"))
    samples = [to_sample(ex.record, ex.format) for ex in (split.eval or split.train)]
    chats = [s for s in samples if s.kind == "chat" and any(s.trained)][:n]
    if not chats:
        return None
    renderer = Renderer(tokenizer, TemplateSpec.from_dict(data["chat_template"]))
    stop_ids = {tokenizer.eos_token_id}
    gen_cfg = getattr(model, "generation_config", None)
    eos_cfg = getattr(gen_cfg, "eos_token_id", None)
    stop_ids.update(eos_cfg if isinstance(eos_cfg, list) else [eos_cfg])
    stop_ids.discard(None)
    device = next(model.parameters()).device
    counts = {"stopped": 0, "no_runon": 0, "json_expected": 0, "json_valid": 0, "tool_expected": 0, "tool_valid": 0}
    examples: list[dict[str, Any]] = []
    for sample in chats:
        trained_turns = [i for i, flag in enumerate(sample.trained) if flag]
        # a tool call where the conversation makes one (the format most likely to break), else the last reply
        calls = [i for i in trained_turns if sample.messages[i].get("tool_calls")]
        turn = calls[0] if calls else trained_turns[-1]
        history, reference = sample.messages[:turn], sample.messages[turn]
        prompt, _ = renderer._render(history, sample.tools, generation_prompt=True)
        without, _ = renderer._render(history, sample.tools)
        header = prompt[len(without):].strip() if prompt.startswith(without) else ""
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        stopped = bool(new) and new[-1] in stop_ids
        body = new[:-1] if stopped else new
        text = tokenizer.decode(body, skip_special_tokens=True)
        runon = bool(header) and header in tokenizer.decode(body, skip_special_tokens=False)
        counts["stopped"] += stopped
        counts["no_runon"] += not runon
        ref_text = reference.get("content") or ""
        if reference.get("tool_calls"):
            counts["tool_expected"] += 1
            counts["tool_valid"] += _tool_call_in(text)
        elif isinstance(_json_value(ref_text), (dict, list)):
            counts["json_expected"] += 1
            counts["json_valid"] += isinstance(_json_value(text), (dict, list))
        if len(examples) < 3:
            examples.append({"prompt_end": prompt[-120:], "output": text[:300], "reference": ref_text[:300],
                             "stopped": stopped})
    total = len(chats)

    def rate(k: str, of: int) -> float | None:
        return round(counts[k] / of, 4) if of else None

    return {"samples": total, "max_new_tokens": max_new_tokens, "stopped_rate": rate("stopped", total),
            "no_runon_rate": rate("no_runon", total),
            "json": {"expected": counts["json_expected"], "valid": counts["json_valid"],
                     "rate": rate("json_valid", counts["json_expected"])},
            "tool_calls": {"expected": counts["tool_expected"], "valid": counts["tool_valid"],
                           "rate": rate("tool_valid", counts["tool_expected"])},
            "examples": examples}


def _base_context(model: Any) -> Any:
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def evaluate_run(run_dir: str, *, data_files: list[str] | None = None, general: str | None = None,
                 policy_path: str | None = None, max_examples: int | None = 200, generate: int = 8,
                 max_new_tokens: int = 64, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Evaluate the finished run ``run_dir``; returns the report (also written to ``RUN/eval.json`` and the manifest).

    Raises PlanError (exit 2) when ``run_dir`` is not a finished run, DataError for unreadable
    data, PolicyError (exit 3) for an invalid ``policy_path``.
    """
    from .merge import load_run_plan
    from .modeling import load_tokenizer, torch_dtype

    run_dir = os.path.abspath(run_dir)
    plan = load_run_plan(run_dir)
    executor = get_executor(plan["method"])
    threshold, threshold_source = forgetting_threshold(policy_path)
    artifact = os.path.join(run_dir, executor.artifact_dir)
    tokenizer = load_tokenizer(artifact)
    if tokenizer.chat_template is None and plan["data"]["chat_template"].get("used", True):
        tokenizer.chat_template = plan["data"]["chat_template"]["text"]
    rows, rows_from = task_rows(plan, tokenizer, data_files, max_examples)
    general_path = general or GENERAL_TEXT
    general_data = general_rows(tokenizer, general_path, int(plan["data"]["seq_len"]), max_examples)
    log(f"evaluating {plan['method']} run {run_dir}: {len(rows)} task example(s) ({rows_from}), "
        f"{len(general_data)} general text sample(s)")
    trained = executor.load_trained(run_dir, plan)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    after_task = perplexity(trained, rows, pad)
    after_general = perplexity(trained, general_data, pad)
    if plan["method"] == "full_ft":
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(plan["model"]["path"],
                                                    dtype=torch_dtype(plan["model"]["dtype"])).eval()
        before_task, before_general = perplexity(base, rows, pad), perplexity(base, general_data, pad)
        del base
    else:
        with _base_context(trained):
            before_task, before_general = perplexity(trained, rows, pad), perplexity(trained, general_data, pad)
    increase = (after_general["perplexity"] / before_general["perplexity"] - 1
                if before_general["perplexity"] else None)
    flagged = increase is not None and increase > threshold
    adherence = format_adherence(trained, tokenizer, plan, generate, max_new_tokens) if generate else None
    report = {
        "run": run_dir, "method": plan["method"],
        "task": {"data": rows_from, "examples": len(rows), "before": before_task, "after": after_task},
        "forgetting": {"general_text": general_path, "samples": len(general_data), "before": before_general,
                       "after": after_general, "ppl_increase": increase, "threshold": threshold,
                       "threshold_source": threshold_source, "flagged": flagged,
                       "policy_matches_run": (plan.get("decision") or {}).get("policy", {}).get("sha256")
                       == threshold_source["sha256"] if plan.get("decision") else None},
        "format": adherence,
    }
    write_json_atomic(os.path.join(run_dir, EVAL_FILE), report)
    manifest_path = os.path.join(run_dir, "run-manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        manifest["evaluation"] = {k: report[k] for k in ("task", "forgetting", "format")}
        manifest.setdefault("artifacts", {})["evaluation"] = EVAL_FILE
        write_json_atomic(manifest_path, manifest)
    return report


def summarize_eval(report: dict) -> str:
    """Return the terminal summary of an evaluation report."""
    def ppl(entry: dict) -> str:
        return "n/a" if entry.get("perplexity") is None else f"{entry['perplexity']:.3f}"

    t, f = report["task"], report["forgetting"]
    lines = [f"task perplexity ({t['examples']} examples, {t['data']}): {ppl(t['before'])} -> {ppl(t['after'])}",
             f"general-text perplexity ({f['samples']} samples): {ppl(f['before'])} -> {ppl(f['after'])} "
             f"({(f['ppl_increase'] or 0):+.1%}; threshold {f['threshold']:.0%} from "
             f"{f['threshold_source']['policy']} {f['threshold_source']['version']})"]
    if f["flagged"]:
        lines.append("FORGETTING FLAGGED: the general-text perplexity rose above the policy's threshold "
                     "(a result, not an error: exit 0)")
    fmt = report.get("format")
    if fmt:
        lines.append(f"format ({fmt['samples']} generated answers): stops {fmt['stopped_rate']:.0%}, "
                     f"no run-on into the next turn {fmt['no_runon_rate']:.0%}"
                     + (f", valid JSON {fmt['json']['valid']}/{fmt['json']['expected']}" if fmt["json"]["expected"] else "")
                     + (f", tool calls {fmt['tool_calls']['valid']}/{fmt['tool_calls']['expected']}"
                        if fmt["tool_calls"]["expected"] else ""))
    lines.append(f"written to {os.path.join(report['run'], EVAL_FILE)} and the run manifest")
    return "\n".join(lines)
