"""The run report as `pretrainlab report` and the quickstart write it: every package's sections.

``monitor/report.py`` renders the sections registered with it (its own and
MoE). Packages above monitor register theirs when imported: eval the
"Evaluation across training" section, multimodal its cross-modal results. This
module sits at the top, beside the CLI, and imports them, so the report
imports none of them and a new package adds a section without touching it.
"""

from __future__ import annotations

import pretrainlab.eval.sweep  # noqa: F401  registers "evaluation across training"
import pretrainlab.multimodal.report  # noqa: F401  registers "multimodal"
from pretrainlab.monitor.report import build_report_html, write_report

__all__ = ["build_report_html", "write_report"]
