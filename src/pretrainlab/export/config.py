"""The `export` config section, owned by this package.

``pretrainlab.config.ProjectConfig`` gathers every package's section; this module imports
nothing from pretrainlab but the ``Section`` base (and other packages' section modules), so
``pretrainlab.config`` can import it without a circle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pretrainlab.configsection import Section


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
