"""The CUDA paths: document-masked FlexAttention, grouped-GEMM experts, bf16, FSDP2, async DCP, NCCL, FP8.

Every test here is marked ``cuda`` and skipped (with the reason) where no CUDA GPU
exists, so the CPU suite lists them as skipped. ``benchmarks/gpu_suite.py`` runs
them on a lent GPU (``pytest -m cuda``). Tolerances are stated in each test.
"""

from __future__ import annotations

import copy
import os
import shutil

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic GEMMs

import pytest
import torch

from conftest import tiny_overrides

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU; run `make gpu-check` (benchmarks/gpu_suite.py) on one"),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in fp32."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def random_doc_ids(batch: int, seq: int, mean_len: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.cumsum(torch.rand(batch, seq, generator=gen) < 1 / mean_len, dim=1).to(device)


# --------------------------------------------------------------------------- kernels


def test_flexattention_document_mask_equals_masked_sdpa_forward_and_backward():
    """bf16, GQA 8/4 heads × 64, 2 rows × 2,048 tokens, ~300-token documents: relative error ≤ 1e-2."""
    from torch.nn.attention.flex_attention import BlockMask

    from pretrainlab.model.attention import attend, build_doc_mask, dense_doc_mask

    torch.manual_seed(0)
    b, h, hkv, t, d = 2, 8, 4, 2048, 64
    q = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    grad_out = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
    doc_ids = random_doc_ids(b, t, 300, "cuda")
    block = build_doc_mask(doc_ids)
    assert isinstance(block, BlockMask), "on CUDA the document mask must become a FlexAttention BlockMask"

    def run(mask):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        out = attend(*xs, mask)
        out.backward(grad_out)
        return out, [x.grad for x in xs]

    out_flex, grads_flex = run(block)
    out_sdpa, grads_sdpa = run(dense_doc_mask(doc_ids))
    assert rel_err(out_flex, out_sdpa) <= 1e-2
    for name, gf, gs in zip("qkv", grads_flex, grads_sdpa):
        assert rel_err(gf, gs) <= 1e-2, name


def test_grouped_gemm_experts_equal_the_per_expert_loop():
    """torch._grouped_mm vs a matmul per expert, bf16, uneven groups (one empty): relative error ≤ 1e-2."""
    from pretrainlab.model.moe import Experts, resolve_dispatch

    assert resolve_dispatch("auto", torch.device("cuda"), torch.bfloat16) == "grouped_mm"
    torch.manual_seed(0)
    grouped = Experts(8, 256, 512, "grouped_mm").cuda()
    for p in grouped.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    loop = copy.deepcopy(grouped)
    loop.dispatch = "loop"
    counts = torch.tensor([300, 0, 17, 512, 64, 128, 1, 250], device="cuda")
    x = torch.randn(int(counts.sum()), 256, device="cuda", dtype=torch.bfloat16)
    grad_out = torch.randn(x.shape[0], 256, device="cuda", dtype=torch.bfloat16)

    def run(experts):
        xi = x.clone().requires_grad_()
        out = experts(xi, counts)
        out.backward(grad_out)
        return [out, xi.grad, *(p.grad for p in experts.parameters())]

    for a, b in zip(run(grouped), run(loop)):
        assert rel_err(a, b) <= 1e-2


# --------------------------------------------------------------------------- training on the GPU


def cuda_cfg(tiny_data, tmp_path, name, *extra):
    from pretrainlab.config import load_config

    return load_config(None, tiny_overrides(tiny_data) + [f"run.dir={tmp_path / name}", "train.device=cuda",
                                                          "model.d_model=64", "train.steps=16", *extra])


def test_bf16_training_tracks_fp32_within_2_percent(tiny_data, tmp_path):
    """The same 16 steps in fp32 and under bf16 autocast: every step's loss within 2% of fp32's."""
    from pretrainlab.recipes import train

    fp32 = train(cuda_cfg(tiny_data, tmp_path, "fp32", "train.precision=fp32"))["losses"]
    bf16 = train(cuda_cfg(tiny_data, tmp_path, "bf16", "train.precision=bf16"))["losses"]
    assert len(fp32) == len(bf16) == 16
    worst = max(abs(a - b) / a for a, b in zip(fp32, bf16))
    assert worst <= 0.02, f"bf16 strays {100 * worst:.2f}% from fp32"
    assert bf16[-1] < bf16[0]


def test_async_sharded_checkpoint_with_pinned_staging_resumes_exactly(tiny_data, tmp_path):
    """dcp.async_save through pinned CPU buffers; the resumed run's first loss is bit-identical, the rest ≤ 1e-4.

    (Later steps go through CUDA backward kernels that may add in a different order; the first resumed
    loss is a forward of the restored weights on the restored batch, so it must match exactly.)
    """
    from pretrainlab.recipes import train
    from pretrainlab.train import checkpoint as ckpt

    saver = ckpt.ShardedAsyncCheckpointer()
    pinned = saver._stager._config.use_pinned_memory  # DCP's DefaultStager options, as the trainer builds them
    saver.close()
    assert pinned is True
    cfg = cuda_cfg(tiny_data, tmp_path, "dcp", "checkpoint.format=sharded", "checkpoint.async_save=true",
                   "checkpoint.every=4", "checkpoint.keep_last=4")
    full = train(cfg)["losses"]
    latest = ckpt.latest_checkpoint(cfg.run_dir)
    assert ckpt.checkpoint_format(latest) == "sharded"
    shutil.rmtree(latest)  # as if killed before step 16's checkpoint: resume from step 12
    resumed = train(cfg)["losses"]
    assert len(resumed) == 4 and resumed[0] == full[12]
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(resumed, full[12:]))


