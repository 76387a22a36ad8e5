"""The `eval` config section, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from pretrainlab.configsection import Section


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
