"""Fused exact-match evaluator: one teacher-forced forward pass, no decode loop.

Each example is laid out as ``prompt + gold answer + EOS``; many examples are packed per row with
position ids restarting at 0 (``use_cache=False``, no attention mask, so transformers builds a
block-diagonal causal mask; models whose attention takes varlen kwargs, flash-attention and
``remix_varlen``, also get ``cu_seq_lens_*``: the rule the training loss uses too); with sdpa or
eager attention, one example per causal row instead (:func:`causal_rows`). An example is
*correct* iff the argmax at every answer position and at the final EOS equals the gold token.

Work the pass skips, each exact up to float summation order (checked against the plain
:func:`score_reference`): the first tokens all causal rows of a batch share run once, in one row,
and the rest of each row reads them from a repeated KV cache (:func:`shared_prefix_length`); the
last decoder layer's query / output projections and MLP, and the final norm, run at the answer
positions only (:func:`trim_last_layer`); the rows' last column (a final EOS or padding) is not
run; the LM head runs at the answer positions only (``logits_to_keep``).

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

import contextlib
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
    causal: bool = False
    """One example per row, every row's positions 0..T-1 (:func:`causal_rows`)."""


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
    items = [it for row in rows for it in row]
    lens = np.array([it.length for it in items], dtype=np.int64)
    per_row = np.array([len(row) for row in rows], dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), per_row)
    first = np.concatenate([[0], np.cumsum(per_row)[:-1]])  # each row's first item
    before = np.cumsum(lens) - lens  # tokens before each item, over all rows
    start = before - before[first][row_of]  # offset of each item in its row
    fill = np.add.reduceat(lens, first)
    width, total = int(fill.max()), int(lens.sum())
    within = np.arange(total) - np.repeat(before, lens)  # token offset inside its example
    flat = np.repeat(row_of * width + start, lens) + within
    ids = np.full(len(rows) * width, pad_id, dtype=np.int64)
    ids[flat] = np.concatenate([a for it in items for a in (it.prompt_ids, it.answer_ids)])
    if continue_positions:
        # One example per row, positions running on through the padding: every row is 0..width-1.
        pos = torch.arange(width).expand(len(rows), width)
    else:
        # Padding is one more sequence per row (its own block of the mask), never attended to.
        pad = width - fill
        pad_within = np.arange(int(pad.sum())) - np.repeat(np.cumsum(pad) - pad, pad)
        pos_flat = np.zeros(len(rows) * width, dtype=np.int64)
        pos_flat[flat] = within
        pos_flat[np.repeat(np.arange(len(rows)) * width + fill, pad) + pad_within] = pad_within
        pos = torch.from_numpy(pos_flat).view(len(rows), width)
    seq_lens = [[it.length for it in row] + ([width - int(f)] if f < width else []) for row, f in zip(rows, fill)]
    spans = list(zip(row_of.tolist(), start.tolist(), [len(it.prompt_ids) for it in items],
                     [len(it.answer_ids) for it in items]))
    return PackedBatch(torch.from_numpy(ids).view(len(rows), width), pos, seq_lens, items, spans,
                       causal=continue_positions)


def _varlen_kwargs(batch: PackedBatch, device) -> dict:
    """cu_seq_lens over the flattened rows, as flash-attention varlen (and ``remix_varlen``) expect."""
    lens = [n for row in batch.seq_lens for n in row]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device=device)
    return dict(zip(VARLEN_KWARGS, (cu, cu, max(lens), max(lens))))


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _KeptRowsOnly:
    """Forward hooks that run a position-wise module on the kept positions only: the pre-hook
    hands it ``(1, N_keep, D)``, the post-hook scatters the output back into a zero ``(R, T, D')``
    tensor (what the other positions would have held is read by nothing)."""

    def __init__(self, index: torch.Tensor, rows: int, width: int):
        self.index, self.rows, self.width = index, rows, width
        self.active: set[int] = set()

    def pre(self, module, args):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and tuple(x.shape[:2]) == (self.rows, self.width)):
            return None  # called some other way: run it whole
        self.active.add(id(module))
        return (x.reshape(-1, x.shape[-1]).index_select(0, self.index)[None], *args[1:])

    def post(self, module, args, out):
        if id(module) not in self.active:
            return None
        self.active.discard(id(module))
        full = out.new_zeros(self.rows * self.width, out.shape[-1])
        full.index_copy_(0, self.index, out[0])
        return full.view(self.rows, self.width, -1)


