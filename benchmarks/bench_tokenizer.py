"""Benchmark tokenizer training and corpus tokenization on ~5 MB of Python stdlib source.

    .venv/bin/python benchmarks/bench_tokenizer.py [--vocab 4096] [--repeat 3] [--dir /tmp/tokbench]

Builds a clean corpus with two sources (alternate stdlib files, cut into ~3,000-char
documents, ~5% held out), trains the byte-level BPE tokenizer (and checks that a run
with RAYON_NUM_THREADS=1 gives the same file hash), then tokenizes the corpus with
each backend and prints tokens/s (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from pretrainlab.config import load_config
from pretrainlab.tokenizer.shards import tokenize_corpus
from pretrainlab.tokenizer.train import train_tokenizer


def make_corpus(clean: Path, doc_chars: int = 3000) -> None:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    shutil.rmtree(clean, ignore_errors=True)
    for k, source in enumerate(("stdlib_a", "stdlib_b")):
        (clean / source).mkdir(parents=True)
        with open(clean / source / "train.jsonl", "w") as tr, open(clean / source / "heldout.jsonl", "w") as ho:
            for i, f in enumerate(files[k::2]):
                text = open(f, encoding="utf-8", errors="replace").read()
                for j in range(0, len(text), doc_chars):
                    rec = {"id": f"{os.path.basename(f)}:{j}", "text": text[j : j + doc_chars], "source": source, "meta": {}}
                    (ho if (i * 7 + j) % 20 == 0 else tr).write(json.dumps(rec) + "\n")
    (clean / "manifest.json").write_text(json.dumps({"sources": ["stdlib_a", "stdlib_b"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pretrainlab_tokbench"))
    args = ap.parse_args()
    clean = args.dir / "clean"
    make_corpus(clean)
    mb = sum(p.stat().st_size for p in clean.rglob("*.jsonl")) / 1e6
    base = [f"workdir={args.dir}", f"tokenizer.vocab_size={args.vocab}"]
    print(f"corpus: {mb:.1f} MB JSONL in {clean}; cpus={os.cpu_count()}; python {sys.version.split()[0]}")

    times, hashes = [], set()
    for _ in range(args.repeat):
        t = time.perf_counter()
        m = train_tokenizer(load_config(None, base))
        times.append(time.perf_counter() - t)
        hashes.add(m["tokenizer_sha256"])
    print(
        f"train vocab={m['vocab_size']}: {m['chars_trained']:,} chars, best {min(times):.2f}s "
        f"(median {statistics.median(times):.2f}s, {m['chars_trained'] / min(times) / 1e6:.2f} M chars/s); "
        f"identical across runs: {len(hashes) == 1}"
    )
    code = (
        "from pretrainlab.config import load_config; from pretrainlab.tokenizer.train import train_tokenizer;"
        f"print(train_tokenizer(load_config(None, {base + [f'tokenizer.out={args.dir}/tok_1thread']!r}))['tokenizer_sha256'])"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    print(f"train with RAYON_NUM_THREADS=1 gives the same tokenizer.json: {one in hashes}")

    variants = [
        ("threads, TOKENIZERS_PARALLELISM=false (1 core)", "threads", 1, "false"),
        ("threads (library thread pool, all cores)", "threads", 1, None),
        ("processes x1", "processes", 1, None),
        ("processes x2", "processes", 2, None),
    ]
    for label, backend, workers, par in variants:
        rates = []
        for _ in range(args.repeat):
            out = args.dir / "tokens"
            shutil.rmtree(out, ignore_errors=True)
            if par is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = par
            cfg = load_config(None, base + [f"tokenize.backend={backend}", f"tokenize.workers={workers}"])
            t = time.perf_counter()
            m = tokenize_corpus(cfg)
            dt = time.perf_counter() - t
            rates.append(m["totals"]["all"]["tokens"] / dt)
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
        print(
            f"tokenize {label}: {m['totals']['all']['tokens']:,} tokens, best {max(rates):,.0f} tok/s "
            f"(median {statistics.median(rates):,.0f})"
        )
    t = time.perf_counter()
    m = tokenize_corpus(cfg)
    print(f"re-run with nothing changed: {m['status']} in {time.perf_counter() - t:.3f}s")


if __name__ == "__main__":
    main()
