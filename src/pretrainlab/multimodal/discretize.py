"""Discretizers: images/video frames -> patch codes, audio -> log-mel frame codes, actions -> bins.

Each is trained on the dataset and saved in a folder with a version and hashes::

    discretizers.json      format, version, parameters, per-file sha256
    image_codebook.npy     float32 [image_codes, patch*patch*channels]  (k-means centroids)
    audio_codebook.npy     float32 [audio_codes, n_mels]                 (k-means centroids)

The discretizers' hash (``Discretizers.sha256``) is the sha256 of discretizers.json,
which records the codebooks' own hashes. Codebook sizes are the code ranges of the
vocabulary spec (tokenizer.image_codes / audio_codes / action_bins), so a code ``c``
becomes the id ``spec.code_to_id(modality, c)``.

k-means is plain Lloyd's algorithm in torch (seeded random init, empty clusters
re-seeded from random points); log-mel frames are computed here with ``torch.stft``
and an HTK mel filterbank (no torchaudio).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_open, atomic_write_text, sha256_file

FORMAT = "pretrainlab.mm_discretizers"
VERSION = 1
META_FILE = "discretizers.json"
REFIT_HINT = "re-run `pretrainlab mm fit`"


# --------------------------------------------------------------------------- k-means


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0, chunk: int = 8192) -> np.ndarray:
    """k centroids of the rows of ``x`` (Lloyd's algorithm, seeded)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = X.shape[0]
    if n == 0:
        raise DataError("no vectors to fit a codebook on")
    init = torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(n, (k,), generator=g)
    C = X[init].clone()
    for _ in range(iters):
        a = assign(X, C, chunk)
        sums = torch.zeros_like(C).index_add_(0, a, X)
        counts = torch.bincount(a, minlength=k)
        C = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].float(), C)
        empty = counts == 0
        if empty.any():  # re-seed dead centroids so every code gets used
            C[empty] = X[torch.randint(n, (int(empty.sum()),), generator=g)]
    return C.numpy()


def assign(X: torch.Tensor, C: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid of every row (in chunks to bound memory)."""
    return torch.cat([torch.cdist(X[i : i + chunk], C).argmin(1) for i in range(0, X.shape[0], chunk)]) if X.shape[0] else \
        torch.empty(0, dtype=torch.long)


def _nearest(vectors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    return assign(torch.from_numpy(np.ascontiguousarray(vectors, np.float32)), torch.from_numpy(codebook)).numpy()


# --------------------------------------------------------------------------- images


def as_image(arr: np.ndarray, patch: int) -> np.ndarray:
    """HxW or HxWxC array (uint8 0-255 or float 0-1) -> float32 HxWxC in [0, 1]; ValueError if unusable."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image must be HxW or HxWxC, got shape {tuple(np.shape(arr))}")
    if a.shape[0] % patch or a.shape[1] % patch:
        raise ValueError(f"image {a.shape[0]}x{a.shape[1]} is not divisible into {patch}x{patch} patches (multimodal.patch_size)")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise ValueError("image has non-numeric or non-finite values")
    return a.astype(np.float32)


def to_patches(img: np.ndarray, patch: int) -> np.ndarray:
    """HxWxC -> [n_patches, patch*patch*C] in row-major patch order."""
    h, w, c = img.shape
    return img.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4).reshape(-1, patch * patch * c)


def from_patches(p: np.ndarray, h: int, w: int, patch: int, c: int) -> np.ndarray:
    return p.reshape(h // patch, w // patch, patch, patch, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)


@dataclass
class ImageVQ:
    codebook: np.ndarray  # [codes, patch*patch*channels]
    patch: int
    channels: int

    def encode(self, arr: np.ndarray) -> np.ndarray:
        img = as_image(arr, self.patch)
        if img.shape[2] != self.channels:
            raise ValueError(f"image has {img.shape[2]} channels, the codebook was fit on {self.channels}")
        return _nearest(to_patches(img, self.patch), self.codebook)

    def decode(self, codes: np.ndarray, h: int, w: int) -> np.ndarray:
        return from_patches(self.codebook[np.asarray(codes)], h, w, self.patch, self.channels)


# --------------------------------------------------------------------------- audio


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] from 0 Hz to Nyquist."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(up, down), 0, None).astype(np.float32)


def log_mel(wave: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """1-D waveform -> log-mel frames [frames, n_mels] (Hann window, no centering; short clips zero-padded)."""
    w = np.asarray(wave)
    if w.ndim != 1 or w.size == 0 or not np.issubdtype(w.dtype, np.number) or not np.isfinite(w).all():
        raise ValueError(f"audio must be a non-empty 1-D array of finite numbers, got shape {w.shape}, dtype {w.dtype}")
    t = torch.from_numpy(w.astype(np.float32))
    if t.numel() < n_fft:
        t = torch.nn.functional.pad(t, (0, n_fft - t.numel()))
    spec = torch.stft(t, n_fft, hop, window=torch.hann_window(n_fft), center=False, return_complex=True).abs() ** 2
    mel = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)) @ spec
    return torch.log(mel + 1e-10).T.numpy()


