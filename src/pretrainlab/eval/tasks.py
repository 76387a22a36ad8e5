"""Multiple-choice tasks scored by log-likelihood, with lm-eval's acc / acc_norm.

A task is a JSONL file; each line is one example. The canonical form is::

    {"context": "The cat sat on the", "choices": [" mat", " moon"], "gold": 0}

where each choice is the exact continuation text scored after the context (put
the separating space in the choice). As in lm-eval, the scored continuation is
``target_delimiter + choice``; the canonical form's delimiter is ``""`` unless the
record gives ``"target_delimiter"``. Three other common layouts are accepted and
converted (``normalize_example``), all with lm-eval's default delimiter ``" "``:

- HellaSwag-like: ``{"ctx", "endings", "label"}`` -> context ``ctx``, choices the endings;
- ARC-like: ``{"question", "choices": {"text", "label"}, "answerKey"}``;
- MMLU-like: ``{"question", "choices": [...], "answer": int}``;
  both as ``"Question: {q}\\nAnswer:"`` with the choice texts (lm-eval's ARC prompt).

A file may mix layouts; only ``--harness`` (lm-eval has one delimiter per task) refuses that.

Scoring follows lm-eval's ``HFLM.loglikelihood`` exactly, so our numbers equal the
harness's on the same file: trailing whitespace of the context moves to the
continuation; ``whole = encode(context + continuation)``, ``ctx = encode(context)``,
the continuation tokens are ``whole[len(ctx):]``; an empty context is the eos
token; the input is left-truncated to ``max_seq_len + 1`` tokens; the score is
the summed log-probability of the continuation tokens. Per example
(as lm-eval's ``ConfigurableTask.process_results``):

- ``acc``: ``argmax(ll) == gold``;
- ``acc_norm``: ``argmax(ll / len(choice))`` with ``len`` in characters of the
  choice itself, the delimiter not counted;
- ``acc_bytes``: ``argmax(ll / len(choice.encode("utf-8")))`` (byte length);

ties go to the first choice (``numpy.argmax``). ``*_stderr`` is the sample
standard deviation over examples divided by sqrt(n) (lm-eval's ``mean_stderr``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_jsonl
from pretrainlab.progress import progress_bar


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]  # the answers (lm-eval's doc_to_choice); lengths for acc_norm count these
    gold: int
    target_delimiter: str = ""  # scored continuation = target_delimiter + choice

    @property
    def continuations(self) -> tuple[str, ...]:
        return tuple(self.target_delimiter + c for c in self.choices)


@dataclass
class Task:
    name: str
    examples: list[Example]
    path: Path | None = None

    @property
    def target_delimiter(self) -> str | None:
        """The delimiter all examples share (lm-eval has one per task); None when layouts are mixed."""
        found = {e.target_delimiter for e in self.examples}
        return found.pop() if len(found) == 1 else (None if found else "")


# --------------------------------------------------------------------------- loading


def normalize_example(rec: dict) -> Example:
    """One JSON record in any accepted layout -> Example; ValueError says what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError("record is not a JSON object")
    delimiter = " "  # lm-eval's default target_delimiter, for the converted layouts
    if "context" in rec and "choices" in rec:
        context, choices, gold = rec["context"], rec["choices"], rec.get("gold", rec.get("label"))
        delimiter = rec.get("target_delimiter", "")
        if not isinstance(delimiter, str):
            raise ValueError("target_delimiter must be a string")
    elif "ctx" in rec and "endings" in rec:
        context, choices, gold = rec["ctx"], [str(e) for e in rec["endings"]], rec.get("label")
    elif "question" in rec and isinstance(rec.get("choices"), dict):
        labels = list(rec["choices"].get("label") or [])
        texts = list(rec["choices"].get("text") or [])
        context, choices = f"Question: {rec['question']}\nAnswer:", [str(t) for t in texts]
        key = rec.get("answerKey")
        gold = labels.index(key) if key in labels else key
    elif "question" in rec and isinstance(rec.get("choices"), list):
        context, choices, gold = f"Question: {rec['question']}\nAnswer:", [str(t) for t in rec["choices"]], rec.get("answer")
    else:
        raise ValueError("expected keys context/choices/gold (or ctx/endings/label, or question/choices/answer[Key])")
    if not isinstance(context, str):
        raise ValueError("context must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a list of at least 2 non-empty strings")
    if isinstance(gold, str) and gold.strip().isdigit():
        gold = int(gold)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"gold must be an index into the {len(choices)} choices (got {gold!r})")
    return Example(context, tuple(choices), gold, delimiter)


