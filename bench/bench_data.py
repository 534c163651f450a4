"""Tokenization speed (per-segment baseline vs batched, cached) and padding (padded vs padding-free vs packed).

    .venv/bin/python bench/bench_data.py [--examples 20000] [--micro-batch 8] [--seq-len 128]

Tokenization, in one process on the same records (the bundled alpaca and chat examples, repeated
with numbered variations up to ``--examples``):

* baseline: the executors' previous tokenization, one tokenizer call per template segment per example;
* batched: render with the chat template, one batched fast-tokenizer call, labels from the offsets
  (``executors.tokenized``, a cache miss);
* cached: the same tokens read back from the tokenization cache.

Padding: the share of padding tokens over one epoch of random micro-batches of the alpaca
examples (the Trainer's sampling), with right-padded batches, padding-free batches, and packed +
padding-free batches. Prints examples/s and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
CHAT_HEADER = "<|{role}|>\n"


def baseline_tokenize(record: dict, fmt: str, tok, seq_len: int) -> dict | None:
    """The previous per-segment tokenization (executors/data.py before the chat templates), as the reference."""
    if fmt == "alpaca":
        segs = [(ALPACA_PROMPT.format(instruction=record["instruction"]), False, False), (record["output"], True, True)]
    else:
        segs = []
        for m in record["messages"]:
            segs.append((CHAT_HEADER.format(role=m["role"]), False, False))
            if m["role"] == "assistant":
                segs += [(m["content"], True, True), ("\n", False, False)]
            else:
                segs.append((m["content"] + "\n", False, False))
    ids, labels = [tok.bos_token_id], [-100]
    for text, trained, eos in segs:
        piece = list(tok(text, add_special_tokens=False)["input_ids"])
        if eos:
            piece.append(tok.eos_token_id)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    ids, labels = ids[:seq_len], labels[:seq_len]
    return {"input_ids": ids, "labels": labels} if any(x != -100 for x in labels) else None


def records(n: int) -> list[tuple[dict, str]]:
    from executors.tiny import EXAMPLES_DIR

    base = []
    for name, fmt in (("alpaca.jsonl", "alpaca"), ("chat.jsonl", "chat")):
        with open(EXAMPLES_DIR / "data" / name, encoding="utf-8") as fh:
            base += [(json.loads(line), fmt) for line in fh if line.strip()]
    out = []
    for i in range(n):
        record, fmt = base[i % len(base)]
        record = json.loads(json.dumps(record))
        if fmt == "alpaca":
            record["instruction"] += f" (variant {i})"
        else:
            record["messages"][-2]["content"] += f" (variant {i})"
        out.append((record, fmt))
    return out


def collate_epoch(rows: list[dict], micro_batch: int, padding_free: bool, pad_id: int, seed: int = 0) -> dict:
    """Collate one shuffled epoch of ``rows`` in micro-batches; return the collator's token counts."""
    from executors.tokenized import CountingCollator

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    collator = CountingCollator(pad_id, padding_free=padding_free)
    for i in range(0, len(order), micro_batch):
        collator([rows[j] for j in order[i:i + micro_batch]])
    return collator.stats()


def main() -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    from executors.chat_template import choose_template
    from executors.data import scan_file
    from executors.modeling import load_tokenizer
    from executors.tiny import EXAMPLES_DIR, build_tiny_model
    from executors.tokenized import build_run_data, tokenized_source, tokenizer_fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FINETUNE_POLICY_CACHE"] = os.path.join(tmp, "cache")
        model = build_tiny_model(os.path.join(tmp, "model"))
        tok = load_tokenizer(model)
        data = records(args.examples)
        path = os.path.join(tmp, "chat.jsonl")
        with open(path, "w", encoding="utf-8") as fh:  # one format per file: alpaca records as conversations
            for record, fmt in data:
                if fmt == "alpaca":
                    record = {"messages": [{"role": "user", "content": record["instruction"]},
                                           {"role": "assistant", "content": record["output"]}]}
                fh.write(json.dumps(record) + "\n")
        scan = scan_file(path)
        template = choose_template("chat", None, ["chat"])
        sha = tokenizer_fingerprint(model)

        start = time.perf_counter()
        for record, fmt in ((e.record, "chat") for e in scan.examples):
            baseline_tokenize(record, fmt, tok, args.seq_len)
        base_s = time.perf_counter() - start
        miss = tokenized_source(scan, tok, template, args.seq_len, sha)
        start = time.perf_counter()
        hit = tokenized_source(scan, tok, template, args.seq_len, sha)
        tokens = sum(len(ids) for ids in hit.table["input_ids"])  # read every token back, not just open the file
        hit_s = time.perf_counter() - start
        assert not miss.cached and hit.cached
        n = len(scan.examples)
        print(f"tokenization of {n} examples (seq_len {args.seq_len}, {tokens} tokens):")
        print(f"  baseline per-segment          {n / base_s:10.0f} examples/s  1.00x")
        print(f"  batched + cache write (miss)  {n / miss.seconds:10.0f} examples/s  {base_s / miss.seconds:.2f}x")
        print(f"  cache hit, all tokens read    {n / hit_s:10.0f} examples/s  {base_s / hit_s:.2f}x")

        alpaca = str(EXAMPLES_DIR / "data" / "alpaca.jsonl")
        plan = {"files": [{"path": alpaca}], "declared_format": None, "split": None, "eval_fraction": 0.1, "seed": 0,
                "seq_len": args.seq_len, "multitask": None, "packing": False,
                "chat_template": choose_template("auto", None, ["alpaca"]).to_dict()}
        plain = list(build_run_data(plan, tok, model).train)
        packed = list(build_run_data({**plan, "packing": True}, tok, model).train)
        padded = collate_epoch(plain, args.micro_batch, False, tok.pad_token_id)
        free = collate_epoch(plain, args.micro_batch, True, tok.pad_token_id)
        both = collate_epoch(packed, args.micro_batch, True, tok.pad_token_id)
        print(f"padding over one shuffled epoch of {len(plain)} alpaca examples, micro batch {args.micro_batch}:")
        print(f"  right-padded batches          {padded['padding_fraction']:6.1%}  ({padded['slots']} token slots)")
        print(f"  padding-free batches          {free['padding_fraction']:6.1%}  ({free['slots']} token slots)")
        print(f"  packed (BFD) + padding-free   {both['padding_fraction']:6.1%}  ({len(packed)} sequences; "
              f"padded they would carry {both['padding_fraction_if_padded']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
