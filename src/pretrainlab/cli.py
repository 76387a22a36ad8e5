"""The `pretrainlab` command: subcommands only parse arguments and delegate.

One grammar (``pretrainlab.cliargs``): every command that reads config takes
``-c CONFIG``, ``--set KEY=VALUE``, ``--workdir DIR`` and the flags derived
from its config section; every command that reads a run takes ``RUN``. The
commands are listed in the order a program runs them. Handlers import their
stage when called, so `pretrainlab --help` stays fast and no command loads
torch, transformers or lm-eval unless it uses them. User mistakes print one
line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrainlab import __version__
from pretrainlab.cliargs import (
    PACKAGED_QUICKSTART,
    DeprecatedFlag,
    add_config_options,
    add_section_flags,
    config_from_args,
    config_path,
    deprecated,
    overrides_from_args,
    packaged_recipe,
    run_from_args,
    run_overrides,
)
from pretrainlab.errors import TrainingInterrupted, TrainingPaused, UserError
from pretrainlab.experiments.config import ACCIDENTS_FIELDS, LR_RANGE_FIELDS, SWEEP_FIELDS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_PAUSED = TrainingPaused.exit_code  # 75: a guard paused training; `train --resume auto` continues

# --------------------------------------------------------------------------- handlers


def cmd_corpus_build(args):
    from pretrainlab.corpus.embedded import build_corpus

    build_corpus(config_from_args(args))


def cmd_data_build(args):
    from pretrainlab.data.pipeline import EXIT_RECORDS_LOST, build_clean_corpus

    summary = build_clean_corpus(config_from_args(args))
    lost = summary["totals"].get("bad_records", 0) if not summary.get("up_to_date") else 0
    if lost:
        print(f"warning: {lost:,} input record(s) could not be read and were quarantined "
              f"(see {summary['out']}/quarantine.jsonl, stage 'read'); exit status {EXIT_RECORDS_LOST}", file=sys.stderr)
        sys.exit(EXIT_RECORDS_LOST)


def cmd_data_report(args):
    from pretrainlab.data.report import write_data_report

    cfg = config_from_args(args)
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

    train_tokenizer(config_from_args(args))


def cmd_tokenizer_compare(args):
    from pretrainlab.tokenizer.compare import compare_tokenizers

    for flag, key in (("kinds", "compare_kinds"), ("vocab_sizes", "compare_vocab_sizes")):
        if getattr(args, flag):
            args.overrides.append(f"tokenizer.{key}=[{getattr(args, flag)}]")
    compare_tokenizers(config_from_args(args), args.tokenizers)


def cmd_data_tokenize(args):
    from pretrainlab.tokenizer.shards import tokenize_corpus

    tokenize_corpus(config_from_args(args))


def cmd_data_inspect_batch(args):
    from pretrainlab.train.inspect_batch import inspect_batch

    report = inspect_batch(config_from_args(args), index=args.index, out=Path(args.out) if args.out else None,
                           rows=args.rows)
    if report["total_cross_document_pairs"] and report["doc_mask"]:
        raise UserError(f"attention mask lets {report['total_cross_document_pairs']} query/key pairs cross documents")


def cmd_train(args):
    if args.dry_run:
        from pretrainlab.train.dry_run import dry_run

        dry_run(config_from_args(args), world=args.world)
        return
    from pretrainlab.recipes import train

    summary = train(config_from_args(args), resume=args.resume)
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


def cmd_eval(args):
    run, overrides = run_from_args(args.run, args), run_overrides(args)
    if args.harness:
        from pretrainlab.eval.harness import run_harness
        from pretrainlab.export.package import ensure_hf_export

        run_harness(run, [t.strip() for t in args.harness.split(",") if t.strip()], overrides, args.checkpoint,
                    limit=args.limit, export_to_hf=ensure_hf_export)
    elif args.all_checkpoints:
        from pretrainlab.eval.sweep import evaluate_all_checkpoints

        evaluate_all_checkpoints(run, overrides)
    else:
        from pretrainlab.eval.run import evaluate_run

        evaluate_run(run, cfg_overrides=overrides, checkpoint=args.checkpoint)


def cmd_export(args):
    from pretrainlab.export.package import export_run

    record = export_run(run_from_args(args.run, args), _export_out(args), run_overrides(args), args.checkpoint)
    print(f"export: {record['out']}")


def _export_out(args) -> str | None:
    """--out DIR, or one of the deprecated forms: a second positional DIR, `--to hf [DIR]`."""
    outs = [o for o in (args.out, args.old_out) if o]
    if args.old_out:
        deprecated(f"pretrainlab export RUN {args.old_out}", f"pretrainlab export RUN --out {args.old_out}")
    if args.to is not None:
        fmt, *rest = args.to
        if fmt != "hf" or len(rest) > 1:
            raise UserError(f"--to {' '.join(args.to)}: write `export RUN --out DIR` (the one format is hf, "
                            "a transformers folder)")
        deprecated(f"pretrainlab export RUN --to {' '.join(args.to)}",
                   f"pretrainlab export RUN --out {rest[0]}" if rest else "pretrainlab export RUN")
        outs += rest
    if len(outs) > 1:
        raise UserError(f"output folder given twice ({' and '.join(outs)}); write `export RUN --out DIR`")
    return outs[0] if outs else None


def cmd_gates_check(args):
    from pretrainlab.gates import check_gates, print_verdict

    verdict = check_gates(run_from_args(args.run, args), args.gates, out=args.out)
    print_verdict(verdict)
    return 0 if verdict["verdict"] == "Go" else 1


def cmd_dashboard(args):
    from pretrainlab.monitor.dashboard import serve_dashboard

    runs = Path(args.runs_dir) if args.runs_dir else config_from_args(args).run_dir.parent
    serve_dashboard(runs, host=args.host, port=args.port, refresh_s=args.refresh)


def cmd_report(args):
    from pretrainlab.reporting import write_report

    path = write_report(run_from_args(args.run, args))
    print(f"report: {path}")


def cmd_quickstart(args):
    from pretrainlab.quickstart import run_quickstart

    if not config_path(args):  # the documented recipe, shipped inside the package
        args.config = str(packaged_recipe(PACKAGED_QUICKSTART))
    run_quickstart(config_from_args(args), resume=args.resume)


def cmd_plan(args):
    from pretrainlab.plan.planner import run_plan

    run_plan(config_path(args), overrides_from_args(args), compare=args.compare, json_out=args.json, html_out=args.html)


def cmd_config_show(args):
    from pretrainlab.config import dump_yaml

    print(dump_yaml(config_from_args(args)), end="")


def cmd_config_docs(args):
    from pretrainlab.config import config_reference_markdown

    text = config_reference_markdown()
    if args.out:
        from pretrainlab.fsio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


def cmd_experiments_accidents(args):
    from pretrainlab.experiments.accidents import run_accidents

    run_accidents(config_from_args(args))


def cmd_experiments_lr_range(args):
    from pretrainlab.experiments.lr_range import run_lr_range

    run_lr_range(config_from_args(args))


def cmd_mm_demo_data(args):
    from pretrainlab.multimodal.demo import write_demo_data

    cfg = config_from_args(args)
    m = cfg.multimodal
    out = write_demo_data(args.out, m.demo_samples, m.demo_groups, m.demo_image_size, m.seed, m.sample_rate)
    print(f"demo data: {out} ({m.demo_samples} samples x {m.demo_groups} time-slice groups, 6 cameras)")


def cmd_mm_fit(args):
    from pretrainlab.multimodal.build import fit_discretizers

    fit_discretizers(config_from_args(args))


def cmd_mm_build(args):
    from pretrainlab.multimodal.build import build_shards

    build_shards(config_from_args(args))


def cmd_mm_real_data(args):
    from pretrainlab.multimodal.realdata import write_real_data

    m = config_from_args(args).multimodal
    write_real_data(args.out, args.digits, args.speech, args.scenes, args.scene_groups, m.sample_rate, m.seed)


def cmd_mm_eval(args):
    from pretrainlab.multimodal.evaluate import eval_run

    run_dir = run_from_args(args.run, args)
    eval_run(run_dir, args.checkpoint)
    print(f"mm eval: {run_dir / 'mm_eval.json'}")


def cmd_old_sweep(args):
    deprecated("pretrainlab sweep", "pretrainlab experiments sweep")
    return cmd_sweep(args)


def cmd_sweep(args):
    from pretrainlab.experiments.sweep import run_sweep

    run_sweep(config_from_args(args), args.grid)



# --------------------------------------------------------------------------- parser


class _Commands:
    """Adds subcommands: ``leaf`` reads config (-c/--set/--workdir + section flags), ``group`` has actions."""

    def __init__(self, sub):
        self.sub = sub

    def leaf(self, parent, name, help_text, handler, section=None, only=None, old_positional=False, **parser_kw):
        sp = parent.add_parser(name, help=help_text, description=help_text, **parser_kw)
        add_config_options(sp, old_positional)
        if section:
            add_section_flags(sp, section, only)
        sp.set_defaults(handler=handler, prog=sp.prog)
        return sp

    def group(self, name, help_text):
        gp = self.sub.add_parser(name, help=help_text, description=help_text)
        gs = gp.add_subparsers(dest=f"{name}_command", metavar="ACTION")
        gp.set_defaults(handler=lambda a, _gp=gp: (_gp.print_help(), sys.exit(EXIT_USER_ERROR)))
        return gs


def _run_positional(sp, help_text="run directory (default: the config's run, <workdir>/runs/<run.name>)"):
    sp.add_argument("run", nargs="?", metavar="RUN", help=help_text)


def _add_quickstart_and_plan(c: _Commands) -> None:
    qs = c.leaf(c.sub, "quickstart", "Run every stage end to end with the quickstart recipe, configs/quickstart.yaml "
                "(~10 min on 2 CPU cores; -c for another recipe).", cmd_quickstart)
    qs.add_argument("--size", dest="cfg__corpus__size", choices=["small", "medium", "large"], default=None,
                    help="corpus size (small is the ~10-minute default)")
    qs.add_argument("--resume", default="auto", metavar="auto|never", help="training resume mode (default auto)")
    pl = c.leaf(c.sub, "plan", "Budget a training run: FLOPs, time, cost, memory per device, checkpoint and data I/O "
                "(docs/PLANNER.md).", cmd_plan, "plan", old_positional=True)
    pl.add_argument("--compare", nargs="+", metavar="YAML|KEY=V,...",
                    help="plan several configurations side by side: YAML files or override sets "
                    "(e.g. --compare devices=128 devices=256; bare keys are plan keys)")
    pl.add_argument("--json", metavar="FILE|-", help="write the plan as JSON to FILE ('-': print JSON instead of the table)")
    pl.add_argument("--html", metavar="FILE", help="write a self-contained HTML page of the plan")


def _add_corpus_and_data(c: _Commands) -> None:
    corpus = c.group("corpus", "Build the embedded corpus from text already on this machine.")
    c.leaf(corpus, "build", "Write raw source JSONL files + sources.yaml (stdlib code, docstrings, man pages, "
           "/usr/share/doc).", cmd_corpus_build, "corpus")
    data = c.group("data", "Clean the corpus and tokenize it into shards.")
    c.leaf(data, "build", "Normalize, filter, deduplicate and split the raw sources into a clean corpus.",
           cmd_data_build, "data")
    c.leaf(data, "tokenize", "Encode the clean corpus into per-source token shards with a document index.",
           cmd_data_tokenize, "tokenize")
    drp = c.leaf(data, "report", "Write the data-governance report (HTML + JSON) of a clean corpus.", cmd_data_report)
    drp.add_argument("corpus", nargs="?", metavar="CORPUS", help="clean corpus folder (default: data.out from the config)")
    drp.add_argument("--out", metavar="DIR", help="where governance.html/.json go (default: the corpus folder)")
    drp.add_argument("--mm-tokens", metavar="DIR", help="multimodal shards of `mm build` whose per-modality counts "
                     "the report adds (default: multimodal.out when it holds a manifest)")
    ib = c.leaf(data, "inspect-batch", "Show one training micro-batch: documents, positions and the attention mask "
                "(HTML with --out); exits 2 if the document mask leaks.", cmd_data_inspect_batch, "packing")
    ib.add_argument("--index", type=int, default=0, help="which micro-batch of the run's data order (default 0)")
    ib.add_argument("--rows", type=int, default=None, help="rows to show (default: the whole micro-batch)")
    ib.add_argument("--out", metavar="FILE.html", help="write an HTML page with text and mask images")


def _add_tokenizer(c: _Commands) -> None:
    tok = c.group("tokenizer", "Train tokenizers.")
    c.leaf(tok, "train", "Train a tokenizer (byte-level BPE or SentencePiece BPE/unigram) and its vocabulary spec "
           "on the clean corpus.", cmd_tokenizer_train, "tokenizer")
    cmp = c.leaf(tok, "compare", "Compare tokenizers: chars/bytes per token per source and language, fertility, "
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


def _add_multimodal(c: _Commands) -> None:
    mm = c.group("mm", "Multimodal data: sample format -> discretizers -> token shards; cross-modal eval "
                 "(docs/MULTIMODAL.md).")
    mmd = c.leaf(mm, "demo-data", "Write a small synthetic multi-camera dataset (frames, audio, actions, captions).",
                 cmd_mm_demo_data, "multimodal")
    mmd.add_argument("out", metavar="OUT", help="folder to write samples.jsonl and payload files into")
    c.leaf(mm, "fit", "Fit the discretizers (image/audio k-means codebooks, action bins) on multimodal.data.",
           cmd_mm_fit, "multimodal")
    c.leaf(mm, "build", "Check sync, discretize and pack multimodal.data into token shards that `train` reads "
           "(fits the discretizers first if there are none).", cmd_mm_build, "multimodal")
    mmr = c.leaf(mm, "real-data", "Write a dataset from real data on this machine: scikit-learn's handwritten digits "
                 "with captions, optional espeak-ng speech, optional synthetic scenes (the actions).", cmd_mm_real_data)
    mmr.add_argument("out", metavar="OUT", help="folder to write samples.jsonl and payload files into")
    mmr.add_argument("--digits", type=int, default=1797, help="digit images to include (of 1797; default all)")
    mmr.add_argument("--speech", type=int, default=0, help="the first N digits also get their name spoken "
                     "(espeak-ng; skipped with a warning where it is not installed)")
    mmr.add_argument("--scenes", type=int, default=0, help="add N synthetic 6-camera scenes with actions")
    mmr.add_argument("--scene-groups", type=int, default=1, help="time-slice groups per scene")
    mme = c.leaf(mm, "eval", "Cross-modal evaluation of a multimodal run on held-out data: caption<->image "
                 "retrieval R@1/5 vs chance, action MSE vs a constant baseline, per-modality perplexity "
                 "(writes RUN/mm_eval.json).", cmd_mm_eval)
    _run_positional(mme)
    mme.add_argument("--checkpoint", metavar="STEP", help="checkpoint step or path (default: the newest)")


def _add_train(c: _Commands) -> None:
    tr = c.leaf(c.sub, "train", "Train a model on the token shards; writes a run directory.", cmd_train, "train",
                old_positional=True)
    tr.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                    help="auto: continue from the newest complete checkpoint if any (default); never: refuse an existing run")
    tr.add_argument("--dry-run", action="store_true",
                    help="build the model on the meta device; print parameters, FLOPs/token, batch geometry and memory")
    tr.add_argument("--world", type=int, default=None, help="with --dry-run: data-parallel size to check (default 1)")


def _add_eval_and_export(c: _Commands) -> None:
    ev = c.leaf(c.sub, "eval", "Evaluate a run: per-source held-out perplexity, multiple-choice tasks, sample "
                "continuations; or every checkpoint (--all-checkpoints); or lm-eval (--harness).", cmd_eval, "eval")
    _run_positional(ev)
    ev.add_argument("--checkpoint", default=None, metavar="STEP|PATH", help="checkpoint to evaluate (default: newest)")
    ev.add_argument("--all-checkpoints", action="store_true",
                    help="evaluate every kept checkpoint; writes eval_sweep.json and eval_sweep.html (metric vs tokens)")
    ev.add_argument("--harness", default=None, metavar="TASKS",
                    help="run lm-eval on the Hugging Face export: builtin, cloze, continuation, task JSONL paths "
                    "(offline) or lm-eval task names like hellaswag (need the network)")
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="--harness: at most N examples per task")
    ex = c.leaf(c.sub, "export", "Export a run as a Hugging Face folder with model card, examples and reproduction "
                "bundle.", cmd_export, "export")
    _run_positional(ex)
    ex.add_argument("old_out", nargs="?", help=argparse.SUPPRESS)  # deprecated: `export RUN DIR`
    ex.add_argument("--out", metavar="DIR", help="output folder (default: RUN/export/hf)")
    ex.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers folder (the one format)")
    ex.add_argument("--to", nargs="+", default=None, help=argparse.SUPPRESS)  # deprecated: `--to hf DIR`
    ex.add_argument("--checkpoint", default=None, metavar="STEP|PATH", help="checkpoint to export (default: newest)")


def _add_views_and_gates(c: _Commands) -> None:
    rp = c.leaf(c.sub, "report", "Write a self-contained HTML report of a run.", cmd_report)
    _run_positional(rp)
    db = c.leaf(c.sub, "dashboard", "Serve the live war-room dashboard of the runs in a folder (127.0.0.1).",
                cmd_dashboard)
    db.description = ("Serve a live dashboard (offline page, no CDN) of every run under RUNS_DIR: curves, events, "
                      "MoE routing, run overlays; it refreshes while runs train. Ctrl-C stops it.")
    db.add_argument("runs_dir", nargs="?", metavar="RUNS_DIR",
                    help="folder holding run directories, or one run (default: the config's <workdir>/runs)")
    db.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    db.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    db.add_argument("--refresh", type=float, default=5.0, metavar="S", help="seconds between page updates (default 5)")
    gates = c.group("gates", "Go/No-Go gates: quantified criteria on a run's artifacts.")
    gc = c.leaf(gates, "check", "Evaluate a gate file on a run; exit 0 for Go, 1 for No-Go.", cmd_gates_check)
    gc.description = ("Evaluate a gate file (see configs/gates/) on a run; prints a verdict table, writes JSON "
                      "(default <run>/gates/<file>.json); exit 0 for Go, 1 for No-Go.")
    _run_positional(gc)
    gc.add_argument("--gates", required=True, metavar="FILE", help="gate YAML file, e.g. configs/gates/foundation.yaml")
    gc.add_argument("--out", metavar="FILE", help="verdict JSON path (default <run>/gates/<gate file stem>.json)")


def _add_experiments(c: _Commands) -> None:
    exps = c.group("experiments", "Cause training accidents on purpose, compare configurations, find the LR range; "
                   "each ends in a report.")
    acc = c.leaf(exps, "accidents", "Train a baseline and one run per accident (LR x10, no warmup, batch 1, no "
                 "clipping, SGD, fp16 without loss scaling, bf16); diagnose each; write report.html/.md.",
                 cmd_experiments_accidents, "experiments", ACCIDENTS_FIELDS)
    acc.add_argument("--base", dest="config", action=DeprecatedFlag, new_flag="-c")  # deprecated: --base CONFIG
    _add_sweep(c.leaf(exps, "sweep", SWEEP_HELP, cmd_sweep, "experiments", SWEEP_FIELDS))
    c.leaf(exps, "lr-range", "LR range test: exponential LR ramp, loss vs LR chart, a suggested peak LR with its rule.",
           cmd_experiments_lr_range, "experiments", LR_RANGE_FIELDS, old_positional=True)
    # deprecated: the top-level `sweep CONFIG` (no help= keeps it out of the command list)
    old = c.sub.add_parser("sweep", description=f"Deprecated: use `pretrainlab experiments sweep`. {SWEEP_HELP}")
    add_config_options(old, old_positional=True)
    add_section_flags(old, "experiments", SWEEP_FIELDS)
    old.set_defaults(handler=cmd_old_sweep, prog=old.prog)
    _add_sweep(old)


SWEEP_HELP = ("Train every combination of --grid values on a base config; compare them in a report "
              "(table, curves, conclusion against seed-to-seed noise).")


def _add_sweep(sp) -> None:
    sp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a config key and its values, e.g. --grid optim.lr=1e-4,3e-4 (repeatable; dict values "
                    "keep their commas: --grid 'mix.weights={a: 3, b: 1},{a: 1, b: 3}')")


def _add_config(c: _Commands) -> None:
    cfg = c.group("config", "Inspect configuration.")
    c.leaf(cfg, "show", "Print the fully resolved config.", cmd_config_show)
    docs = cfg.add_parser("docs", help="Print (or write) the reference of every config option.",
                          description="Print (or write) the reference of every config option.")
    docs.add_argument("--out", metavar="FILE", help="write markdown here (e.g. docs/CONFIG.md)")
    docs.set_defaults(handler=cmd_config_docs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pretrainlab",
        description=(
            "Run an LLM pretraining program: corpus -> clean data -> tokenizer -> token shards -> "
            "train -> eval -> export -> report. Start with `pretrainlab quickstart`."
        ),
    )
    p.add_argument("--version", action="version", version=f"pretrainlab {__version__}")
    c = _Commands(p.add_subparsers(dest="command", metavar="COMMAND"))
    # the order a program runs them, which is the order `pretrainlab --help` lists them
    for add in (_add_quickstart_and_plan, _add_corpus_and_data, _add_tokenizer, _add_multimodal, _add_train,
                _add_eval_and_export, _add_views_and_gates, _add_experiments, _add_config):
        add(c)
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
    except TrainingInterrupted as err:  # a stop signal: every rank saved the same step (train/interrupts.py)
        _close_process_groups()
        print(f"interrupted: {err}", file=sys.stderr)
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
