"""Typed configuration: one ProjectConfig describes every option of every stage.

A YAML file gives any subset of the sections below; ``--set a.b=value`` overrides
single keys. Unknown keys are errors with a "did you mean" hint, wrong types are
errors naming the key, and the fully resolved config is written into each run
directory. The CLI help and docs/CONFIG.md are generated from these models.

The section models live with the package they configure (``pretrainlab/<package>/config.py``);
``project`` gathers them, ``loading`` reads YAML and overrides, ``reference`` writes docs/CONFIG.md.
This package re-exports all of them, so ``from pretrainlab.config import X`` is the one import.
"""

from __future__ import annotations

from pretrainlab.config.loading import (  # noqa: F401
    apply_overrides,
    config_to_dict,
    dump_yaml,
    load_config,
    load_run_config,
    nested_model,
    parse_override,
    read_yaml,
)
from pretrainlab.config.project import ProjectConfig, RunConfig  # noqa: F401
from pretrainlab.config.reference import config_reference_markdown  # noqa: F401
from pretrainlab.configsection import Section  # noqa: F401
from pretrainlab.corpus.config import SOURCE_NAMES, CorpusConfig  # noqa: F401
from pretrainlab.data.config import (  # noqa: F401
    DataConfig,
    DataExecutorConfig,
    LangIdConfig,
    NearDedupConfig,
    PiiConfig,
    QualityConfig,
    RayExecutorConfig,
    SlurmExecutorConfig,
)
from pretrainlab.eval.config import EvalConfig  # noqa: F401
from pretrainlab.export.config import ExportConfig  # noqa: F401
from pretrainlab.model.config import ModelConfig, MoEConfig  # noqa: F401
from pretrainlab.monitor.config import (  # noqa: F401
    AlertsConfig,
    HardwareConfig,
    LogConfig,
    PrometheusConfig,
)
from pretrainlab.tokenizer.config import TokenizeConfig, TokenizerConfig  # noqa: F401
from pretrainlab.train.config import (  # noqa: F401
    CheckpointConfig,
    GuardAction,
    GuardConfig,
    MixConfig,
    MixStageConfig,
    MoEMonitorConfig,
    OptimConfig,
    PackingConfig,
    ParallelConfig,
    TrainConfig,
    parse_window,  # noqa: F401
)