def test_fsdp2_on_one_gpu_trains_like_the_plain_model_and_round_trips_through_dcp(tmp_path):
    """fully_shard on a one-process NCCL group: 5 fp32 steps match the unsharded model (≤ 1e-4), DCP reload exact."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from pretrainlab.config import load_config
    from pretrainlab.model.transformer import Transformer
    from pretrainlab.train.checkpoint import load_sharded_into
    from pretrainlab.train.parallel import sharded_state

    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))
    try:
        cfg = load_config(None, ["model.vocab_size=512", "model.d_model=128", "model.n_layers=2", "model.n_heads=4",
                                 "model.max_seq_len=256"]).model
        torch.manual_seed(0)
        plain = Transformer(cfg).cuda()
        sharded = copy.deepcopy(plain)
        for block in sharded.layers:
            fully_shard(block)
        fully_shard(sharded)
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True) for m in (plain, sharded)]
        x = torch.randint(0, 512, (4, 256), device="cuda")
        for _ in range(5):
            losses = []
            for model, opt in zip((plain, sharded), opts):
                loss = model(x, x)[1]
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            assert abs(losses[0] - losses[1]) <= 1e-4 * losses[0]
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded_state(sharded, opts[1]), checkpoint_id=str(tmp_path / "dcp"))
        fresh = Transformer(cfg).cuda()
        for block in fresh.layers:
            fully_shard(block)
        fully_shard(fresh)
        state = sharded_state(fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-3))
        load_sharded_into(tmp_path / "dcp", state)
        for (name, a), b in zip(sharded.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a.full_tensor(), b.full_tensor()), name
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(GPUS < 2, reason="the NCCL expert-parallel path needs 2 GPUs")
def test_nccl_expert_parallel_trains_like_data_parallel(tiny_data, tmp_path):
    """2 GPUs, NCCL: EP=2 (all-to-all) vs plain DDP, same MoE run: losses within 1e-3."""
    from test_distributed import losses, run_two

    moe = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48", "train.steps=6",
           "train.device=cuda", "checkpoint.format=full"]
    run_two(tiny_data, tmp_path / "ddp", *moe)
    run_two(tiny_data, tmp_path / "ep", *moe, "train.expert_parallel=2")
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "ep")
    assert len(a) == len(b) == 6 and all(abs(x - y) <= 1e-3 * x for x, y in zip(a, b))


def test_fp8_training_runs_and_tracks_bf16(tiny_data, tmp_path):
    """train.fp8 on a GPU with FP8 matmuls (capability ≥ 8.9): 16 steps, final loss within 5% of bf16's."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip(f"{torch.cuda.get_device_name()} has no FP8 matmuls (capability < 8.9)")
    pytest.importorskip("torchao.float8", reason="torchao (the fp8 extra) is not installed")
    from pretrainlab.recipes import train

    bf16 = train(cuda_cfg(tiny_data, tmp_path, "bf16", "train.precision=bf16"))["losses"]
    fp8 = train(cuda_cfg(tiny_data, tmp_path, "fp8", "train.precision=bf16", "train.fp8=true"))["losses"]
    assert abs(fp8[-1] - bf16[-1]) <= 0.05 * bf16[-1] and fp8[-1] < fp8[0]


@pytest.mark.parametrize("model", [(), ("model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48",
                                          "model.moe.dropless=true")], ids=["dense", "moe-dropless"])
def test_a_training_step_between_reads_never_waits_for_the_gpu(tiny_data, tmp_path, model):
    """bf16 on CUDA with the guard on, log_every=4: CUDA's sync detector raises on any synchronizing call
    during the steps whose metrics are not read (tests/test_host_syncs.py counts the same on the CPU)."""
    from pretrainlab.recipes import train
    from pretrainlab.train.callbacks import Callback

    read = {4, 8, 12}  # log_every=4; checkpoint.every and val_every=12

    class SyncDetector(Callback):  # from step 2: step 1 follows the step-0 validation, which reads
        def on_step_boundary(self, ctx, val):  # the next step runs under the detector unless it is read
            torch.cuda.set_sync_debug_mode(0 if ctx.step + 1 in read or ctx.step + 1 > 12 else "error")

    try:
        summary = train(cuda_cfg(tiny_data, tmp_path, "sync", "train.precision=bf16", "train.steps=12",
                                 "train.log_every=4", "checkpoint.every=12", "train.val_every=12", *model),
                        callbacks=[SyncDetector()])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(summary["losses"]) == 12
