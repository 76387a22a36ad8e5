"""The `multimodal` config section (kept free of imports from ``pretrainlab.config``, which imports it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Modality = Literal["text", "image", "audio", "action", "structure"]  # = modality.MODALITIES


class MultimodalConfig(BaseModel):
    """`mm demo-data` / `mm fit` / `mm build`: multimodal samples -> discretizers -> token shards."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: Path | None = Field(None, description="Multimodal dataset folder: samples.jsonl + payload .npy files (default: <workdir>/mm_data).")
    out: Path | None = Field(None, description="Token shard folder written by `mm build` (default: <workdir>/mm_tokens); point train.tokens here.")
    discretizers: Path | None = Field(None, description="Folder of the trained discretizers (default: <workdir>/mm_discretizers).")
    source: str = Field("multimodal", pattern=r"^[A-Za-z0-9_.-]+$", description="Source name of the shards (<out>/<source>/<split>.bin).")
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of samples held out, chosen by a hash of the sample id.")
    sync_tolerance_ms: float = Field(1.0, ge=0.0, description="A time-slice group whose timestamps spread more than this is quarantined.")
    max_doc_tokens: int = Field(
        0, ge=0, description="Cut a sample into documents of at most this many tokens (eos included), only between "
        "time-slice groups; 0: one document per sample. With packing.mode=best_fit and this <= train.seq_len + 1, "
        "no training row holds part of a group.")
    patch_size: int = Field(4, ge=1, description="Image/video frames are cut into patch_size x patch_size patches, one token each.")
    sample_rate: int = Field(16000, ge=1000, description="Audio sample rate (Hz) every audio payload is assumed to have.")
    n_fft: int = Field(256, ge=16, description="Audio STFT window (samples); one token per hop of log-mel frame.")
    hop: int = Field(128, ge=1, description="Audio STFT hop (samples).")
    n_mels: int = Field(20, ge=2, description="Mel bands of the log-mel frames the audio codebook clusters.")
    kmeans_iters: int = Field(25, ge=1, description="k-means (Lloyd) iterations when fitting the image and audio codebooks.")
    max_fit_vectors: int = Field(50_000, ge=1, description="Fit each codebook on at most this many patches/frames (a seeded sample).")
    seed: int = Field(0, description="Seed of codebook fitting and of `mm demo-data`.")
    demo_samples: int = Field(40, ge=2, description="`mm demo-data`: number of samples.")
    demo_groups: int = Field(3, ge=1, description="`mm demo-data`: time-slice groups per sample (0.5 s apart).")
    demo_image_size: int = Field(8, ge=2, description="`mm demo-data`: camera frames are square grayscale images of this side.")
    lambda_infonce: float = Field(
        0.0, ge=0.0, description="Training: weight λ1 of the InfoNCE term (image span vs caption text, pooled final "
        "hidden states per row) in L = L_CE + λ1·L_InfoNCE + λ2·L_Action; 0 turns it off.")
    lambda_action: float = Field(
        0.0, ge=0.0, description="Training: weight λ2 of the action regression term (hidden state before each action "
        "bin -> its continuous value, MSE); 0 turns it off.")
    temperature: float = Field(0.07, gt=0.0, le=1.0, description="Training: InfoNCE temperature τ.")
    action_head_lr: float = Field(
        1e-3, gt=0.0, description="Training: peak learning rate of the multimodal heads (action head, learned τ), "
        "model parameters in the run's one optimizer with a group of their own (no weight decay); it follows the "
        "optim schedule, scaled by action_head_lr / optim.lr.")
    learn_temperature: bool = Field(
        False, description="Training: learn the InfoNCE τ (log-parametrized, starts at `temperature`, clamped to "
        "[0.01, 1]) as a model parameter beside the action head; saved in checkpoints and logged as `infonce/temperature`.")
    ce_weights: dict[Modality, float] = Field(
        default_factory=dict, description="Training: weight of the token cross-entropy per target modality "
        "(text, image, audio, action, structure = control/marker/timestamp tokens), e.g. {text: 1.0, image: 0.5}; "
        "unnamed modalities weigh 1. CE = sum(w·ce)/targets. Per-modality CE (`ce/<modality>`) is logged on every "
        "multimodal run.")
    eval_at_end: bool = Field(True, description="Run `mm eval` (retrieval, action MSE, per-modality perplexity) "
                              "on the held-out split at the end of a multimodal training run.")
    eval_candidates: int = Field(
        10, ge=2, description="`mm eval`: candidates per retrieval pool (held-out image/caption pairs with "
        "pairwise-different captions); chance R@k = k/N.")
    eval_max_docs: int = Field(500, ge=1, description="`mm eval`: at most this many held-out documents are read.")

    @field_validator("ce_weights")
    @classmethod
    def _non_negative(cls, v: dict) -> dict:
        bad = {k: w for k, w in v.items() if not w >= 0}
        if bad:
            raise ValueError(f"ce_weights must be >= 0, got {bad}")
        return v
