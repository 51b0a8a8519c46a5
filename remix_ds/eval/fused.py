"""Fused exact-match evaluator: one teacher-forced forward pass, no decode loop.

Each example is laid out as ``prompt + gold answer + EOS``; many examples are packed per row with
position ids restarting at 0 (``use_cache=False``, no attention mask, so transformers builds a
block-diagonal causal mask; models whose attention takes varlen kwargs, flash-attention and
``remix_varlen``, also get ``cu_seq_lens_*``: the rule the training loss uses too). An example is
*correct* iff the argmax at every answer position and at the final EOS equals the gold token.

Why this is greedy decoding's verdict: greedy decoding from the same prompt ids emits token
``t_j = argmax p(. | prompt, t_<j)``. If every argmax under teacher forcing equals the gold token,
then by induction greedy decoding emits exactly the gold tokens and then EOS. If the first
mismatch is at answer position k, greedy decoding emits the gold prefix ``t_<k`` and then a
different token, so its output token sequence is not the gold one. Hence::

    fused correct  <=>  greedy output *tokens* == gold answer tokens + EOS

(same prompt ids, same argmax tie-breaking; up to floating-point differences between a packed
forward and a KV-cached incremental one, which only matter at near-ties; ``min_margin`` reports
the smallest top-1/top-2 logit gap over the answer so such cases are visible).

When it can differ from the REMIX *string* verdict ``pred.strip().lower() == gold.strip().lower()``:

- fused wrong, string right: the model greedily emits a *different token sequence* with the same
  normalized string: other case (``paris`` vs ``Paris``), extra leading/trailing whitespace, or a
  different segmentation of the same characters (``Par|is`` vs ``Paris``, tokenization ambiguity).
- fused right, string wrong: only if the gold answer's tokens do not decode back to the gold
  string (lossy tokenizer normalization, e.g. NFKC or unknown characters); ``mode=auto`` routes
  such examples to generation (``runner.roundtrip_ok``).
- matchers other than single-gold ``exact`` (WebQA containment, aliases, normalization,
  GSM8K/MATH extraction) accept outputs other than the gold tokens: use generation there.

Per-example answer log-prob (sum over answer tokens + EOS) and mean NLL come from the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from remix_ds.data.packing import first_fit_decreasing
from remix_ds.eval.items import EvalItem, dummy_item
from remix_ds.kernels.attention import VARLEN_KWARGS, takes_varlen_kwargs


@dataclass
class FusedResult:
    """Teacher-forced scores of one example."""

    index: int
    correct: bool
    """argmax == gold at every answer position and at EOS."""
    answer_logprob: float
    """Sum of log p(gold token) over answer tokens + EOS."""
    answer_nll: float
    """Mean negative log-likelihood per answer token (EOS included)."""
    first_error: int
    """Answer position of the first argmax mismatch (-1 when correct)."""
    greedy_prefix: list[int]
    """The tokens greedy decoding is guaranteed to emit: the gold prefix up to and including the
    first mismatching argmax (all answer tokens + EOS when correct)."""
    min_margin: float
    """Smallest top-1 minus top-2 logit gap over the answer positions (near 0: fragile verdict)."""
    span_correct: list[bool] = field(default_factory=list)
    """Per marked key span (``EvalItem.spans``): teacher-forced up to the span's start, does greedy
    decoding emit exactly the span's tokens? (argmax == gold at each span position; same induction
    as the answer verdict)."""
    span_nll: list[float] = field(default_factory=list)
    """Per marked key span: mean NLL of its tokens."""


@dataclass
class PackedBatch:
    """Rows of packed examples. spans[i] = (row, start, prompt_len, answer_len) of items[i]."""

    input_ids: torch.Tensor  # (R, T) long
    position_ids: torch.Tensor  # (R, T) long
    seq_lens: list[list[int]]  # per row, the lengths of its sequences (pad sequence included)
    items: list[EvalItem]
    spans: list[tuple[int, int, int, int]]


def pack(items: Sequence[EvalItem], max_seq_len: int, max_batch_tokens: int, pad_id: int) -> Iterator[PackedBatch]:
    """First-fit-decreasing packing into rows of at most ``max_seq_len`` tokens (the training
    packer's :func:`remix_ds.data.packing.first_fit_decreasing`), and rows into
    batches of at most ``max_batch_tokens`` (rows x longest row). An example longer than
    ``max_seq_len`` gets a row of its own (eval never drops or truncates).
    """
    bins = first_fit_decreasing([it.length for it in items], max_seq_len, oversize="own_bin")
    rows = [[items[i] for i in b] for b in bins]
    fill = [sum(it.length for it in row) for row in rows]
    # Rows come out longest first, so each batch pads little.
    batch: list[int] = []
    for r in range(len(rows)):
        width = max([fill[b] for b in batch] + [fill[r]])
        if batch and width * (len(batch) + 1) > max_batch_tokens:
            yield _collate([rows[b] for b in batch], pad_id)
            batch = []
        batch.append(r)
    if batch:
        yield _collate([rows[b] for b in batch], pad_id)


def causal_rows(items: Sequence[EvalItem], max_batch_tokens: int, pad_id: int) -> Iterator[PackedBatch]:
    """One example per row, rows sorted by length (longest first) and batched up to
    ``max_batch_tokens`` (rows x longest row). Positions run on through each row's padding, so the
    mask is plain causal (SDPA's ``is_causal`` path): no masked-out pairs between examples are
    computed, and padding after an example cannot change its logits."""
    order = sorted(items, key=lambda it: (-it.length, it.index))
    batch: list[EvalItem] = []
    for it in order:
        if batch and batch[0].length * (len(batch) + 1) > max_batch_tokens:
            yield _collate([[x] for x in batch], pad_id, continue_positions=True)
            batch = []
        batch.append(it)
    if batch:
        yield _collate([[x] for x in batch], pad_id, continue_positions=True)


def _collate(rows: list[list[EvalItem]], pad_id: int, continue_positions: bool = False) -> PackedBatch:
    width = max(sum(it.length for it in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seq_lens, items, spans = [], [], []
    for r, row in enumerate(rows):
        at, lens = 0, []
        for it in row:
            n = it.length
            ids[r, at : at + n] = torch.from_numpy(np.concatenate([it.prompt_ids, it.answer_ids]))
            pos[r, at : at + n] = torch.arange(n)
            items.append(it)
            spans.append((r, at, len(it.prompt_ids), len(it.answer_ids)))
            lens.append(n)
            at += n
        if at < width:
            # Padding is one more sequence per row (its own block of the mask), never attended to;
            # or, with one example per row, the row's positions run on (a plain causal row).
            pos[r, at:] = torch.arange(at, width) if continue_positions else torch.arange(width - at)
            lens.append(width - at)
        seq_lens.append(lens)
    return PackedBatch(ids, pos, seq_lens, items, spans)


def _varlen_kwargs(batch: PackedBatch, device) -> dict:
    """cu_seq_lens over the flattened rows, as flash-attention varlen (and ``remix_varlen``) expect."""
    lens = [n for row in batch.seq_lens for n in row]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device=device)
    return dict(zip(VARLEN_KWARGS, (cu, cu, max(lens), max(lens))))


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def forward_batch(model, batch: PackedBatch) -> list[FusedResult]:
    """Score one packed batch. ``model`` is a plain HF causal LM (already unwrapped/gathered)."""
    device = _model_device(model)
    # keep[r, t]: position t's logits predict an answer token (or the EOS) of some example. Built
    # on the host with the gold tokens and each example's offset into the kept positions, so the
    # only device -> host transfer of the batch is the one stacked result below.
    host_ids = batch.input_ids
    keep = torch.zeros_like(host_ids, dtype=torch.bool)
    targets = torch.zeros_like(host_ids)
    for r, start, p_len, a_len in batch.spans:
        keep[r, start + p_len - 1 : start + p_len + a_len - 1] = True
        targets[r, start + p_len - 1 : start + p_len + a_len - 1] = host_ids[r, start + p_len : start + p_len + a_len]
    flat_start = torch.cumsum(keep.flatten().long(), 0) - 1  # row-major order of `keep`
    keep_index = keep.flatten().nonzero().squeeze(1)  # host tensor: no sync
    gold_host = targets.flatten()[keep_index]
    ids = host_ids.to(device)
    pos = batch.position_ids.to(device)
    kwargs = {}
    if takes_varlen_kwargs(getattr(model.config, "_attn_implementation", None)):
        kwargs = _varlen_kwargs(batch, device)
    try:
        # Only the kept positions go through the LM head: (N_keep, V) instead of (R, T, V).
        logits = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep.to(device),
                       **kwargs).logits
        if logits.dim() != 2:
            raise TypeError("model ignored a boolean logits_to_keep")
    except TypeError:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, keep_index.to(device))
    logits = logits.float()  # (N_keep, V), row-major order of `keep`
    gold = gold_host.to(device)  # (N_keep,)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, gold[:, None])[:, 0]
    argmax = logits.argmax(-1)
    top2 = logits.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    # One transfer per batch (token ids are exact in float64).
    stacked = torch.stack([logprobs.double(), argmax.double(), margin.double()]).cpu()
    lp, am, mg = stacked[0].float(), stacked[1].long(), stacked[2].float()
    gd = gold_host
    fs = flat_start.tolist()
    out = []
    for it, (r, start, p_len, a_len) in zip(batch.items, batch.spans):
        s = fs[r * ids.shape[1] + start + p_len - 1]
        sl = slice(s, s + a_len)
        match = (am[sl] == gd[sl]).numpy()
        first_error = -1 if match.all() else int(np.argmin(match))
        prefix = gd[sl].tolist() if first_error < 0 else gd[sl][:first_error].tolist() + [int(am[sl][first_error])]
        out.append(FusedResult(
            index=it.index,
            correct=first_error < 0,
            answer_logprob=float(lp[sl].sum()),
            answer_nll=float(-lp[sl].mean()),
            first_error=first_error,
            greedy_prefix=prefix,
            min_margin=float(mg[sl].min()),
            span_correct=[bool(match[a:b].all()) for a, b in it.spans],
            span_nll=[float(-lp[sl][a:b].mean()) for a, b in it.spans],
        ))
    return out


def row_length(items: Sequence[EvalItem], max_seq_len: int, max_batch_tokens: int, attn_implementation: str | None) -> int:
    """Packed row length. ``max_seq_len > 0`` is taken as is. ``0`` (auto): with
    flash_attention_2 one row per batch (varlen attention costs nothing across examples); otherwise
    rows of about 4 examples (4x the mean length, at least the longest example); sdpa and eager
    take :func:`causal_rows` instead (see :func:`batches`)."""
    if max_seq_len > 0:
        return max_seq_len
    if attn_implementation == "flash_attention_2":
        return max_batch_tokens
    if not items:
        return 1
    mean = sum(it.length for it in items) / len(items)
    return min(max_batch_tokens, max(max(it.length for it in items), int(4 * mean)))


def batches(items: Sequence[EvalItem], max_seq_len: int, max_batch_tokens: int, pad_id: int,
            attn_implementation: str | None) -> list[PackedBatch]:
    """The forward passes of :func:`score_fused`. With ``max_seq_len`` 0 (auto) and sdpa / eager
    attention (a dense mask: every masked-out pair of a packed row is computed), one example per
    causal row (:func:`causal_rows`); otherwise rows packed by :func:`pack`."""
    if max_seq_len == 0 and attn_implementation in ("sdpa", "eager", None):
        return list(causal_rows(items, max_batch_tokens, pad_id))
    return list(pack(items, row_length(items, max_seq_len, max_batch_tokens, attn_implementation), max_batch_tokens,
                     pad_id))


def score_fused(model, items: Sequence[EvalItem], max_seq_len: int, max_batch_tokens: int, pad_id: int,
                n_steps: int | None = None) -> list[FusedResult]:
    """Fused verdicts and NLLs for ``items`` (any order in, results sorted by ``index``).

    max_seq_len: packed row length (0: auto, see :func:`batches`).
    n_steps: run exactly this many forward passes, repeating the last batch with its results
    discarded (ranks of a partitioned ZeRO-3 model must run the same number of forwards).
    """
    attn = getattr(model.config, "_attn_implementation", None)
    todo = batches(items, max_seq_len, max_batch_tokens, pad_id, attn)
    results: list[FusedResult] = []
    for b in todo:
        results.extend(forward_batch(model, b))
    if n_steps is not None:
        dummy = todo[-1] if todo else _collate([[dummy_item(pad_id)]], pad_id)
        for _ in range(n_steps - len(todo)):
            forward_batch(model, dummy)
    return sorted(results, key=lambda r: r.index)


def num_fused_batches(model, items: Sequence[EvalItem], max_seq_len: int, max_batch_tokens: int) -> int:
    """How many forward passes :func:`score_fused` runs for these items."""
    attn = getattr(model.config, "_attn_implementation", None)
    return len(batches(items, max_seq_len, max_batch_tokens, 0, attn))
