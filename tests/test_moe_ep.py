"""Expert parallelism on 2 CPU processes (gloo) equals the single-process MoE layer."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrainlab.config import load_config
from pretrainlab.model.moe import MoE
from pretrainlab.train.parallel_ep import apply_expert_parallel, expert_param_names

WORLD = 2
pytestmark = pytest.mark.slow  # spawns two Python processes (~5 s idle machine, far more on a busy one)


def make_layer(dropless: bool) -> MoE:
    cfg = load_config(None, ["model.d_model=16", "model.n_heads=2", "model.moe.num_experts=4", "model.moe.top_k=2",
                             "model.moe.expert_hidden=24", "model.moe.capacity_factor=1.0",
                             f"model.moe.dropless={str(dropless).lower()}", "model.moe.num_shared_experts=1"]).model
    torch.manual_seed(0)
    layer = MoE(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return layer


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD, 2, 9, 16, generator=gen), torch.randn(WORLD, 2, 9, 16, generator=gen)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for dropless in (True, False):
            layer = make_layer(dropless)
            assert apply_expert_parallel(layer) == 1
            assert layer.experts.w_gate.shape[0] == 2
            x_all, g_all = inputs()
            x = x_all[rank].clone().requires_grad_()
            out = layer(x)
            out.backward(g_all[rank])
            torch.save({"out": out.detach(), "x_grad": x.grad, "grads": {n: p.grad for n, p in layer.named_parameters()},
                        "expert_names": expert_param_names(layer)}, os.path.join(out_dir, f"{dropless}-rank{rank}.pt"))
        dist.barrier()  # no rank tears down gloo while its peer is still inside a collective
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ep_results(tmp_path_factory) -> dict[bool, list[dict]]:
    """{dropless: [rank 0 result, rank 1 result]} from one 2-process gloo run (both modes)."""
    out = tmp_path_factory.mktemp("ep")
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    expected = [out / f"{d}-rank{r}.pt" for d in (True, False) for r in range(WORLD)]
    try:
        mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException:
        # gloo occasionally aborts a process during interpreter teardown ("terminate called without an
        # active exception") after all work is done; only a run that wrote every result counts.
        if not all(p.exists() for p in expected):
            raise
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
    return {d: [torch.load(out / f"{d}-rank{r}.pt") for r in range(WORLD)] for d in (True, False)}


def test_dropless_expert_parallel_layer_equals_the_single_process_layer_on_the_whole_batch(ep_results):
    results = ep_results[True]
    layer = make_layer(True)
    x_all, g_all = inputs()
    x = x_all.reshape(WORLD * 2, 9, 16).clone().requires_grad_()
    out = layer(x)
    out.backward(g_all.reshape(WORLD * 2, 9, 16))

    torch.testing.assert_close(torch.cat([r["out"] for r in results]), out.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in results]), x.grad, rtol=1e-5, atol=1e-6)
    # replicated parameters: the ranks' gradients sum to the whole-batch gradient (data parallelism all-reduces them)
    for name in ("router.weight", "shared.w_gate.weight", "shared.w_down.weight"):
        torch.testing.assert_close(sum(r["grads"][name] for r in results), dict(layer.named_parameters())[name].grad)
    # sharded experts: each rank holds the full gradient of its own experts
    assert results[0]["expert_names"] == ["experts.w_gate", "experts.w_up", "experts.w_down"]
    for name in results[0]["expert_names"]:
        full = dict(layer.named_parameters())[name].grad
        torch.testing.assert_close(torch.cat([r["grads"][name] for r in results]), full, rtol=1e-5, atol=1e-6)


def test_with_capacity_each_rank_equals_the_single_process_layer_on_its_own_tokens(ep_results):
    results = ep_results[False]
    x_all, g_all = inputs()
    layer = make_layer(False)
    for rank in range(WORLD):
        x = x_all[rank].clone().requires_grad_()
        ref = layer(x)
        ref.backward(g_all[rank])
        torch.testing.assert_close(results[rank]["out"], ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[rank]["x_grad"], x.grad, rtol=1e-5, atol=1e-6)
    stats = layer.pop_stats()
    assert stats["kept"] < stats["assignments"]  # capacity 1.0 really dropped assignments here
