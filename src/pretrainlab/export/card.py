"""The model card (Hugging Face template) generated from a run's artifacts.

``gather_card_facts`` collects what the card states from files only (config,
meta.json, metrics.jsonl, events.jsonl, eval.json, the data / tokenizer / token
manifests); ``render_card`` turns those facts into README.md text with YAML
front matter. Sections follow huggingface_hub's modelcard template: model
details, uses, bias/risks/limitations, how to get started, training details,
evaluation, environmental impact, technical specifications.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from pretrainlab.fsio import iter_jsonl, read_json
from pretrainlab.model.transformer import count_params
from pretrainlab.tokenizer.shards import corpus_dir_of

GPU_WATTS = 700.0  # H100 SXM board power; an assumption stated in the card
CPU_WATTS_PER_THREAD = 15.0


def _json(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path)) if path.is_file() else []


def compute_estimate(cfg, meta: dict, metrics: list[dict], events: list[dict]) -> dict[str, Any]:
    """Device-hours, energy and CO2 with every assumption spelled out."""
    ends = [e.get("seconds") for e in events if e.get("event") == "end" and isinstance(e.get("seconds"), (int, float))]
    train = [m for m in metrics if m.get("kind") == "train"]
    if ends:
        seconds, how = float(sum(ends)), "sum of the training sessions' wall time (events.jsonl 'end')"
    else:
        seconds = float(max((m.get("elapsed_s") or 0.0) for m in train)) if train else 0.0
        how = "elapsed time of the last logged step (metrics.jsonl)"
    world = int(meta.get("world_size") or 1)
    device = str(meta.get("device") or cfg.train.device)
    gpu = device.startswith("cuda")
    if cfg.export.device_watts:
        watts, watts_src = cfg.export.device_watts, "export.device_watts"
    elif gpu:
        watts, watts_src = GPU_WATTS, f"{GPU_WATTS:.0f} W per GPU (H100 SXM board power)"
    else:
        threads = cfg.train.threads or 2
        watts, watts_src = CPU_WATTS_PER_THREAD * threads, f"{CPU_WATTS_PER_THREAD:.0f} W per CPU thread x {threads}"
    device_hours = seconds * world / 3600
    kwh = device_hours * watts * cfg.export.pue / 1000
    return {
        "device": device, "world_size": world, "seconds": seconds, "seconds_source": how,
        "device_hours": device_hours, "watts": watts, "watts_source": watts_src, "pue": cfg.export.pue,
        "energy_kwh": kwh, "carbon_kg_per_kwh": cfg.export.carbon_kg_per_kwh,
        "co2_kg": kwh * cfg.export.carbon_kg_per_kwh,
    }


def training_corpus_dir(cfg, tokens_manifest: dict) -> Path | None:
    """The clean corpus behind the run's token shards, independent of the cwd (None when it cannot be found)."""
    clean = Path(cfg.clean_dir)  # absolute in a run's config; a relative one would depend on the cwd
    return corpus_dir_of(cfg.train_tokens_dir, tokens_manifest, also=(clean,) if clean.is_absolute() else ())


def gather_card_facts(run_dir: Path, cfg, checkpoint: Path, step: int | None, tokens: int | None,
                      export_record: dict) -> dict[str, Any]:
    meta = _json(run_dir / "meta.json")
    metrics = _jsonl(run_dir / "metrics.jsonl")
    events = _jsonl(run_dir / "events.jsonl")
    tokens_manifest = _json(Path(cfg.train_tokens_dir) / "manifest.json")
    corpus_dir = training_corpus_dir(cfg, tokens_manifest)
    data_manifest = _json(corpus_dir / "manifest.json") if corpus_dir else {}
    tok_dir = Path(cfg.tokenizer_dir)
    tok_manifest = _json((tok_dir if tok_dir.is_dir() else tok_dir.parent) / "manifest.json")
    val = [m for m in metrics if m.get("kind") == "val" and isinstance(m.get("val_loss"), (int, float))]
    return {
        "name": run_dir.resolve().name,
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(checkpoint), "step": step, "tokens": tokens,
        "config": cfg.model_dump(mode="json"),
        "params": count_params(cfg.model),
        "meta": meta,
        "eval": _json(run_dir / "eval.json"),
        "val": {"first": val[0], "final": val[-1]} if val else {},
        "data_manifest": data_manifest,
        "tokens_manifest": tokens_manifest,
        "tokenizer_manifest": tok_manifest,
        "compute": compute_estimate(cfg, meta, metrics, events),
        "export": export_record,
    }


