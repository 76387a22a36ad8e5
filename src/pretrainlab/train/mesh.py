"""One device mesh from config: the layout of a run's processes (after torchtitan's ``ParallelDims``).

``parallel: {dp_replicate, dp_shard, cp, tp, pp, ep}`` describes how the
processes of a torchrun job divide the work. The mesh dimensions are, outermost
first, ``pp, dp_replicate, dp_shard, cp, tp``: tensor-parallel groups are
consecutive ranks (one node's fast links on a cluster), pipeline stages the
farthest apart. Their product must equal the world size. ``ep`` does not add
processes: it splits the data-parallel ranks into expert groups (as torchtitan
borrows EP from data parallelism).

The legacy settings keep working: ``train.parallel=ddp`` gives the processes
left over to DDP replicas (``dp_replicate``), ``fsdp2`` to FSDP2 shards
(``dp_shard``), and ``train.expert_parallel`` is ``ep``. Every impossible layout
is refused here, before a model is built, with one line (``UserError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrainlab.config import ProjectConfig
from pretrainlab.errors import UserError

DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")  # mesh order, outermost first
INTERLEAVED = ("Interleaved1F1B", "InterleavedZeroBubble")


@dataclass(frozen=True)
class ParallelDims:
    """The sizes of the mesh dimensions, resolved for ``world`` processes."""

    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    world: int = 1

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each reads different rows."""
        return self.dp_replicate * self.dp_shard

    @property
    def ddp(self) -> bool:
        """Plain replication with nothing else (DDP): the only layout that keeps whole, undistributed parameters."""
        return self.dp_replicate > 1 and self.dp_shard == 1 and self.tp == self.pp == self.cp == 1

    @property
    def fsdp(self) -> bool:
        """FSDP2 (fully_shard) wraps the model: sharding, or replication composed with TP/PP/CP (HSDP mesh)."""
        return self.world > 1 and not self.ddp and (self.dp > 1 or self.cp > 1)

    def sizes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in DIMS}

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's index along each mesh dimension (row-major over ``DIMS``, as ``init_device_mesh`` lays it out)."""
        out = {}
        for name in reversed(DIMS):
            rank, out[name] = divmod(rank, getattr(self, name))
        return out

    def dp_rank(self, rank: int) -> int:
        """Which data-parallel slice of every batch ``rank`` reads."""
        c = self.coords(rank)
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"]

    def describe(self) -> str:
        parts = [f"{n}{getattr(self, n)}" for n in ("dp_replicate", "dp_shard", "cp", "tp", "pp", "ep")
                 if getattr(self, n) > 1]
        return " x ".join(parts) or "one process"

    def ep_mesh(self, device_type: str):
        """The (replica, ep) mesh of expert parallelism: ``ep`` consecutive data-parallel ranks share one copy of
        the experts; every other rank with the same position in its group holds the same slice (a replica)."""
        import torch
        from torch.distributed.device_mesh import DeviceMesh

        ranks = torch.arange(self.world).view(self.pp, self.dp // self.ep, self.ep, self.cp, self.tp)
        ranks = ranks.permute(0, 1, 3, 4, 2).reshape(-1, self.ep)
        return DeviceMesh(device_type, ranks, mesh_dim_names=("replica", "ep"))

    def build_mesh(self, device_type: str):
        """The world's ``DeviceMesh`` over ``DIMS`` (size-1 dimensions included, so slices never fail); None alone."""
        if self.world <= 1:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, tuple(getattr(self, n) for n in DIMS), mesh_dim_names=DIMS)


def resolve_dims(cfg: ProjectConfig, world: int, check_device: bool = True) -> ParallelDims:
    """The layout ``cfg`` asks for on ``world`` processes; refuses impossible ones in one line.

    ``check_device=False`` (dry runs, planning on a laptop) skips what depends on this machine (CUDA).
    """
    from pretrainlab.train.parallel_ep import check_expert_parallel

    pc, tc = cfg.parallel, cfg.train
    check_expert_parallel(cfg, world)  # the legacy train.expert_parallel, in its own words
    fixed = pc.dp_replicate * pc.cp * pc.tp * pc.pp
    if pc.dp_shard == 0:
        raise UserError("parallel.dp_shard=0 is not a size; use -1 (the processes left over) or a positive number")
    if pc.dp_shard == -1:
        if world % fixed:
            raise UserError(f"{world} process(es) are not divisible by parallel.dp_replicate x cp x tp x pp = "
                            f"{pc.dp_replicate}x{pc.cp}x{pc.tp}x{pc.pp} = {fixed}; launch a multiple of {fixed} "
                            f"processes (torchrun --nproc_per_node) or change the parallel sizes")
        rest, replicate = world // fixed, pc.dp_replicate
        if tc.parallel == "ddp" and fixed == 1:  # the legacy choice: without other dimensions, DDP replicas
            replicate, shard = rest, 1
        else:
            shard = rest
    else:
        replicate, shard = pc.dp_replicate, pc.dp_shard
        if fixed * shard != world:
            raise UserError(f"parallel.dp_replicate x dp_shard x cp x tp x pp = {pc.dp_replicate}x{shard}x{pc.cp}x"
                            f"{pc.tp}x{pc.pp} = {fixed * shard} but {world} process(es) run; their product must "
                            f"equal the process count (or set parallel.dp_shard=-1 to use the rest)")
    if pc.ep > 1 and tc.expert_parallel > 1 and pc.ep != tc.expert_parallel:
        raise UserError(f"parallel.ep={pc.ep} and train.expert_parallel={tc.expert_parallel} disagree; set only "
                        "parallel.ep")
    dims = ParallelDims(replicate, shard, pc.cp, pc.tp, pc.pp, max(pc.ep, tc.expert_parallel), world)
    check_layout(cfg, dims, check_device)
    return dims


