"""Write a Hugging Face transformers folder from one of our models.

``export_hf`` writes, into a fresh temporary sibling that replaces ``out_dir``
only when complete (a crash leaves the previous export intact)::

    config.json                   architecture config from the model's adapter
    generation_config.json        eos/pad/bos ids and the run's sampling defaults
    model.safetensors             weights (or model-0000i-of-0000n.safetensors +
                                  model.safetensors.index.json past shard_bytes)
    tokenizer.json                our BPE tokenizer, unchanged
    tokenizer_config.json         PreTrainedTokenizerFast + special tokens, so
    special_tokens_map.json       AutoTokenizer loads it offline

Only safetensors is needed here; transformers is needed to *load* the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pretrainlab.errors import UserError
from pretrainlab.export.adapters import adapter_for
from pretrainlab.fsio import atomic_write_json, give_ordinary_permissions, replace_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORT_MARKER = "pretrainlab_export.json"


def _safetensors():
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("export needs the safetensors package: pip install 'pretrainlab[export]'") from None
    return save_file


def _shards(tensors: dict[str, torch.Tensor], shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    _safetensors()(tensors, str(path), metadata={"format": "pt"})
    give_ordinary_permissions(path)  # safetensors creates its files 0600; the rest of the export is 0644


def write_weights(tensors: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> list[str]:
    """model.safetensors, or numbered shards plus the index transformers reads; returns file names."""
    shards = _shards(tensors, shard_bytes)
    if len(shards) == 1:
        _save(shards[0], out / "model.safetensors")
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _save(shard, out / name)
        names.append(name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic_write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names + ["model.safetensors.index.json"]


def tokenizer_files(tokenizer, out: Path, max_len: int) -> list[str]:
    """Copy tokenizer.json and write the config files AutoTokenizer needs (no network)."""
    if getattr(tokenizer, "kind", "bpe") != "bpe" or Path(tokenizer.path).suffix != ".json":
        raise UserError(f"Hugging Face export supports byte-level BPE tokenizers (tokenizer.json); {tokenizer.path} "
                        "is not one: train the run's tokenizer with the BPE kind to export it")
    shutil.copyfile(tokenizer.path, out / "tokenizer.json")
    names = {key: tokenizer.id_to_token(getattr(tokenizer, f"{key}_id", -1)) if hasattr(tokenizer, f"{key}_id") else None
             for key in ("bos", "eos", "pad", "unk")}
    specials = {f"{key}_token": name for key, name in names.items()}
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "padding_side": "right",
        # truncation=True keeps the end of a long prompt (what generation continues), as our own eval does
        "truncation_side": "left",
    })
    atomic_write_json(out / "special_tokens_map.json", {k: v for k, v in specials.items() if v})
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def generation_config(tokenizer, gen: dict[str, Any]) -> dict[str, Any]:
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "do_sample": True,
        "temperature": gen.get("temperature", 1.0),
        "top_p": gen.get("top_p", 1.0),
        "top_k": gen.get("top_k", 0) or 0,
        "max_new_tokens": gen.get("max_new_tokens", 64),
    }


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"export target {out_dir} is a file; pass a folder path")
        if any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file():
            raise UserError(f"export target {out_dir} is a non-empty folder that is not a pretrainlab export; "
                            "pass an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _swap_in(tmp: Path, out_dir: Path) -> None:
    replace_dir(tmp, out_dir)


def export_hf(model, tokenizer, out_dir: str | Path, *, dtype: str = "float32", generation: dict | None = None,
              shard_bytes: int = 5 * 2**30, extra_files=None, provenance: dict | None = None) -> dict[str, Any]:
    """Write the HF folder for ``model`` (our Transformer) into ``out_dir``; returns the export record.

    ``extra_files(tmp_dir) -> list[str]`` may add files (card, examples) before the
    folder is swapped in, so the whole delivery appears at once.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown export dtype {dtype!r}; choose from {sorted(DTYPES)}")
    cfg = model.cfg
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}; "
                        "export the tokenizer the run was trained with")
    adapter = adapter_for(cfg)
    out_dir = Path(out_dir)
    tmp = _prepare_out_dir(out_dir)
    try:
        hf_state = adapter.to_hf({k: v.detach() for k, v in model.state_dict().items()})
        tensors = {k: v.to("cpu", DTYPES[dtype]).contiguous().clone() for k, v in hf_state.items()}
        files = write_weights(tensors, tmp, shard_bytes)
        ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
        hf_cfg = adapter.hf_config(cfg, ids, dtype)
        atomic_write_json(tmp / "config.json", hf_cfg)
        atomic_write_json(tmp / "generation_config.json", generation_config(tokenizer, generation or {}))
        files += ["config.json", "generation_config.json"]
        files += tokenizer_files(tokenizer, tmp, cfg.max_seq_len)
        if extra_files is not None:
            files += list(extra_files(tmp))
        record = {
            "architecture": adapter.architecture,
            "dtype": dtype,
            "parameters": int(sum(t.numel() for t in tensors.values())),
            "files": sorted(set(files)),
            **(provenance or {}),
        }
        atomic_write_json(tmp / EXPORT_MARKER, record)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def load_hf_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an exported folder (single file or shards), for round-trip checks."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in names:
        state.update(load_file(str(folder / name)))
    return state
