"""Benchmark tokenizer training and sharding (`data tokenize`) on the embedded corpus.

    .venv/bin/python benchmarks/bench_tokenizer.py [--size medium] [--kinds bpe,sp_bpe,sp_unigram]
        [--vocab 4096] [--repeat 3] [--dir /tmp/pretrainlab_tokbench] [--corpus embedded|stdlib]

1. Builds the corpus: ``embedded`` runs `corpus build` + `data build` at ``--size``
   (what the quickstart trains on); ``stdlib`` cuts ~5 MB of stdlib ``*.py`` into
   ~3,000-character documents in two sources (the issue-2 figures).
2. For each tokenizer kind: trains it twice (chars/s; both files must be identical)
   and, for byte-level BPE, once more with RAYON_NUM_THREADS=1 (same file expected).
3. Peer: the library's own batch encoder on every document already in memory
   (BPE: ``tokenizers.Tokenizer.encode_batch``; SentencePiece: ``encode(num_threads=all)``;
   all cores, no file reading, JSON parsing or writing). Each variant (our in-memory
   ``encode_batch``, `data tokenize` with each backend) runs alternately with the peer,
   so both see the same load on a shared machine; prints tokens/s and the median of the
   paired ratios. Target (issue 4): sharding at the batch encoder's rate (>= 0.7M tok/s
   on 2 idle cores).
4. A re-run with nothing changed must report "up to date".
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
from pretrainlab.tokenizer.train import iter_texts, train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer


def make_stdlib_corpus(clean: Path, doc_chars: int = 3000) -> None:
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


def make_embedded_corpus(base: list[str], size: str) -> None:
    from pretrainlab.corpus.embedded import build_corpus
    from pretrainlab.data.pipeline import build_clean_corpus

    cfg = load_config(None, base + [f"corpus.size={size}"])
    build_corpus(cfg)
    build_clean_corpus(cfg)


def paired(fn, peer, repeat: int) -> tuple[float, float, float, int]:
    """Alternate ``fn`` and ``peer`` (each returns tokens) ``repeat`` times so both see the same machine
    load; returns (best fn tok/s, best peer tok/s, median of the per-pair ratios fn/peer, tokens of fn)."""
    rates, peers, ratios = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        n_peer = peer()
        peers.append(n_peer / (time.perf_counter() - t))
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
        ratios.append(rates[-1] / peers[-1])
    return max(rates), max(peers), statistics.median(ratios), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", choices=["embedded", "stdlib"], default="embedded")
    ap.add_argument("--size", choices=["small", "medium", "large"], default="small")
    ap.add_argument("--kinds", default="bpe,sp_bpe,sp_unigram")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pretrainlab_tokbench"))
    args = ap.parse_args()
    base = [f"workdir={args.dir}", f"tokenizer.vocab_size={args.vocab}"]
    clean = args.dir / "clean"
    if args.corpus == "stdlib":
        make_stdlib_corpus(clean)
    else:
        make_embedded_corpus(base, args.size)
    mb = sum(p.stat().st_size for p in clean.rglob("*.jsonl")) / 1e6
    texts = [t for p in sorted(clean.glob("*/*.jsonl")) for t in iter_texts(p)]
    print(f"corpus: {args.corpus} ({args.size}), {mb:.1f} MB JSONL, {len(texts):,} docs in {clean}; "
          f"cpus={os.cpu_count()}; python {sys.version.split()[0]}")

    for kind in args.kinds.split(","):
        kbase = base + [f"tokenizer.kind={kind}", f"tokenizer.out={args.dir / ('tok_' + kind)}",
                        f"tokenize.out={args.dir / ('tokens_' + kind)}"]
        times, hashes = [], set()
        for _ in range(2):
            t = time.perf_counter()
            m = train_tokenizer(load_config(None, kbase))
            times.append(time.perf_counter() - t)
            hashes.add(m["tokenizer_sha256"])
        print(f"[{kind}] train text vocab {m['text_vocab_size']} (model {m['vocab_size']}): {m['chars_trained']:,} chars, "
              f"best {min(times):.2f}s ({m['chars_trained'] / min(times) / 1e6:.2f} M chars/s); identical twice: {len(hashes) == 1}")
        if kind == "bpe":
            code = (
                "from pretrainlab.config import load_config; from pretrainlab.tokenizer.train import train_tokenizer;"
                f"print(train_tokenizer(load_config(None, {kbase + [f'tokenizer.out={args.dir}/tok_1thread']!r}))['tokenizer_sha256'])"
            )
            env = {**os.environ, "RAYON_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            print(f"[{kind}] train with RAYON_NUM_THREADS=1 gives the same tokenizer: {out.strip().splitlines()[-1] in hashes}")

        tok = load_tokenizer(args.dir / ("tok_" + kind))
        if kind == "bpe":  # the library's standard batch call (Encoding objects with offsets)
            raw = tok.backend

            def peer() -> int:
                return sum(len(e.ids) for e in raw.encode_batch(texts, add_special_tokens=False))

            peer_label = "tokenizers encode_batch"
        else:
            def peer() -> int:
                return sum(map(len, tok.encode_batch(texts)))

            peer_label = "sentencepiece encode(num_threads=all)"
        variants = [("in-memory TextTokenizer.encode_batch", None, 0), ("data tokenize, threads (default)", "threads", 1),
                    ("data tokenize, processes x2", "processes", 2)]
        for label, backend, workers in variants:
            if backend is None:
                def run() -> int:
                    return sum(map(len, tok.encode_batch(texts)))
            else:
                cfg = load_config(None, kbase + [f"tokenize.backend={backend}", f"tokenize.workers={workers}"])

                def run() -> int:
                    shutil.rmtree(cfg.tokens_dir, ignore_errors=True)
                    return tokenize_corpus(cfg)["totals"]["all"]["tokens"]

            best, best_peer, ratio, n = paired(run, peer, args.repeat)
            print(f"[{kind}] {label}: {n:,} tokens, best {best:,.0f} tok/s; peer ({peer_label}, all docs in memory) "
                  f"best {best_peer:,.0f} tok/s; median paired ratio {ratio:.2f}x")
        t = time.perf_counter()
        m = tokenize_corpus(cfg)
        print(f"[{kind}] re-run with nothing changed: {m['status']} in {time.perf_counter() - t:.3f}s")


if __name__ == "__main__":
    main()
