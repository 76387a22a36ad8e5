"""Vocabulary spec v1: the id layout of the unified (text + multimodal) vocabulary.

``vocab_spec.json`` sits beside the text tokenizer file and is the single source
of truth for every id a model sees. The id space is a sequence of contiguous,
non-overlapping ranges that together cover ``[0, total_size)``::

    text       [0, T)          the trained text vocabulary; its first ids are the
                               control tokens pad=0 bos=1 eos=2 unk=3 doc_sep=4 turn_sep=5
    structure  [T, T+S)        <|image_start|> ... <|cam_front|> ... <|action_end|>
    timestamp  [.., +N)        <|timestamp_0.0s|>, <|timestamp_0.5s|>, ...
    image      [.., +image_codes)   codebook entries of an image tokenizer
    audio      [.., +audio_codes)   codebook entries of an audio codec
    action     [.., +action_bins)   discretized action bins
    reserved   [.., total)     padding up to a multiple of pad_vocab_multiple

Named tokens (control, structure, timestamps) are single ids that ordinary
text never produces. Code ranges have no strings: a discretizer maps its code
``c`` with ``spec.code_to_id("image", c)`` and back with ``spec.id_to_code``.

A spec validates itself on construction and on load (fixed ids, ranges
contiguous and non-overlapping, every named token inside its range, the text
model file's hash); any violation is a one-line DataError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_text, sha256_file

SPEC_FILE = "vocab_spec.json"
SPEC_FORMAT = "pretrainlab.vocab_spec"
SPEC_VERSION = 1
RETRAIN_HINT = "re-run `pretrainlab tokenizer train`"

CONTROL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|doc_sep|>", "<|turn_sep|>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CAMERAS = ("front", "front_left", "front_right", "back", "back_left", "back_right")
STRUCTURE_TOKENS = (
    "<|image_start|>", "<|image_end|>",
    "<|video_start|>", "<|video_end|>",
    "<|audio_start|>", "<|audio_end|>",
    *(f"<|cam_{c}|>" for c in CAMERAS),
    "<|action_start|>", "<|action_end|>",
)
CODE_RANGES = ("image", "audio", "action")
RANGE_ORDER = ("text", "structure", "timestamp", *CODE_RANGES, "reserved")


def timestamp_token(seconds: float) -> str:
    return f"<|timestamp_{seconds:.{_decimals(seconds)}f}s|>"


def _decimals(x: float) -> int:
    """Fewest decimals (at least 1, at most 6) that print x exactly enough to be unique."""
    for d in range(1, 7):
        if abs(round(x, d) - x) < 1e-9:
            return d
    return 6


@dataclass(frozen=True)
class VocabSpec:
    """The id layout; build with :meth:`build`, read with :meth:`load`."""

    text_kind: str
    text_file: str
    text_sha256: str
    text_size: int
    timestamp_step_s: float
    ranges: dict[str, tuple[int, int]]  # name -> (start, size), in id order
    tokens: dict[str, int]  # every named token -> id
    version: int = SPEC_VERSION
    _by_id: dict[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_by_id", {i: t for t, i in self.tokens.items()})

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls, *, text_kind: str, text_file: str, text_sha256: str, text_size: int, timestamps: int = 64,
        timestamp_step_s: float = 0.5, image_codes: int = 0, audio_codes: int = 0, action_bins: int = 0,
        pad_vocab_multiple: int = 1,
    ) -> "VocabSpec":
        sizes = {
            "text": text_size, "structure": len(STRUCTURE_TOKENS), "timestamp": timestamps,
            "image": image_codes, "audio": audio_codes, "action": action_bins,
        }
        ranges, start = {}, 0
        for name in RANGE_ORDER[:-1]:
            ranges[name] = (start, sizes[name])
            start += sizes[name]
        ranges["reserved"] = (start, -start % max(1, pad_vocab_multiple))
        tokens = {t: i for i, t in enumerate(CONTROL_TOKENS)}
        s0 = ranges["structure"][0]
        tokens.update({t: s0 + i for i, t in enumerate(STRUCTURE_TOKENS)})
        t0 = ranges["timestamp"][0]
        tokens.update({timestamp_token(k * timestamp_step_s): t0 + k for k in range(timestamps)})
        return cls(text_kind, text_file, text_sha256, text_size, float(timestamp_step_s), ranges, tokens)

    @classmethod
    def from_config(cls, tcfg, *, text_kind: str, text_file: str, text_sha256: str, text_size: int) -> "VocabSpec":
        """Build from a ``TokenizerConfig`` section (modality sizes) and the trained text model."""
        return cls.build(
            text_kind=text_kind, text_file=text_file, text_sha256=text_sha256, text_size=text_size,
            timestamps=tcfg.timestamps, timestamp_step_s=tcfg.timestamp_step_s, image_codes=tcfg.image_codes,
            audio_codes=tcfg.audio_codes, action_bins=tcfg.action_bins, pad_vocab_multiple=tcfg.pad_vocab_multiple,
        )

    # ------------------------------------------------------------------ validation

    def validate(self, where: str = "vocabulary spec") -> None:
        def bad(msg: str) -> DataError:
            return DataError(f"{where}: {msg}; {RETRAIN_HINT} (or fix the file)")

        if self.version != SPEC_VERSION:
            raise bad(f"version {self.version} is not supported (this code reads version {SPEC_VERSION})")
        if set(self.ranges) != set(RANGE_ORDER):
            raise bad(f"ranges must be {list(RANGE_ORDER)}, got {sorted(self.ranges)}")
        spans = []
        for name, (start, size) in self.ranges.items():
            if not (isinstance(start, int) and isinstance(size, int)) or start < 0 or size < 0:
                raise bad(f"range '{name}' has start {start!r}, size {size!r}; both must be integers >= 0")
            spans.append((name, start, start + size))
        spans.sort(key=lambda x: (x[1], RANGE_ORDER.index(x[0])))
        for (a, sa, ea), (b, sb, eb) in zip(spans, spans[1:]):
            if sb < ea:
                raise bad(f"ranges '{a}' [{sa}, {ea}) and '{b}' [{sb}, {eb}) overlap")
            if sb > ea:
                raise bad(f"gap between range '{a}' (ends at {ea}) and '{b}' (starts at {sb})")
        if [n for n, _, _ in spans] != list(RANGE_ORDER):
            raise bad(f"ranges must come in the order {list(RANGE_ORDER)}, got {[n for n, _, _ in spans]}")
        if spans[0][1] != 0:
            raise bad(f"range 'text' must start at id 0, starts at {spans[0][1]}")
        if self.ranges["text"][1] != self.text_size:
            raise bad(f"range 'text' has size {self.ranges['text'][1]} but text_size is {self.text_size}")
        if self.text_size < len(CONTROL_TOKENS) + 256:
            raise bad(f"text vocabulary of {self.text_size} is too small (at least {len(CONTROL_TOKENS) + 256})")
        for i, t in enumerate(CONTROL_TOKENS):
            if self.tokens.get(t) != i:
                raise bad(f"control token {t} must have id {i}, has {self.tokens.get(t)}")
        if len(set(self.tokens.values())) != len(self.tokens):
            dup = sorted(i for i in self.tokens.values() if list(self.tokens.values()).count(i) > 1)[0]
            raise bad(f"id {dup} is given to more than one token: {[t for t, i in self.tokens.items() if i == dup]}")
        expect = {"structure": list(STRUCTURE_TOKENS), "timestamp": None}
        for name, names in expect.items():
            start, size = self.ranges[name]
            inside = sorted((i, t) for t, i in self.tokens.items() if start <= i < start + size)
            if len(inside) != size:
                raise bad(f"range '{name}' [{start}, {start + size}) has {len(inside)} named tokens, needs {size}")
            if names is not None and [t for _, t in inside] != names:
                raise bad(f"range '{name}' must hold {names} in this order")
        outside = [t for t, i in self.tokens.items() if not (i < len(CONTROL_TOKENS) or self.ranges["structure"][0] <= i
                                                             < sum(self.ranges["timestamp"]))]
        if outside:
            raise bad(f"named token {outside[0]} has id {self.tokens[outside[0]]}, outside the control/structure/timestamp ranges")

    # ------------------------------------------------------------------ ids

    @property
    def total_size(self) -> int:
        """Embedding rows a model needs: every id of every range (reserved padding included)."""
        start, size = self.ranges["reserved"]
        return start + size

    @property
    def control_ids(self) -> frozenset[int]:
        return frozenset(range(len(CONTROL_TOKENS)))

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that are not ordinary text: control, structure and timestamp tokens."""
        return frozenset(self.tokens.values())

    def id_range(self, name: str) -> range:
        """Ids of one range: ``spec.id_range("image")`` -> range(start, start + image_codes)."""
        if name not in self.ranges:
            raise KeyError(f"no range {name!r}; ranges are {list(self.ranges)}")
        start, size = self.ranges[name]
        return range(start, start + size)

    def token_id(self, token: str) -> int:
        """Id of a named token, e.g. ``"<|cam_front|>"``."""
        try:
            return self.tokens[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a named token of this vocabulary") from None

    def camera_id(self, camera: str) -> int:
        """Id of ``<|cam_<camera>|>``; camera is one of CAMERAS (front, front_left, ...)."""
        if camera not in CAMERAS:
            raise KeyError(f"unknown camera {camera!r}; cameras are {list(CAMERAS)}")
        return self.tokens[f"<|cam_{camera}|>"]

    def timestamp_id(self, seconds: float) -> int:
        """Id of the timestamp token for ``seconds`` (rounded down to the step)."""
        start, size = self.ranges["timestamp"]
        k = int(np.floor(seconds / self.timestamp_step_s + 1e-9))
        if not 0 <= k < size:
            raise ValueError(
                f"timestamp {seconds}s outside the {size} tokens of step {self.timestamp_step_s}s; raise tokenizer.timestamps"
            )
        return start + k

    def code_to_id(self, modality: str, codes):
        """Map codebook entries (int or integer array) of ``modality`` (image/audio/action) to vocabulary ids."""
        if modality not in CODE_RANGES:
            raise KeyError(f"{modality!r} has no code range; code ranges are {list(CODE_RANGES)}")
        start, size = self.ranges[modality]
        arr = np.asarray(codes)
        if arr.size and (arr.min() < 0 or arr.max() >= size):
            raise ValueError(f"{modality} codes must lie in [0, {size}) (tokenizer.{_size_key(modality)}), got "
                             f"[{arr.min()}, {arr.max()}]")
        if arr.ndim == 0 and not isinstance(codes, np.ndarray):
            return start + int(codes)
        return arr.astype(np.int64) + start

    def id_to_code(self, i: int) -> tuple[str, int]:
        """(modality, code) of an id inside a code range; ValueError otherwise."""
        for m in CODE_RANGES:
            start, size = self.ranges[m]
            if start <= i < start + size:
                return m, i - start
        raise ValueError(f"id {i} is not in a code range ({self.range_of(i)})")

    def range_of(self, i: int) -> str:
        """Name of the range holding id ``i``."""
        for name, (start, size) in self.ranges.items():
            if start <= i < start + size:
                return name
        raise ValueError(f"id {i} outside the vocabulary [0, {self.total_size})")

    def name_of(self, i: int) -> str | None:
        """Named token of an id, a synthetic ``<|image_code_17|>`` for code ids, None for text/reserved ids."""
        if i in self._by_id:
            return self._by_id[i]
        if 0 <= i < self.total_size and self.range_of(i) in CODE_RANGES:
            m, c = self.id_to_code(i)
            return f"<|{m}_code_{c}|>"
        return None

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {
            "format": SPEC_FORMAT,
            "version": self.version,
            "text": {"kind": self.text_kind, "file": self.text_file, "sha256": self.text_sha256, "size": self.text_size},
            "total_size": self.total_size,
            "ranges": {n: {"start": s, "size": z} for n, (s, z) in self.ranges.items()},
            "timestamp_step_s": self.timestamp_step_s,
            "tokens": dict(sorted(self.tokens.items(), key=lambda kv: kv[1])),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "vocabulary spec") -> "VocabSpec":
        try:
            if d.get("format") != SPEC_FORMAT:
                raise DataError(f"{where}: not a vocabulary spec (format {d.get('format')!r}); {RETRAIN_HINT}")
            text = d["text"]
            spec = cls(
                text_kind=str(text["kind"]), text_file=str(text["file"]), text_sha256=str(text["sha256"]),
                text_size=int(text["size"]), timestamp_step_s=float(d["timestamp_step_s"]),
                ranges={str(n): (r["start"], r["size"]) for n, r in sorted(
                    d["ranges"].items(), key=lambda kv: RANGE_ORDER.index(kv[0]) if kv[0] in RANGE_ORDER else 99)},
                tokens={str(t): int(i) for t, i in d["tokens"].items()}, version=int(d["version"]),
            )
        except DataError as exc:  # raised by validate(): name the file
            raise DataError(str(exc).replace("vocabulary spec:", f"{where}:", 1)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where}: malformed vocabulary spec ({type(exc).__name__}: {exc}); {RETRAIN_HINT}") from None
        if "total_size" in d and d["total_size"] != spec.total_size:
            raise DataError(f"{where}: total_size {d['total_size']} does not match its ranges ({spec.total_size}); {RETRAIN_HINT}")
        return spec

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPEC_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")  # in id order
        return path

    @classmethod
    def load(cls, path: str | Path, check_text_file: bool = True) -> "VocabSpec":
        """Read and validate ``vocab_spec.json`` (a file or its directory); checks the text model's hash."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise DataError(f"vocabulary spec not found: {path}; {RETRAIN_HINT}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable vocabulary spec ({exc}); {RETRAIN_HINT}") from None
        if not isinstance(d, dict):
            raise DataError(f"{path}: a vocabulary spec is a JSON object; {RETRAIN_HINT}")
        spec = cls.from_dict(d, where=str(path))
        if check_text_file:
            text = path.parent / spec.text_file
            if not text.is_file():
                raise DataError(f"{path}: its text model {text} is missing; {RETRAIN_HINT}")
            if sha256_file(text) != spec.text_sha256:
                raise DataError(f"{text} does not match {path} (sha256 differs): the pair was changed separately; {RETRAIN_HINT}")
        return spec


def _size_key(modality: str) -> str:
    return {"image": "image_codes", "audio": "audio_codes", "action": "action_bins"}[modality]
