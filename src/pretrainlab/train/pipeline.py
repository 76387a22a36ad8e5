"""Pipeline parallelism with ``torch.distributed.pipelining``: the decoder split into stages, a schedule runs them.

The split (after torchtitan's ``pipeline_llama``): ``pp x pipeline_stages_per_rank``
stages of consecutive decoder blocks; the first also embeds, the last also
normalizes and projects to logits. Rank ``r`` of the pipeline holds stages
``r, r + pp, ...`` (the looped placement the interleaved schedules expect).
Each stage is a ``StageModule`` that keeps the model's module names
(``embed``, ``layers.<i>``, ``norm``, ``lm_head``) and is parallelized like a
whole model (tensor parallel, then FSDP2 inside the stage).

``PipelinedModel`` is what the trainer holds: the rank's stages under the plain
model's parameter names (so optimizer groups and DCP checkpoints look the same
as for any other layout, and reshard to any other layout). Its ``forward``
runs a batch through all stages for evaluation (activations handed on by
point-to-point sends, logits broadcast from the last stage), so validation works
unchanged. Training goes through ``Pipeline.forward_backward``: the step's
micro-batches (the accumulation count, or ``parallel.pipeline_microbatches``)
through the configured schedule (1F1B, interleaved 1F1B, GPipe, interleaved
zero-bubble), the loss broadcast from the last stage to the others.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrainlab.config import ProjectConfig
from pretrainlab.errors import UserError
from pretrainlab.model.attention import build_doc_mask
from pretrainlab.model.transformer import positions_in_document

IGNORE_INDEX = -100  # the loader's padding target (the model's default ignore_index)


class StageModule(nn.Module):
    """Consecutive decoder blocks, plus the embedding (first stage) or norm and head (last), under the model's names."""

    def __init__(self, model: nn.Module, first: int, last: int, is_first: bool, is_last: bool):
        super().__init__()
        self.embed = model.embed if is_first else None
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in range(first, last)})
        self.norm = model.norm if is_last else None
        self.lm_head = model.lm_head if is_last else None
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or hidden states in; hidden states or logits (last stage) out.

        ``doc_ids`` (batch, seq) always comes whole: it gives the document mask and the
        rotary positions even where ``x`` is a sequence shard (tensor parallel).
        """
        mask, pos = build_doc_mask(doc_ids), positions_in_document(doc_ids)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        h = self.embed(x) if self.embed is not None else x
        for block in self.layers.values():
            h = block(h, cos, sin, mask)
        return self.lm_head(self.norm(h)) if self.lm_head is not None else h


def stage_layers(n_layers: int, stages: int, stage: int) -> tuple[int, int]:
    """Block range [first, last) of ``stage`` out of ``stages`` equal stages."""
    per = n_layers // stages
    return stage * per, (stage + 1) * per


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one micro-batch (the schedule divides gradients by the micro-batch count)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class Pipeline:
    """This rank's stages, its schedule, and the pipeline group."""

    def __init__(self, stages: list[StageModule], stage_ids: list[int], num_stages: int, mesh, cfg: ProjectConfig,
                 microbatches: int, device: torch.device, loss_context):
        from torch.distributed import pipelining

        from pretrainlab.train.mesh import INTERLEAVED

        self.group = mesh["pp"].get_group()
        self.hidden = (mesh["tp"].size(), cfg.model.d_model)  # activations between stages: sequence split over tp
        self.pp = mesh["pp"].size()
        self.peers = dist.get_process_group_ranks(self.group)  # global rank of each pipeline rank
        self.modules, self.stage_ids, self.num_stages = stages, stage_ids, num_stages
        self.microbatches, self.loss_context = microbatches, loss_context
        self.stages = [pipelining.PipelineStage(m, i, num_stages, device, group=self.group)
                       for m, i in zip(stages, stage_ids)]
        name = cfg.parallel.pipeline_schedule
        try:
            self.schedule = getattr(pipelining, f"Schedule{name}")(
                self.stages if name in INTERLEAVED else self.stages[0], n_microbatches=microbatches, loss_fn=loss_fn)
        except ValueError as err:
            raise UserError(f"parallel.pipeline_schedule={cfg.parallel.pipeline_schedule} with {microbatches} "
                            f"micro-batches per step and {num_stages} stages: {err}; set "
                            "parallel.pipeline_microbatches (or raise the accumulation)") from None

    @property
    def has_first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def has_last(self) -> bool:
        return self.num_stages - 1 in self.stage_ids

    def owner(self, stage: int) -> int:
        """Global rank holding ``stage`` in this rank's pipeline."""
        return self.peers[stage % self.pp]

    def forward_backward(self, ctx) -> tuple[torch.Tensor, dict]:
        """One step's micro-batches through the schedule; returns (loss summed over ``ctx.accum``, no extra terms)."""
        batches = [ctx.loader.next_batch().to(ctx.device) for _ in range(ctx.accum)]
        inputs = torch.cat([b.inputs for b in batches])
        targets = torch.cat([b.targets for b in batches])
        kwargs = {"doc_ids": _doc_ids(inputs, [b.doc_ids for b in batches])}
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.has_first else ()
        with self.loss_context():
            self.schedule.step(*args, target=targets if self.has_last else None,
                               losses=losses if self.has_last else None, return_outputs=False, **kwargs)
        loss = torch.zeros((), device=ctx.device)
        if self.has_last:
            loss = torch.stack([_plain(x).detach().float() for x in losses]).mean() * ctx.accum
        dist.broadcast(loss, src=self.owner(self.num_stages - 1), group=self.group)
        return loss, {}

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """The norm over every stage's gradients (each rank holds some stages), then one clip coefficient."""
        from pretrainlab.train.parallel import clip_grads_, grad_norm

        total_sq = grad_norm([p.grad for p in params if p.grad is not None]) ** 2
        dist.all_reduce(total_sq, group=self.group)
        total = total_sq.sqrt()
        clip_grads_(params, max_norm, total)
        return total

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None, vocab: int) -> torch.Tensor:
        """Logits of a whole batch on every pipeline rank: stages in order, activations by send/recv."""
        h, doc_ids = input_ids, _doc_ids(input_ids, [doc_ids])
        for stage in range(self.num_stages):
            mine = stage in self.stage_ids
            if mine:
                h = _plain(self.modules[self.stage_ids.index(stage)](h, doc_ids))
            nxt = stage + 1
            if nxt < self.num_stages and self.owner(stage) != self.owner(nxt):
                if mine:
                    dist.send(h.contiguous(), dst=self.owner(nxt), group=self.group)
                elif nxt in self.stage_ids:
                    h = self._recv_hidden(input_ids, self.owner(stage))
        logits = h if self.has_last else torch.empty(*input_ids.shape, vocab, device=input_ids.device)
        dist.broadcast(logits, src=self.owner(self.num_stages - 1), group=self.group)
        return logits

    def _recv_hidden(self, input_ids: torch.Tensor, src: int) -> torch.Tensor:
        (b, t), (tp, d) = input_ids.shape, self.hidden
        buf = torch.empty(b, t // tp, d, device=input_ids.device)
        dist.recv(buf, src=src, group=self.group)
        return buf


def _doc_ids(inputs: torch.Tensor, parts: list) -> torch.Tensor:
    """The batch's document ids, or one document per row when the loader packs without a document mask."""
    if parts[0] is None:
        return torch.zeros_like(inputs)
    return torch.cat(parts)


def _plain(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class PipelinedModel(nn.Module):
    """This rank's stages under the whole model's names; ``forward`` evaluates through the whole pipeline."""

    def __init__(self, model: nn.Module, stages: list[StageModule]):
        super().__init__()
        self.cfg = model.cfg
        self.layers = nn.ModuleDict({k: v for s in stages for k, v in s.layers.items()})
        for name in ("embed", "norm", "lm_head"):
            part = next((getattr(s, name) for s in stages if getattr(s, name) is not None), None)
            if part is not None:
                setattr(self, name, part)
        self.pipeline: Pipeline | None = None  # set once the stages are parallelized

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                **_):
        """(logits, mean cross-entropy or None), collective over the pipeline; for evaluation (no gradients)."""
        logits = self.pipeline.evaluate(input_ids, doc_ids, self.cfg.vocab_size)
        loss = loss_fn(logits, targets) if targets is not None else None
        return logits, loss


def split_model(model: nn.Module, cfg: ProjectConfig, pp_rank: int, pp: int) -> tuple[list[StageModule], list[int]]:
    """This pipeline rank's stages (modules and stage indices) of ``model``."""
    per_rank = cfg.parallel.pipeline_stages_per_rank
    num_stages = pp * per_rank
    ids = [pp_rank + k * pp for k in range(per_rank)]
    stages = [StageModule(model, *stage_layers(cfg.model.n_layers, num_stages, s), s == 0, s == num_stages - 1)
              for s in ids]
    return stages, ids


def pipeline_microbatches(cfg: ProjectConfig, accum: int) -> int:
    return cfg.parallel.pipeline_microbatches or accum
