"""Apply a layout (train/mesh.py) to a plain model from outside, as torchtitan's ``parallelize.py`` does.

Order (torchtitan's): expert parallelism, tensor parallelism, then per-block
wrappers (FP8, activation checkpointing, compile), then data parallelism
(FSDP2/HSDP on the mesh's data dimensions, or DDP for plain replication).
Pipeline parallelism splits the model first (train/pipeline.py) and calls the
same steps on each stage.

Tensor parallel plan for the decoder (Megatron-style, with sequence parallel):

- the embedding is split over the vocabulary (row-wise); its output is the
  residual stream split over the sequence (``Shard(1)``);
- each RMSNorm runs on the sequence shards (``SequenceParallel``); attention
  and MLP inputs are all-gathered along the sequence, wq/wk/wv and
  w_gate/w_up split heads / the hidden column-wise, wo and w_down row-wise
  with a reduce-scatter back to sequence shards;
- the output projection is split over the vocabulary; with loss parallel the
  logits stay split and cross-entropy runs under ``loss_parallel()``.

The model needs nothing for this beyond taking its local head count from the
activations' shape and sending tensor subclasses (DTensor) through the plain
composite ops.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from pretrainlab.config import ProjectConfig
from pretrainlab.model.moe import MoE
from pretrainlab.model.transformer import Transformer
from pretrainlab.train.mesh import ParallelDims


class Parallelism:
    """What the training loop asks of a layout: the loss context, gradient finishing, a global clip."""

    def __init__(self, dims: ParallelDims, mesh, ep=None, loss_parallel: bool = False, pipeline=None,
                 model: nn.Module | None = None):
        self.dims, self.mesh, self.ep, self.loss_parallel, self.pipeline = dims, mesh, ep, loss_parallel, pipeline
        self.model = model  # the plain model (its rotary tables are split with the sequence under context parallel)

    def loss_context(self, batch=None):
        """Around one micro-batch's forward and backward: loss parallel (TP) and context parallel (CP).

        Context parallel (CUDA; torch's ``context_parallel``) splits the batch's tokens, targets
        and the rotary tables along the sequence over the ``cp`` ranks (load-balanced chunks, in
        place) and turns causal SDPA into ring attention for the duration of the block.
        """
        if not self.loss_parallel and (self.dims.cp <= 1 or batch is None):
            return nullcontext()
        from contextlib import ExitStack

        stack = ExitStack()
        if self.loss_parallel:
            from torch.distributed.tensor.parallel import loss_parallel

            stack.enter_context(loss_parallel())
        if self.dims.cp > 1 and batch is not None:
            from torch.distributed.tensor.experimental import context_parallel

            rope = [self.model.rope_cos, self.model.rope_sin]
            stack.enter_context(context_parallel(self.mesh["cp"], buffers=[batch.inputs, batch.targets, *rope],
                                                 buffer_seq_dims=[1, 1, 0, 0],
                                                 no_restore_buffers={batch.inputs, batch.targets}))
        return stack

    def finish_grads(self) -> None:
        """Gradients data parallelism does not reduce (expert slices)."""
        if self.ep is not None:
            self.ep.finish_grads()

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip by the norm over all ranks' gradients; returns that norm as a plain tensor."""
        if self.ep is not None:
            return self.ep.clip_grad_norm_(params, max_norm)
        if self.pipeline is not None:
            return self.pipeline.clip_grad_norm_(params, max_norm)
        from pretrainlab.train.parallel import clip_grads_, grad_norm

        norm = grad_norm([p.grad for p in params if p.grad is not None])
        clip_grads_(params, max_norm, norm)
        return norm


def parallelize(model: nn.Module, cfg: ProjectConfig, dims: ParallelDims, device: torch.device,
                local_rank: int = 0, accum: int = 1) -> tuple[nn.Module, Parallelism]:
    """Shard ``model`` in place per ``dims``; returns (the module this rank trains, the loop's ``Parallelism``).

    The returned module is ``model`` itself (FSDP2 and TP work in place), DDP around it, or, under
    pipeline parallelism, a ``pipeline.PipelinedModel`` holding only this rank's stages.
    """
    if (dims.tp > 1 or dims.pp > 1 or dims.cp > 1) and type(model) is not Transformer:
        from pretrainlab.errors import UserError

        raise UserError(f"the tensor/pipeline/context-parallel plans cover the plain decoder, not "
                        f"{type(model).__name__} (e.g. multimodal loss heads); use data and expert parallelism for it")
    mesh = dims.build_mesh(device.type)
    ep = None
    if dims.ep > 1:
        from pretrainlab.train.parallel_ep import ExpertParallelRun

        ep = ExpertParallelRun(model, dims.ep, dims.world, device, mesh=dims.ep_mesh(device.type))
    # A MoE model adds auxiliary losses of plain tensors to the cross-entropy: its logits are gathered instead.
    par = Parallelism(dims, mesh, ep, loss_parallel=dims.tp > 1 and cfg.parallel.loss_parallel and cfg.model.moe is None,
                      model=model)
    if dims.pp > 1:
        return _parallelize_pipeline(model, cfg, dims, mesh, device, par, accum), par
    return _parallelize_part(model, cfg, dims, mesh, device, local_rank, par.loss_parallel, whole=True), par


def _parallelize_part(model: nn.Module, cfg: ProjectConfig, dims: ParallelDims, mesh, device: torch.device,
                      local_rank: int, loss_parallel: bool, whole: bool) -> nn.Module:
    """TP, block wrappers and data parallelism on a whole model or one pipeline stage."""
    from pretrainlab.train.parallel import apply_block_wrappers, apply_data_parallel

    if dims.tp > 1:
        apply_tp(model, mesh["tp"], loss_parallel, whole)
    apply_block_wrappers(model, cfg.train, device)
    return apply_data_parallel(model, cfg.train, dims, mesh, device, local_rank)


def _parallelize_pipeline(model: nn.Module, cfg: ProjectConfig, dims: ParallelDims, mesh, device: torch.device,
                          par: Parallelism, accum: int) -> nn.Module:
    from pretrainlab.errors import UserError
    from pretrainlab.train.pipeline import Pipeline, PipelinedModel, pipeline_microbatches, split_model

    micro = pipeline_microbatches(cfg, accum)
    rows = accum * cfg.train.micro_batch
    if rows % micro:
        raise UserError(f"parallel.pipeline_microbatches={micro} must divide the {rows} rows each data-parallel rank "
                        "reads per step (accumulation x train.micro_batch)")
    stages, ids = split_model(model, cfg, mesh["pp"].get_local_rank(), dims.pp)
    for stage in stages:
        _parallelize_part(stage, cfg, dims, mesh, device, 0, par.loss_parallel, whole=False)
    trained = PipelinedModel(model, stages)
    trained.pipeline = par.pipeline = Pipeline(stages, ids, dims.pp * cfg.parallel.pipeline_stages_per_rank, mesh,
                                               cfg, micro, device, par.loss_context)
    return trained


def apply_tp(model: nn.Module, tp_mesh, loss_parallel: bool, whole: bool = True) -> None:
    """Tensor + sequence parallel over ``tp_mesh`` (see the module docstring); ties embedding and head again.

    ``model`` is a whole decoder or a pipeline stage (which may lack the embedding or the head);
    ``whole``: also unwrap the DTensor outputs of the model's forward for the loop.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module

    embed, head = getattr(model, "embed", None), getattr(model, "lm_head", None)
    tied = embed is not None and head is not None and head.weight is embed.weight
    plan = {}
    if embed is not None:
        plan["embed"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if head is not None:
        plan["norm"] = SequenceParallel()
        plan["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1) if loss_parallel
                                          else Replicate(), use_local_output=not loss_parallel)
    parallelize_module(model, tp_mesh, plan)
    layers = model.layers.values() if isinstance(model.layers, nn.ModuleDict) else model.layers
    for block in layers:
        parallelize_module(block, tp_mesh, block_plan(moe=isinstance(block.mlp, MoE)))
    if tied:  # both are (vocab, d_model) split over the vocabulary: one parameter again
        model.lm_head.weight = model.embed.weight
    if whole:
        model.register_forward_hook(_plain_outputs)


def block_plan(moe: bool = False) -> dict:
    """The plan for one decoder block (module names of model/transformer.py's Block).

    A MoE MLP is not split: it gets the whole sequence and every tensor-parallel rank runs it
    (its experts may be split by expert parallelism instead); its output goes back to sequence shards.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleInputOutput,
                                                   RowwiseParallel, SequenceParallel)

    gather = PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                desired_input_layouts=(Replicate(), None, None, None, None), use_local_output=True)
    attention = {
        "attn_norm": SequenceParallel(),
        "attn": gather,
        "attn.wq": ColwiseParallel(),
        "attn.wk": ColwiseParallel(),
        "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(),
    }
    if moe:
        return {**attention, "mlp": PrepareModuleInputOutput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_input=True,
            output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),), use_local_output=True)}
    return {
        "attn_norm": SequenceParallel(),
        "attn": gather,
        "attn.wq": ColwiseParallel(),
        "attn.wk": ColwiseParallel(),
        "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                  use_local_output=True),
        "mlp.w_gate": ColwiseParallel(),
        "mlp.w_up": ColwiseParallel(),
        "mlp.w_down": RowwiseParallel(output_layouts=Shard(1)),
    }


def _plain_outputs(module, args, out):
    """The loop sums plain losses and evaluation scores full logits: unwrap the model's DTensor outputs.

    The loss is replicated (``to_local`` keeps its autograd link); logits stay split
    while gradients flow (loss parallel) and are gathered for scoring without them.
    """
    from torch.distributed.tensor import DTensor

    logits, loss, *rest = out
    if isinstance(loss, DTensor):
        loss = loss.to_local()
    if isinstance(logits, DTensor) and not torch.is_grad_enabled():
        logits = logits.full_tensor()
    return (logits, loss, *rest)
