"""`mm real-data OUT`: a multimodal dataset from real data available offline on this machine.

- **Digits**: scikit-learn's bundled handwritten digits (1,797 8x8 grayscale scans, UCI), each one
  sample with one time-slice group: its caption ("a handwritten digit seven") then the image
  (the 0..16 gray levels scaled to uint8).
- **Speech** (optional): where ``espeak-ng`` is installed, the first ``speech`` digit samples also
  get the digit's name spoken (a few voices: pitch/speed variants, silence trimmed, resampled
  to ``sample_rate``) as an audio segment of the same group. Without espeak-ng a warning says
  so and the dataset has no audio.
- **Scenes** (optional): ``scenes`` synthetic 6-camera driving scenes of ``mm demo-data`` (the
  only source of actions here), so one dataset exercises every modality.

Nothing is downloaded: the digits ship inside scikit-learn (the `multimodal` or `dev` extra).
``real_data.json`` beside ``samples.jsonl`` records what was written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from pretrainlab.errors import DataError, UserError
from pretrainlab.fsio import atomic_write_json, atomic_write_text
from pretrainlab.multimodal.demo import demo_lines, save_array
from pretrainlab.multimodal.format import SAMPLES_FILE
from pretrainlab.progress import console, track

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ((50, 150), (30, 175), (70, 130))  # espeak-ng (pitch, words per minute)
INFO_FILE = "real_data.json"


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8, labels (N,)) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("`mm real-data` needs scikit-learn (its bundled digits); "
                        "pip install 'pretrainlab[multimodal]'") from None
    d = load_digits()
    return np.clip(d.images * 16, 0, 255).astype(np.uint8), d.target.astype(np.int64)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(word: str, pitch: int, speed: int, sample_rate: int) -> np.ndarray:
    """float32 waveform of ``word`` from espeak-ng, silence trimmed, linearly resampled to ``sample_rate``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.wav"
        subprocess.run(["espeak-ng", "-w", str(path), "-p", str(pitch), "-s", str(speed), word],
                       check=True, capture_output=True, timeout=30)
        with wave.open(str(path)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 0.02)
    if loud.size:
        x = x[loud[0]:loud[-1] + 1]
    t = np.arange(int(len(x) * sample_rate / rate)) / sample_rate
    return np.interp(t, np.arange(len(x)) / rate, x).astype(np.float32)


def write_real_data(out: str | Path, digits: int = 1797, speech: int = 0, scenes: int = 0, scene_groups: int = 1,
                    sample_rate: int = 16000, seed: int = 0) -> dict:
    out = Path(out)
    if out.is_file():
        raise DataError(f"{out} is a file; give `mm real-data` a folder path")
    images, labels = load_digits_data()
    if not 0 <= digits <= len(images):
        raise UserError(f"--digits must be between 0 and {len(images)} (the bundled digits), got {digits}")
    if speech and not espeak_available():
        console.print("warning: espeak-ng not found (apt-get install espeak-ng); writing the digits without speech")
        speech = 0
    speech = min(speech, digits)
    voices: dict[tuple[int, int], np.ndarray] = {}
    lines = []
    for i in track(range(digits), "mm real-data: digits", unit="samples"):
        sid = f"digit{i:05d}"
        rel = f"digits/{sid}.npy"
        save_array(out / rel, images[i])
        name = DIGIT_NAMES[labels[i]]
        segs = [{"group": 0, "t_ns": 0, "modality": "text", "text": f"a handwritten digit {name}"},
                {"group": 0, "t_ns": 0, "modality": "image", "payload": rel}]
        if i < speech:
            key = (int(labels[i]), i % len(VOICES))
            if key not in voices:
                voices[key] = speak(name, *VOICES[key[1]], sample_rate)
            arel = f"speech/{name}_{key[1]}.npy"
            if not (out / arel).is_file():
                save_array(out / arel, voices[key])
            segs.append({"group": 0, "t_ns": 0, "modality": "audio", "payload": arel})
        lines.append(json.dumps({"id": sid, "segments": segs}))
    if scenes:
        lines += demo_lines(out, scenes, scene_groups, 8, seed, sample_rate)
    if not lines:
        raise UserError("nothing to write: give --digits N and/or --scenes N")
    np.random.default_rng(seed).shuffle(lines)  # interleave digits and scenes: readers may take documents in order
    atomic_write_text(out / SAMPLES_FILE, "\n".join(lines) + "\n")
    info = {"digits": digits, "speech": speech, "speech_clips": len(voices), "scenes": scenes,
            "scene_groups": scene_groups, "source": "sklearn.datasets.load_digits (UCI optical digits), "
            "espeak-ng speech, synthetic scenes of `mm demo-data`"}
    atomic_write_json(out / INFO_FILE, info)
    console.print(f"mm real-data: {digits} digits ({speech} with speech), {scenes} scenes -> {out / SAMPLES_FILE}")
    return info
