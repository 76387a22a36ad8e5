"""PII detection and redaction with per-type counts.

Types: e-mail addresses, phone numbers (international/North-American style and
mainland-China mobile numbers), IPv4/IPv6 addresses, mainland-China resident
ID numbers (GB 11643 checksum and a valid birth date), bank-card numbers (Luhn
checksum, 13-19 digits) and URLs carrying credentials (``scheme://user:pass@``).
Candidates that fail a checksum are left alone, so a random 18-digit number is
not an ID and a random 16-digit number is rarely a card.

What happens to a document with PII is its source's ``pii_policy``: ``redact``
(replace each match with ``data.pii.placeholder``), ``drop`` (quarantine the
document) or ``keep`` (count only).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections import Counter

from pretrainlab.config import DataConfig
from pretrainlab.data.stages import Document, Reject, Stage, register_stage

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_id_valid(s: str) -> bool:
    """Mainland-China resident ID (18 characters): region, valid birth date, GB 11643 check digit."""
    s = s.upper()
    if len(s) != 18 or not s[:17].isdigit() or s[0] == "0":
        return False
    try:
        born = dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not dt.date(1900, 1, 1) <= born <= dt.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17]


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ipv6_valid(s: str) -> bool:
    # "1::2" (a Python slice) parses as IPv6; require a group of 3+ hex digits as real addresses have.
    if not any(len(g) >= 3 for g in s.split(":")):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _ipv4_valid(s: str) -> bool:
    parts = s.split(".")
    return all(p == "0" or (not p.startswith("0") and int(p) <= 255) for p in parts)


def _card_valid(s: str) -> bool:
    digits = re.sub(r"[ -]", "", s)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


# (type, pattern, validator). Order matters: earlier types claim their spans first.
_RULES: list[tuple[str, re.Pattern, object]] = [
    ("url_credentials", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s/]+"), None),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("cn_id", re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])"), cn_id_valid),
    ("bank_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card_valid),
    ("cn_mobile", re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)"), None),
    ("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])"), None),
    ("ip", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), _ipv4_valid),
    ("ip", re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![\w:])"), _ipv6_valid),
]
# Candidate zones: every rule's match lies inside one, so the rules run only there (most text
# has none) instead of scanning whole documents eight times.
_DIGIT_ZONE = re.compile(r"\d[\d .()\-]{4,}\d")
_AT_ZONE = re.compile(r"@")
_HEX_ZONE = re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
_ZONE_OF = {"url_credentials": _AT_ZONE, "email": _AT_ZONE, "cn_id": _DIGIT_ZONE, "bank_card": _DIGIT_ZONE,
            "cn_mobile": _DIGIT_ZONE, "phone": _DIGIT_ZONE}
_IPV6_RULE = len(_RULES) - 1  # the other "ip" rule (IPv4) lives in digit zones
_PAD = {_DIGIT_ZONE: 6, _AT_ZONE: 256, _HEX_ZONE: 40}


def _windows(text: str, zone: re.Pattern) -> list[tuple[int, int]]:
    pad = _PAD[zone]
    out: list[tuple[int, int]] = []
    for m in zone.finditer(text):
        s, e = max(0, m.start() - pad), min(len(text), m.end() + pad)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def find_pii(text: str, types: set[str] | None = None) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) spans of PII in ``text``, in order."""
    spans: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []
    zones: dict[re.Pattern, list[tuple[int, int]]] = {}
    for i, (kind, pattern, valid) in enumerate(_RULES):
        if types is not None and kind not in types:
            continue
        zone = _ZONE_OF.get(kind) or (_HEX_ZONE if i == _IPV6_RULE else _DIGIT_ZONE)
        if zone not in zones:
            zones[zone] = _windows(text, zone)
        for ws, we in zones[zone]:
            for m in pattern.finditer(text, ws, we):
                s, e = m.span()
                if valid is not None and not valid(m.group()):
                    continue
                if any(s < te and ts < e for ts, te in taken):
                    continue
                taken.append((s, e))
                spans.append((s, e, kind))
    spans.sort()
    return spans


def redact(text: str, spans: list[tuple[int, int, str]], placeholder: str = "<{type}>") -> str:
    out, pos = [], 0
    for s, e, kind in spans:
        out.append(text[pos:s])
        out.append(placeholder.format(type=kind.upper()))
        pos = e
    out.append(text[pos:])
    return "".join(out)


@register_stage
class PiiRedaction(Stage):
    """Detect PII; redact, drop or keep per the source's ``pii_policy``. Counts by type and by
    ingestion batch (``pii.trend_batch_docs`` documents) for the governance report."""

    name = "pii"

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.types = set(cfg.pii.types)
        self.by_type: Counter = Counter()
        self.by_source: dict[str, Counter] = {}
        self.docs_with_pii = 0
        self.redacted_docs = 0
        self.batches: dict[int, dict] = {}
        self._seen = 0

    def _policy(self, source: str) -> str:
        spec = self.sources.get(source)
        return (spec.pii_policy if spec is not None and spec.pii_policy else None) or self.cfg.pii.default_policy

    def process(self, doc: Document) -> Document | Reject:
        ordinal = doc.seq if doc.seq >= 0 else self._seen
        self._seen += 1
        spans = find_pii(doc.text, self.types)
        found = Counter(kind for _, _, kind in spans)
        if self.remote:  # a worker does not know the read position; the main process counts the batch
            self.note = dict(found)
        else:
            self.account(ordinal, found)
        if not spans:
            return doc
        self.by_type.update(found)
        self.by_source.setdefault(doc.source, Counter()).update(found)
        self.docs_with_pii += 1
        doc.meta["pii"] = dict(sorted(found.items()))
        policy = self._policy(doc.source)
        if policy == "drop":
            return Reject("pii", f"contains PII ({', '.join(f'{k} {v}' for k, v in sorted(found.items()))}); source pii_policy: drop")
        if policy == "redact":
            doc.text = redact(doc.text, spans, self.cfg.pii.placeholder)
            self.redacted_docs += 1
        return doc

    def account(self, seq: int, note: dict) -> None:
        # Ingestion batch = window of `trend_batch_docs` documents in read order (Document.seq).
        batch = self.batches.setdefault(seq // self.cfg.pii.trend_batch_docs, {"docs": 0, "detections": {}})
        batch["docs"] += 1
        for k, v in note.items():
            batch["detections"][k] = batch["detections"].get(k, 0) + v

    def finish(self) -> dict:
        return {
            "detections": dict(sorted(self.by_type.items())),
            "by_source": {k: dict(sorted(v.items())) for k, v in sorted(self.by_source.items())},
            "docs_with_pii": self.docs_with_pii,
            "docs_redacted": self.redacted_docs,
            "batches": [{"batch": i, **self.batches[i]} for i in sorted(self.batches)],
            "batch_docs": self.cfg.pii.trend_batch_docs,
        }

    @classmethod
    def merge_extras(cls, parts: list[dict]) -> dict:
        batches: dict[int, dict] = {}
        for part in parts:
            for b in part.get("batches", []):
                acc = batches.setdefault(b["batch"], {"docs": 0, "detections": {}})
                acc["docs"] += b["docs"]
                for k, v in b["detections"].items():
                    acc["detections"][k] = acc["detections"].get(k, 0) + v
        merged = super().merge_extras([{k: v for k, v in p.items() if k not in ("batches", "batch_docs")} for p in parts])
        merged["batches"] = [{"batch": i, **batches[i]} for i in sorted(batches)]
        merged["batch_docs"] = parts[0]["batch_docs"] if parts else None  # a setting, not a count
        return merged
