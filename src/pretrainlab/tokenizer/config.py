"""The `tokenizer` and `tokenize` config sections, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pretrainlab.configsection import Section


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
