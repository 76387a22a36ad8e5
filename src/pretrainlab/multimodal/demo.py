"""`mm demo-data OUT`: a small synthetic multi-camera driving scene in the multimodal sample format.

Every sample is an object moving across a scene with constant velocity, seen by
the six cameras (each a shifted view of the same scene) as small grayscale frames,
plus an overview image, an engine-like sine tone whose pitch follows the speed,
the action (steer, throttle) that follows the object, and a caption saying where
it goes. Groups are 0.5 s apart; each segment's timestamp jitters by up to
``jitter_ns`` (default 0.2 ms, inside the 1 ms sync tolerance). Seeded: the same
arguments write the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pretrainlab.errors import DataError
from pretrainlab.fsio import atomic_write_text
from pretrainlab.multimodal.format import SAMPLES_FILE
from pretrainlab.progress import track
from pretrainlab.tokenizer.spec import CAMERAS

GROUP_STEP_NS = 500_000_000
CAMERA_SHIFT = {"front": (0, 0), "front_left": (0, -2), "front_right": (0, 2),
                "back": (3, 0), "back_left": (3, -2), "back_right": (3, 2)}


def _frame(size: int, y: float, x: float, cam: str) -> np.ndarray:
    dy, dx = CAMERA_SHIFT[cam]
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-(((yy - (y + dy) % size) ** 2) + ((xx - (x + dx) % size) ** 2)) / 2.0)
    background = 0.15 * (yy / size) * (1 + CAMERAS.index(cam) % 2)
    return np.clip(255 * (background + 0.8 * blob), 0, 255).astype(np.uint8)


def save_array(path: Path, arr: np.ndarray) -> None:
    """One payload array as ``path`` (.npy), creating its folder."""
    # Plain writes: samples.jsonl, written atomically last, is what makes the dataset exist.
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def write_demo_data(out: str | Path, samples: int = 40, groups: int = 3, size: int = 8, seed: int = 0,
                    sample_rate: int = 16000, jitter_ns: int = 200_000) -> Path:
    out = Path(out)
    if out.is_file():
        raise DataError(f"{out} is a file; give `mm demo-data` a folder path")
    lines = demo_lines(out, samples, groups, size, seed, sample_rate, jitter_ns)
    atomic_write_text(out / SAMPLES_FILE, "\n".join(lines) + "\n")
    return out


def demo_lines(out: Path, samples: int, groups: int, size: int, seed: int, sample_rate: int = 16000,
               jitter_ns: int = 200_000) -> list[str]:
    """Write the scenes' payload files under ``out``; return their samples.jsonl lines."""
    rng = np.random.default_rng(seed)
    lines = []
    n_audio = sample_rate // 10  # 0.1 s of audio per group
    t_audio = np.arange(n_audio) / sample_rate
    for i in track(range(samples), "mm demo-data", unit="samples"):
        sid = f"demo{i:05d}"
        y0, x0 = rng.uniform(0, size, 2)
        vy, vx = rng.uniform(-1.5, 1.5, 2)
        speed = float(np.hypot(vy, vx))
        segs = []
        for g in range(groups):
            t = g * GROUP_STEP_NS

            def ts() -> int:
                return int(t + rng.integers(0, jitter_ns + 1))

            y, x = y0 + vy * g, x0 + vx * g
            if g == 0:
                horiz = "right" if vx > 0 else "left"
                vert = "down" if vy > 0 else "up"
                pace = "fast" if speed > 1.2 else "slow"
                segs.append({"group": g, "t_ns": ts(), "modality": "text",
                             "text": f"the object moves {pace} to the {horiz} and {vert}"})
                rel = f"images/{sid}.npy"
                save_array(out / rel, _frame(size, y, x, "front"))
                segs.append({"group": g, "t_ns": ts(), "modality": "image", "payload": rel})
            for cam in CAMERAS:
                rel = f"frames/{sid}_{g}_{cam}.npy"
                save_array(out / rel, _frame(size, y, x, cam))
                segs.append({"group": g, "t_ns": ts(), "modality": "video", "camera": cam, "payload": rel})
            rel = f"audio/{sid}_{g}.npy"
            wave = 0.5 * np.sin(2 * np.pi * (200 + 600 * speed) * t_audio) + 0.01 * rng.standard_normal(n_audio)
            save_array(out / rel, wave.astype(np.float32))
            segs.append({"group": g, "t_ns": ts(), "modality": "audio", "payload": rel})
            steer = float(np.clip(vx / 1.5, -1, 1))
            throttle = float(np.clip(speed / 2.2, 0, 1))
            segs.append({"group": g, "t_ns": ts(), "modality": "action", "value": [round(steer, 4), round(throttle, 4)]})
        lines.append(json.dumps({"id": sid, "segments": segs}))
    return lines
