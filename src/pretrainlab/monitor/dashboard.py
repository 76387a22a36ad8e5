"""The live war-room dashboard: a local web page over every run in a folder, updating while they train.

``pretrainlab dashboard RUNS_DIR`` serves, on 127.0.0.1 by default, one page
with no external resources (works offline): a status table of the runs, the
global view (loss, validation loss, LR, grad norm, tokens, tokens/s, MFU, ETA),
the events timeline (skips, rollbacks, pauses, checkpoints, evals), the MoE view
(expert-load heat map, CV, drop rate, router losses; from monitor/moe_report.py)
for runs with MoE layers, the hardware view (rank x time heat maps, stragglers;
monitor/hardware_report.py), the data-governance view of each run's dataset
version (monitor/governance_report.py; linked from the status table), and overlays of the selected runs on the same axes.

The server renders the views to HTML fragments with the SVG charts of
``pretrainlab.htmlkit``; the page's small script fetches ``/api/view`` every few
seconds and swaps them in, so curves grow as metrics.jsonl grows. Files are
only read: the dashboard never writes into a run.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from pretrainlab.errors import UserError
from pretrainlab.htmlkit import CSS, esc, fmt_num, svg_line_chart
from pretrainlab.monitor.governance_report import anchor, governance_section
from pretrainlab.monitor.hardware_report import hardware_section
from pretrainlab.monitor.moe_report import moe_section
from pretrainlab.monitor.rundata import RunData, discover_runs
from pretrainlab.progress import console

EVENT_COLORS = {"skip_step": "#ff7f0e", "rollback": "#d62728", "pause": "#9467bd", "stopped": "#000000",
                "trend": "#e377c2", "checkpoint": "#2ca02c", "eval": "#1f77b4", "resume": "#17becf",
                "interrupted": "#8c564b", "straggler": "#bcbd22", "start": "#7f7f7f", "end": "#7f7f7f"}


# --------------------------------------------------------------------------- views


def _pts(records, x, y, scale=1.0):
    out = []
    for r in records:
        vx, vy = r.get(x), r.get(y)
        if isinstance(vx, (int, float)) and isinstance(vy, (int, float)) and not isinstance(vy, bool):
            out.append((vx, vy * scale))
    return out


def _series(runs: list[RunData], label: str, key: str, kind: str = "train", x: str = "step", scale: float = 1.0):
    multi = len(runs) > 1
    return {(r.name if multi else label): _pts(r.train if kind == "train" else r.val, x, key, scale) for r in runs}


def _duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def status_table(runs: list[RunData]) -> str:
    head = ("run", "status", "step", "loss", "val loss", "lr", "tokens", "tokens/s", "MFU", "ETA", "skips",
            "rollbacks", "pauses", "stragglers", "data")
    rows = ["<table id=\"runs-table\"><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in runs:
        last = r.train[-1] if r.train else {}
        lastv = r.val[-1] if r.val else {}
        tps = next((x["tokens_per_s"] for x in reversed(r.train) if isinstance(x.get("tokens_per_s"), (int, float))), None)
        mfu = next((x["mfu"] for x in reversed(r.train) if isinstance(x.get("mfu"), (int, float))), None)
        count = lambda name: sum(1 for e in r.events if e.get("event") == name)  # noqa: E731
        cells = [r.name, r.status(), f"{last.get('step', '-')} / {r.planned_steps or '-'}", fmt_num(last.get("loss")),
                 fmt_num(lastv.get("val_loss")), fmt_num(last.get("lr")), fmt_num(last.get("tokens")), fmt_num(tps),
                 f"{100 * mfu:.1f}%" if mfu is not None else "-", _duration(r.eta_s()), count("skip_step"),
                 count("rollback"), count("pause"), count("straggler")]
        link = f'<td><a href="#{esc(anchor(r.name))}">governance</a></td>'  # the run's dataset version, below
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + link + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def global_view(runs: list[RunData]) -> str:
    charts = [
        svg_line_chart({**_series(runs, "train loss", "loss"),
                        **({"val loss": _pts(runs[0].val, "step", "val_loss")} if len(runs) == 1 else {})},
                       "Loss", "step", "loss"),
        svg_line_chart(_series(runs, "val loss", "val_loss", kind="val"), "Validation loss", "step", "val loss"),
        svg_line_chart(_series(runs, "lr", "lr"), "Learning rate", "step", "lr"),
        svg_line_chart(_series(runs, "grad norm", "grad_norm"), "Gradient norm", "step", "grad norm"),
        svg_line_chart(_series(runs, "tokens", "tokens"), "Tokens seen", "step", "tokens"),
        svg_line_chart(_series(runs, "tokens/s", "tokens_per_s"), "Throughput", "step", "tokens/s"),
        svg_line_chart(_series(runs, "MFU", "mfu", scale=100.0), "MFU", "step", "MFU (%)"),
    ]
    return '<div class="charts">' + "".join(charts) + "</div>"


def events_timeline(runs: list[RunData], width: int = 1300, limit: int = 40, table: bool = True) -> str:
    """One lane per run: a marker per event at its step; then (``table``) the latest events as a table."""
    shown = [(r, [e for e in r.events if e.get("event") in EVENT_COLORS and isinstance(e.get("step"), (int, float))])
             for r in runs]
    max_step = max([e["step"] for _, evs in shown for e in evs] + [r.planned_steps or 1 for r in runs] + [1])
    ml, lane = 120, 26
    height = 24 + lane * len(shown) + 22
    parts = [f'<svg class="chart" id="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<rect width="{width}" height="{height}" fill="#fff"/>']
    x = lambda s: ml + (width - ml - 14) * s / max_step  # noqa: E731
    for i, (r, evs) in enumerate(shown):
        y = 20 + lane * i + lane / 2
        parts.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end" class="tk">{esc(r.name)}</text>')
        parts.append(f'<line x1="{ml}" y1="{y}" x2="{width - 14}" y2="{y}" class="grid"/>')
        for e in evs:
            c = EVENT_COLORS[e["event"]]
            detail = e.get("reason") or e.get("rule") or e.get("message") or ""
            parts.append(f'<circle cx="{x(e["step"]):.1f}" cy="{y}" r="5" fill="{c}" class="ev ev-{esc(e["event"])}">'
                         f'<title>{esc(e["event"])} at step {esc(e["step"])} {esc(detail)}</title></circle>')
    lx = ml
    for name, c in EVENT_COLORS.items():
        parts.append(f'<circle cx="{lx}" cy="{height - 10}" r="4" fill="{c}"/>'
                     f'<text x="{lx + 7}" y="{height - 6}" class="lg">{name}</text>')
        lx += 24 + 6.5 * len(name)
    parts.append("</svg>")
    if not table:
        return "".join(parts)
    recent = sorted(((e, r.name) for r, evs in shown for e in evs if e["event"] not in ("checkpoint",)),
                    key=lambda t: t[0].get("time", 0))[-limit:]
    rows = ["<table><tr><th>time</th><th>run</th><th>step</th><th>event</th><th>details</th></tr>"]
    for e, name in reversed(recent):
        extra = ", ".join(f"{k}={fmt_num(v) if isinstance(v, (int, float)) else v}" for k, v in e.items()
                          if k not in ("time", "step", "event"))
        when = time.strftime("%H:%M:%S", time.localtime(e["time"])) if isinstance(e.get("time"), (int, float)) else ""
        rows.append(f"<tr><td>{when}</td><td>{esc(name)}</td><td>{esc(e['step'])}</td>"
                    f"<td>{esc(e['event'])}</td><td>{esc(extra[:300])}</td></tr>")
    rows.append("</table>")
    return "".join(parts) + "".join(rows)


def moe_view(runs: list[RunData]) -> str:
    out = [f"<h3>{esc(r.name)}</h3>" + moe_section(r.train) for r in runs if r.has_moe()]
    return "".join(out) or '<div class="muted">No MoE metrics in the selected runs.</div>'


def hardware_view(runs: list[RunData]) -> str:
    out = [f"<h3>{esc(r.name)}</h3>" + body for r in runs if (body := hardware_section(r))]
    return "".join(out) or '<div class="muted">No hardware metrics in the selected runs (hardware.enabled).</div>'


def governance_view(runs: list[RunData]) -> str:
    return "".join(f"<h3>{esc(r.name)}</h3>" + governance_section(r) for r in runs)


def render_views(root: Path, selected: list[str] | None = None) -> dict:
    """The page's fragments for the selected runs (default: all), as JSON-ready strings."""
    found = discover_runs(root)
    names = [n for n in (selected or list(found)) if n in found] or list(found)
    runs = [RunData(n, found[n]) for n in names]
    return {
        "runs": list(found),
        "selected": names,
        "steps": {r.name: (r.train[-1]["step"] if r.train else 0) for r in runs},
        "status": status_table(runs) if runs else '<div class="muted">No runs yet.</div>',
        "global": global_view(runs) if runs else "",
        "events": events_timeline(runs) if runs else "",
        "moe": moe_view(runs) if runs else "",
        "hardware": hardware_view(runs) if runs else "",
        "governance": governance_view(runs) if runs else "",
        "updated": time.strftime("%H:%M:%S"),
    }


