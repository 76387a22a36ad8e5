"""The `pretrainlab` command: subcommands only parse arguments and delegate.

Every subcommand reads the same ProjectConfig: `-c FILE` (YAML), then
`--set section.key=value` overrides, then the flags derived from the fields of
the subcommand's own config section (so `data build --min-chars 100` is
`--set data.min_chars=100`). User mistakes print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pretrainlab import __version__
from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import TrainingPaused, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_PAUSED = TrainingPaused.exit_code  # 75: a guard paused training; `train --resume auto` continues

_SCALARS = (int, float, str, bool, Path)


def _scalar_kind(annotation: Any):
    """The scalar type behind an annotation (unwrapping Optional), or None for lists/dicts/models."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "literal"
    if origin in (list, tuple):
        inner = get_args(annotation)
        return "list" if len(inner) == 1 and _scalar_kind(inner[0]) not in (None, "list") else None
    if origin is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar_kind(args[0])
        return None
    return annotation if annotation in _SCALARS else None


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _override_text(value: Any) -> str:
    """A flag value as the YAML text --set expects (lists and booleans as JSON, which is YAML)."""
    return json.dumps(value) if isinstance(value, (bool, list)) else str(value)


def add_section_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """One --flag per scalar field of ProjectConfig.<section>, help text from its description."""
    model = ProjectConfig.model_fields[section].annotation
    group = parser.add_argument_group(f"{section} options (same as --set {section}.KEY=VALUE)")
    for name, field in model.model_fields.items():
        kind = _scalar_kind(field.annotation)
        if kind is None:
            continue
        flag = "--" + name.replace("_", "-")
        dest = f"cfg__{section}__{name}"
        help_text = field.description or ""
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=dest, default=None, metavar="A,B,...", type=_comma_list,
                               help=f"{help_text} (comma-separated)")
        elif kind == "literal":
            choices = [str(c) for c in get_args(field.annotation)] if get_origin(field.annotation) is Literal else None
            if choices is None:
                inner = [a for a in get_args(field.annotation) if a is not type(None)][0]
                choices = [str(c) for c in get_args(inner)]
            group.add_argument(flag, dest=dest, choices=choices, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, default=None, metavar=name.upper(), help=help_text)


