"""One device mesh from `parallel:` — layouts that cannot work are refused in one line; TP/PP layouts train like one process.

The multi-process runs (gloo, CPU, the tiny model) are each made once per module and
compared with one single-process run of the same data and init: losses and gradient
norms must agree within 1e-5 over 10 steps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides
from test_distributed import keep_up_to, run_one, run_two

from pretrainlab.config import load_config
from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.mesh import ParallelDims, resolve_dims

TOL = 1e-5


def cfg_with(*sets: str):
    base = ["model.vocab_size=320", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "model.n_layers=2",
            "model.ffn_hidden=64", "train.seq_len=32", "train.device=cpu"]
    return load_config(None, base + list(sets))


# --------------------------------------------------------------------------- the mesh from config


@pytest.mark.parametrize("sets, world, expected", [
    ([], 4, {"dp_replicate": 4, "dp_shard": 1}),  # legacy train.parallel=ddp (the default): DDP replicas
    (["train.parallel=fsdp2"], 4, {"dp_replicate": 1, "dp_shard": 4}),
    (["parallel.tp=2"], 4, {"dp_shard": 2, "tp": 2}),  # the leftover ranks are FSDP2 shards
    (["parallel.dp_replicate=2", "parallel.tp=2"], 8, {"dp_replicate": 2, "dp_shard": 2, "tp": 2}),
    (["parallel.pp=2", "model.tie_embeddings=false"], 4, {"dp_shard": 2, "pp": 2}),
    (["train.expert_parallel=2", "model.moe.num_experts=4"], 4, {"dp_replicate": 4, "ep": 2}),
    (["parallel.ep=2", "train.parallel=fsdp2", "model.moe.num_experts=4"], 2, {"dp_shard": 2, "ep": 2}),
])
def test_the_layout_follows_the_parallel_section_and_the_legacy_names(sets, world, expected):
    dims = resolve_dims(cfg_with(*sets), world)
    full = {"dp_replicate": 1, "dp_shard": 1, "cp": 1, "tp": 1, "pp": 1, "ep": 1, **expected}
    assert {k: getattr(dims, k) for k in full} == full
    assert dims.dp_replicate * dims.dp_shard * dims.cp * dims.tp * dims.pp == world


def test_ranks_are_laid_out_tp_innermost_and_data_parallel_rank_skips_tp_and_pp():
    dims = ParallelDims(dp_replicate=1, dp_shard=2, tp=2, pp=2, world=8)  # mesh (pp, dp_replicate, dp_shard, cp, tp)
    assert [dims.coords(r)["tp"] for r in range(4)] == [0, 1, 0, 1]
    assert [dims.dp_rank(r) for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [dims.coords(r)["pp"] for r in (0, 3, 4, 7)] == [0, 0, 1, 1]


@pytest.mark.parametrize("sets, world, fragment", [
    (["parallel.tp=2"], 3, "not divisible by parallel.dp_replicate x cp x tp x pp"),
    (["parallel.tp=2", "parallel.dp_shard=1"], 4, "must equal the process count"),
    (["parallel.tp=2"], 1, "not divisible"),
    (["parallel.tp=3", "model.n_heads=4"], 3, "must divide model.n_heads (4)"),
    (["parallel.tp=4", "model.n_heads=4"], 4, "must divide model.n_kv_heads (2)"),
    (["parallel.tp=2", "model.vocab_size=321"], 2, "must divide model.vocab_size (321)"),
    (["parallel.pp=2", "model.n_layers=3", "model.tie_embeddings=false"], 2, "n_layers (3) is not divisible by the 2"),
    (["parallel.pp=2"], 2, "tie_embeddings=false"),
    (["parallel.pp=2", "parallel.pipeline_schedule=Interleaved1F1B", "model.tie_embeddings=false"], 2,
     "pipeline_stages_per_rank >= 2"),
    (["parallel.pp=2", "parallel.pipeline_stages_per_rank=2", "model.tie_embeddings=false"], 2,
     "runs one stage per rank"),
    (["parallel.cp=2"], 2, "needs CUDA"),
    (["parallel.cp=2", "train.device=cuda"], 2, "needs CUDA"),
    (["parallel.ep=2"], 2, "needs a Mixture-of-Experts model"),
    (["parallel.ep=3", "model.moe.num_experts=4"], 3, "num_experts=4 is not divisible by ep=3"),
    (["parallel.ep=4", "model.moe.num_experts=4", "parallel.tp=2"], 4, "ep=4 must divide the data-parallel ranks"),
    (["parallel.pp=2", "model.moe.num_experts=4", "model.tie_embeddings=false"], 2, "Mixture-of-Experts"),
    (["parallel.pp=2", "model.tie_embeddings=false", "checkpoint.format=full"], 2, "checkpoint.format=sharded"),
    (["parallel.ep=2", "train.expert_parallel=4", "model.moe.num_experts=4"], 4, "disagree"),
])
def test_impossible_layouts_are_refused_in_one_line(sets, world, fragment):
    with pytest.raises(UserError) as err:
        resolve_dims(cfg_with(*sets), world)
    message = str(err.value)
    assert "\n" not in message and fragment in message


def test_a_tensor_parallel_run_on_one_process_is_one_line_error(tiny_data, tmp_path):
    sets = tiny_overrides(tiny_data) + [f"run.dir={tmp_path / 'run'}", "parallel.tp=2"]
    proc = subprocess.run([sys.executable, "-m", "pretrainlab.cli", "train", *[a for s in sets for a in ("--set", s)]],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 process(es) are not divisible by parallel.dp_replicate x cp x tp x pp" in proc.stderr.strip()


# --------------------------------------------------------------------------- tensor parallel, 4 gloo processes


def metrics(run_dir) -> list[tuple[float, float]]:
    return [(r["loss"], r["grad_norm"]) for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def agree(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return len(a) == len(b) >= 8 and all(abs(x - y) < TOL for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    run_one(tiny_data, run, "checkpoint.format=sharded")
    return run


@pytest.fixture(scope="module")
def tp2_dp2(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("tp2dp2") / "run"
    run_two(tiny_data, run, "parallel.tp=2", nproc=4)
    return run


@pytest.mark.slow
def test_tp2_dp2_losses_and_grad_norms_equal_one_process(tp2_dp2, single):
    assert agree(metrics(tp2_dp2), metrics(single))
    meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(tp2_dp2))["meta"]
    assert meta["world_size"] == 4


@pytest.mark.slow
def test_a_tp2_dp2_checkpoint_resumes_on_one_process_like_an_uninterrupted_run(tp2_dp2, single, tiny_data, tmp_path):
    run = keep_up_to(tp2_dp2, tmp_path / "run", 4)
    run_one(tiny_data, run)
    assert agree(metrics(run), metrics(single))
    resume = [r for r in iter_jsonl(run / "events.jsonl") if r["event"] == "resume"][-1]
    assert (resume["saved_world_size"], resume["world_size"]) == (4, 1)


@pytest.mark.slow
def test_a_tp2_dp2_checkpoint_exports_to_hugging_face_unchanged(tp2_dp2, single, tmp_path):
    import json

    from pretrainlab.cli import main

    model, _, _ = ckpt.load_model(tp2_dp2)
    reference, _, _ = ckpt.load_model(single)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert (a - b).abs().max() < TOL, name
    assert main(["export", str(tp2_dp2), "--out", str(tmp_path / "hf")]) == 0  # verified against transformers
    assert json.loads((tmp_path / "hf" / "verification.json").read_text())["max_abs_logit_diff"] < 1e-4


# --------------------------------------------------------------------------- planner vs measured per-rank bytes


def rank_memory(run) -> dict:
    return [e for e in iter_jsonl(run / "events.jsonl") if e["event"] == "rank_memory"][-1]


def planned(world: int, *sets: str) -> dict:
    from pretrainlab.train.dry_run import planned_memory

    cfg = cfg_with("train.micro_batch=1", "train.global_batch_tokens=256", *sets)
    return planned_memory(cfg, resolve_dims(cfg, world, check_device=False))


def test_the_planner_shards_hsdp_model_states_over_dp_shard_only():
    hsdp = planned(4, "parallel.dp_replicate=2", "parallel.dp_shard=2")
    assert {k: hsdp[k] for k in ("weights_bytes", "optimizer_bytes")} == \
        {k: planned(2, "train.parallel=fsdp2")[k] for k in ("weights_bytes", "optimizer_bytes")}
    ddp = planned(4)  # replicas: nothing sharded
    assert ddp["optimizer_bytes"] == 2 * ddp["weights_bytes"] == 2 * 4 * planned(1)["params_per_device"]


def test_the_planner_keeps_moe_experts_whole_across_tensor_parallel_ranks_and_splits_them_by_ep_only():
    moe = ("model.moe.num_experts=4", "model.moe.expert_hidden=48")
    experts = 2 * 4 * 3 * 32 * 48  # layers x experts x SwiGLU matrices x d_model x hidden
    tp2, tp2_ep2 = planned(4, *moe, "parallel.tp=2"), planned(4, *moe, "parallel.tp=2", "parallel.ep=2")
    assert tp2["params_per_device"] - tp2_ep2["params_per_device"] == experts / 2
    rest = tp2_ep2["params_per_device"] - experts / 2  # FSDP2-sharded over dp_shard=2; the expert slices are not
    assert tp2_ep2["weights_bytes"] == 4 * (rest / 2 + experts / 2)


def test_a_shard_group_that_does_not_divide_the_data_parallel_ranks_is_refused_by_the_planner():
    with pytest.raises(UserError, match="data_parallel_shard=3 must divide the data-parallel degree 4"):
        planned(4, "plan.data_parallel_shard=3")


@pytest.fixture(scope="module")
def tp2_ep2(moe_runs):
    return moe_runs / "tp2ep2"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2_dp2", "pp2_dp2", "hsdp", "tp2_ep2"])
def test_the_planner_predicts_each_rank_s_weight_and_optimizer_bytes_within_5_percent(layout, request):
    event = rank_memory(request.getfixturevalue(layout))
    assert len(event["measured"]) == 4
    heaviest = max(event["measured"], key=lambda r: r["weights_bytes"])  # the planner sizes the heaviest rank
    for key in ("weights_bytes", "optimizer_bytes"):
        assert abs(event["planned"][key] - heaviest[key]) <= 0.05 * heaviest[key], (key, event)


@pytest.mark.slow
def test_the_dry_run_shows_the_planner_numbers_the_run_is_checked_against(tp2_dp2, tiny_data, tmp_path):
    from pretrainlab.train.dry_run import dry_run

    sets = tiny_overrides(tiny_data) + [f"run.dir={tmp_path / 'run'}", "parallel.tp=2"]
    result = dry_run(load_config(None, sets), world=4)
    assert result["layout"] == "dp_shard2 x tp2" and result["grad_accum"] == 1
    planned = rank_memory(tp2_dp2)["planned"]
    assert {k: result["memory_detail"][k] for k in planned} == planned


# --------------------------------------------------------------------------- pipeline parallel (untied, 4 blocks)

UNTIED = ("model.tie_embeddings=false", "model.n_layers=4", "train.micro_batch=2")  # 2-row micro-batches


@pytest.fixture(scope="module")
def single_untied(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("single_untied") / "run"
    run_one(tiny_data, run, *UNTIED, "checkpoint.format=sharded")
    return run


@pytest.fixture(scope="module")
def pp2_dp2(tiny_data, tmp_path_factory):
    """1F1B over 2 stages of 2 blocks, FSDP2 inside each stage, 2 micro-batches per step."""
    run = tmp_path_factory.mktemp("pp2dp2") / "run"
    run_two(tiny_data, run, *UNTIED, "parallel.pp=2", nproc=4)
    return run


@pytest.fixture(scope="module")
def tp2_pp2(tiny_data, tmp_path_factory):
    """Interleaved 1F1B: 4 stages of 1 block, 2 per rank, each tensor parallel over 2 ranks."""
    run = tmp_path_factory.mktemp("tp2pp2") / "run"
    run_two(tiny_data, run, *UNTIED, "parallel.pp=2", "parallel.tp=2", "parallel.pipeline_schedule=Interleaved1F1B",
            "parallel.pipeline_stages_per_rank=2", nproc=4)
    return run


@pytest.mark.slow
def test_pp2_dp2_losses_and_grad_norms_equal_one_process(pp2_dp2, single_untied):
    assert agree(metrics(pp2_dp2), metrics(single_untied))


@pytest.mark.slow
def test_tp2_pp2_interleaved_losses_and_grad_norms_equal_one_process(tp2_pp2, single_untied):
    assert agree(metrics(tp2_pp2), metrics(single_untied))
    vals = [r["val_loss"] for r in iter_jsonl(tp2_pp2 / "metrics.jsonl") if r["kind"] == "val"]
    ref = [r["val_loss"] for r in iter_jsonl(single_untied / "metrics.jsonl") if r["kind"] == "val"]
    assert len(vals) == len(ref) == 2 and all(abs(a - b) < TOL for a, b in zip(vals, ref))  # evaluation through the pipeline


@pytest.mark.slow
def test_zero_bubble_schedule_on_two_pipeline_ranks_equals_one_process(single_untied, tiny_data, tmp_path):
    run = tmp_path / "run"
    run_two(tiny_data, run, *UNTIED, "parallel.pp=2", "parallel.pipeline_schedule=InterleavedZeroBubble",
            "parallel.pipeline_stages_per_rank=2")
    assert agree(metrics(run), metrics(single_untied))


@pytest.fixture(scope="module")
def hsdp(tiny_data, tmp_path_factory):
    """HSDP: FSDP2 on the 2-D (dp_replicate, dp_shard) mesh, shards of 2 ranks, 2 replicas; 1 row per rank."""
    run = tmp_path_factory.mktemp("hsdp") / "run"
    run_two(tiny_data, run, *UNTIED, "parallel.dp_replicate=2", "parallel.dp_shard=2", nproc=4)
    return run


@pytest.mark.slow
def test_hsdp_2x2_losses_and_grad_norms_equal_one_process(hsdp, single_untied):
    assert agree(metrics(hsdp), metrics(single_untied))
    meta = json.loads((hsdp / "meta.json").read_text())
    assert meta["world_size"] == 4 and (meta["layout"]["dp_replicate"], meta["layout"]["dp_shard"]) == (2, 2)


@pytest.mark.slow
def test_an_hsdp_checkpoint_resumes_on_one_process_like_an_uninterrupted_run(hsdp, single_untied, tiny_data, tmp_path):
    run = keep_up_to(hsdp, tmp_path / "run", 4)
    run_one(tiny_data, run, *UNTIED)
    assert agree(metrics(run), metrics(single_untied))
    resume = [r for r in iter_jsonl(run / "events.jsonl") if r["event"] == "resume"][-1]
    assert (resume["saved_world_size"], resume["world_size"]) == (4, 1)


@pytest.mark.slow
def test_a_pp2_dp2_checkpoint_resumes_on_one_process_like_an_uninterrupted_run(pp2_dp2, single_untied, tiny_data,
                                                                                tmp_path):
    run = keep_up_to(pp2_dp2, tmp_path / "run", 4)
    run_one(tiny_data, run, *UNTIED)
    assert agree(metrics(run), metrics(single_untied))


@pytest.mark.slow
def test_one_run_moves_from_tp2_pp2_to_pp2_dp2_to_one_process_like_an_uninterrupted_run(tp2_pp2, single_untied,
                                                                                          tiny_data, tmp_path):
    """The issue's chain: each leg resumes the previous leg's DCP checkpoint in another layout."""
    first = keep_up_to(tp2_pp2, tmp_path / "first", 4)  # interleaved 1F1B stages, tensor parallel inside
    run_two(tiny_data, first, *UNTIED, "parallel.pp=2", nproc=4)  # 1F1B over 2 stages, FSDP2 inside each
    last = keep_up_to(first, tmp_path / "last", 8)
    run_one(tiny_data, last, *UNTIED)
    assert agree(metrics(last), metrics(single_untied))
    resumes = [(r["saved_world_size"], r["world_size"], r["step"]) for r in iter_jsonl(last / "events.jsonl")
               if r["event"] == "resume"]
    assert resumes == [(4, 4, 4), (4, 1, 8)]


# --------------------------------------------------------------------------- tensor x expert parallel (MoE)

# Exact equality with one process needs what data parallelism changes left out: the load-balance and
# z-losses and capacity are computed per micro-batch, whose rows differ between 1 and 2 data-parallel ranks.
MOE = ("model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48", "model.moe.dropless=true",
       "model.moe.aux_loss_coef=0", "model.moe.z_loss_coef=0")


@pytest.fixture(scope="module")
def moe_runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tp2ep2")
    run_one(tiny_data, root / "single", *MOE, "checkpoint.format=sharded")
    run_two(tiny_data, root / "tp2ep2", *MOE, "parallel.tp=2", "parallel.ep=2", nproc=4)
    return root


@pytest.mark.slow
def test_tp2_ep2_moe_losses_and_grad_norms_equal_one_process(moe_runs):
    assert agree(metrics(moe_runs / "tp2ep2"), metrics(moe_runs / "single"))


@pytest.mark.slow
def test_a_tp2_ep2_checkpoint_resumes_on_one_process_like_an_uninterrupted_run(moe_runs, tiny_data, tmp_path):
    run = keep_up_to(moe_runs / "tp2ep2", tmp_path / "run", 4)
    run_one(tiny_data, run, *MOE)
    assert agree(metrics(run), metrics(moe_runs / "single"))


# --------------------------------------------------------------------------- context parallel (CUDA, 2+ GPUs)


def test_a_cuda_context_parallel_plan_that_cannot_work_is_refused_in_the_dry_run_too():
    from pretrainlab.train.mesh import resolve_dims as resolve

    with pytest.raises(UserError, match="packing.doc_mask=false"):
        resolve(cfg_with("parallel.cp=2"), 2, check_device=False)
    with pytest.raises(UserError, match="model.max_seq_len equal to train.seq_len"):
        resolve(cfg_with("parallel.cp=2", "packing.doc_mask=false", "model.max_seq_len=64"), 2, check_device=False)
    dims = resolve(cfg_with("parallel.cp=2", "packing.doc_mask=false", "model.max_seq_len=32"), 2, check_device=False)
    assert (dims.cp, dims.dp, dims.fsdp) == (2, 1, True)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="context parallel needs 2 CUDA GPUs (one NCCL rank per GPU)")
def test_cp2_on_two_gpus_trains_like_one_gpu(tiny_data, tmp_path):
    cp = ("train.device=cuda", "packing.doc_mask=false", "checkpoint.format=sharded")
    run_one(tiny_data, tmp_path / "one", *cp)
    run_two(tiny_data, tmp_path / "cp2", *cp, "parallel.cp=2")
    a, b = metrics(tmp_path / "cp2"), metrics(tmp_path / "one")
    assert len(a) == len(b) and all(abs(x - y) < 1e-3 for p, q in zip(a, b) for x, y in zip(p, q))