def _partitioned(model) -> bool:
    """ZeRO-3 parameters not gathered (each forward all-gathers them)."""
    params = model.parameters()
    first = next(params, None)
    if first is None or not hasattr(first, "ds_id"):  # ZeRO-3 tags every parameter: not a ZeRO-3 model
        return False
    return any(p.numel() == 0 for p in (first, *params))


def _trimmable(model) -> list[torch.nn.Module]:
    """The last decoder layer's query and output projections and dense MLP, and the final norm,
    where the model has them under the usual Hugging Face names (Llama, Mistral, Qwen2/3,
    Gemma 1-3 and their kin); ``[]`` when the model is laid out otherwise, or partitioned."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return []
    if _partitioned(model):
        return []  # leave DeepSpeed's hooks the only ones
    last, attn = layers[-1], getattr(layers[-1], "self_attn", None)
    found = [getattr(attn, "q_proj", None), getattr(attn, "o_proj", None)]
    found = [m for m in found if isinstance(m, torch.nn.Linear)]
    mlp = getattr(last, "mlp", None)
    if mlp is not None and type(mlp).__name__.endswith("MLP"):  # dense, position-wise (MoE blocks route per batch)
        found.append(mlp)
    norm = getattr(decoder, "norm", None)
    if norm is not None and (type(norm).__name__.endswith("RMSNorm") or isinstance(norm, torch.nn.LayerNorm)):
        found.append(norm)
    return found


@contextlib.contextmanager
def trim_last_layer(model, keep_index: torch.Tensor, rows: int, width: int, enabled: bool = True):
    """While a forward over ``(rows, width)`` tokens runs, compute the last decoder layer's query
    projection, attention output projection and MLP, and the final norm, at the flat positions
    ``keep_index`` only. Exact: every other position of the last layer still gets its keys and
    values (all the attention of kept positions reads), and its own query / output / MLP rows feed
    only its own final hidden state, whose logits are not computed (``logits_to_keep``). Saves
    about 3/4 of one layer's matrix products on the prompt positions; generation's prefill cannot
    skip them. Does nothing for models laid out otherwise (:func:`_trimmable`)."""
    handles = []
    if enabled:
        hooks = _KeptRowsOnly(keep_index, rows, width)
        for m in _trimmable(model):
            handles += [m.register_forward_pre_hook(hooks.pre), m.register_forward_hook(hooks.post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _cache_kwarg(model) -> str:
    """The name under which this transformers version takes and returns a KV cache."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


MIN_SHARED_PREFIX = 2


