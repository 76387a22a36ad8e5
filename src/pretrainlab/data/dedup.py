"""Deduplication stages."""

from __future__ import annotations

import hashlib

from pretrainlab.config import DataConfig
from pretrainlab.data.minhash import LSHIndex, MinHasher
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
    stateful = True

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


@register_stage
class NearDedup(Stage):
    """MinHash-LSH near-duplicate removal across all sources (see :mod:`.minhash`).

    A document whose estimated Jaccard similarity to an earlier kept document is at
    least ``near_dedup.threshold`` is quarantined with that document's id (its
    cluster id); kept documents are the cluster representatives. Candidates are
    verified on exact Jaccard (``near_dedup.verify: exact``, shingle sets spilled to a
    temporary file) or on the signatures. Memory: one ``bands*rows`` uint32 signature
    plus ``bands`` bucket entries per kept document.
    """

    name = "near_dedup"
    stateful = True

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        nd = cfg.near_dedup
        self.hasher = MinHasher(nd.bands * nd.rows, nd.seed, nd.ngram, nd.cjk_ngram, cfg.quality.cjk_ratio)
        self.index = LSHIndex(nd.bands, nd.rows, exact=nd.verify == "exact")
        self.cluster_sizes: dict[str, int] = {}
        self.duplicates = 0

    def process(self, doc: Document) -> Document | Reject:
        shingles = self.hasher.shingles(doc.text)
        sig = self.hasher.signature_of(shingles)
        hit = self.index.query(sig, self.cfg.near_dedup.threshold, shingles)
        if hit is not None:
            rep = self.index.keys[hit[0]]
            self.cluster_sizes[rep] = self.cluster_sizes.get(rep, 1) + 1
            self.duplicates += 1
            how = "Jaccard" if self.index.store is not None else "estimated Jaccard"
            return Reject("near_duplicate", f"near-duplicate of {rep} ({how} {hit[1]:.2f}); cluster {rep}")
        self.index.insert(sig, doc.id, shingles)
        return doc

    def finish(self) -> dict:
        if self.index.store is not None:
            self.index.store.close()
        biggest = sorted(self.cluster_sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        return {
            "kept_docs": len(self.index.keys),
            "duplicate_docs": self.duplicates,
            "clusters_with_duplicates": len(self.cluster_sizes),
            "largest_clusters": dict(biggest),
        }