def load_task(path: str | Path, name: str | None = None, limit: int | None = None) -> Task:
    """Read a task JSONL file; DataError names the file and line of the first bad record."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file not found: {path}; pass a JSONL file of {{context, choices, gold}} records")
    examples: list[Example] = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(normalize_example(json.loads(line)))
                except (json.JSONDecodeError, ValueError) as exc:
                    raise DataError(f"{path}:{lineno}: bad task record ({exc}); fix or remove that line") from None
                if limit is not None and len(examples) >= limit:
                    break
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; save the task file as UTF-8 JSONL") from None
    if not examples:
        raise DataError(f"{path}: no examples; a task file needs at least one {{context, choices, gold}} line")
    return Task(name or path.stem, examples, path)


def write_task(path: str | Path, examples: list[Example]) -> None:
    """Write examples in the canonical JSONL form (atomically)."""
    atomic_write_jsonl(path, ({"context": e.context, "choices": list(e.choices), "gold": e.gold,
                               **({"target_delimiter": e.target_delimiter} if e.target_delimiter else {})}
                              for e in examples))


# --------------------------------------------------------------------------- scoring


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's HFLM splits them."""
    if not context:
        return [tokenizer.eos_id], tokenizer.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16, device=None,
                   progress=None) -> list[tuple[float, bool]]:
    """(summed log-prob of the continuation, whether greedy decoding produces it) per (context, continuation).

    Rows are sorted by length and right-padded into batches (padding after a row
    cannot change its causal logits); results come back in input order.
    ``progress``, if given, is called with the number of rows done after each batch.
    """
    max_len = int(model.cfg.max_seq_len)
    dev = device or next(model.parameters()).device
    rows = []
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise DataError(f"choice {continuation!r} encodes to no tokens; task choices must be non-empty text")
        seq = (ctx + cont)[-(max_len + 1):]
        n_cont = min(len(cont), len(seq) - 1)
        rows.append((i, seq[:-1], seq[-n_cont:]))
    order = sorted(range(len(rows)), key=lambda j: -len(rows[j][1]))
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(order), max(1, batch_size)):
            batch = [rows[j] for j in order[b0 : b0 + batch_size]]
            width = max(len(r[1]) for r in batch)
            inp = torch.zeros(len(batch), width, dtype=torch.long)
            for k, (_, x, _) in enumerate(batch):
                inp[k, : len(x)] = torch.tensor(x, dtype=torch.long)
            logits, _ = model(inp.to(dev))
            for k, (i, x, cont) in enumerate(batch):
                n = len(cont)
                lp = F.log_softmax(logits[k, len(x) - n : len(x)].float(), dim=-1)  # continuation positions only
                target = torch.tensor(cont, dtype=torch.long, device=lp.device)
                ll = float(lp.gather(1, target[:, None]).sum().double().item())
                greedy = bool(torch.equal(lp.argmax(-1), target))
                out[i] = (ll, greedy)
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _mean_stderr(xs: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def task_metrics(examples: list[Example], lls: list[list[float]]) -> dict[str, Any]:
    """acc, acc_norm, acc_bytes (+ stderr), n and chance level from per-choice log-likelihoods."""
    acc, acc_norm, acc_bytes = [], [], []
    for ex, ll in zip(examples, lls):
        acc.append(float(_argmax(ll) == ex.gold))
        acc_norm.append(float(_argmax([v / len(c) for v, c in zip(ll, ex.choices)]) == ex.gold))
        acc_bytes.append(float(_argmax([v / len(c.encode("utf-8")) for v, c in zip(ll, ex.choices)]) == ex.gold))
    n = len(examples)
    res: dict[str, Any] = {"n": n, "chance": sum(1 / len(e.choices) for e in examples) / n if n else None}
    for key, xs in (("acc", acc), ("acc_norm", acc_norm), ("acc_bytes", acc_bytes)):
        res[key] = sum(xs) / n if n else None
        res[f"{key}_stderr"] = _mean_stderr(xs)
    return res


def evaluate_task(model, tokenizer, task: Task, batch_size: int = 16, device=None, show_progress: bool = True) -> dict[str, Any]:
    """Score every choice of every example; returns ``task_metrics`` plus the task's name and path."""
    pairs = [(ex.context, cont) for ex in task.examples for cont in ex.continuations]
    if show_progress:
        with progress_bar(f"task {task.name}", len(pairs), unit="choices") as bar:
            flat = loglikelihoods(model, tokenizer, pairs, batch_size, device, progress=bar.advance)
    else:
        flat = loglikelihoods(model, tokenizer, pairs, batch_size, device)
    lls, pos = [], 0
    for ex in task.examples:
        lls.append([ll for ll, _ in flat[pos : pos + len(ex.choices)]])
        pos += len(ex.choices)
    return {"task": task.name, "path": str(task.path) if task.path else None, **task_metrics(task.examples, lls)}
