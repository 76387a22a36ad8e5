"""Benchmark `data build`: per-stage and end-to-end throughput, MinHash accuracy, peers.

    .venv/bin/python benchmarks/data_pipeline.py [--size small|medium] [--dir /tmp/pretrainlab_databench]

1. Builds the embedded corpus (`corpus build --size`), then times every stage of
   ``data.stages`` on every document in one process (docs/s and MB/s per core; the
   input of each stage is the normalized text, and no document is removed, so every
   stage sees the whole corpus -- the prose quality rules included, although the
   embedded sources skip them in a real build).
2. End to end: `data build` with all stages over a copy of the registry whose
   ``skip_stages`` are removed (every rule runs on every document), MB/s: in the main
   process, and on datatrove's local executor (1 MB work units) with 1 and 2 workers;
   the three alternate for ``--rounds`` rounds (the machine is shared: compare medians
   of the same run). Executor overhead = in-process time / executor time with 1 worker.
2b. Large inputs: `data build` (normalize, length_filter, exact_dedup: cheap stages, so
   executor costs show most) on generated JSONL of two sizes (default 25 and 100 MB),
   in-process and on the local executor with 1 and 2 workers, each in a child process:
   seconds and peak RSS of the largest process (flat while the input grows 4x).
3. Language ID on Chinese and English samples: accuracy and MB/s.
4. MinHash near-dedup accuracy: a generated set of documents with near-duplicates at
   known edit rates; precision and recall of the pairs found at threshold 0.8 against
   the exact Jaccard of their word 5-gram sets.
5. Peers: datasketch MinHash + MinHashLSH (same shingles, same num_perm) on the same
   corpus (MB/s) and on the accuracy set; datatrove's GopherQualityFilter when installed.

Targets (issue 3): end-to-end cleaning + dedup >= 3 MB/s per core; near-dedup precision
and recall >= 0.95 at threshold 0.8.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pretrainlab.config import load_config
from pretrainlab.corpus.embedded import build_corpus
from pretrainlab.data.filters import normalize_text
from pretrainlab.data.minhash import LSHIndex, MinHasher
from pretrainlab.data.pipeline import build_clean_corpus
from pretrainlab.data.sources import load_registry, resolve_files
from pretrainlab.data.stages import Document, Reject, build_stages


def _load_docs(raw: Path) -> list[Document]:
    docs = []
    for spec in load_registry(raw / "sources.yaml"):
        for path in resolve_files(spec):
            for line in path.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                docs.append(Document(rec["id"], normalize_text(rec["text"]), spec.name, {}))
    return docs


def bench_stages(cfg, docs: list[Document]) -> dict:
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    results = {}
    for stage in build_stages(cfg.data):
        stage.bind({})
        removed = 0
        t = time.perf_counter()
        for d in docs:
            out = stage.process(Document(d.id, d.text, d.source, {}))
            removed += isinstance(out, Reject)
        dt = time.perf_counter() - t
        results[stage.name] = {"docs_per_s": round(len(docs) / dt), "mb_per_s": round(mb / dt, 2), "removed": removed}
        print(f"  {stage.name:18s} {len(docs) / dt:9,.0f} docs/s {mb / dt:8.2f} MB/s  (would remove {removed})")
    total = sum(mb / r["mb_per_s"] for r in results.values())
    print(f"  {'sum of stages':18s} {'':9s}        {mb / total:8.2f} MB/s")
    return results


def bench_end_to_end(raw: Path, work: Path, overrides: list[str], mode: str = "in-process") -> dict:
    """One `data build`; ``mode``: in-process, or ``local-N`` (datatrove local executor, N workers)."""
    registry = yaml.safe_load((raw / "sources.yaml").read_text())
    for spec in registry["sources"].values():
        spec.pop("skip_stages", None)
        spec["path"] = str(raw / spec["path"])
    inp = work / "raw_all_rules"
    inp.mkdir(parents=True, exist_ok=True)
    (inp / "sources.yaml").write_text(yaml.safe_dump(registry))
    shutil.rmtree(work / "clean_all", ignore_errors=True)
    how = ["data.executor.min_input_mb=1e9"] if mode == "in-process" else [
        "data.executor.min_input_mb=0", "data.executor.unit_mb=1", f"data.executor.workers={mode.split('-')[1]}"]
    cfg = load_config(None, [f"workdir={work}", f"data.input={inp}", f"data.out={work / 'clean_all'}", *how, *overrides])
    t = time.perf_counter()
    summary = build_clean_corpus(cfg)
    dt = time.perf_counter() - t
    mb = summary["totals"]["bytes_in"] / 1e6
    print(f"  end to end, {mode}: {mb:.1f} MB in {dt:.2f} s = {mb / dt:.2f} MB/s "
          f"({summary['totals']['docs_in']:,} docs in, {summary['totals']['docs_out']:,} out)")
    return {"mb": round(mb, 2), "seconds": round(dt, 2), "mb_per_s": round(mb / dt, 2)}


MODES = ("in-process", "local-1", "local-2")


def bench_executor(raw: Path, work: Path, overrides: list[str], rounds: int) -> dict:
    """The three modes alternate, so load changes hit them alike; medians per mode."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    mb = 0.0
    for _ in range(rounds):
        for mode in MODES:
            r = bench_end_to_end(raw, work, overrides, mode)
            times[mode].append(r["seconds"])
            mb = r["mb"]
    med = {m: statistics.median(v) for m, v in times.items()}
    out = {m: {"seconds_median": round(med[m], 2), "mb_per_s": round(mb / med[m], 2)} for m in MODES}
    out["executor_overhead_1_worker"] = round(med["local-1"] / med["in-process"], 2)
    out["speedup_2_workers"] = round(med["in-process"] / med["local-2"], 2)
    print(f"  medians of {rounds} rounds: " + ", ".join(f"{m} {mb / med[m]:.2f} MB/s" for m in MODES)
          + f"; local-1 / in-process time {out['executor_overhead_1_worker']}x, in-process / local-2 "
          f"{out['speedup_2_workers']}x")
    return out


