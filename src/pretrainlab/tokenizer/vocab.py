"""Load a trained tokenizer: a thin wrapper around a Hugging Face `tokenizers` file.

``load_tokenizer(dir)`` accepts the tokenizer directory (with ``tokenizer.json``
and ``manifest.json``) or the ``tokenizer.json`` path itself. Encoding never adds
special tokens; callers add ``bos_id``/``eos_id`` where they want them (shards
append ``eos_id`` after every document). Decoding skips special tokens.

Special tokens are never produced from text: a document that literally contains
``<|eos|>`` encodes it as ordinary bytes (``encode_special_tokens = True``), so
data cannot forge document boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pretrainlab.errors import DataError
from pretrainlab.fsio import read_json, sha256_file

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")


def open_backend(path: str | Path):
    """A `tokenizers.Tokenizer` from ``tokenizer.json`` that treats special-token text as plain text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok


class TextTokenizer:
    """Byte-level BPE tokenizer with fixed special ids (pad 0, bos 1, eos 2)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._tok = open_backend(self.path)
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise DataError(
                f"cannot read tokenizer {self.path} ({str(exc).splitlines()[0][:120]}); "
                "re-run `pretrainlab tokenizer train`"
            ) from None
        self.sha256 = sha256_file(self.path)
        ids = [self._tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if None in ids:
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
            raise DataError(f"tokenizer {self.path} lacks special tokens {missing}; re-run `pretrainlab tokenizer train`")
        self.pad_id, self.bos_id, self.eos_id = ids
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(ids)

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer` (for batch tricks and export)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts (parallel inside the library unless TOKENIZERS_PARALLELISM=false)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"TextTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json inside a tokenizer directory (or the file itself); DataError if absent."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() or path.suffix != ".json" else path
    if not file.is_file():
        raise DataError(f"tokenizer not found: {file}; run `pretrainlab tokenizer train` first")
    return file


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load ``<dir>/tokenizer.json`` (or a tokenizer.json path)."""
    return TextTokenizer(tokenizer_file(path))


def read_tokenizer_manifest(path: str | Path) -> dict:
    """The manifest.json written beside tokenizer.json by `tokenizer train`."""
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path.parent / "manifest.json"
    if not file.is_file():
        raise DataError(f"tokenizer manifest not found: {file}; run `pretrainlab tokenizer train` first")
    return read_json(file)
