"""The multimodal sample format and its validating reader.

A dataset is a folder with ``samples.jsonl`` (one sample per line) and side files
(payloads) referenced by paths relative to that folder::

    {"id": "s0", "segments": [
      {"group": 0, "t_ns": 0, "modality": "text", "text": "a car turns left"},
      {"group": 0, "t_ns": 0, "modality": "video", "camera": "front", "payload": "frames/s0_0_front.npy"},
      {"group": 0, "t_ns": 0, "modality": "image", "payload": "images/s0.npy"},
      {"group": 0, "t_ns": 0, "modality": "audio", "payload": "audio/s0_0.npy"},
      {"group": 0, "t_ns": 0, "modality": "action", "value": [0.1, 0.5]}]}

``group`` is the time-slice index (all cameras, audio, action and text at one
time t); ``t_ns`` is an integer timestamp in nanoseconds. Image and video
payloads are ``.npy`` arrays HxW or HxWxC (uint8 0-255 or float 0-1); audio a
1-D float ``.npy`` waveform; an action its ``value`` list inline (or a 1-D
``.npy`` payload); text its ``text`` inline.

``read_samples`` yields a :class:`Sample` per valid line and a :class:`BadSample`
(with a one-line reason) per invalid one; nothing invalid reaches the tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrainlab.errors import DataError
from pretrainlab.tokenizer.spec import CAMERAS

SAMPLES_FILE = "samples.jsonl"
MODALITIES = ("text", "image", "video", "audio", "action")
ARRAY_MODALITIES = ("image", "video", "audio")


@dataclass
class Segment:
    group: int
    t_ns: int
    modality: str
    camera: str | None = None
    payload: Path | None = None  # absolute path of the side file
    text: str | None = None
    value: list[float] | None = None

    def load(self) -> np.ndarray:
        """The payload array (image/video/audio/action); DataError if unreadable."""
        try:
            return np.load(self.payload, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"payload {self.payload.name} unreadable ({type(exc).__name__}: {str(exc)[:80]})") from None

    def action_values(self) -> np.ndarray:
        if self.value is not None:
            return np.asarray(self.value, dtype=np.float64)
        return np.asarray(self.load(), dtype=np.float64).reshape(-1)


@dataclass
class Sample:
    id: str
    line: int
    segments: list[Segment]
    groups: dict[int, list[Segment]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for seg in self.segments:
            self.groups.setdefault(seg.group, []).append(seg)
        self.groups = dict(sorted(self.groups.items()))


@dataclass
class BadSample:
    id: str
    line: int
    code: str
    reason: str
    extra: dict = field(default_factory=dict)

    def record(self, stage: str) -> dict:
        """The quarantine.jsonl record of this sample."""
        return {"id": self.id, "line": self.line, "stage": stage, "code": self.code, "reason": self.reason, **self.extra}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _segment(raw, i: int, root: Path) -> Segment:
    """One validated segment; ValueError(reason) otherwise."""
    if not isinstance(raw, dict):
        raise ValueError(f"segment {i} is not an object")
    modality = raw.get("modality")
    if modality not in MODALITIES:
        raise ValueError(f"segment {i}: modality {modality!r} is not one of {list(MODALITIES)}")
    t_ns, group = raw.get("t_ns"), raw.get("group", 0)
    if not _is_int(t_ns) or t_ns < 0:
        raise ValueError(f"segment {i}: t_ns must be an integer >= 0 (nanoseconds), got {t_ns!r}")
    if not _is_int(group) or group < 0:
        raise ValueError(f"segment {i}: group must be an integer >= 0, got {group!r}")
    seg = Segment(group=group, t_ns=t_ns, modality=modality)
    if modality == "video":
        seg.camera = raw.get("camera")
        if seg.camera not in CAMERAS:
            raise ValueError(f"segment {i}: video camera {seg.camera!r} is not one of {list(CAMERAS)}")
    if modality == "text":
        if not isinstance(raw.get("text"), str) or not raw["text"]:
            raise ValueError(f"segment {i}: text segment needs a non-empty string 'text'")
        seg.text = raw["text"]
        return seg
    if modality == "action" and "value" in raw:
        v = raw["value"]
        if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(f"segment {i}: action 'value' must be a non-empty list of numbers")
        if not all(np.isfinite(v)):
            raise ValueError(f"segment {i}: action 'value' has a non-finite number")
        seg.value = [float(x) for x in v]
        return seg
    ref = raw.get("payload")
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"segment {i}: {modality} segment needs a 'payload' path (relative to the dataset folder)")
    path = (root / ref).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"segment {i}: payload {ref!r} points outside the dataset folder")
    if not path.is_file():
        raise ValueError(f"segment {i}: payload {ref!r} not found")
    seg.payload = path
    return seg


def parse_sample(line: str, lineno: int, root: Path) -> Sample | BadSample:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadSample(f"line-{lineno}", lineno, "bad_json", f"not JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(raw, dict):
        return BadSample(f"line-{lineno}", lineno, "bad_record", "record is not a JSON object")
    sid = raw.get("id")
    if not isinstance(sid, str) or not sid:
        return BadSample(f"line-{lineno}", lineno, "bad_record", "record needs a non-empty string 'id'")
    segs = raw.get("segments")
    if not isinstance(segs, list) or not segs:
        return BadSample(sid, lineno, "bad_record", "record needs a non-empty list 'segments'")
    try:
        segments = [_segment(s, i, root) for i, s in enumerate(segs)]
    except ValueError as exc:
        return BadSample(sid, lineno, "bad_segment", str(exc))
    return Sample(sid, lineno, segments)


def samples_path(dataset: str | Path) -> Path:
    root = Path(dataset)
    path = root / SAMPLES_FILE if root.is_dir() else root
    if not path.is_file():
        raise DataError(f"multimodal dataset not found: {path} is missing; run `pretrainlab mm demo-data DIR` or set multimodal.data")
    return path


def read_samples(dataset: str | Path) -> Iterator[Sample | BadSample]:
    """Every line of ``<dataset>/samples.jsonl`` as a Sample, or a BadSample saying what is wrong; duplicate ids are bad."""
    path = samples_path(dataset)
    root = path.parent
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            s = parse_sample(line, lineno, root)
            if isinstance(s, Sample):
                if s.id in seen:
                    s = BadSample(s.id, lineno, "duplicate_id", f"id {s.id!r} already used by an earlier sample")
                else:
                    seen.add(s.id)
            yield s