def shared_prefix_length(model, batch: PackedBatch) -> int:
    """How many first tokens all rows of a causal batch share and no kept position needs as a
    query (at most the shortest prompt minus one), when the model can take them from a KV cache:
    a ``DynamicCache`` that repeats over the batch, and no sliding window shorter than the rows
    (a windowed cache drops keys). 0 when not worth it (fewer than ``MIN_SHARED_PREFIX`` tokens,
    one row) or not possible (packed rows, varlen attention, a partitioned ZeRO-3 model, other
    models)."""
    rows, width = batch.input_ids.shape
    if not batch.causal or rows < 2 or _partitioned(model):
        return 0  # partitioned: every extra forward is a collective, ranks must run the same ones
    window = getattr(model.config, "sliding_window", None)
    if window is not None and window < width:
        return 0
    try:
        from transformers.cache_utils import DynamicCache
    except ImportError:  # pragma: no cover - transformers without caches
        return 0
    if not hasattr(DynamicCache, "batch_repeat_interleave") or not getattr(model, "_supports_cache_class", True):
        return 0
    ids = batch.input_ids
    differs = (ids != ids[:1]).any(0).nonzero()
    common = int(differs[0]) if len(differs) else width
    shared = min(common, min(p for _, _, p, _ in batch.spans) - 1)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _kept(batch: PackedBatch) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions whose logits predict an answer token or the EOS, in row-major order;
    each example's first index into them, plus the total). ``_collate`` lays examples out in
    row-major order, so example i owns kept positions ``seg[i]:seg[i + 1]``."""
    row, start, p_len, a_len = np.asarray(batch.spans, dtype=np.int64).reshape(-1, 4).T
    seg = np.concatenate([[0], np.cumsum(a_len)])
    width = batch.input_ids.shape[1]
    index = np.repeat(row * width + start + p_len - 1, a_len) + np.arange(seg[-1]) - np.repeat(seg[:-1], a_len)
    return index, seg


@torch.no_grad()
def forward_batch(model, batch: PackedBatch, trim: bool = True, share_prefix: bool = True) -> list[FusedResult]:
    """Score one packed batch. ``model`` is a plain HF causal LM (already unwrapped/gathered).

    trim: run the last decoder layer's position-wise work and the final norm at the kept
    positions only (:func:`trim_last_layer`).
    share_prefix: run the first tokens that every causal row shares once
    (:func:`shared_prefix_length`).
    Both leave the results equal to the plain pass's to float precision
    (``tests/test_eval_fused_fast.py``)."""
    device = _model_device(model)
    keep_index, seg = _kept(batch)
    gold = batch.input_ids.view(-1)[torch.from_numpy(keep_index + 1)]  # the token each kept position predicts
    rows, width = batch.input_ids.shape
    kwargs = {}
    if takes_varlen_kwargs(getattr(model.config, "_attn_implementation", None)):
        kwargs = _varlen_kwargs(batch, device)
    # The last column holds each row's final token (an example's EOS, the last one of its
    # sequence) or padding: no kept position is there and none reads its key. Dropped, unless
    # cu_seq_lens describe the full rows.
    cols = width - 1 if not kwargs and width > 1 else width
    row_of, col_of = keep_index // width, keep_index % width
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    keep[torch.from_numpy(row_of), torch.from_numpy(col_of)] = True
    ids = batch.input_ids[:, :cols].to(device)
    # Causal rows share positions 0..width-1: one row of them (the rotary tables are computed once).
    pos = (batch.position_ids[:1] if batch.causal else batch.position_ids)[:, :cols].to(device)
    shared = shared_prefix_length(model, batch) if share_prefix and not kwargs else 0
    logits = None
    if shared:
        # The rows' common first tokens run once (one row, KV cache), the rest of every row reads
        # that cache: the same keys and values each row would have computed for them.
        rest = cols - shared
        keep_rest = torch.from_numpy(row_of * rest + col_of - shared).to(device)
        cache_kw = _cache_kwarg(model)
        try:
            first = model(input_ids=ids[:1, :shared], position_ids=pos[:1, :shared], use_cache=True, logits_to_keep=1)
            cache = getattr(first, cache_kw)
            cache.batch_repeat_interleave(rows)
            with trim_last_layer(model, keep_rest, rows, rest, enabled=trim):
                logits = model(input_ids=ids[:, shared:], position_ids=pos[:1, shared:], use_cache=True,
                               logits_to_keep=keep[:, shared:].to(device), **{cache_kw: cache}).logits
            if logits.dim() != 2:
                logits = None
        except (TypeError, AttributeError):  # no boolean logits_to_keep or no repeatable cache: the plain pass
            logits = None
    if logits is None:
        keep_dev = torch.from_numpy(row_of * cols + col_of).to(device)
        with trim_last_layer(model, keep_dev, rows, cols, enabled=trim):
            try:
                # Only the kept positions go through the LM head: (N_keep, V) instead of (R, T, V).
                logits = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep.to(device),
                               **kwargs).logits
                if logits.dim() != 2:
                    raise TypeError("model ignored a boolean logits_to_keep")
            except TypeError:
                logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits
                logits = logits.reshape(-1, logits.shape[-1]).index_select(0, keep_dev)
    logits = logits.float()  # (N_keep, V), row-major order of the kept positions
    gold_dev = gold.to(device)
    # log p(gold) = logit(gold) - logsumexp; argmax and the runner-up logit by two max passes
    # (torch.max returns the first maximal index, as argmax and greedy decoding do).
    logprobs = logits.gather(1, gold_dev[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    top, argmax = logits.max(dim=-1)
    second = logits.scatter_(1, argmax[:, None], float("-inf")).max(dim=-1).values
    # One transfer per batch (token ids are exact in float64).
    stacked = torch.stack([logprobs.double(), argmax.double(), (top - second).double()]).cpu().numpy()
    lp, am, mg = stacked[0], stacked[1].astype(np.int64), stacked[2]
    gd = gold.numpy()
    match = am == gd
    starts = seg[:-1]
    within = np.arange(len(gd)) - np.repeat(starts, np.diff(seg))
    none = np.iinfo(np.int64).max
    first_error = np.minimum.reduceat(np.where(match, none, within), starts)
    lp_sum = np.add.reduceat(lp, starts)
    min_margin = np.minimum.reduceat(mg, starts)
    gd_l, am_l = gd.tolist(), am.tolist()
    out = []
    for i, it in enumerate(batch.items):
        s, e, fe = int(seg[i]), int(seg[i + 1]), int(first_error[i])
        ok = fe == none
        out.append(FusedResult(
            index=it.index,
            correct=ok,
            answer_logprob=float(lp_sum[i]),
            answer_nll=float(-lp_sum[i] / (e - s)),
            first_error=-1 if ok else fe,
            greedy_prefix=gd_l[s:e] if ok else gd_l[s : s + fe] + [am_l[s + fe]],
            min_margin=float(min_margin[i]),
            span_correct=[bool(match[s + a : s + b].all()) for a, b in it.spans],
            span_nll=[float(-lp[s + a : s + b].mean()) for a, b in it.spans],
        ))
    return out


@torch.no_grad()
def score_reference(model, items: Sequence[EvalItem]) -> list[FusedResult]:
    """The plain definition of :func:`score_fused`'s results: one example per forward, the full
    logits, ``log_softmax`` / ``argmax`` / ``topk`` over the vocabulary, a Python loop (the parity
    reference of the fast path; slow)."""
    device = _model_device(model)
    out = []
    for it in sorted(items, key=lambda it: it.index):
        ids = torch.from_numpy(np.concatenate([it.prompt_ids, it.answer_ids]))[None].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        p, a = len(it.prompt_ids), len(it.answer_ids)
        pred = logits[p - 1 : p + a - 1]  # position t predicts token t + 1
        gold = ids[0, p : p + a]
        lp = torch.log_softmax(pred, dim=-1).gather(-1, gold[:, None])[:, 0].cpu()
        am = pred.argmax(-1).cpu()
        top2 = pred.topk(2, dim=-1).values.cpu()
        match = (am == gold.cpu()).tolist()
        first_error = match.index(False) if False in match else -1
        gold_l = gold.tolist()
        out.append(FusedResult(
            index=it.index, correct=first_error < 0, answer_logprob=float(lp.sum()), answer_nll=float(-lp.mean()),
            first_error=first_error,
            greedy_prefix=gold_l if first_error < 0 else gold_l[:first_error] + [int(am[first_error])],
            min_margin=float((top2[:, 0] - top2[:, 1]).min()),
            span_correct=[all(match[a:b]) for a, b in it.spans], span_nll=[float(-lp[a:b].mean()) for a, b in it.spans],
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