def check_layout(cfg: ProjectConfig, dims: ParallelDims, check_device: bool = True) -> None:
    """Refuse a layout the model, the device or the rest of the config cannot use (one line each)."""
    m = cfg.model
    if dims.tp > 1:
        widths = (("model.n_heads", m.n_heads), ("model.n_kv_heads", m.kv_heads),
                  ("the MLP hidden size (model.ffn_hidden)", m.ffn_dim))
        for what, n in widths:
            if n % dims.tp:
                raise UserError(f"parallel.tp={dims.tp} must divide {what} ({n}); pick a tp that divides it")
        if m.vocab_size is not None and m.vocab_size % dims.tp:
            raise UserError(f"parallel.tp={dims.tp} must divide model.vocab_size ({m.vocab_size}) for the "
                            "vocabulary-parallel embedding and loss; set model.vocab_size to a multiple of it")
    _check_pipeline(cfg, dims)
    if dims.cp > 1:
        if check_device and (cfg.train.device == "cpu" or not _cuda()):
            raise UserError(f"parallel.cp={dims.cp} needs CUDA (torch's context_parallel shards SDPA over GPUs); "
                            "on the CPU set parallel.cp=1")
        if cfg.packing.doc_mask:
            raise UserError(f"parallel.cp={dims.cp} runs causal ring attention without document masks; set "
                            "packing.doc_mask=false")
        if cfg.model.max_seq_len != cfg.train.seq_len:
            raise UserError(f"parallel.cp={dims.cp} splits the rotary tables with the sequence; set "
                            f"model.max_seq_len equal to train.seq_len ({cfg.train.seq_len})")
        if cfg.train.seq_len % (2 * dims.cp):
            raise UserError(f"parallel.cp={dims.cp} needs train.seq_len ({cfg.train.seq_len}) divisible by 2*cp "
                            "(load-balanced chunks); adjust train.seq_len")
    if dims.ep > 1:
        if m.moe is None:
            raise UserError(f"expert parallelism (ep={dims.ep}) needs a Mixture-of-Experts model; set "
                            "model.moe.num_experts (or ep=1)")
        if m.moe.num_experts % dims.ep:
            raise UserError(f"model.moe.num_experts={m.moe.num_experts} is not divisible by ep={dims.ep}; pick an EP "
                            "size that divides the number of experts")
        if dims.dp % dims.ep:
            raise UserError(f"ep={dims.ep} must divide the data-parallel ranks dp_replicate x dp_shard = {dims.dp} "
                            f"(experts are split over ranks that read different data)")
    if (dims.tp > 1 or dims.pp > 1 or dims.cp > 1) and cfg.eval.every_steps > 0 and cfg.eval.tasks:
        raise UserError(f"in-training task evaluation (eval.every_steps) runs on rank 0 only and cannot drive the "
                        f"collectives of layout {dims.describe()}; set eval.every_steps=0 and evaluate checkpoints "
                        "with `pretrainlab eval`")


def _check_pipeline(cfg: ProjectConfig, dims: ParallelDims) -> None:
    pc, layers = cfg.parallel, cfg.model.n_layers
    if dims.pp <= 1:
        return
    virtual = pc.pipeline_stages_per_rank
    if pc.pipeline_schedule in INTERLEAVED and virtual < 2:
        raise UserError(f"parallel.pipeline_schedule={pc.pipeline_schedule} runs several stages per rank; set "
                        "parallel.pipeline_stages_per_rank >= 2 (or use 1F1B)")
    if pc.pipeline_schedule not in INTERLEAVED and virtual != 1:
        raise UserError(f"parallel.pipeline_schedule={pc.pipeline_schedule} runs one stage per rank; set "
                        "parallel.pipeline_stages_per_rank=1 or pick Interleaved1F1B")
    stages = dims.pp * virtual
    if layers % stages:
        raise UserError(f"model.n_layers ({layers}) is not divisible by the {stages} pipeline stages "
                        f"(parallel.pp x pipeline_stages_per_rank = {dims.pp}x{virtual}); change one of them")
    if cfg.model.tie_embeddings:
        raise UserError("pipeline parallelism puts the embedding and the output projection on different ranks; "
                        "set model.tie_embeddings=false (or parallel.pp=1)")
    if dims.cp > 1:
        raise UserError("pipeline parallelism with context parallelism is not supported; use parallel.pp=1 or cp=1")
    if cfg.checkpoint.format == "full":
        raise UserError("checkpoint.format=full gathers the model on rank 0, which holds only the first pipeline "
                        "stage; use checkpoint.format=sharded (or auto) with parallel.pp > 1")
    if cfg.model.moe is not None or dims.ep > 1:
        raise UserError("pipeline parallelism of Mixture-of-Experts models is not supported (the auxiliary losses "
                        "live in every stage); use parallel.pp=1 with data and expert parallelism")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