def _common(parser: argparse.ArgumentParser, config_positional: bool = False) -> None:
    if config_positional:
        parser.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML config (same as -c)")
    parser.add_argument("-c", "--config", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--workdir", metavar="DIR", help="folder all stage outputs default to (default: ./work)")


def _config_from_args(args: argparse.Namespace) -> ProjectConfig:
    return load_config(*_path_and_overrides(args))


def _path_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    path = getattr(args, "config", None) or getattr(args, "config_file", None)
    overrides: list[str] = []
    if getattr(args, "workdir", None):
        overrides.append(f"workdir={args.workdir}")
    overrides += list(getattr(args, "overrides", []) or [])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            overrides.append(f"{section}.{name}={_override_text(value)}")
    return path, overrides


def _run_config(run: str | None, args: argparse.Namespace) -> Path:
    if run is None:
        return _config_from_args(args).run_dir
    return Path(run)


# --------------------------------------------------------------------------- handlers


def cmd_corpus_build(args):
    from pretrainlab.corpus.embedded import build_corpus

    build_corpus(_config_from_args(args))


def cmd_data_build(args):
    from pretrainlab.data.pipeline import EXIT_RECORDS_LOST, build_clean_corpus

    summary = build_clean_corpus(_config_from_args(args))
    lost = summary["totals"].get("bad_records", 0) if not summary.get("up_to_date") else 0
    if lost:
        print(f"warning: {lost:,} input record(s) could not be read and were quarantined "
              f"(see {summary['out']}/quarantine.jsonl, stage 'read'); exit status {EXIT_RECORDS_LOST}", file=sys.stderr)
        sys.exit(EXIT_RECORDS_LOST)


def cmd_data_report(args):
    from pretrainlab.data.report import write_data_report

    cfg = _config_from_args(args)
    corpus = Path(args.corpus) if args.corpus else cfg.clean_dir
    mm_tokens = args.mm_tokens
    if mm_tokens is None:  # the config's `mm build` output, when there is one
        from pretrainlab.multimodal.build import mm_paths

        default = mm_paths(cfg)["out"]
        mm_tokens = default if (default / "manifest.json").is_file() else None
    json_path, html_path = write_data_report(corpus, args.out, mm_tokens=mm_tokens)
    print(f"report: {html_path} and {json_path}")


def cmd_tokenizer_train(args):
    from pretrainlab.tokenizer.train import train_tokenizer

    train_tokenizer(_config_from_args(args))


def cmd_tokenizer_compare(args):
    from pretrainlab.tokenizer.compare import compare_tokenizers

    for flag, key in (("kinds", "compare_kinds"), ("vocab_sizes", "compare_vocab_sizes")):
        if getattr(args, flag):
            args.overrides.append(f"tokenizer.{key}=[{getattr(args, flag)}]")
    compare_tokenizers(_config_from_args(args), args.tokenizers)


def cmd_data_tokenize(args):
    from pretrainlab.tokenizer.shards import tokenize_corpus

    tokenize_corpus(_config_from_args(args))


def cmd_data_inspect_batch(args):
    from pretrainlab.train.inspect_batch import inspect_batch

    report = inspect_batch(_config_from_args(args), index=args.index, out=Path(args.out) if args.out else None,
                           rows=args.rows)
    if report["total_cross_document_pairs"] and report["doc_mask"]:
        raise UserError(f"attention mask lets {report['total_cross_document_pairs']} query/key pairs cross documents")


def cmd_train(args):
    if args.dry_run:
        from pretrainlab.train.dry_run import dry_run

        dry_run(_config_from_args(args), world=args.world)
        return
    from pretrainlab.train.trainer import train

    summary = train(_config_from_args(args), resume=args.resume)
    _close_process_groups()
    first, final = summary["first_val_loss"], summary["final_val_loss"]
    if first is not None and final is not None:
        print(f"validation loss {first:.4f} -> {final:.4f}; run: {summary['run_dir']}")


def _close_process_groups() -> None:
    """After a successful torchrun job: wait for every rank, then tear the groups down.

    Exiting with live gloo groups occasionally aborts (SIGABRT) in their destructors while a peer is still
    sending; a barrier then an orderly destroy avoids that. Failed runs skip this (a barrier could hang).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides plus the section flags, for commands that re-load a run's saved config."""
    out = list(args.overrides or [])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            out.append(f"{section}.{name}={_override_text(value)}")
    return out


def cmd_eval(args):
    run, overrides = _run_config(args.run, args), _run_overrides(args)
    if args.harness:
        from pretrainlab.eval.harness import run_harness

        run_harness(run, [t.strip() for t in args.harness.split(",") if t.strip()], overrides, args.checkpoint,
                    limit=args.limit)
    elif args.all_checkpoints:
        from pretrainlab.eval.sweep import evaluate_all_checkpoints

        evaluate_all_checkpoints(run, overrides)
    else:
        from pretrainlab.eval.run import evaluate_run

        evaluate_run(run, cfg_overrides=overrides, checkpoint=args.checkpoint)


def cmd_export(args):
    from pretrainlab.export.package import export_run

    fmt, *rest = args.to
    if fmt != "hf" or len(rest) > 1 or (rest and args.out):
        raise UserError(f"--to {' '.join(args.to)}: write `export RUN --to hf DIR` (only 'hf', a transformers folder)")
    out = rest[0] if rest else args.out
    record = export_run(_run_config(args.run, args), out, _run_overrides(args), args.checkpoint)
    print(f"export: {record['out']}")


def cmd_gates_check(args):
    from pretrainlab.gates import check_gates, print_verdict

    verdict = check_gates(args.run, args.gates, out=args.out)
    print_verdict(verdict)
    return 0 if verdict["verdict"] == "Go" else 1


def cmd_dashboard(args):
    from pretrainlab.monitor.dashboard import serve_dashboard

    serve_dashboard(args.runs_dir, host=args.host, port=args.port, refresh_s=args.refresh)


def cmd_report(args):
    from pretrainlab.monitor.report import write_report

    path = write_report(_run_config(args.run, args))
    print(f"report: {path}")


def cmd_quickstart(args):
    from pretrainlab.quickstart import run_quickstart

    run_quickstart(_config_from_args(args), resume=args.resume)


def cmd_plan(args):
    from pretrainlab.plan.planner import run_plan

    path, overrides = _path_and_overrides(args)
    run_plan(path, overrides, compare=args.compare, json_out=args.json, html_out=args.html)


def cmd_config_show(args):
    from pretrainlab.config import dump_yaml

    print(dump_yaml(_config_from_args(args)), end="")


def cmd_config_docs(args):
    from pretrainlab.config import config_reference_markdown

    text = config_reference_markdown()
    if args.out:
        from pretrainlab.fsio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


# --------------------------------------------------------------------------- parser


def cmd_experiments_accidents(args):
    from pretrainlab.experiments.accidents import run_accidents

    run_accidents(_config_from_args(args))


def cmd_experiments_lr_range(args):
    from pretrainlab.experiments.lr_range import run_lr_range

    run_lr_range(_config_from_args(args))


def cmd_mm_demo_data(args):
    from pretrainlab.multimodal.demo import write_demo_data

    cfg = _config_from_args(args)
    m = cfg.multimodal
    out = write_demo_data(args.out, m.demo_samples, m.demo_groups, m.demo_image_size, m.seed, m.sample_rate)
    print(f"demo data: {out} ({m.demo_samples} samples x {m.demo_groups} time-slice groups, 6 cameras)")


def cmd_mm_fit(args):
    from pretrainlab.multimodal.build import fit_discretizers

    fit_discretizers(_config_from_args(args))


def cmd_mm_build(args):
    from pretrainlab.multimodal.build import build_shards

    build_shards(_config_from_args(args))


def cmd_mm_real_data(args):
    from pretrainlab.multimodal.realdata import write_real_data

    m = _config_from_args(args).multimodal
    write_real_data(args.out, args.digits, args.speech, args.scenes, args.scene_groups, m.sample_rate, m.seed)


def cmd_mm_eval(args):
    from pretrainlab.multimodal.evaluate import eval_run

    run_dir = _run_config(args.run, args)
    eval_run(run_dir, args.checkpoint)
    print(f"mm eval: {run_dir / 'mm_eval.json'}")


def cmd_sweep(args):
    from pretrainlab.experiments.sweep import run_sweep

    run_sweep(_config_from_args(args), args.grid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pretrainlab",
        description=(
            "Run an LLM pretraining program: corpus -> clean data -> tokenizer -> token shards -> "
            "train -> eval -> report. Start with `pretrainlab quickstart`."
        ),
    )
    p.add_argument("--version", action="version", version=f"pretrainlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def leaf(parent, name, help_text, handler, section=None, config_positional=False):
        sp = parent.add_parser(name, help=help_text, description=help_text)
        _common(sp, config_positional)
        if section:
            add_section_flags(sp, section)
        sp.set_defaults(handler=handler)
        return sp

    def group(name, help_text):
        gp = sub.add_parser(name, help=help_text, description=help_text)
        gs = gp.add_subparsers(dest=f"{name}_command", metavar="ACTION")
        gp.set_defaults(handler=lambda a, _gp=gp: (_gp.print_help(), sys.exit(EXIT_USER_ERROR)))
        return gs

    corpus = group("corpus", "Build the embedded corpus from text already on this machine.")
    leaf(corpus, "build", "Write raw source JSONL files + sources.yaml (stdlib code, docstrings, man pages, /usr/share/doc).",
         cmd_corpus_build, "corpus")

    data = group("data", "Clean the corpus and tokenize it into shards.")
    leaf(data, "build", "Normalize, filter, deduplicate and split the raw sources into a clean corpus.",
         cmd_data_build, "data")
    leaf(data, "tokenize", "Encode the clean corpus into per-source token shards with a document index.",
         cmd_data_tokenize, "tokenize")
    drp = leaf(data, "report", "Write the data-governance report (HTML + JSON) of a clean corpus.", cmd_data_report)
    drp.add_argument("corpus", nargs="?", metavar="CORPUS", help="clean corpus folder (default: data.out from the config)")
    drp.add_argument("--out", metavar="DIR", help="where governance.html/.json go (default: the corpus folder)")
    drp.add_argument("--mm-tokens", metavar="DIR", help="multimodal shards of `mm build` whose per-modality counts "
                     "the report adds (default: multimodal.out when it holds a manifest)")
    ib = leaf(data, "inspect-batch", "Show one training micro-batch: documents, positions and the attention mask "
              "(HTML with --out); exits 2 if the document mask leaks.", cmd_data_inspect_batch, "packing")
    ib.add_argument("--index", type=int, default=0, help="which micro-batch of the run's data order (default 0)")
    ib.add_argument("--rows", type=int, default=None, help="rows to show (default: the whole micro-batch)")
    ib.add_argument("--out", metavar="FILE.html", help="write an HTML page with text and mask images")

    tok = group("tokenizer", "Train tokenizers.")
    leaf(tok, "train", "Train a tokenizer (byte-level BPE or SentencePiece BPE/unigram) and its vocabulary spec "
         "on the clean corpus.", cmd_tokenizer_train, "tokenizer")
    cmp = leaf(tok, "compare", "Compare tokenizers: chars/bytes per token per source and language, fertility, "
               "unknown/byte-fallback rates; writes compare.json + compare.html.", cmd_tokenizer_compare)
    cmp.add_argument("tokenizers", nargs="*", metavar="TOKENIZER_DIR",
                     help="tokenizers to compare (default: train the grid of --kinds x --vocab-sizes)")
    cmp.add_argument("--kinds", metavar="K1,K2", help="same as --set tokenizer.compare_kinds=[K1,K2] (bpe, sp_bpe, sp_unigram)")
    cmp.add_argument("--vocab-sizes", metavar="N1,N2", help="same as --set tokenizer.compare_vocab_sizes=[N1,N2]")
    cmp.add_argument("--split", dest="cfg__tokenizer__compare_split", choices=["train", "heldout"], default=None,
                     help="corpus split measured (tokenizer.compare_split)")
    cmp.add_argument("--max-chars", dest="cfg__tokenizer__compare_max_chars", metavar="N", default=None,
                     help="characters measured per source at most (tokenizer.compare_max_chars)")
    cmp.add_argument("--out", dest="cfg__tokenizer__compare_out", metavar="DIR", default=None,
                     help="output folder (tokenizer.compare_out)")

    tr = leaf(sub, "train", "Train a model on the token shards; writes a run directory.", cmd_train, "train",
              config_positional=True)
    tr.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                    help="auto: continue from the newest complete checkpoint if any (default); never: refuse an existing run")
    tr.add_argument("--dry-run", action="store_true",
                    help="build the model on the meta device; print parameters, FLOPs/token, batch geometry and memory")
    tr.add_argument("--world", type=int, default=None, help="with --dry-run: data-parallel size to check (default 1)")

    ev = leaf(sub, "eval", "Evaluate a run: per-source held-out perplexity, multiple-choice tasks, sample "
              "continuations; or every checkpoint (--all-checkpoints); or lm-eval (--harness).", cmd_eval, "eval")
    ev.add_argument("run", nargs="?", metavar="RUN", help="run directory (default: from the config)")
    ev.add_argument("--checkpoint", default=None, metavar="STEP|PATH", help="checkpoint to evaluate (default: newest)")
    ev.add_argument("--all-checkpoints", action="store_true",
                    help="evaluate every kept checkpoint; writes eval_sweep.json and eval_sweep.html (metric vs tokens)")
    ev.add_argument("--harness", default=None, metavar="TASKS",
                    help="run lm-eval on the Hugging Face export: builtin, cloze, continuation, task JSONL paths "
                    "(offline) or lm-eval task names like hellaswag (need the network)")
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="--harness: at most N examples per task")

    ex = leaf(sub, "export", "Export a run as a Hugging Face folder with model card, examples and reproduction bundle.",
              cmd_export, "export")
    ex.add_argument("run", nargs="?", metavar="RUN", help="run directory (default: from the config)")
    ex.add_argument("out", nargs="?", metavar="DIR", help="output folder (default: RUN/export/hf)")
    ex.add_argument("--to", nargs="+", default=["hf"], metavar=("FORMAT", "DIR"),
                    help="export format and folder: hf DIR (a transformers folder; DIR default RUN/export/hf)")
    ex.add_argument("--checkpoint", default=None, metavar="STEP|PATH", help="checkpoint to export (default: newest)")

    rp = leaf(sub, "report", "Write a self-contained HTML report of a run.", cmd_report)
    rp.add_argument("run", nargs="?", metavar="RUN", help="run directory (default: from the config)")

    gates = group("gates", "Go/No-Go gates: quantified criteria on a run's artifacts.")
    gc = gates.add_parser("check", help="Evaluate a gate file on a run; exit 0 for Go, 1 for No-Go.",
                          description="Evaluate a gate file (see configs/gates/) on a run; prints a verdict table, "
                          "writes JSON (default <run>/gates/<file>.json); exit 0 for Go, 1 for No-Go.")
    gc.add_argument("run", metavar="RUN", help="run directory")
    gc.add_argument("--gates", required=True, metavar="FILE", help="gate YAML file, e.g. configs/gates/foundation.yaml")
    gc.add_argument("--out", metavar="FILE", help="verdict JSON path (default <run>/gates/<gate file stem>.json)")
    gc.set_defaults(handler=cmd_gates_check)

    db = sub.add_parser("dashboard", help="Serve the live war-room dashboard of the runs in a folder (127.0.0.1).",
                        description="Serve a live dashboard (offline page, no CDN) of every run under RUNS_DIR: "
                        "curves, events, MoE routing, run overlays; it refreshes while runs train. Ctrl-C stops it.")
    db.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run directories (e.g. work/runs), or one run")
    db.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    db.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    db.add_argument("--refresh", type=float, default=5.0, metavar="S", help="seconds between page updates (default 5)")
    db.set_defaults(handler=cmd_dashboard)

    qs = leaf(sub, "quickstart", "Run every stage end to end with the quickstart defaults (~10 min on 2 CPU cores).",
              cmd_quickstart, config_positional=False)
    qs.add_argument("--size", dest="cfg__corpus__size", choices=["small", "medium", "large"], default=None,
                    help="corpus size (small is the ~10-minute default)")
    qs.add_argument("--resume", default="auto", metavar="auto|never", help="training resume mode (default auto)")

    pl = leaf(sub, "plan", "Budget a training run: FLOPs, time, cost, memory per device, checkpoint and data I/O "
              "(docs/PLANNER.md).", cmd_plan, "plan", config_positional=True)
    pl.add_argument("--compare", nargs="+", metavar="YAML|KEY=V,...",
                    help="plan several configurations side by side: YAML files or override sets "
                    "(e.g. --compare devices=128 devices=256; bare keys are plan keys)")
    pl.add_argument("--json", metavar="FILE|-", help="write the plan as JSON to FILE ('-': print JSON instead of the table)")
    pl.add_argument("--html", metavar="FILE", help="write a self-contained HTML page of the plan")

    exps = group("experiments", "Cause training accidents on purpose, or find the LR range; each ends in a report.")
    acc = leaf(exps, "accidents", "Train a baseline and one run per accident (LR x10, no warmup, batch 1, no clipping, "
               "SGD, fp16 without loss scaling, bf16); diagnose each; write report.html/.md.",
               cmd_experiments_accidents, "experiments")
    acc.add_argument("--base", dest="config", metavar="CONFIG",
                     help="base config (same as -c), e.g. configs/experiments/accidents.yaml")
    leaf(exps, "lr-range", "LR range test: exponential LR ramp, loss vs LR chart, a suggested peak LR with its rule.",
         cmd_experiments_lr_range, "experiments", config_positional=True)
    sw = leaf(sub, "sweep", "Train every combination of --grid values on a base config; compare them in a report "
              "(table, curves, conclusion against seed-to-seed noise).", cmd_sweep, "experiments", config_positional=True)
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a config key and its values, e.g. --grid optim.lr=1e-4,3e-4 (repeatable; dict values "
                    "keep their commas: --grid 'mix.weights={a: 3, b: 1},{a: 1, b: 3}')")

    mm = group("mm", "Multimodal data: sample format -> discretizers -> token shards (docs/MULTIMODAL.md).")
    mmd = leaf(mm, "demo-data", "Write a small synthetic multi-camera dataset (frames, audio, actions, captions).",
               cmd_mm_demo_data, "multimodal")
    mmd.add_argument("out", metavar="OUT", help="folder to write samples.jsonl and payload files into")
    leaf(mm, "fit", "Fit the discretizers (image/audio k-means codebooks, action bins) on multimodal.data.",
         cmd_mm_fit, "multimodal")
    leaf(mm, "build", "Check sync, discretize and pack multimodal.data into token shards that `train` reads "
         "(fits the discretizers first if there are none).", cmd_mm_build, "multimodal")
    mmr = leaf(mm, "real-data", "Write a dataset from real data on this machine: scikit-learn's handwritten digits "
               "with captions, optional espeak-ng speech, optional synthetic scenes (the actions).", cmd_mm_real_data)
    mmr.add_argument("out", metavar="OUT", help="folder to write samples.jsonl and payload files into")
    mmr.add_argument("--digits", type=int, default=1797, help="digit images to include (of 1797; default all)")
    mmr.add_argument("--speech", type=int, default=0, help="the first N digits also get their name spoken "
                     "(espeak-ng; skipped with a warning where it is not installed)")
    mmr.add_argument("--scenes", type=int, default=0, help="add N synthetic 6-camera scenes with actions")
    mmr.add_argument("--scene-groups", type=int, default=1, help="time-slice groups per scene")
    mme = leaf(mm, "eval", "Cross-modal evaluation of a multimodal run on held-out data: caption<->image "
               "retrieval R@1/5 vs chance, action MSE vs a constant baseline, per-modality perplexity "
               "(writes RUN/mm_eval.json).", cmd_mm_eval)
    mme.add_argument("run", nargs="?", metavar="RUN", help="run folder (default: the config's run)")
    mme.add_argument("--checkpoint", metavar="STEP", help="checkpoint step or path (default: the newest)")

    cfg = group("config", "Inspect configuration.")
    leaf(cfg, "show", "Print the fully resolved config.", cmd_config_show)
    docs = cfg.add_parser("docs", help="Print (or write) the reference of every config option.",
                          description="Print (or write) the reference of every config option.")
    docs.add_argument("--out", metavar="FILE", help="write markdown here (e.g. docs/CONFIG.md)")
    docs.set_defaults(handler=cmd_config_docs)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        rc = args.handler(args)
    except TrainingPaused as err:
        print(f"paused: {err}", file=sys.stderr)
        return EXIT_PAUSED
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        # Disk full, permission denied, a path that is a file not a folder, ...: the user's to fix.
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}; check the path and permissions", file=sys.stderr)
        return EXIT_USER_ERROR
    return rc if type(rc) is int else 0


if __name__ == "__main__":
    sys.exit(main())
