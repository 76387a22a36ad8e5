"""Typed configuration: one ProjectConfig describes every option of every stage.

A YAML file gives any subset of the sections below; ``--set a.b=value`` overrides
single keys. Unknown keys are errors with a "did you mean" hint, wrong types are
errors naming the key, and the fully resolved config is written into each run
directory. The CLI help and docs/CONFIG.md are generated from these models.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretrainlab.errors import ConfigError

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


class DataConfig(Section):
    """`data build`: raw sources -> normalized, filtered, deduplicated, split clean corpus."""

    input: Path | None = Field(None, description="Directory with sources.yaml and raw JSONL (default: <workdir>/raw).")
    out: Path | None = Field(None, description="Clean corpus directory (default: <workdir>/clean).")
    stages: list[str] = Field(
        ["normalize", "length_filter", "exact_dedup"], description="Pipeline stages, applied in this order."
    )
    min_chars: int = Field(200, ge=0, description="Documents shorter than this (after normalization) are quarantined.")
    max_chars: int = Field(200_000, ge=1, description="Documents longer than this are quarantined.")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of documents held out, chosen by text hash.")
    strip_control_chars: bool = Field(True, description="Remove C0/C1 control characters except tab and newline.")
    collapse_whitespace: bool = Field(True, description="Trim trailing spaces and collapse runs of 3+ blank lines.")


class TokenizerConfig(Section):
    """`tokenizer train`: byte-level BPE trained on the clean corpus."""

    out: Path | None = Field(None, description="Tokenizer directory (default: <workdir>/tokenizer).")
    corpus: Path | None = Field(None, description="Clean corpus to train on (default: data.out).")
    vocab_size: int = Field(4096, ge=300, description="Total vocabulary size including special tokens.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    sample_chars: int = Field(50_000_000, ge=1000, description="Train on at most this many characters of the corpus.")


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
        "caps it); processes: `workers` forked encoder processes, each single-threaded; auto: threads (measured "
        "faster on 2 cores: 1.44M vs 1.09M tokens/s, see benchmarks/bench_tokenizer.py).",
    )


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

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension d_model/n_heads must be even for RoPE")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        return self

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
    """AdamW with linear warmup then cosine decay to min_lr_ratio * lr."""

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
    source_weights: dict[str, float] | None = Field(
        None, description="Sampling weight per source; default proportional to token counts."
    )
    seed: int = Field(1234, description="Seeds init, data order and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = bf16 autocast with fp32 master weights.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores).")
    log_every: int = Field(10, ge=1, description="Steps between metrics lines.")
    val_every: int = Field(100, ge=1, description="Steps between validation-loss evaluations.")
    val_batches: int = Field(8, ge=1, description="Micro-batches of held-out data per validation.")

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        row = self.micro_batch * self.seq_len
        if self.global_batch_tokens % row:
            raise ValueError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"micro_batch*seq_len ({row})"
            )
        return self


class CheckpointConfig(Section):
    every: int = Field(100, ge=1, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Keep the newest K complete checkpoints.")


class EvalConfig(Section):
    max_tokens_per_source: int = Field(50_000, ge=1, description="Held-out tokens scored per source.")
    prompts: list[str] = Field(
        ["def ", "The ", "Return the", "import "], description="Prompts for sampled continuations."
    )
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k.")


class LogConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <run>/tb.")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: measured fp32 matmul rate on CPU, datasheet on GPU."
    )


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
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    run: RunConfig = RunConfig()

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
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(value, ann, f"{where}{key}.", origin)


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
                lines.append(
                    f"| `{name}.{key}` | `{_type_name(sub.annotation)}` | `{default!r}` | {sub.description or ''} |"
                )
            lines.append("")
        else:
            lines += [f"## `{name}`", "", f"`{_type_name(ann)}`, default `{getattr(root, name)!r}`: {field.description}", ""]
    return "\n".join(lines)
