"""Shared fixtures: a tiny clean corpus, tokenizer and token shards built once per session."""

from __future__ import annotations

import json
import os
import subprocess
import random
from pathlib import Path

import pytest

from pretrainlab.config import ProjectConfig, load_config

WORDS = (
    "the model reads tokens and predicts the next one while the optimizer lowers the loss "
    "def return import class self value data batch shard corpus token layer norm"
).split()


def make_clean_corpus(root: Path, sources: dict[str, int], seed: int = 0) -> Path:
    """Write a clean corpus in the `data build` format: <source>/{train,heldout}.jsonl + manifest.json."""
    rng = random.Random(seed)
    for source, n_docs in sources.items():
        for split, n in (("train", n_docs), ("heldout", max(2, n_docs // 10))):
            path = root / source / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as fh:
                for i in range(n):
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
                    if source.endswith("code"):
                        text = "def f():\n    " + text.replace(" the ", "\n    return ")
                    rec = {"id": f"{source}-{split}-{i}", "text": text, "source": source, "meta": {}}
                    fh.write(json.dumps(rec) + "\n")
    (root / "manifest.json").write_text(json.dumps({"manifest_id": "test"}))
    return root


def tiny_overrides(workdir: Path) -> list[str]:
    return [
        f"workdir={workdir}",
        "tokenizer.vocab_size=320",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.max_seq_len=32",
        "train.seq_len=32",
        "train.micro_batch=4",
        "train.global_batch_tokens=256",
        "train.steps=12",
        "train.log_every=1",
        "train.val_every=6",
        "train.val_batches=2",
        "train.threads=1",
        "optim.warmup_steps=3",
        "checkpoint.every=4",
        "checkpoint.keep_last=2",
        "log.tensorboard=false",
        "log.peak_flops=1e11",
        "eval.max_tokens_per_source=2000",
        "eval.max_new_tokens=8",
    ]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A workdir with clean corpus, tokenizer and token shards for two sources."""
    from pretrainlab.tokenizer.shards import tokenize_corpus
    from pretrainlab.tokenizer.train import train_tokenizer

    workdir = tmp_path_factory.mktemp("tiny")
    make_clean_corpus(workdir / "clean", {"prose": 60, "code": 40})
    cfg = load_config(None, tiny_overrides(workdir) + ["tokenize.workers=1"])
    train_tokenizer(cfg)
    tokenize_corpus(cfg)
    return workdir


@pytest.fixture
def tiny_cfg(tiny_data, tmp_path):
    """A tiny training config over the shared shards, with its own run directory."""

    def make(*extra: str) -> ProjectConfig:
        return load_config(None, tiny_overrides(tiny_data) + [f"run.dir={tmp_path / 'run'}", *extra])

    return make


@pytest.fixture
def small_disk(tmp_path):
    """A real 1.5 MB filesystem (tmpfs, needs root); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the fault-injection (patched ENOSPC) tests cover the same paths")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
