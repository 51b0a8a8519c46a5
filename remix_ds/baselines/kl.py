"""KL to the frozen starting model: beta * KL(p_frozen || p_current) per token.

    term = beta * sum_{t in K} KL(p_frozen(. | x_<t) || p_theta(. | x_<t)) / |K|

K is the set of KL token positions of the optimizer step over all ranks: the supervised
positions of every stage micro-batch (`kl.data=batch`), or of a separate KL micro-batch per
stage micro-batch drawn from a fixed pool (`generic`: the data.mix generic corpus; or a dataset).
Units: nats per KL token, like the main loss per supervised token; `reg/kl/kl` is the mean KL
per token (without beta), `reg/kl/term` the added objective (with beta).

The frozen model is a second ZeRO-3 engine: `deepspeed.initialize` with the training config
minus the optimizer gives a partitioned inference engine (DeepSpeedZeRoOffload; TRL builds its
ZeRO-3 reference models the same way; `init_inference` is tensor-parallel, not ZeRO-3). Loaded
while the trainer's HfDeepSpeedConfig is alive, it is partitioned as it loads: it costs
(bytes per weight) x params / world_size per GPU, no gradients, no optimizer state.

Both forwards run *after* the main backward of the micro-batch, and the KL gets its own
backward (gradients accumulate into the step): the main loss may be the fused lm_head+CE path,
which never produces logits, and this keeps the two independent. Cost per micro-batch: one
frozen forward plus one current forward/backward (measured in `remix-ds bench baselines`).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from remix_ds import models
from remix_ds.data.generic import generic_rows
from remix_ds.data.packing import pack
from remix_ds.data.tokenize import TokenizedExample, tokenize_examples
from remix_ds.engine import dist
from remix_ds.engine.hooks import Regularizer
from remix_ds.engine.loss import model_inputs, supervised_rows
from remix_ds.eval.data import load_eval_set

IGNORE = -100


def kl_sum(current_logits: torch.Tensor, frozen_logits: torch.Tensor) -> torch.Tensor:
    """sum over rows of KL(softmax(frozen) || softmax(current)); (M, V) each, computed in fp32."""
    logq = F.log_softmax(current_logits.float(), dim=-1)
    logp = F.log_softmax(frozen_logits.float(), dim=-1)
    return F.kl_div(logq, logp, log_target=True, reduction="sum")


def kl_positions(labels: torch.Tensor) -> torch.Tensor:
    """(R, T-1) mask of the positions whose next token is supervised (logits[:, t] predicts labels[:, t + 1])."""
    return labels[:, 1:] != IGNORE


def build_frozen_engine(trainer, reference: str | None = None):
    """The frozen model as a ZeRO-3 inference engine (no optimizer), partitioned as it loads."""
    import deepspeed

    ds = copy.deepcopy(trainer.ds_config)
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    mcfg = copy.deepcopy(trainer.cfg.model)
    if reference:
        mcfg.init_from = reference
    # trainer._hf_ds (HfDeepSpeedConfig) is alive: from_pretrained builds under zero.Init
    model = models.load_model(mcfg, trainer.dtype, trainer.attn)
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine


class KLPool:
    """A fixed pool of tokenized KL rows; step s, micro-batch i, rank r reads a deterministic slice
    (so a resumed run sees the same KL rows without any saved state)."""

    def __init__(self, rows, per_micro: int, rank: int, world: int, max_seq_len: int, pad_id: int):
        if not rows:
            raise ValueError("regularize.kl: the KL row pool is empty")
        self.rows, self.per_micro, self.rank, self.world = rows, per_micro, rank, world
        self.max_seq_len, self.pad_id = max_seq_len, pad_id

    def batch(self, step: int, index: int, gas: int) -> dict:
        first = ((step * gas + index) * self.world + self.rank) * self.per_micro
        picked = [self.rows[(first + j) % len(self.rows)] for j in range(self.per_micro)]
        return pack(picked, self.max_seq_len, self.pad_id)


def build_pool(trainer, kcfg) -> KLPool:
    cfg, tok = trainer.cfg, trainer.tokenizer
    if kcfg.data == "generic":
        data = copy.deepcopy(cfg.data)
        if kcfg.loss_mode == "all":  # whole windows of generic text (data.mix.raw_tokens, capped by max_seq_len)
            data.mix.generic_format = "raw"
            data.mix.raw_tokens = min(data.mix.raw_tokens, data.max_seq_len)
        rows, _ = generic_rows(data, tok, kcfg.num_examples)
    else:
        examples = load_eval_set(kcfg.data, cfg.eval, cfg.data, n=kcfg.num_examples).examples
        rows = tokenize_examples(examples, tok, mode="answer", prompt_format=cfg.data.prompt_format,
                                 max_len=cfg.data.max_seq_len).examples
    if kcfg.loss_mode == "all":
        out = []
        for r in rows:
            labels = r.input_ids.astype(np.int32).copy()
            labels[0] = IGNORE
            out.append(TokenizedExample(r.id, r.input_ids, labels))
        rows = out
    per_micro = kcfg.micro_batch_size or cfg.train.micro_batch_size
    return KLPool(rows, per_micro, trainer.rank, trainer.world, cfg.data.max_seq_len, tok.pad_token_id)


class KLRegularizer(Regularizer):
    """`regularize.kl`: one frozen forward + one current forward/backward per stage micro-batch."""

    name = "kl"

    def __init__(self, cfg):
        self.cfg = cfg
        self.beta = float(cfg.beta)

    def setup(self, trainer) -> None:
        t0 = time.perf_counter()
        self.trainer, self.engine = trainer, trainer.engine
        self.frozen = build_frozen_engine(trainer, self.cfg.reference)
        self.pool = None if self.cfg.data == "batch" else build_pool(trainer, self.cfg)
        self.setup_s = time.perf_counter() - t0

    def _kl_batches(self, micro_batches: list[dict]) -> list[dict]:
        if self.pool is None:
            return micro_batches
        t = self.trainer
        return [self.pool.batch(t.step, i, len(micro_batches)) for i in range(len(micro_batches))]

    def begin_step(self, micro_batches: list[dict]) -> None:
        self._batches = self._kl_batches(micro_batches)
        # host batches, host counts: reduced over a CPU group (no device sync)
        local = sum(int(kl_positions(b["labels"]).sum()) for b in self._batches)
        self._n = int(dist.all_reduce_sum_host([local])[0])
        self._kl_local = torch.zeros((), dtype=torch.float64, device=self.trainer.device)

    def kl_of(self, batch: dict) -> torch.Tensor:
        """Summed KL over the batch's KL positions, differentiable in the current model."""
        inputs = model_inputs(batch, self.trainer.attn)
        index, _ = supervised_rows(batch)  # collation-time indices: no boolean-mask sync

        def picked(logits):  # (R, T, V) -> (M, V)
            return logits.reshape(-1, logits.shape[-1]).index_select(0, index)

        with torch.no_grad():
            ref = picked(self.frozen(**inputs).logits)
        cur = picked(self.engine(**inputs).logits)
        return kl_sum(cur, ref)

    def after_backward(self, index: int, batch: dict) -> None:
        kb = batch if self.pool is None else self.trainer._to_device(self._batches[index])
        kl = self.kl_of(kb)
        # this rank's share of beta * KL_sum / N, times world: DeepSpeed averages over ranks
        self.engine.backward(kl * (self.beta * self.trainer.world / max(self._n, 1)), scale_wrt_gas=False)
        self._kl_local += kl.detach().to(torch.float64)  # on the device: no .item() per micro-batch

    def end_step(self) -> dict:
        """Device scalars (the trainer converts them at log steps only) and the host token count."""
        mean = dist.all_reduce_(self._kl_local) / max(self._n, 1)
        return {"reg/kl/kl": mean, "reg/kl/term": self.beta * mean, "reg/kl/tokens": float(self._n)}
