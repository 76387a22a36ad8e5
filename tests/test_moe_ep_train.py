"""`pretrainlab train` with expert parallelism (train.expert_parallel) under torchrun on the CPU (gloo).

An EP=2 run shards each MoE layer's experts over the two ranks and moves tokens by
all-to-all; it must train exactly like the plain data-parallel run (same losses,
gradient norms and global expert loads), write checkpoints with full expert
tensors equal to DDP's, and those checkpoints resume on one process or under
another layout. Bad EP settings are refused in one line.
"""

import shutil

import pytest
import torch

from conftest import tiny_overrides
from pretrainlab.config import load_config
from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.parallel_ep import check_expert_parallel
from test_cli import assert_one_line_error, run_cli
from test_distributed import run_one, run_two  # torchrun launch + one-process reference

MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=48", "train.steps=8",
       "checkpoint.every=4", "checkpoint.keep_last=4"]
FULL = "checkpoint.format=full"


def train_records(run_dir) -> list[dict]:
    return [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a))


def flat_state(path) -> dict[str, torch.Tensor]:
    """A checkpoint's model and optimizer tensors under one flat namespace."""
    model = torch.load(path / "model.pt", weights_only=True)
    optim = torch.load(path / "optim.pt", weights_only=False)["state"]
    return {**{f"model/{k}": v for k, v in model.items()},
            **{f"optim/{k}/{s}": torch.as_tensor(v) for k, d in optim.items() for s, v in d.items()}}


