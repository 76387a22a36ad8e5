"""Deduplication stages."""

from __future__ import annotations

import hashlib

from pretrainlab.config import DataConfig
from pretrainlab.data.stages import Document, Reject, Stage, register_stage


@register_stage
class ExactDedup(Stage):
    """Remove documents whose text (as it reaches this stage, i.e. normalized when
    ``normalize`` runs first) equals an earlier document's, across all sources.

    The first occurrence in pipeline order (sources in sources.yaml order, lines in
    file order) is kept; the quarantine reason names the kept document's id. Memory:
    one 16-byte BLAKE2b digest plus the kept id per unique document.
    """

    name = "exact_dedup"

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.seen: dict[bytes, str] = {}
        self.duplicates = 0

    def process(self, doc: Document) -> Document | Reject:
        key = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).digest()
        kept = self.seen.get(key)
        if kept is not None:
            self.duplicates += 1
            return Reject("duplicate", f"exact duplicate of {kept}")
        self.seen[key] = doc.id
        return doc

    def finish(self) -> dict:
        return {"unique_docs": len(self.seen), "duplicate_docs": self.duplicates}
