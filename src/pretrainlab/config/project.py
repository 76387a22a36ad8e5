"""ProjectConfig: every option of the program, gathered from the section models each package owns."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pretrainlab.configsection import Section
from pretrainlab.corpus.config import CorpusConfig
from pretrainlab.data.config import (
    DataConfig,
)
from pretrainlab.eval.config import EvalConfig
from pretrainlab.experiments.config import ExperimentsConfig
from pretrainlab.export.config import ExportConfig
from pretrainlab.model.config import ModelConfig
from pretrainlab.monitor.config import (
    AlertsConfig,
    HardwareConfig,
    LogConfig,
    PrometheusConfig,
)
from pretrainlab.multimodal.config import MultimodalConfig
from pretrainlab.plan.config import PlanConfig
from pretrainlab.tokenizer.config import TokenizeConfig, TokenizerConfig
from pretrainlab.train.config import (
    CheckpointConfig,
    GuardConfig,
    MixConfig,
    MoEMonitorConfig,
    OptimConfig,
    PackingConfig,
    ParallelConfig,
    TrainConfig,
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