def _big_jsonl(path: Path, docs: list[Document], mb: float) -> None:
    """Corpus documents repeated until ``mb`` MB, each copy made unique (exact dedup keeps all)."""
    size, i = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < mb * 1e6:
            d = docs[i % len(docs)]
            line = json.dumps({"id": f"c{i}", "text": f"{d.text}\n(copy {i})"}, ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode())
            i += 1


def _build_child(work: Path, inp: Path, mode: str) -> tuple[float, float] | None:
    """`data build` (cheap stages) in a child process: (seconds, peak RSS MB of the largest process)."""
    out_dir = work / f"clean_{inp.name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    how = ["data.executor.min_input_mb=1e9"] if mode == "in-process" else [
        "data.executor.min_input_mb=0", "data.executor.unit_mb=8", f"data.executor.workers={mode.split('-')[1]}"]
    code = ("import resource, sys; from pretrainlab.cli import main\n"
            "try:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('RSS', max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))")
    cmd = [sys.executable, "-c", code, "data", "build", "--workdir", str(work), "--set", f"data.input={inp}",
           "--set", f"data.out={out_dir}", "--set", "data.stages=[normalize, length_filter, exact_dedup]"]
    for o in how:
        cmd += ["--set", o]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    rss = [int(ln.split()[1]) for ln in out.stdout.splitlines() if ln.startswith("RSS ")]
    if out.returncode != 0 or not rss:
        print(f"  {inp.name} {mode}: failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    return dt, rss[0] / 1024


def bench_large(work: Path, docs: list[Document], sizes_mb: list[float], rounds: int) -> dict:
    """`data build` (normalize, length_filter, exact_dedup: the cheapest stages, so executor costs
    show most) on generated JSONL, in-process and on the local executor with 1 and 2 workers
    (alternating, ``rounds`` rounds, medians), each in a child process."""
    results: dict = {}
    for mb in sizes_mb:
        inp = work / f"big_{mb:g}"
        inp.mkdir(parents=True, exist_ok=True)
        if not (inp / "big.jsonl").is_file():
            _big_jsonl(inp / "big.jsonl", docs, mb)
        (inp / "sources.yaml").write_text(yaml.safe_dump({"sources": {"big": {
            "path": "big.jsonl", "license": "CC0-1.0", "approval": {"status": "approved", "by": "bench", "date": "2026-11-23"}}}}))
        runs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        for _ in range(rounds):
            for mode in MODES:
                r = _build_child(work, inp, mode)
                if r is not None:
                    runs[mode].append(r)
        for mode, rs in runs.items():
            if not rs:
                continue
            dt, rss = statistics.median(r[0] for r in rs), max(r[1] for r in rs)
            results[f"{mb:g}MB {mode}"] = {"seconds_median": round(dt, 1), "mb_per_s": round(mb / dt, 2), "peak_rss_mb": round(rss)}
            print(f"  {mb:g} MB, {mode:10s}: {dt:6.1f} s ({mb / dt:5.1f} MB/s), peak RSS {rss:4.0f} MB (largest process)")
        if runs["in-process"] and runs["local-1"]:
            ratio = statistics.median(r[0] for r in runs["local-1"]) / statistics.median(r[0] for r in runs["in-process"])
            results[f"{mb:g}MB local-1 / in-process"] = round(ratio, 2)
            print(f"  {mb:g} MB: local-1 / in-process time {ratio:.2f}x")
    return results


ZH_SAMPLES = [
    "数据准备是大模型预训练的基础，也是最主要的瓶颈。", "今年春天，研究小组走访了十几个村庄，记录下老人们讲述的故事。",
    "他们发现许多传统手艺已经很少有年轻人学习。", "清洗流程包括去重、过滤和隐私信息的删除。",
    "北京今天天气晴朗，最高气温二十五度。", "这本书讲述了一个普通家庭三代人的生活变迁。",
    "数据准备是大模型预训练的基础", "北京今天天气晴朗", "人工智能技术正在改变世界",
]
EN_SAMPLES = [
    "Data preparation is the foundation and the bottleneck of pretraining.", "The river rose quickly after three days of rain.",
    "Farmers moved their animals to higher ground before night fell.", "Return the number of items in the container.",
    "The committee reviewed the proposal and agreed that the plan was sound.", "This manual page documents the GNU version of ls.",
    "The river rose quickly after three days of rain", "Return the number of items", "open the file and read it",
]


def bench_langid() -> dict:
    from pretrainlab.data.langid import identify

    samples = [(t, "zh") for t in ZH_SAMPLES] + [(t, "en") for t in EN_SAMPLES]
    # Longer documents: concatenations of 3 samples of one language.
    for lang, pool in (("zh", ZH_SAMPLES), ("en", EN_SAMPLES)):
        samples += [(" ".join(c), lang) for c in itertools.combinations(pool, 3)]
    correct = sum(identify(t)[0] == lang for t, lang in samples)
    mb = sum(len(t.encode()) for t, _ in samples) / 1e6
    t0 = time.perf_counter()
    for _ in range(20):
        for t, _ in samples:
            identify(t)
    dt = (time.perf_counter() - t0) / 20
    print(f"  langid (fastText lid.176): {correct}/{len(samples)} correct on zh/en, {mb / dt:.2f} MB/s, {len(samples) / dt:,.0f} docs/s")
    return {"accuracy": round(correct / len(samples), 4), "n": len(samples), "mb_per_s": round(mb / dt, 2)}


def _shingle_set(text: str, n: int = 5) -> set:
    w = text.lower().split()
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def make_near_dup_set(n_clusters: int = 400, per_cluster: int = 4, n_words: int = 300, seed: int = 0) -> list[tuple[int, str]]:
    """Clusters of a random base text and variants with 0-12% of words substituted (Jaccard ~0.5-1)."""
    rng = random.Random(seed)
    docs = []
    for c in range(n_clusters):
        base = [f"w{rng.randrange(1_000_000)}" for _ in range(n_words)]
        docs.append((c, " ".join(base)))
        for _ in range(per_cluster - 1):
            v = list(base)
            for i in rng.sample(range(n_words), rng.randint(0, int(0.12 * n_words))):
                v[i] = f"x{rng.randrange(1_000_000)}"
            docs.append((c, " ".join(v)))
    return docs


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return (tp / len(found) if found else 1.0), (tp / len(truth) if truth else 1.0)


def bench_minhash_accuracy(cfg) -> dict:
    nd = cfg.data.near_dedup
    docs = make_near_dup_set()
    sets = [_shingle_set(t) for _, t in docs]
    truth = set()
    for i, j in itertools.combinations(range(len(docs)), 2):
        if docs[i][0] == docs[j][0] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= nd.threshold:
            truth.add((i, j))
    near = sum(1 for i, j in itertools.combinations(range(len(docs)), 2) if docs[i][0] == docs[j][0])
    print(f"  {len(truth)} true pairs with Jaccard >= {nd.threshold} among {near} same-cluster pairs")
    out = {"true_pairs": len(truth)}
    for verify in ("exact", "signature"):
        hasher = MinHasher(nd.bands * nd.rows, nd.seed, nd.ngram, nd.cjk_ngram)
        index = LSHIndex(nd.bands, nd.rows, exact=verify == "exact")
        found = set()
        for j, (_, text) in enumerate(docs):
            sh = hasher.shingles(text)
            sig = hasher.signature_of(sh)
            found |= {(i, j) for i, _ in index.matches(sig, nd.threshold, sh)}
            index.insert(sig, str(j), sh)
        p, r = precision_recall(found, truth)
        print(f"  ours ({nd.bands}x{nd.rows}, verify={verify}): precision {p:.3f} recall {r:.3f}")
        out[f"ours_{verify}"] = {"precision": round(p, 4), "recall": round(r, 4)}
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        print("  datasketch not installed: peer skipped")
        return out
    lsh = MinHashLSH(threshold=nd.threshold, num_perm=nd.bands * nd.rows)
    found = set()
    for j, s in enumerate(sets):
        m = MinHash(num_perm=nd.bands * nd.rows, seed=nd.seed)
        m.update_batch([x.encode() for x in s])
        found |= {(int(i), j) for i in lsh.query(m)}
        lsh.insert(str(j), m)
    p, r = precision_recall(found, truth)
    print(f"  datasketch MinHashLSH(threshold={nd.threshold}, {lsh.b}x{lsh.r}): precision {p:.3f} recall {r:.3f}")
    out["datasketch"] = {"precision": round(p, 4), "recall": round(r, 4), "bands": lsh.b, "rows": lsh.r}
    return out


def bench_minhash_speed(cfg, docs: list[Document]) -> dict:
    nd = cfg.data.near_dedup
    num_perm = nd.bands * nd.rows
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    hasher, index = MinHasher(num_perm, nd.seed, nd.ngram, nd.cjk_ngram), LSHIndex(nd.bands, nd.rows, exact=nd.verify == "exact")
    t = time.perf_counter()
    for d in docs:
        sh = hasher.shingles(d.text)
        sig = hasher.signature_of(sh)
        if index.query(sig, nd.threshold, sh) is None:
            index.insert(sig, d.id, sh)
    ours = mb / (time.perf_counter() - t)
    print(f"  ours: MinHash + LSH {ours:.2f} MB/s")
    out = {"ours_mb_per_s": round(ours, 2)}
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return out
    lsh = MinHashLSH(threshold=nd.threshold, num_perm=num_perm)
    t = time.perf_counter()
    for d in docs:
        w = d.text.lower().split()
        m = MinHash(num_perm=num_perm, seed=nd.seed)
        m.update_batch([" ".join(w[i:i + nd.ngram]).encode() for i in range(max(1, len(w) - nd.ngram + 1))])
        if not lsh.query(m):
            lsh.insert(d.id, m)
    peer = mb / (time.perf_counter() - t)
    print(f"  datasketch: MinHash (update_batch) + MinHashLSH {peer:.2f} MB/s -> ours is {ours / peer:.1f}x")
    out.update(datasketch_mb_per_s=round(peer, 2), ratio=round(ours / peer, 2))
    return out


def bench_datatrove_gopher(docs: list[Document]) -> dict | None:
    try:
        from datatrove.data import Document as DTDoc
        from datatrove.pipeline.filters import GopherQualityFilter
    except ImportError:
        print("  datatrove not installed: Gopher peer skipped")
        return None
    f = GopherQualityFilter()
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    t = time.perf_counter()
    try:
        for d in docs:
            f.filter(DTDoc(text=d.text, id=d.id))
    except ImportError as exc:  # its English word splitting needs spaCy (not a dependency of ours)
        print(f"  datatrove GopherQualityFilter skipped: {exc}")
        return None
    rate = mb / (time.perf_counter() - t)
    print(f"  datatrove GopherQualityFilter: {rate:.2f} MB/s")
    return {"mb_per_s": round(rate, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=["small", "medium", "large"])
    ap.add_argument("--dir", default="/tmp/pretrainlab_databench")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the end-to-end modes")
    ap.add_argument("--large-mb", default="25,100", help="sizes (MB) of the generated large inputs; empty: skip")
    ap.add_argument("--scale-mb", type=float, default=0,
                    help="only the issue-17 scale run (benchmarks/data_scale.py) on a generated corpus of this many MB")
    ap.add_argument("--scale-rounds", type=int, default=1, help="alternating 1/2-worker rounds of the scale run")
    ap.add_argument("--scale-no-peer", action="store_true", help="scale run without datatrove's MinHash peer")
    args = ap.parse_args()
    if args.scale_mb:
        sys.path.insert(0, str(Path(__file__).parent))
        from data_scale import bench_scale

        print(json.dumps(bench_scale(Path(args.dir), args.scale_mb, args.scale_rounds, peer=not args.scale_no_peer)))
        return
    work = Path(args.dir)
    overrides = ["data.min_chars=200"]
    cfg = load_config(None, [f"workdir={work}", f"corpus.size={args.size}", *overrides])
    if not (work / "raw" / "sources.yaml").is_file():
        build_corpus(cfg)
    docs = _load_docs(work / "raw")
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    print(f"embedded corpus ({args.size}): {len(docs):,} docs, {mb:.2f} MB; one process")
    results = {"corpus": {"docs": len(docs), "mb": round(mb, 2)}}
    print("per stage (each on every document):")
    results["stages"] = bench_stages(cfg, docs)
    print("end to end (`data build`, every rule on every source; in-process vs datatrove local executor):")
    results["end_to_end"] = bench_executor(work / "raw", work, overrides, args.rounds)
    if args.large_mb:
        print("large generated inputs (normalize + length_filter + exact_dedup; executor: 8 MB units):")
        results["large"] = bench_large(work, docs, [float(x) for x in args.large_mb.split(",")], args.rounds)
    print("language ID:")
    results["langid"] = bench_langid()
    print("near-dedup speed on the corpus:")
    results["minhash_speed"] = bench_minhash_speed(cfg, docs)
    print("near-dedup accuracy (generated near-duplicates, exact Jaccard of word 5-grams):")
    results["minhash_accuracy"] = bench_minhash_accuracy(cfg)
    print("peers:")
    results["datatrove_gopher"] = bench_datatrove_gopher(docs)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