PAGE_JS = """
const REFRESH_MS = %(refresh_ms)d;
let selected = null;
function selection() {
  const boxes = document.querySelectorAll('#run-list input:checked');
  return Array.from(boxes).map(b => b.value);
}
function renderRunList(runs, chosen) {
  const box = document.getElementById('run-list');
  const have = Array.from(box.querySelectorAll('input')).map(b => b.value);
  if (JSON.stringify(have) === JSON.stringify(runs)) return;
  box.innerHTML = '';
  for (const name of runs) {
    const label = document.createElement('label');
    const cb = document.createElement('input');
    cb.type = 'checkbox'; cb.value = name; cb.checked = chosen.includes(name);
    cb.addEventListener('change', () => { selected = selection(); refresh(); });
    label.appendChild(cb); label.appendChild(document.createTextNode(' ' + name + ' '));
    box.appendChild(label);
  }
}
async function refresh() {
  const q = (selected || []).map(n => 'run=' + encodeURIComponent(n)).join('&');
  try {
    const resp = await fetch('/api/view?' + q, {cache: 'no-store'});
    const v = await resp.json();
    renderRunList(v.runs, v.selected);
    for (const id of ['status', 'global', 'events', 'moe', 'hardware', 'governance']) document.getElementById(id).innerHTML = v[id];
    const body = document.body;
    body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
    body.dataset.steps = JSON.stringify(v.steps);
    document.getElementById('updated').textContent = 'updated ' + v.updated;
  } catch (err) {
    document.getElementById('updated').textContent = 'update failed: ' + err;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
"""


