"""Load a trained tokenizer: the text model (HF `tokenizers` or SentencePiece) plus its vocabulary spec.

``load_tokenizer(path)`` accepts the tokenizer directory, its ``vocab_spec.json``,
or the text model file (``tokenizer.json`` / ``tokenizer.model``) with the spec
beside it. The spec (see ``spec.py``) fixes every id: pad 0, bos 1, eos 2, the
text range, modality tokens and code ranges; ``vocab_size`` is its total size
(the embedding rows a model needs).

Encoding never adds special tokens; callers add ``bos_id``/``eos_id`` where they
want them (shards append ``eos_id`` after every document). Decoding skips every
non-text id. Special tokens are never produced from text: a document that
literally contains ``<|eos|>`` encodes it as ordinary text, so data cannot forge
document boundaries or modality markers.

The tokenizer hash (``sha256``) is the sha256 of ``vocab_spec.json``, which
records the text model's own sha256, so it changes when either file changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer, pre_tokenizers

from pretrainlab.errors import DataError
from pretrainlab.fsio import read_json, sha256_file
from pretrainlab.tokenizer.spec import BOS_ID, CONTROL_TOKENS, EOS_ID, PAD_ID, SPEC_FILE, UNK_ID, VocabSpec

TOKENIZER_FILE = "tokenizer.json"  # byte-level BPE (Hugging Face tokenizers)
SP_MODEL_FILE = "tokenizer.model"  # SentencePiece
SPECIAL_TOKENS = CONTROL_TOKENS[:3]  # pad, bos, eos: ids 0, 1, 2 (kept for callers of the first version)
TRAIN_HINT = "re-run `pretrainlab tokenizer train`"


class HFTextModel:
    """A `tokenizers.Tokenizer` (tokenizer.json) that treats special-token text as plain text."""

    def __init__(self, path: str | Path):
        self.tok = Tokenizer.from_file(str(path))
        self.tok.encode_special_tokens = True

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Parallel inside the library unless TOKENIZERS_PARALLELISM=false. ``encode_batch_fast``
        (tokenizers >= 0.20) skips character offsets: same ids, measured 1.1-1.8x faster here."""
        fast = getattr(self.tok, "encode_batch_fast", None) or self.tok.encode_batch
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def piece(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def piece_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def byte_fallback_mask(self, size: int) -> np.ndarray:
        """Tokens that are not whole characters: byte sequences that are not valid UTF-8 on their own."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        to_byte = _bytelevel_inverse()
        mask = np.zeros(size, dtype=bool)
        for i in range(len(CONTROL_TOKENS), size):
            piece = self.tok.id_to_token(i)
            if piece is None or any(ch not in alphabet for ch in piece):
                continue
            try:
                bytes(to_byte[ch] for ch in piece).decode("utf-8")
            except UnicodeDecodeError:
                mask[i] = True
        return mask


class SPTextModel:
    """A SentencePiece model (tokenizer.model); ``threads`` caps batch encoding (None: all cores)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.threads = threads or os.cpu_count() or 1

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=self.threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def piece(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def piece_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece else None

    def byte_fallback_mask(self, size: int) -> np.ndarray:
        return np.array([i < self.sp.get_piece_size() and self.sp.is_byte(i) for i in range(size)], dtype=bool)


def _bytelevel_inverse() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (what ByteLevel tokens are spelled in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def open_text_model(path: str | Path, threads: int | None = None):
    """The text model behind a tokenizer file, chosen by its name (``.json``: BPE, ``.model``: SentencePiece)."""
    path = Path(path)
    if path.suffix == ".model":
        return SPTextModel(path, threads)
    return HFTextModel(path)


def open_backend(path: str | Path):
    """The raw `tokenizers.Tokenizer` of a tokenizer.json, special-token text treated as plain text."""
    return HFTextModel(path).tok


class TextTokenizer:
    """Text tokenizer + vocabulary spec, with fixed ids pad 0, bos 1, eos 2 (unk 3)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dir = self.path.parent
        self.spec_path = self.dir / SPEC_FILE
        if not self.spec_path.is_file():
            raise DataError(
                f"{self.spec_path} is missing: {self.path} has no vocabulary spec (made by an older version?); {TRAIN_HINT}"
            )
        self.spec = VocabSpec.load(self.spec_path)
        if self.spec.text_file != self.path.name:
            raise DataError(f"{self.spec_path} describes {self.spec.text_file}, not {self.path.name}; {TRAIN_HINT}")
        try:
            self._model = open_text_model(self.path)
        except Exception as exc:  # the libraries raise bare exceptions on malformed files
            raise DataError(f"cannot read tokenizer {self.path} ({str(exc).splitlines()[0][:120]}); {TRAIN_HINT}") from None
        self.sha256 = sha256_file(self.spec_path)
        self.kind = self.spec.text_kind
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
        self.vocab_size = self.spec.total_size
        self.text_vocab_size = self.spec.text_size
        self.special_ids = self.spec.special_ids
        self._drop = np.zeros(self.vocab_size, dtype=bool)  # ids decode() skips
        self._drop[list(self.spec.control_ids)] = True
        self._drop[self.text_vocab_size :] = True

    @property
    def backend(self):
        """The library object: a `tokenizers.Tokenizer` (bpe) or a `SentencePieceProcessor` (sp_*)."""
        return self._model.tok if isinstance(self._model, HFTextModel) else self._model.sp

    @property
    def text_model(self):
        """HFTextModel / SPTextModel: encode, encode_batch, decode, piece, byte_fallback_mask."""
        return self._model

    def encode(self, text: str) -> list[int]:
        return self._model.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts in parallel (all cores; TOKENIZERS_PARALLELISM=false makes BPE single-threaded)."""
        return self._model.encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the text ids in ``ids``; control, modality, code and out-of-range ids are skipped."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and not self._drop[int(i)]]
        return self._model.decode(keep)

    def token_to_id(self, token: str) -> int | None:
        if token in self.spec.tokens:
            return self.spec.tokens[token]
        i = self._model.piece_id(token)
        return i if i is not None and i < self.text_vocab_size else None

    def id_to_token(self, i: int) -> str | None:
        i = int(i)
        name = self.spec.name_of(i)
        if name is not None or not 0 <= i < self.text_vocab_size:
            return name
        return self._model.piece(i)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"TextTokenizer(path={str(self.path)!r}, kind={self.kind}, text={self.text_vocab_size}, "
                f"vocab_size={self.vocab_size}, sha256={self.sha256[:12]})")


def tokenizer_file(path: str | Path) -> Path:
    """The text model file of a tokenizer directory, spec file or model path; DataError if absent."""
    path = Path(path)
    if path.is_dir() or path.name == SPEC_FILE:
        spec_path = path / SPEC_FILE if path.is_dir() else path
        if spec_path.is_file():
            return spec_path.parent / VocabSpec.load(spec_path, check_text_file=False).text_file
        legacy = spec_path.parent / TOKENIZER_FILE
        if legacy.is_file():
            return legacy  # TextTokenizer explains that the spec is missing
        raise DataError(f"tokenizer not found: {spec_path}; run `pretrainlab tokenizer train` first")
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}; run `pretrainlab tokenizer train` first")
    return path


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a tokenizer from its directory, its vocab_spec.json, or its text model file."""
    return TextTokenizer(tokenizer_file(path))


def read_tokenizer_manifest(path: str | Path) -> dict:
    """The manifest.json written beside the tokenizer files by `tokenizer train`."""
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path.parent / "manifest.json"
    if not file.is_file():
        raise DataError(f"tokenizer manifest not found: {file}; run `pretrainlab tokenizer train` first")
    return read_json(file)
