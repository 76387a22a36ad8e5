"""One experiment record, written twice: a self-contained HTML page and a markdown file.

A record is a list of blocks (heading, paragraph, table, chart). Charts are the
inline SVG of ``pretrainlab.htmlkit`` (``svg_line_chart``); the markdown embeds
them as SVG files written beside it, so both versions open offline.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from pretrainlab.fsio import atomic_write_text
from pretrainlab.htmlkit import CSS, fmt_num, svg_line_chart


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else str(v)
    return fmt_num(v, digits)


@dataclass
class Record:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, text: str) -> "Record":
        self.blocks.append(("h", text))
        return self

    def p(self, text: str) -> "Record":
        self.blocks.append(("p", text))
        return self

    def bullets(self, items: list[str]) -> "Record":
        self.blocks.append(("ul", items))
        return self

    def table(self, head: list[str], rows: list[list]) -> "Record":
        self.blocks.append(("table", head, rows))
        return self

    def chart(self, name: str, series: dict[str, list[tuple[float, float]]], title: str, x_label: str,
              y_label: str, log_y: bool = False) -> "Record":
        self.blocks.append(("chart", name, svg_line_chart(series, title, x_label, y_label, log_y=log_y), title))
        return self

    # ------------------------------------------------------------------ output

    def html(self) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
               f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        charts: list[str] = []
        for block in self.blocks:
            if block[0] != "chart" and charts:
                out.append(f"<div class='charts'>{''.join(charts)}</div>")
                charts = []
            if block[0] == "h":
                out.append(f"<h2>{html.escape(block[1])}</h2>")
            elif block[0] == "p":
                out.append(f"<p>{_inline(block[1])}</p>")
            elif block[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif block[0] == "table":
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{_inline(_cell(c))}</td>" for c in row) + "</tr>"
                               for row in block[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif block[0] == "chart":
                charts.append(block[2])
        if charts:
            out.append(f"<div class='charts'>{''.join(charts)}</div>")
        out.append("</body></html>")
        return "".join(out)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            if block[0] == "h":
                out += [f"## {block[1]}", ""]
            elif block[0] == "p":
                out += [block[1], ""]
            elif block[0] == "ul":
                out += [f"- {i}" for i in block[1]] + [""]
            elif block[0] == "table":
                out.append("| " + " | ".join(str(h) for h in block[1]) + " |")
                out.append("|" + "---|" * len(block[1]))
                out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in block[2]]
                out.append("")
            elif block[0] == "chart":
                out += [f"![{block[3]}]({block[1]}.svg)", ""]
        return "\n".join(out)

    def write(self, out_dir: Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.html``, ``<stem>.md`` and the charts as ``<name>.svg``; return (html, md) paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for block in self.blocks:
            if block[0] == "chart":
                svg = block[2].replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
                atomic_write_text(out_dir / f"{block[1]}.svg", svg)
        html_path, md_path = out_dir / f"{stem}.html", out_dir / f"{stem}.md"
        atomic_write_text(html_path, self.html())
        atomic_write_text(md_path, self.markdown())
        return html_path, md_path


def _cell(v) -> str:
    return v if isinstance(v, str) else fmt(v)


def _inline(text: str) -> str:
    """Escape, then render markdown's **bold** and `code` spans."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)
