"""Built-in multiple-choice tasks made from a run's held-out documents (no download).

Two tasks, written as canonical task JSONL (see ``tasks.py``) so our scorer and
lm-eval read the same files:

- ``cloze`` (last-word cloze, LAMBADA-like): a passage of a held-out document
  cut just before a word; choices are that word and 3 other words of the same
  source's held-out text (each with its leading space).
- ``continuation`` (choose the true continuation): a passage, then its true
  next ~``CONT_CHARS`` characters vs. same-length pieces of 3 other held-out
  documents of the same source.

Documents are decoded from the held-out token shards with the run's tokenizer,
every choice is seeded (``seed``), and the gold position is shuffled, so chance
is 25%. Examples are spread round-robin over sources. A source with fewer than
2 usable documents contributes none.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from pretrainlab.eval.tasks import Example, write_task
from pretrainlab.tokenizer.shards import ShardReader, list_sources

BUILTIN_TASKS = ("cloze", "continuation")
CONTEXT_CHARS = 240
CONT_CHARS = 60
N_CHOICES = 4
_WORD = re.compile(r"(?<=\s)([A-Za-z_][A-Za-z_0-9]{2,})(?=\W)")


def heldout_documents(tokens_dir: str | Path, tokenizer, max_docs_per_source: int = 400) -> dict[str, list[str]]:
    """Decoded held-out documents per source (sources without a readable held-out split are left out)."""
    docs: dict[str, list[str]] = {}
    for source in list_sources(tokens_dir):
        try:
            reader = ShardReader(tokens_dir, source, "heldout")
        except Exception:
            continue
        texts = [tokenizer.decode(reader.doc(i).tolist()) for i in range(min(reader.num_docs, max_docs_per_source))]
        texts = [t for t in texts if len(t) >= 40]
        if texts:
            docs[source] = texts
    return docs


def _cut_before(text: str, pos: int, chars: int) -> str:
    """text[..pos] limited to the last ``chars`` characters, starting at a whitespace boundary when possible."""
    start = max(0, pos - chars)
    if start:
        ws = text.find(" ", start, pos)
        start = ws + 1 if 0 <= ws < pos - 20 else start
    return text[start:pos]


def _cloze(rng: random.Random, docs: list[str], vocab: list[str]) -> Example | None:
    doc = rng.choice(docs)
    spots = [m for m in _WORD.finditer(doc) if m.start() >= 40]
    if not spots or len(vocab) < N_CHOICES:
        return None
    m = rng.choice(spots)
    word = m.group(1)
    before = doc[: m.start()]
    stripped = before.rstrip()
    gap = before[len(stripped):]  # the whitespace before the word belongs to every choice
    context = _cut_before(stripped, len(stripped), CONTEXT_CHARS)
    others = [w for w in vocab if w != word]
    if not context.strip() or len(others) < N_CHOICES - 1:
        return None
    choices = [gap + w for w in [word, *rng.sample(others, N_CHOICES - 1)]]
    return _shuffled(rng, context, choices)


def _continuation(rng: random.Random, docs: list[str]) -> Example | None:
    if len(docs) < N_CHOICES:
        return None
    i = rng.randrange(len(docs))
    doc = docs[i]
    if len(doc) < 60 + CONT_CHARS:
        return None
    split = rng.randrange(40, len(doc) - CONT_CHARS + 1)
    ws = doc.find(" ", split, split + 30)
    split = ws if ws > 0 and ws + CONT_CHARS <= len(doc) else split
    context = _cut_before(doc, split, CONTEXT_CHARS)
    true = doc[split : split + CONT_CHARS]
    others = [j for j in range(len(docs)) if j != i and len(docs[j]) >= CONT_CHARS + 1]
    if len(others) < N_CHOICES - 1:
        return None
    choices = [true]
    for j in rng.sample(others, N_CHOICES - 1):
        other = docs[j]
        s = rng.randrange(0, len(other) - CONT_CHARS + 1)
        choices.append(other[s : s + CONT_CHARS])
    if len(set(choices)) < N_CHOICES or not context.strip() or not all(c.strip() for c in choices):
        return None
    return _shuffled(rng, context, choices)


def _shuffled(rng: random.Random, context: str, choices: list[str]) -> Example:
    order = list(range(len(choices)))
    rng.shuffle(order)
    return Example(context, tuple(choices[k] for k in order), order.index(0))


def build_examples(docs: dict[str, list[str]], task: str, n: int, seed: int = 0) -> list[Example]:
    """Up to ``n`` examples of ``task``, round-robin over sources; deterministic for a seed."""
    if task not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in task {task!r}; choose from {BUILTIN_TASKS}")
    rng = random.Random(f"{task}:{seed}")
    sources = [s for s in sorted(docs) if len(docs[s]) >= 2]
    vocab = {s: sorted({m.group(1) for d in docs[s] for m in _WORD.finditer(d)}) for s in sources}
    out: list[Example] = []
    seen: set[tuple] = set()
    attempts = 0
    while sources and len(out) < n and attempts < 20 * n:
        source = sources[attempts % len(sources)]
        attempts += 1
        ex = _cloze(rng, docs[source], vocab[source]) if task == "cloze" else _continuation(rng, docs[source])
        if ex is not None and (ex.context, ex.choices) not in seen:
            seen.add((ex.context, ex.choices))
            out.append(ex)
    return out


def write_builtin_tasks(tokens_dir: str | Path, tokenizer, out_dir: str | Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/<task>.jsonl`` for every built-in task; returns {task: path} of non-empty ones."""
    docs = heldout_documents(tokens_dir, tokenizer)
    paths: dict[str, Path] = {}
    for task in BUILTIN_TASKS:
        examples = build_examples(docs, task, n, seed)
        if examples:
            path = Path(out_dir) / f"{task}.jsonl"
            write_task(path, examples)
            paths[task] = path
    return paths
