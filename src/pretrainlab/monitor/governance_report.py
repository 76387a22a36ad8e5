"""The data-governance view of a run (dashboard and run report): its dataset version's shares, languages, PII, quarantine.

The run's config names its token shards; they name the clean corpus
(``monitor/governance.py``), whose governance report gives the facts. Reading a
corpus to compute a report is slow, so results are cached per corpus and
manifest modification time (the dashboard refreshes every few seconds).
"""

from __future__ import annotations

from pathlib import Path

from pretrainlab.htmlkit import esc, fmt_num, table
from pretrainlab.monitor import governance
from pretrainlab.monitor.rundata import RunData, register_section

_CACHE: dict[tuple, dict | None] = {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def run_governance(run: RunData) -> tuple[Path | None, dict | None]:
    """(clean corpus, governance summary) of a run; (None, None) when its corpus cannot be found."""
    clean = governance.corpus_of_run(run.config)
    if clean is None:
        return None, None
    key = (str(clean), _mtime(clean / "manifest.json"), _mtime(clean / "governance.json"))
    if key not in _CACHE:
        report = governance.governance_report(clean)
        _CACHE[key] = governance.summary(report) if report else None
    return clean, _CACHE[key]


def anchor(run_name: str) -> str:
    return f"gov-{run_name}"


def governance_section(run: RunData) -> str:
    """The governance facts of the run's dataset version as HTML (a note when they cannot be found)."""
    clean, facts = run_governance(run)
    head = f'<div id="{esc(anchor(run.name))}" class="governance">'
    if facts is None:
        where = f"corpus {esc(clean)} has no readable manifest/stats" if clean else "its token shards name no corpus that exists"
        return head + f'<div class="muted">No data-governance facts for {esc(run.name)}: {where}.</div></div>'
    parts = [head, f'<div class="muted">dataset version <b>{esc(facts["dataset_version"])}</b> · manifest '
             f'{esc(facts["manifest_id"])} · corpus {esc(clean)} · full report: `pretrainlab data report`</div>']
    parts.append(table([(n, s["license"], fmt_num(s["docs"]), fmt_num(s["tokens"]), f"{100 * s['token_share']:.1f}%",
                         f"{100 * s['doc_share']:.1f}%") for n, s in facts["sources"].items()],
                       ("source", "license", "documents", "tokens (est.)", "token share", "document share")))
    langs = sorted(facts["languages"].items(), key=lambda kv: -kv[1])
    total = sum(n for _, n in langs) or 1
    parts.append("<h3>Languages</h3>" + table([(k, fmt_num(n), f"{100 * n / total:.1f}%") for k, n in langs[:15]],
                                              ("language", "documents", "share")))
    parts.append(f"<h3>PII detections</h3><div class=\"muted\">{fmt_num(facts['docs_with_pii'])} document(s) with PII</div>"
                 + (table(sorted(facts["pii"].items()), ("type", "detections")) if facts["pii"] else ""))
    quarantine = sorted(facts["quarantine"].items(), key=lambda kv: -kv[1])
    parts.append("<h3>Quarantine and removals by reason</h3>"
                 + (table([(st, r, fmt_num(n)) for (st, r), n in quarantine], ("stage", "reason", "documents"))
                    if quarantine else '<div class="muted">Nothing removed.</div>'))
    return "".join(parts) + "</div>"


@register_section("data governance", 55)
def _governance_report_section(run: RunData) -> str:
    if not run.config:
        return ""
    return "<h2>Data governance</h2>" + governance_section(run)
