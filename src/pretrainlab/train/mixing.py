"""Data mixture: per-source sampling weights from temperature or given, staged by token boundaries.

Temperature sampling: P(source i) ∝ n_i^(1/T), with n_i the source's tokens
(T=1 is proportional to size, T→∞ uniform, as in XLM / mT5). A schedule of
stages (e.g. Cold → Mid → Hot) switches sources and temperature at token
boundaries; each source may be capped at a number of epochs, after which it
leaves the mixture and the rest are renormalized.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrainlab.config import MixConfig, MixStageConfig
from pretrainlab.errors import DataError


def temperature_weights(token_counts: dict[str, int], temperature: float) -> dict[str, float]:
    """Normalized P(i) ∝ n_i^(1/T) over sources with tokens."""
    if temperature <= 0:
        raise DataError(f"mixture temperature must be > 0, got {temperature}")
    raw = {s: float(n) ** (1.0 / temperature) if n > 0 else 0.0 for s, n in token_counts.items()}
    total = sum(raw.values())
    if total <= 0:
        raise DataError("no source in the mixture has any tokens; run `pretrainlab data tokenize` on a non-empty corpus")
    return {s: w / total for s, w in raw.items()}


def normalize(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        raise DataError("all source weights are zero; give at least one source a positive weight")
    return {s: w / total for s, w in weights.items()}


@dataclass(frozen=True)
class Stage:
    """One resolved stage: intended probabilities over all sources, active below ``until_tokens``."""

    name: str
    until_tokens: int | None
    weights: dict[str, float]


def _stage_weights(spec: MixStageConfig | MixConfig, counts: dict[str, int], where: str) -> dict[str, float]:
    sources = getattr(spec, "sources", None) or list(counts)
    unknown = sorted(set(sources) - set(counts))
    if spec.weights:
        unknown += sorted(set(spec.weights) - set(counts))
    if unknown:
        raise DataError(f"{where} names unknown source(s) {sorted(set(unknown))}; available: {sorted(counts)}")
    if spec.weights:
        chosen = {s: float(spec.weights.get(s, 0.0)) for s in counts}
        if any(w < 0 for w in chosen.values()):
            raise DataError(f"{where}: weights must be non-negative")
        chosen = {s: (w if s in sources else 0.0) for s, w in chosen.items()}
        return normalize(chosen)
    temp = spec.temperature
    sub = temperature_weights({s: counts[s] for s in sources}, temp)
    return {s: sub.get(s, 0.0) for s in counts}


def build_schedule(cfg: MixConfig, counts: dict[str, int]) -> list[Stage]:
    """Resolve the config into stages with intended weights (a single stage when none are given)."""
    if not cfg.stages:
        return [Stage("main", None, _stage_weights(cfg, counts, "mix"))]
    stages = []
    for i, st in enumerate(cfg.stages):
        stages.append(Stage(st.name, st.until_tokens, _stage_weights(st, counts, f"mix.stages[{i}] ({st.name})")))
    return stages


def stage_index(stages: list[Stage], tokens: int) -> int:
    for i, st in enumerate(stages):
        if st.until_tokens is None or tokens < st.until_tokens:
            return i
    return len(stages) - 1


def projected_epochs(stages: list[Stage], counts: dict[str, int], total_tokens: int) -> dict[str, float]:
    """Epochs each source would see over ``total_tokens`` of training under the schedule."""
    drawn = {s: 0.0 for s in counts}
    start = 0
    for st in stages:
        end = total_tokens if st.until_tokens is None else min(total_tokens, st.until_tokens)
        span = max(0, end - start)
        for s, w in st.weights.items():
            drawn[s] += w * span
        start = end
        if start >= total_tokens:
            break
    return {s: (drawn[s] / counts[s] if counts[s] else 0.0) for s in counts}