def page_html(title: str, refresh_s: float) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)} · pretrainlab dashboard</title><style>{CSS}\nbody{{max-width:none}}"
        "#run-list label{margin-right:12px}</style></head><body>"
        f"<h1>War room: {esc(title)}</h1><div class=\"muted\" id=\"updated\">loading…</div>"
        "<div id=\"run-list\"></div>"
        "<h2>Runs</h2><div id=\"status\"></div>"
        "<h2>Global view</h2><div id=\"global\"></div>"
        "<h2>Events</h2><div id=\"events\"></div>"
        "<h2>MoE routing</h2><div id=\"moe\"></div>"
        "<h2>Hardware</h2><div id=\"hardware\"></div>"
        "<h2>Data governance</h2><div id=\"governance\"></div>"
        f"<script>{PAGE_JS % {'refresh_ms': int(refresh_s * 1000)}}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- server


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 8765, refresh_s: float = 5.0) -> ThreadingHTTPServer:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder not found: {root}; pass the folder holding run directories (e.g. work/runs)")
    page = page_html(str(root.resolve()), refresh_s).encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                return self._send(page, "text/html; charset=utf-8")
            if url.path == "/api/view":
                view = render_views(root, parse_qs(url.query).get("run"))
                return self._send(json.dumps(view).encode("utf-8"), "application/json")
            if url.path == "/api/runs":
                return self._send(json.dumps(list(discover_runs(root))).encode("utf-8"), "application/json")
            self._send(b"not found", "text/plain", 404)

        def log_message(self, *args):
            pass

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None


def serve_dashboard(root: str | Path, host: str = "127.0.0.1", port: int = 8765, refresh_s: float = 5.0) -> None:
    """Serve until Ctrl-C."""
    server = make_server(root, host, port, refresh_s)
    h, p = server.server_address[:2]
    console.print(f"dashboard of {Path(root).resolve()} on http://{h}:{p}/ (refresh {refresh_s:g}s); Ctrl-C stops it")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
