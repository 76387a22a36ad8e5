"""`pretrainlab plan`: the corrected worked examples, memory, consistency with the trainer, --from-run, bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from pretrainlab.cli import main
from pretrainlab.config import ModelConfig, load_config
from pretrainlab.errors import ConfigError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.model.transformer import count_params, flops_per_token
from pretrainlab.plan.model_spec import PRESETS, spec_from_model_config
from pretrainlab.plan.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]
DOC003 = ROOT / "configs/plan/doc003-moe-10b.yaml"


def plan(*overrides: str, path=None) -> dict:
    return make_plan(load_config(path, list(overrides)))


def test_document_003_worked_example_corrected():
    p = plan(path=DOC003)
    c, t = p["compute"], p["time"]
    assert c["flops_per_token"] == 6 * 2.5e9  # 6N, not the document's 2N
    assert c["total_flops"] == pytest.approx(1.5e23)  # 10T tokens is 1e13, not 5e12
    assert c["effective_flops"] == pytest.approx(2.56e17)
    assert t["pure_compute_seconds"] == pytest.approx(5.86e5, rel=1e-3)
    assert t["pure_compute_days"] == pytest.approx(6.78, abs=0.01)  # the document's 9.76e4 s is 1.13 days, not 11.3
    assert [round(d, 1) for d in t["wall_days"]] == [8.1, 8.8]
    assert t["cost"]["per_hour"] == 1024  # document 001: 256 GPUs x $4
    assert p["compute"]["formula_text"] == "6N"


def test_moe_preset_counts_are_ten_billion_total_and_about_2_5_billion_active():
    p = plan("plan.model_preset=moe-10b", "plan.tokens=1e13", "plan.devices=256", "plan.precision=fp8",
             "plan.peak_tflops=2000", "plan.mfu=0.5", "plan.flops_formula=6n")
    assert p["model"]["total_params"] == pytest.approx(10e9, rel=0.01)
    assert p["model"]["active_params"] == pytest.approx(2.5e9, rel=0.02)
    # From the architecture, 6N excludes the input-embedding lookup, so it is a little under the document's figure.
    assert 5.5 < p["time"]["pure_compute_days"] < 6.8


def test_dense_presets_match_the_published_shapes():
    expected = {"1b": 1.236e9, "7b": 6.738e9, "14b": 14.77e9, "30b": 32.53e9}
    for name, total in expected.items():
        assert PRESETS[name].counts()["total"] == pytest.approx(total, rel=1e-3), name


def test_planner_flops_agree_with_the_trainer_for_dense_and_moe():
    for model in (
        ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2),
        ModelConfig(vocab_size=1000, d_model=64, n_layers=3, n_heads=4, tie_embeddings=False,
                    moe={"num_experts": 8, "top_k": 2, "num_shared_experts": 1, "layers": [1, 2]}),
    ):
        cfg = load_config(None, []).model_copy(update={"model": model})
        p = make_plan(cfg)
        assert p["compute"]["flops_per_token"] == pytest.approx(flops_per_token(model, cfg.train.seq_len))
        ref = count_params(model)
        assert p["model"]["total_params"] == ref["total"]
        assert p["model"]["active_params"] == ref["active"]


def test_zero_paper_example_through_the_planner():
    # 7.5B parameters, 64 data-parallel GPUs: 120 -> 31.4 -> 16.6 -> 1.9 GB of model states, stages 0-3.
    p = plan("plan.model_preset=7b", "plan.total_params=7.5e9", "plan.devices=64", "plan.global_batch_tokens=262144",
             "plan.optimizer_scheme=mixed")
    stages = [v / 1e9 for v in p["memory"]["by_zero_stage"].values()]
    assert [round(x, 1) for x in stages] == [120.0, 31.4, 16.6, 1.9]


def test_memory_verdict_and_largest_micro_batch():
    base = ("plan.model_preset=7b", "plan.devices=8", "plan.hardware=h100-sxm", "plan.global_batch_tokens=1048576")
    ddp = plan(*base, "plan.zero_stage=0")
    assert not ddp["memory"]["fits"] and ddp["memory"]["max_micro_batch"] == 0  # 16 B/param x 6.7B > 80 GB
    fsdp = plan(*base, "plan.zero_stage=3", "plan.micro_batch=1")
    assert fsdp["memory"]["fits"]
    b = fsdp["memory"]["max_micro_batch"]
    assert b >= 1
    above = 1 << b.bit_length()  # the next power of two above b: divides the 256 rows over 8 devices
    assert not plan(*base, "plan.zero_stage=3", f"plan.micro_batch={above}")["memory"]["fits"]
    assert plan(*base, "plan.zero_stage=3", "plan.recompute=full")["memory"]["max_micro_batch"] > b
    # Tensor parallelism divides weights and activations.
    tp = plan(*base, "plan.zero_stage=0", "plan.tensor_parallel=8")
    assert tp["memory"]["weights_bytes"] == pytest.approx(ddp["memory"]["weights_bytes"] / 8, rel=0.01)


def test_pipeline_bubble_is_reported():
    p = plan("plan.model_preset=7b", "plan.devices=64", "plan.pipeline_parallel=8", "plan.global_batch_tokens=262144")
    # 64 rows per step over 8 data-parallel replicas of micro-batch 1 = 8 micro-batches; bubble (8-1)/8.
    assert p["parallelism"]["micro_batches_per_step"] == 8
    assert p["parallelism"]["pipeline_bubble"] == pytest.approx(7 / 8)
    assert any("bubble" in n for n in p["notes"])


def test_camera_io_and_checkpoint_numbers():
    p = plan(path=ROOT / "configs/plan/doc001-cameras.yaml")
    v = p["io"]["video"]
    assert v["raw_bytes_per_recorded_second"] == 66_355_200
    assert v["stored_bytes_per_recorded_second"] == 66_355_200 / 20
    assert v["read_bytes_per_s"] == pytest.approx(p["compute"]["tokens_per_s"] / (6 * 12 * 256) * 66_355_200 / 20)
    ck = plan("plan.optimizer_scheme=mixed", path=DOC003)["checkpoint"]
    assert ck["size_bytes"] == 10e9 * 14  # bf16 weights + fp32 master, m, v
    assert ck["write_seconds"] == pytest.approx(140e9 / 5e9)
    assert plan(path=DOC003)["checkpoint"]["size_bytes"] == 10e9 * 12  # fp32 weights + m, v (this trainer)


def test_energy_uses_stated_assumptions():
    p = plan("plan.pue=1.0", "plan.grid_kg_co2_per_kwh=0.5", path=DOC003)
    secs = p["time"]["pure_compute_seconds"]
    assert p["energy"]["kwh"][0] == pytest.approx(256 * 0.7 * secs * 1.2 / 3600)  # 700 W H100 TDP, buffer 1.2
    assert p["energy"]["tonnes_co2"][0] == pytest.approx(p["energy"]["kwh"][0] * 0.5 / 1000)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["plan.model_preset=7b", "plan.devices=100", "plan.tensor_parallel=8"], "not divisible by tensor x pipeline"),
        (["plan.model_preset=moe-10b", "plan.expert_parallel=32", "plan.devices=64"], "must divide the 16 experts"),
        (["plan.model_preset=7b", "plan.expert_parallel=2"], "needs an MoE model"),
        (["plan.model_preset=7b", "plan.tensor_parallel=3", "plan.devices=3"], "must divide the 32 attention heads"),
        (["plan.hardware=a100-80gb", "plan.precision=fp8", "plan.model_preset=1b"], "no dense fp8 peak"),
        (["plan.hardware=custom", "plan.model_preset=1b"], "needs plan.peak_tflops"),
        (["plan.model_preset=7b", "plan.devices=3"], "not divisible by micro_batch x data-parallel"),
    ],
)
def test_impossible_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(*overrides)


@pytest.mark.parametrize("argv", [
    ["plan", "--devices", "0"],
    ["plan", "--mfu", "-0.5"],
    ["plan", "--model-preset", "7b", "--devices", "100", "--tensor-parallel", "8"],
    ["plan", "--model-preset", "moe-10b", "--devices", "16", "--expert-parallel", "32"],
    ["plan", "--from-run", "/nonexistent/run"],
])
def test_cli_bad_values_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_cli_unknown_hardware_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--hardware", "tpu-v5"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_json_html_and_compare(tmp_path, capsys):
    out, page = tmp_path / "plan.json", tmp_path / "plan.html"
    assert main(["plan", "-c", str(DOC003), "--json", str(out), "--html", str(page)]) == 0
    data = json.loads(out.read_text())
    assert data["compute"]["total_flops"] == pytest.approx(1.5e23)
    html = page.read_text()
    assert "6.78" in html and "<script" not in html and "http" not in html.split("<h2>Full plan")[0]
    assert "6.78 days" in capsys.readouterr().out
    assert main(["plan", "-c", str(DOC003), "--compare", "devices=128", "devices=256", "--json", "-"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [x["label"] for x in both] == ["devices=128", "devices=256"]
    assert both[0]["time"]["pure_compute_days"] == pytest.approx(2 * both[1]["time"]["pure_compute_days"])


def test_from_run_uses_the_measured_mfu_and_tokens_per_second(tiny_cfg, capsys):
    from pretrainlab.recipes import train

    cfg = tiny_cfg()
    train(cfg)
    run = cfg.run_dir
    records = [r for r in iter_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    steady = records[1:]
    p = plan(f"plan.from_run={run}", path=run / "config.yaml")
    assert p["compute"]["mfu"] == pytest.approx(statistics.median(r["mfu"] for r in steady))
    assert p["hardware"]["peak_flops"] == 1e11  # the run's configured peak
    # Same model, device and MFU as the run: the planned throughput is the measured one.
    assert p["compute"]["tokens_per_s"] == pytest.approx(statistics.median(r["tokens_per_s"] for r in steady), rel=1e-9)
    assert p["calibration"]["world_size"] == 1
    # Transfer the measured MFU to a preset on H100s; the CLI finds the run's config itself.
    assert main(["plan", "--from-run", str(run), "--model-preset", "1b", "--hardware", "h100-sxm",
                 "--devices", "8", "--json", "-"]) == 0
    h100 = json.loads(capsys.readouterr().out)
    assert h100["compute"]["mfu"] == pytest.approx(p["compute"]["mfu"])
    assert h100["hardware"]["peak_flops"] == 989.5e12
    assert main(["plan", "--from-run", str(run), "--mfu", "0.4"]) == 2
    assert main(["plan", "--from-run", str(run.parent / "missing")]) == 2


def test_trainer_activation_checkpointing_means_full_recompute():
    model = ["model.vocab_size=4096"]
    assert plan(*model)["memory"]["recompute"] == "none"
    on = plan(*model, "train.activation_checkpointing=true")
    assert on["memory"]["recompute"] == "full"
    assert plan(*model, "train.activation_checkpointing=true", "plan.recompute=selective")["memory"]["recompute"] == "selective"


def test_total_params_alone_plans_by_parameter_count_with_6n_only():
    """No preset and no vocabulary: 6N is the only FLOP count there is, whatever flops_formula says."""
    p = plan("plan.total_params=7e9", "plan.active_params=2e9", "plan.tokens=1e12", "plan.devices=64")
    c, m = p["compute"], p["memory"]
    assert p["model"]["architecture"] is None and p["model"]["total_params"] == 7e9
    assert c["formula_text"] == "6N" and c["flops_per_token"] == 6 * 2e9 and c["flops_per_token_attention"] is None
    assert c["total_flops"] == pytest.approx(6 * 2e9 * 1e12)
    # model states of all 7e9 parameters (fp32-master 4+4+8 bytes, ZeRO-1 over 64 ranks) + bf16 autocast copies
    assert m["model_states_bytes"] == pytest.approx(7e9 * (4 + 4 + 8 / 64))
    assert m["total_bytes"] == pytest.approx(7e9 * (4 + 4 + 8 / 64 + 2)) and m["activations_bytes"] is None
    assert m["fits"] is None and any("by parameter count" in n for n in p["notes"])
    assert plan("plan.total_params=7e9", "plan.zero_stage=0")["memory"]["fits"] is False  # 112 GB of states > 77 GB
    with pytest.raises(ConfigError, match="needs the experts of an architecture"):
        plan("plan.total_params=7e9", "plan.expert_parallel=2", "plan.devices=2")


def test_total_params_with_an_architecture_keeps_its_attention_term_as_the_help_says(capsys):
    p = plan("plan.model_preset=7b", "plan.total_params=6.5e9")
    assert p["compute"]["flops_per_token"] == pytest.approx(6 * 6.5e9 + 12 * 32 * 4096 * 4096)
    assert plan("plan.model_preset=7b", "plan.total_params=6.5e9", "plan.flops_formula=6n")["compute"][
        "flops_per_token"] == 6 * 6.5e9
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "6N only" not in help_text.split("--total-params")[1].split("by parameter count")[0]
    assert "attention term still comes from the architecture" in help_text
    assert "--tokens-per-sec-per-device" in help_text


def test_measured_tokens_per_second_per_device_sets_time_cost_and_energy():
    base = ("plan.model_preset=7b", "plan.devices=8", "plan.tokens=1e12", "plan.price_per_device_hour=2")
    p = plan(*base, "plan.tokens_per_sec_per_device=3000")
    c, t = p["compute"], p["time"]
    secs = 1e12 / (8 * 3000)
    assert t["pure_compute_seconds"] == pytest.approx(secs) and c["tokens_per_s"] == 8 * 3000
    assert t["cost"]["low"] == pytest.approx(8 * secs * 1.2 / 3600 * 2)
    assert p["energy"]["kwh"][0] == pytest.approx(8 * 0.7 * secs * 1.2 / 3600 * 1.2)  # 700 W TDP, PUE 1.2
    assert c["step_seconds"] == pytest.approx(4 * 1024 * 1024 / (8 * 3000))
    implied = 3000 * c["flops_per_token"] / p["hardware"]["peak_flops"]
    assert c["mfu"] == pytest.approx(implied) and "implied" in c["mfu_source"]
    # the same numbers as a peak x MFU plan at the MFU that throughput implies
    assert plan(*base, f"plan.mfu={implied}")["time"]["pure_compute_seconds"] == pytest.approx(secs)
    assert any("check the throughput" in n for n in plan(*base, "plan.tokens_per_sec_per_device=1e6")["notes"])
    with pytest.raises(ConfigError, match="one source of throughput"):
        plan(*base, "plan.tokens_per_sec_per_device=3000", "plan.mfu=0.4")