def _fmt(x: Any, spec: str = ",") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def _short(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def _data_rows(f: dict) -> list[str]:
    sources = (f["data_manifest"].get("sources") or {})
    tok_sources = f["tokens_manifest"].get("sources") or {}
    stages = [st for st in (f["meta"].get("mix_stages") or []) if isinstance(st, dict)]
    if not stages and f["meta"].get("source_weights"):
        stages = [{"name": "main", "weights": f["meta"]["source_weights"]}]
    names = sorted(set(sources) | set(tok_sources))
    head = "".join(f" {st.get('name', i)} weight |" for i, st in enumerate(stages)) or " mixture weight |"
    rows = [f"| source | license | approval | train tokens | held-out tokens |{head}",
            "|---|---|---|---:|---:|" + "---:|" * max(1, len(stages))]
    for s in names:
        spec = sources.get(s) or {}
        appr = spec.get("approval") or {}
        appr_txt = " ".join(str(appr.get(k)) for k in ("status", "by", "date") if appr.get(k)) or "n/a"
        parts = tok_sources.get(s) or {}
        ws = [(st.get("weights") or {}).get(s) for st in stages] or [None]
        cells = "".join(f" {_fmt(w, '.3f') if isinstance(w, (int, float)) else 'n/a'} |" for w in ws)
        rows.append(f"| {s} | {spec.get('license') or 'n/a'} | {appr_txt} | {_fmt((parts.get('train') or {}).get('tokens'))} "
                    f"| {_fmt((parts.get('heldout') or {}).get('tokens'))} |{cells}")
    if stages:
        rows += ["", "Mixture stages: " + "; ".join(
            f"{st.get('name')} until {_fmt(st.get('until_tokens')) if st.get('until_tokens') else 'the end'}" for st in stages) + "."]
    return rows


def _eval_rows(f: dict) -> list[str]:
    ev = f["eval"]
    rows: list[str] = []
    ppl = ev.get("perplexity") or {}
    if ppl:
        rows += ["| held-out source | tokens | loss (nats/token) | perplexity |", "|---|---:|---:|---:|"]
        for s, r in sorted(ppl.items(), key=lambda kv: (kv[0] == "overall", kv[0])):
            if isinstance(r, dict):
                rows.append(f"| {s} | {_fmt(r.get('tokens'))} | {_fmt(r.get('loss'), '.4f')} | {_fmt(r.get('ppl'), '.2f')} |")
        rows.append("")
    tasks = ev.get("tasks") or {}
    if tasks:
        rows += ["| task | examples | acc | acc_norm | chance |", "|---|---:|---:|---:|---:|"]
        for name, r in tasks.items():
            rows.append(f"| {name} | {r.get('n')} | {_fmt(r.get('acc'), '.3f')} ± {_fmt(r.get('acc_stderr'), '.3f')} "
                        f"| {_fmt(r.get('acc_norm'), '.3f')} ± {_fmt(r.get('acc_norm_stderr'), '.3f')} | {_fmt(r.get('chance'), '.3f')} |")
    return rows


def _front_matter(f: dict, license_tag: str) -> str:
    ev = f["eval"]
    results = []
    for name, r in (ev.get("tasks") or {}).items():
        results.append({"task": {"type": "multiple-choice", "name": name},
                        "dataset": {"type": f"pretrainlab/{name}", "name": f"{name} (built from held-out data)"},
                        "metrics": [{"type": "acc", "value": r.get("acc")}, {"type": "acc_norm", "value": r.get("acc_norm")}]})
    overall = (ev.get("perplexity") or {}).get("overall") or {}
    if overall.get("ppl") is not None:
        results.append({"task": {"type": "text-generation", "name": "held-out perplexity"},
                        "dataset": {"type": "pretrainlab/heldout", "name": "held-out split of the training sources"},
                        "metrics": [{"type": "perplexity", "value": overall["ppl"]}]})
    fm = {
        "license": license_tag,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["pretrainlab", "llama", "causal-lm"],
        "language": ["en"],
        "model-index": [{"name": f["name"], "results": results}] if results else None,
    }
    return "---\n" + yaml.safe_dump({k: v for k, v in fm.items() if v is not None}, sort_keys=False) + "---\n"


def render_card(f: dict, license_tag: str = "other") -> str:
    c = f["config"]
    m, t, o = c["model"], c["train"], c["optim"]
    p = f["params"]
    comp = f["compute"]
    meta = f["meta"]
    dm = f["data_manifest"]
    tm = f["tokenizer_manifest"]
    exp = f["export"]
    val = f["val"]
    total_train_tokens = (f["tokens_manifest"].get("totals") or {}).get("train", {}).get("tokens")
    lines = [
        _front_matter(f, license_tag),
        f"# {f['name']}",
        "",
        f"A {_short(p['total'])}-parameter decoder-only language model (Llama architecture) trained from scratch "
        f"with pretrainlab on {len(dm.get('sources') or {}) or 'the'} approved source(s), exported at step "
        f"{_fmt(f['step'])} after {_fmt(f['tokens'])} training tokens.",
        "",
        "## Model Details",
        "",
        "### Model Description",
        "",
        f"- **Architecture:** `{exp.get('architecture')}`: {m['n_layers']} layers, hidden size {m['d_model']}, "
        f"{m['n_heads']} query heads / {m['n_kv_heads'] or m['n_heads']} key-value heads (grouped-query attention), "
        f"SwiGLU feed-forward {m['ffn_hidden'] or 'default (8/3 x hidden, rounded to 64)'}, RMSNorm (eps {m['norm_eps']}), "
        f"rotary positions (theta {m['rope_theta']}), context {m['max_seq_len']} tokens, "
        f"{'tied' if m['tie_embeddings'] else 'untied'} input/output embeddings.",
        f"- **Parameters:** {p['total']:,} total, {p['non_embedding']:,} non-embedding.",
        f"- **Tokenizer:** {tm.get('type', 'byte-level BPE')}, vocabulary {_fmt(tm.get('vocab_size') or m['vocab_size'])} "
        f"(model embedding rows {m['vocab_size']:,}); special tokens pad=0, bos=1, eos=2; documents end with eos. "
        f"Tokenizer hash `{str(meta.get('tokenizer_sha256') or tm.get('tokenizer_sha256') or 'n/a')[:16]}`.",
        f"- **Weights:** safetensors, {exp.get('dtype')}.",
        f"- **Developed with:** pretrainlab {meta.get('version', 'n/a')}, code `{meta.get('git_sha') or 'n/a'}`"
        f"{' (uncommitted changes)' if meta.get('git_dirty') else ''}, torch {meta.get('torch', 'n/a')}.",
        f"- **License:** {license_tag} (the training data licenses are listed below).",
        "",
        "## Uses",
        "",
        "### Direct Use",
        "",
        "Research on pretraining: a reference point for loss curves, data-mixture and tokenizer experiments, "
        "and for testing evaluation and serving pipelines that expect a Hugging Face causal LM.",
        "",
        "### Out-of-Scope Use",
        "",
        "Any user-facing or decision-making use. The model was not instruction-tuned or aligned, is far too small "
        "to be factual, and has seen only the sources listed below.",
        "",
        "## Bias, Risks, and Limitations",
        "",
        "- Trained only on the sources below; it reproduces their style (code, documentation, license texts) and "
        "their biases, and knows nothing else.",
        "- Generations are frequently wrong, repetitive or nonsensical; nothing it writes should be trusted.",
        f"- Context is limited to {m['max_seq_len']} tokens. Nothing truncates by itself: a longer input runs past the "
        "trained positions and its outputs degrade. Tokenize with `truncation=True` to keep the last "
        f"{m['max_seq_len']} tokens (the tokenizer truncates on the left), and leave room for the tokens you generate.",
        "- Evaluation covers held-out perplexity and small automatically built tasks; it says little about general ability.",
        "",
        "### Recommendations",
        "",
        "Use it for experiments about training, not as a language tool. Check the data licenses before redistributing outputs.",
        "",
        "## How to Get Started with the Model",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        'ids = tok("def ", return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=40, do_sample=False)",
        "print(tok.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        "`examples/inference.py` in this folder does the same and scores a multiple-choice example; "
        "`examples/` also holds a small sample of held-out documents and the evaluation task files.",
        "",
        "## Training Details",
        "",
        "### Training Data",
        "",
        f"Clean corpus manifest `{dm.get('manifest_id', 'n/a')}` ({dm.get('created', 'n/a')}), stages: "
        f"{', '.join(dm.get('stages') or []) or 'n/a'}; {_fmt((dm.get('counts') or {}).get('docs_out'))} documents kept. "
        f"Token shards: {_fmt(total_train_tokens)} training tokens.",
        "",
        *_data_rows(f),
        "",
        "### Training Procedure",
        "",
        f"Next-token prediction (cross-entropy), AdamW (beta1 {o['beta1']}, beta2 {o['beta2']}, eps {o['eps']}, "
        f"weight decay {o['weight_decay']} not applied to norms and embeddings), peak learning rate {o['lr']}, "
        f"{o['warmup_steps']} warmup steps then {o['schedule']} decay to {o['min_lr_ratio']} x peak, gradient clipping "
        f"{o['grad_clip']}.",
        "",
        "#### Training Hyperparameters",
        "",
        f"- **Steps:** {t['steps']} planned, {_fmt(f['step'])} done at export; {t['global_batch_tokens']:,} tokens per step "
        f"(sequence {t['seq_len']}, micro-batch {t['micro_batch']}).",
        f"- **Precision:** {t['precision']}; seed {t['seed']}.",
        f"- **Validation loss:** {_fmt((val.get('first') or {}).get('val_loss'), '.4f')} at step "
        f"{_fmt((val.get('first') or {}).get('step'))} -> {_fmt((val.get('final') or {}).get('val_loss'), '.4f')} at step "
        f"{_fmt((val.get('final') or {}).get('step'))}.",
        "",
        "The full resolved configuration is `repro/config.yaml`.",
        "",
        "## Evaluation",
        "",
        "Held-out perplexity is exp(mean next-token loss) over the held-out split of each source. Tasks are "
        "4-way multiple choice scored by log-likelihood (lm-eval definitions: `acc` = highest total log-likelihood, "
        "`acc_norm` = highest log-likelihood per character of the choice); `cloze` asks for a document's next word, "
        "`continuation` for its next 60 characters, against distractors from other held-out documents.",
        "",
        *_eval_rows(f),
        "",
        "## Environmental Impact",
        "",
        f"- **Hardware:** {comp['world_size']} x {comp['device']}",
        f"- **Training time:** {comp['seconds'] / 3600:.3g} h wall ({comp['seconds_source']}), "
        f"{comp['device_hours']:.3g} device-hours",
        f"- **Energy (estimate):** {comp['energy_kwh']:.3g} kWh = device-hours x {comp['watts']:.0f} W "
        f"({comp['watts_source']}) x PUE {comp['pue']}",
        f"- **CO2 (estimate):** {comp['co2_kg']:.3g} kg CO2e at {comp['carbon_kg_per_kwh']} kg/kWh (a world-average "
        "grid assumption; set `export.carbon_kg_per_kwh` for the real grid)",
        "",
        "## Technical Specifications",
        "",
        "### Model Architecture and Objective",
        "",
        "Pre-norm decoder-only transformer (RMSNorm -> attention with rotary positions -> residual; RMSNorm -> "
        "SwiGLU -> residual), causal language modelling objective.",
        "",
        "### Compute Infrastructure",
        "",
        f"Host `{meta.get('host', 'n/a')}`, {meta.get('platform', 'n/a')}, Python {meta.get('python', 'n/a')}, "
        f"torch {meta.get('torch', 'n/a')}; peak FLOP/s {_fmt(meta.get('peak_flops'), '.3g')} "
        f"({meta.get('peak_flops_source', 'n/a')}).",
        "",
        "## Reproduction",
        "",
        "`repro/` holds the resolved config, run metadata (code version), the data, tokenizer and token-shard "
        "manifests, and `commands.sh` with the commands that rebuild this model from the same sources.",
        "",
    ]
    return "\n".join(lines)