@dataclass
class AudioVQ:
    codebook: np.ndarray  # [codes, n_mels]
    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int

    def frames(self, wave: np.ndarray) -> np.ndarray:
        return log_mel(wave, self.sample_rate, self.n_fft, self.hop, self.n_mels)

    def encode(self, wave: np.ndarray) -> np.ndarray:
        return _nearest(self.frames(wave), self.codebook)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Log-mel frames of the codes (the codebook entries)."""
        return self.codebook[np.asarray(codes)]


# --------------------------------------------------------------------------- actions


@dataclass
class ActionBinner:
    """Uniform bins per action dimension between the fitted min and max (values outside are clipped)."""

    low: np.ndarray
    high: np.ndarray
    bins: int

    @property
    def dims(self) -> int:
        return int(self.low.size)

    def encode(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size != self.dims:
            raise ValueError(f"action has {v.size} values, the binner was fit on {self.dims}")
        width = np.maximum(self.high - self.low, 1e-12)
        return np.clip(np.floor((v - self.low) / width * self.bins), 0, self.bins - 1).astype(np.int64)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bin centres."""
        return self.low + (np.asarray(bins) + 0.5) * (self.high - self.low) / self.bins


# --------------------------------------------------------------------------- the set


@dataclass
class Discretizers:
    image: ImageVQ | None
    audio: AudioVQ | None
    action: ActionBinner | None
    sha256: str = ""
    meta: dict | None = None

    def save(self, directory: str | Path, fit_info: dict) -> str:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta: dict = {"format": FORMAT, "version": VERSION, "fit": fit_info}
        for name, arr in (("image", self.image and self.image.codebook), ("audio", self.audio and self.audio.codebook)):
            if arr is None:
                meta[name] = None
                continue
            file = f"{name}_codebook.npy"
            with atomic_open(d / file, "wb") as fh:
                np.save(fh, arr.astype(np.float32))
            meta[name] = {"file": file, "sha256": sha256_file(d / file), "codes": int(arr.shape[0]), "dim": int(arr.shape[1])}
        if self.image:
            meta["image"].update(patch_size=self.image.patch, channels=self.image.channels)
        if self.audio:
            a = self.audio
            meta["audio"].update(sample_rate=a.sample_rate, n_fft=a.n_fft, hop=a.hop, n_mels=a.n_mels)
        meta["action"] = None if self.action is None else {
            "bins": self.action.bins, "low": self.action.low.tolist(), "high": self.action.high.tolist()}
        atomic_write_text(d / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: the set counts once this exists
        self.sha256, self.meta = sha256_file(d / META_FILE), meta
        return self.sha256

    @classmethod
    def load(cls, directory: str | Path) -> "Discretizers":
        d = Path(directory)
        path = d / META_FILE
        if not path.is_file():
            raise DataError(f"discretizers not found: {path} is missing; run `pretrainlab mm fit` first")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise DataError(f"{path}: not version {VERSION} discretizers; {REFIT_HINT}")
            books = {}
            for name in ("image", "audio"):
                m = meta[name]
                if m is None:
                    books[name] = None
                    continue
                f = d / m["file"]
                if not f.is_file() or sha256_file(f) != m["sha256"]:
                    raise DataError(f"{f} is missing or does not match the hash in {path}; {REFIT_HINT}")
                books[name] = np.load(f, allow_pickle=False).astype(np.float32)
            im, au, ac = meta["image"], meta["audio"], meta["action"]
            image = ImageVQ(books["image"], int(im["patch_size"]), int(im["channels"])) if im else None
            audio = AudioVQ(books["audio"], int(au["sample_rate"]), int(au["n_fft"]), int(au["hop"]), int(au["n_mels"])) if au else None
            action = ActionBinner(np.asarray(ac["low"], float), np.asarray(ac["high"], float), int(ac["bins"])) if ac else None
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed discretizers ({type(exc).__name__}: {exc}); {REFIT_HINT}") from None
        return cls(image, audio, action, sha256_file(path), meta)

    def check_spec(self, spec) -> None:
        """Codebook sizes must equal the spec's code ranges."""
        for name, size in (("image", self.image and self.image.codebook.shape[0]),
                           ("audio", self.audio and self.audio.codebook.shape[0]), ("action", self.action and self.action.bins)):
            want = len(spec.id_range(name))
            if size is not None and size != want:
                raise DataError(f"the {name} discretizer has {size} codes but the tokenizer reserves {want}; {REFIT_HINT} "
                                "with this tokenizer")


def subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if x.shape[0] <= limit else x[rng.choice(x.shape[0], limit, replace=False)]


def bits_per_code(codes: int) -> float:
    return math.log2(codes) if codes > 0 else 0.0
