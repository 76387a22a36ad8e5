"""Text normalization and document filters."""

from __future__ import annotations

import re
import unicodedata

import ftfy

from pretrainlab.config import DataConfig
from pretrainlab.data.stages import Document, Reject, Stage, register_stage

# C0 controls except \t and \n (\r is handled as a line break first), DEL, and C1 controls.
_CONTROL = {c: None for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)] if c not in (0x09, 0x0A)}
_HAS_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING_WS = re.compile(r"[^\S\n]\n")  # only a test: is there any trailing whitespace before a line break?
_MANY_BLANK_LINES = re.compile(r"\n{4,}")  # 3+ blank lines


def fix_mojibake(text: str) -> str:
    """Repair text that was UTF-8 decoded as Latin-1/cp1252 ("cafÃ©" -> "café") with ftfy,
    touching nothing else (no quote/ligature/width changes)."""
    return ftfy.fix_text(
        text, unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
        fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False, remove_control_chars=False,
        normalization=None,
    )


def normalize_text(text: str, strip_control_chars: bool = True, collapse_whitespace: bool = True) -> str:
    """NFC; ``\\r\\n``/``\\r`` -> ``\\n``; drop a leading BOM; optionally remove control
    characters (keeping tab and newline); optionally strip trailing whitespace on every
    line, collapse runs of 3+ blank lines to 2 (PEP 8's gap between top-level code
    blocks survives) and trim blank lines at the start and whitespace at the end."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    # Each step first checks cheaply whether it has anything to do (most documents are clean).
    if strip_control_chars and _HAS_CONTROL.search(text):
        text = text.translate(_CONTROL)
    if collapse_whitespace:
        if _TRAILING_WS.search(text):
            text = "\n".join(line.rstrip() for line in text.split("\n"))
        text = _MANY_BLANK_LINES.sub("\n\n\n", text)
        text = text.lstrip("\n").rstrip()
    return text


@register_stage
class Normalize(Stage):
    """Unicode NFC and whitespace/control-character cleanup, optional mojibake repair
    (``data.fix_mojibake``); never removes a document."""

    name = "normalize"

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.changed = 0
        self.mojibake_fixed = 0

    def process(self, doc: Document) -> Document:
        text = doc.text
        if self.cfg.fix_mojibake:
            fixed = fix_mojibake(text)
            if fixed != text:
                self.mojibake_fixed += 1
                text = fixed
        text = normalize_text(text, self.cfg.strip_control_chars, self.cfg.collapse_whitespace)
        if text != doc.text:
            self.changed += 1
            doc.text = text
        return doc

    def finish(self) -> dict:
        return {"docs_changed": self.changed, "mojibake_fixed": self.mojibake_fixed}


@register_stage
class LengthFilter(Stage):
    """Remove documents shorter than ``min_chars`` or longer than ``max_chars`` (characters)."""

    name = "length_filter"

    def process(self, doc: Document) -> Document | Reject:
        n = len(doc.text)
        if n < self.cfg.min_chars:
            return Reject("too_short", f"{n} chars < data.min_chars={self.cfg.min_chars}")
        if n > self.cfg.max_chars:
            return Reject("too_long", f"{n} chars > data.max_chars={self.cfg.max_chars}")
        return doc