def copy_without_last_checkpoint(src, dst):
    """A copy of a finished run as if it had been killed right after its step-4 checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(ckpt.checkpoint_root(dst) / ckpt.step_dir_name(8))
    return dst


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """Two 8-step MoE runs on 2 processes, full checkpoints at steps 4 and 8: plain DDP, and DDP + EP=2."""
    root = tmp_path_factory.mktemp("ep_train")
    run_two(tiny_data, root / "ddp", *MOE, FULL)
    run_two(tiny_data, root / "ep", *MOE, FULL, "train.expert_parallel=2")
    return root


@pytest.mark.slow
def test_expert_parallel_training_matches_data_parallel_losses_grad_norms_and_expert_loads(runs):
    ddp, ep = train_records(runs / "ddp"), train_records(runs / "ep")
    assert len(ddp) == len(ep) == 8
    for a, b in zip(ddp, ep):
        assert close(a["loss"], b["loss"]) and close(a["grad_norm"], b["grad_norm"]), (a["step"], a["loss"], b["loss"])
        for layer in (0, 1):  # the monitor reports global loads (all ranks' tokens), not one rank's
            assert b[f"moe/layer{layer}/tokens_per_expert"] == a[f"moe/layer{layer}/tokens_per_expert"]
            assert sum(b[f"moe/layer{layer}/tokens_per_expert"]) == 256 * 2  # all tokens x top-2
            assert b[f"moe/layer{layer}/drop_rate"] == pytest.approx(a[f"moe/layer{layer}/drop_rate"])
    assert any(r["moe/drop_rate"] > 0 for r in ep), "capacity dropping was exercised"
    assert any(r["grad_norm"] > 1.0 for r in ep), "clipping (optim.grad_clip=1) was exercised"


@pytest.mark.slow
def test_expert_parallel_checkpoints_hold_full_expert_tensors_equal_to_data_parallel(runs):
    for step in (4, 8):
        want = flat_state(ckpt.checkpoint_root(runs / "ddp") / ckpt.step_dir_name(step))
        got = flat_state(ckpt.checkpoint_root(runs / "ep") / ckpt.step_dir_name(step))
        assert got.keys() == want.keys()
        assert got["model/layers.0.mlp.experts.w_gate"].shape == (4, 48, 32)  # all experts, not one rank's slice
        assert got["optim/layers.1.mlp.experts.w_down/exp_avg_sq"].shape == (4, 32, 48)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_an_expert_parallel_checkpoint_resumes_in_one_process(runs, tiny_data, tmp_path):
    # One process continues the EP run and, for reference, the DDP run from their step-4 checkpoints: the
    # checkpoints are equal, so the next losses must be too (one process groups rows into micro-batches
    # differently from two, so capacity drops differ: compare with each other, not with the 2-process run).
    from_ep = run_one(tiny_data, copy_without_last_checkpoint(runs / "ep", tmp_path / "ep"), *MOE)
    from_ddp = run_one(tiny_data, copy_without_last_checkpoint(runs / "ddp", tmp_path / "ddp"), *MOE)
    assert len(from_ep) == len(from_ddp) == 8
    assert all(close(a, b) for a, b in zip(from_ep, from_ddp)), (from_ep, from_ddp)
    assert from_ep[:4] == [r["loss"] for r in train_records(runs / "ep")][:4]


@pytest.mark.slow
def test_a_data_parallel_checkpoint_continues_under_expert_parallel_fsdp2_with_sharded_checkpoints(runs, tiny_data,
                                                                                                     tmp_path):
    # DDP's full step-4 checkpoint, continued on 2 processes with EP=2 and FSDP2 for the rest of the model
    # (expert slices cut on load, FSDP2 leaving them alone), reproduces DDP's steps 5-8 ...
    run = copy_without_last_checkpoint(runs / "ddp", tmp_path / "resharded")
    resumed = run_two(tiny_data, run, *MOE, "train.expert_parallel=2", "train.parallel=fsdp2",
                        "checkpoint.format=sharded")
    reference = [r["loss"] for r in train_records(runs / "ddp")]
    assert len(resumed) == 8
    assert all(close(a, b) for a, b in zip(resumed, reference)), (resumed, reference)
    # ... and its sharded step-8 checkpoint holds every expert: read into one process, it equals DDP's model.
    path = ckpt.checkpoint_root(run) / ckpt.step_dir_name(8)
    assert ckpt.checkpoint_format(path) == "sharded"
    model, _, _ = ckpt.load_model(run, 8)
    want = torch.load(ckpt.checkpoint_root(runs / "ddp") / ckpt.step_dir_name(8) / "model.pt", weights_only=True)
    assert model.layers[0].mlp.experts.w_up.shape == (4, 48, 32)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6, msg=k)


def ep_config(*extra: str):
    return load_config(None, ["model.moe.num_experts=4", "train.expert_parallel=2", *extra])


@pytest.mark.parametrize(
    ("cfg", "world", "fragment"),
    [
        (ep_config(), 1, "must divide the number of processes (1)"),
        (ep_config(), 3, "must divide the number of processes (3)"),
        (ep_config("model.moe.num_experts=6", "train.expert_parallel=4"), 4, "num_experts=6 is not divisible"),
        (load_config(None, ["train.expert_parallel=2"]), 2, "needs a Mixture-of-Experts model"),
        (ep_config("eval.every_steps=5"), 2, "set eval.every_steps=0"),
    ],
)
def test_expert_parallel_settings_that_cannot_work_are_refused(cfg, world, fragment):
    with pytest.raises(UserError) as err:
        check_expert_parallel(cfg, world)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_valid_expert_parallel_settings_pass():
    check_expert_parallel(ep_config(), 2)
    check_expert_parallel(ep_config("model.moe.num_experts=8", "train.expert_parallel=4"), 8)
    check_expert_parallel(load_config(None, []), 1)  # off for a dense single-process run


def test_train_with_expert_parallel_on_one_process_is_one_line_error(tiny_data, tmp_path):
    sets = tiny_overrides(tiny_data) + [f"run.dir={tmp_path / 'run'}", "model.moe.num_experts=4",
                                        "train.expert_parallel=2"]
    out = run_cli("train", *[a for s in sets for a in ("--set", s)])
    assert_one_line_error(out, "train.expert_parallel=2 must divide the number of processes (1)")
