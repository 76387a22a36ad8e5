"""`pretrainlab sweep`: grid parsing, ranking, the conclusion against seed noise, and a real 2x1 sweep."""

from __future__ import annotations

import json
import math

import pytest

from pretrainlab.cli import main
from pretrainlab.errors import UserError
from pretrainlab.experiments.sweep import combinations, conclusion, parse_grid, rank, split_values


def test_grid_values_split_at_top_level_commas_only():
    assert split_values("1e-4,3e-4, 5e-4") == ["1e-4", "3e-4", "5e-4"]
    assert split_values("{code: 3, prose: 1},{code: 1, prose: 3}") == ["{code: 3, prose: 1}", "{code: 1, prose: 3}"]


def test_combinations_cover_the_product_with_valid_run_names():
    grid = parse_grid(["optim.lr=1e-4,3e-4", "mix.weights={code: 3, prose: 1},{code: 1, prose: 3}"])
    combos = combinations(grid)
    assert len(combos) == 4
    names = [n for n, _, _ in combos]
    assert len(set(names)) == 4 and names[0] == "lr-1e-4_weights-code3-prose1"
    assert combos[0][1] == ["optim.lr=1e-4", "mix.weights={code: 3, prose: 1}"]


@pytest.mark.parametrize("bad", [[], ["optim.lr"], ["=1,2"], ["optim.lr=1e-3", "optim.lr=1e-4"]])
def test_bad_grids_are_user_errors(bad):
    with pytest.raises(UserError):
        parse_grid(bad)


def rows(**values):
    return [{"name": n, "settings": {}, "metrics": {"final_val_ppl": v, "tokens_per_s": v}} for n, v in values.items()]


def test_rank_orders_by_the_metric_with_failures_last():
    ranked = rank(rows(a=30.0, b=math.inf, c=20.0, d=None), "final_val_ppl")
    assert [r["name"] for r in ranked] == ["c", "a", "b", "d"]
    assert [r["name"] for r in rank(rows(a=30.0, c=20.0), "tokens_per_s")] == ["a", "c"]  # throughput: higher first


def test_conclusion_states_margin_against_seed_noise():
    ranked = rank(rows(a=30.0, c=20.0), "final_val_ppl")
    assert "exceeds the seed-to-seed spread 1" in conclusion(ranked, "final_val_ppl", {"seeds": [1, 2], "spread": 1.0})
    tied = conclusion(ranked, "final_val_ppl", {"seeds": [1, 2], "spread": 12.0})
    assert "does NOT exceed" in tied and "tied" in tied
    assert "not measured" in conclusion(ranked, "final_val_ppl", None)


@pytest.mark.slow
def test_two_by_one_sweep_ranks_runs_and_measures_seed_noise(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = tiny_cfg()
    overrides = [o for o in tiny_overrides_of(cfg)] + [f"experiments.out={out}", "train.steps=16", "train.val_every=8"]
    rc = main(["experiments", "sweep", *sum((["--set", o] for o in overrides), []),
               "--grid", "optim.lr=1e-2,1e-4", "--grid", "optim.warmup_steps=2", "--metric", "final_val_ppl"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "sweep.json").read_text())
    ppl = [r["metrics"]["final_val_ppl"] for r in res["ranked"]]
    assert ppl == sorted(ppl) and len(ppl) == 2
    assert res["ranked"][0]["settings"]["optim.lr"] == "1e-2"  # 100x the LR learns far more in 16 steps
    assert res["seed_noise"]["seeds"] == [cfg.train.seed, cfg.train.seed + 1] and res["seed_noise"]["spread"] >= 0
    assert res["conclusion"].startswith("Best: lr-1e-2_warmup_steps-2")
    md = (out / "report.md").read_text()
    for part in ("## Setup", "## Fixed parameters", "## Results", "## Conclusion", "final val PPL", "tokens/s", "MFU",
                 "guard events", "![training loss](train_loss.svg)"):
        assert part in md
    assert "optim.lr = " not in md.split("## Fixed parameters")[1].split("## Results")[0]  # varied, so not fixed


def tiny_overrides_of(cfg):
    """The tiny fixture config as --set overrides (the CLI path loads config the user's way)."""
    m, t = cfg.model, cfg.train
    return [f"workdir={cfg.workdir}", f"model.d_model={m.d_model}", f"model.n_layers={m.n_layers}",
            f"model.n_heads={m.n_heads}", f"model.n_kv_heads={m.n_kv_heads}", f"model.max_seq_len={m.max_seq_len}",
            f"train.seq_len={t.seq_len}", f"train.micro_batch={t.micro_batch}",
            f"train.global_batch_tokens={t.global_batch_tokens}", "train.threads=1", "train.val_batches=2",
            "log.peak_flops=1e11"]


def test_sweep_without_grid_is_one_line_error(capsys):
    rc = main(["experiments", "sweep"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--grid" in err


def test_sweep_rejects_an_invalid_combination_before_training(tmp_path, capsys):
    rc = main(["experiments", "sweep", "--workdir", str(tmp_path), "--grid", "optim.lrr=1e-3,1e-4"])
    err = capsys.readouterr().err
    assert rc == 2 and "optim.lrr" in err and "did you mean" in err


@pytest.mark.slow
def test_mixture_sweep_compares_weights_per_source(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "mix"
    overrides = tiny_overrides_of(tiny_cfg()) + [f"experiments.out={out}", "train.steps=8", "train.val_every=8"]
    rc = main(["experiments", "sweep", *sum((["--set", o] for o in overrides), []), "--metric", "final_val_loss",
               "--seed-repeats", "0", "--grid", "mix.weights={code: 9, prose: 1},{code: 1, prose: 9}"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "sweep.json").read_text())
    names = {r["name"] for r in res["ranked"]}
    assert names == {"weights-code9-prose1", "weights-code1-prose9"}
    for r in res["ranked"]:
        assert set(r["metrics"]["val_per_source"]) == {"code", "prose"}
    assert res["seed_noise"] is None and "not measured" in res["conclusion"]
    md = (out / "report.md").read_text()
    assert "val loss code" in md and "val loss prose" in md and "mix.weights = " not in md
