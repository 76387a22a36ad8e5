"""The multimodal training model: the Transformer with the parameters of the extra loss terms inside it.

``L = L_CE + λ1·L_InfoNCE + λ2·L_Action``. The two extra terms have trainable
parts, the ``ActionHead`` (hidden state before an action bin -> its continuous
value) and the learned InfoNCE temperature; ``MultimodalHeads`` holds them and
``MultimodalTransformer`` (a Transformer with the heads as its ``mm`` submodule)
computes both terms in its own forward from the final hidden states. So the
heads are ordinary parameters of the model the trainer wraps: data parallelism
(DDP, FSDP2) reduces their gradients, the run's one optimizer steps them (their
own parameter group: ``multimodal.action_head_lr``, no weight decay), gradient
clipping and the grad scaler cover them, and checkpoints and guard rollbacks
restore them with the rest of the model.

Nothing here knows about parallelism: InfoNCE's negatives are the other rows
of the same micro-batch, and a term with nothing to score this micro-batch
still touches its parameters (a zero), so every parameter gets a gradient on
every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainlab.config import ProjectConfig
from pretrainlab.errors import UserError
from pretrainlab.model.transformer import Transformer
from pretrainlab.multimodal.actions import action_index, action_targets
from pretrainlab.multimodal.losses import ActionHead, LearnedTemperature, action_loss, paired_infonce


class MultimodalHeads(nn.Module):
    """The trainable parts of the multimodal loss terms; ``optim_group`` gives them their own optimizer group."""

    def __init__(self, d_model: int, action: bool, learn_temperature: bool, temperature: float, lr_scale: float):
        super().__init__()
        self.action = ActionHead(d_model) if action else None
        self.tau = LearnedTemperature(temperature) if learn_temperature else None
        self.optim_group = {"lr_scale": lr_scale, "weight_decay": 0.0}  # read by train.optim.param_groups


class MultimodalTransformer(Transformer):
    """A Transformer whose training forward adds λ1·InfoNCE(image, caption) and λ2·MSE(action head) to the loss.

    In training mode with targets, ``forward`` returns ``(logits, loss, terms)``: ``terms`` are the
    detached parts of ``loss`` for logging (``ce_loss``, ``loss/infonce``, ``loss/action``). In eval
    mode it is the plain Transformer: ``(logits, loss)``.
    """

    def __init__(self, cfg: ProjectConfig, spec, eos_id: int, actions: dict | None = None):
        super().__init__(cfg.model)
        m = cfg.multimodal
        self.mm = MultimodalHeads(cfg.model.d_model, action=bool(m.lambda_action),
                                  learn_temperature=bool(m.lambda_infonce and m.learn_temperature),
                                  temperature=m.temperature, lr_scale=m.action_head_lr / cfg.optim.lr)
        self.lambda_infonce, self.lambda_action, self.temperature = m.lambda_infonce, m.lambda_action, m.temperature
        self.spec, self.eos_id, self.actions = spec, eos_id, actions or {}
        self._hidden: torch.Tensor | None = None
        self.norm.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, inputs, output) -> None:
        self._hidden = output

    def temperature_value(self) -> float | torch.Tensor:
        return self.mm.tau() if self.mm.tau is not None else self.temperature

    def forward(self, input_ids, targets=None, *args, **kwargs):
        logits, loss = super().forward(input_ids, targets, *args, **kwargs)
        hidden, self._hidden = self._hidden, None  # one forward, one use
        if targets is None or not self.training:
            return logits, loss
        terms = {"ce_loss": loss.detach()}
        if self.lambda_infonce:
            tau = self.temperature_value()
            nce = paired_infonce(hidden, input_ids, self.spec, "image", "text", tau, gather=False)
            if nce is None:  # fewer than two pairs here: a zero that still reaches τ
                nce = hidden.sum() * 0.0 + (tau * 0.0 if isinstance(tau, torch.Tensor) else 0.0)
            term = self.lambda_infonce * nce
            loss = loss + term
            terms["loss/infonce"] = term.detach()
        if self.lambda_action:
            mask, values = action_targets(input_ids, targets, self.eos_id, self.actions)
            term = self.lambda_action * action_loss(self.mm.action, hidden, mask, values)
            loss = loss + term
            terms["loss/action"] = term.detach()
        return logits, loss, terms


def wants_multimodal_heads(cfg: ProjectConfig) -> bool:
    """Whether a run trains multimodal heads (an InfoNCE or action term is on)."""
    return bool(cfg.multimodal.lambda_infonce or cfg.multimodal.lambda_action)


def build_multimodal_model(cfg: ProjectConfig) -> MultimodalTransformer:
    """The model of a run with multimodal loss terms, with the tokenizer's spec and the shards' action values."""
    from pretrainlab.multimodal.build import mm_paths
    from pretrainlab.tokenizer.shards import ShardReader, list_sources
    from pretrainlab.tokenizer.vocab import load_tokenizer

    m = cfg.multimodal
    if m.lambda_action and cfg.packing.mode != "best_fit":
        raise UserError(
            f"multimodal.lambda_action needs packing.mode=best_fit: {cfg.packing.mode} packing cuts documents "
            "across rows and a cut document's action values cannot be matched; set --set packing.mode=best_fit "
            "(and multimodal.max_doc_tokens <= train.seq_len + 1)")
    tok = load_tokenizer(mm_paths(cfg)["tokenizer"])
    actions = {}
    if m.lambda_action:
        tokens_dir = cfg.train_tokens_dir
        actions = action_index({s: ShardReader(tokens_dir, s, "train") for s in list_sources(tokens_dir)})
    return MultimodalTransformer(cfg, tok.spec, tok.eos_id, actions)
