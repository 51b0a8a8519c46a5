"""Running evaluation on a (possibly DeepSpeed-wrapped, possibly ZeRO-3-partitioned) model.

Under ZeRO-3 every forward of every submodule all-gathers that submodule's parameters (a
collective, so all ranks must run the same forwards) and frees them again afterwards. For
generation that is one all-gather per layer *per new token*. ``eval_model`` instead gathers all
parameters once per evaluation (``deepspeed.zero.GatheredParameters``) and takes *every*
DeepSpeed forward hook out of the module tree while it runs; then each rank holds the whole model,
its forwards involve no collectives, and ranks may run different amounts of work. The same hook
handles are put back on exit (also on error), in their original order.

NOTE: why not TRL's ``remove_hooks``/``add_hooks`` (drop ``offload.forward_hooks`` and call
``_register_deepspeed_module`` afterwards)? It leaves the root module's ``_start_of_forward_hook``
in place, which calls the parameter coordinator's ``reset_step()`` on every forward; and the
re-registration invalidates the coordinator's trace (deepspeed 0.19 parameter_offload.py). With
the trace not COMPLETE, ``reset_step()`` runs ``assert_ints_same_as_other_ranks`` (a broadcast),
so ranks with unequal numbers of eval forwards (21 examples on 2 ranks) or a second evaluation
after a training step deadlock: rank 0 in that broadcast, rank 1 in the rows' all_gather_object.
Taking the root hook out too and restoring the very same handles never touches the coordinator.

Memory: the gathered model must fit on one device (an 8B model in bf16 is 16 GB). When it does
not, use ``gather=False``: parameters stay partitioned, hooks stay, and the evaluator runs every
rank through the same number of forward passes instead.

``load_zero3(source, ...)`` is how a command that scores a saved model under the launcher (e.g.
``remix-ds preserve``) gets a partitioned one: ``from_pretrained`` under ``zero.Init`` (an
``HfDeepSpeedConfig`` alive while it loads), wrapped in a DeepSpeed inference engine (no
optimizer), so no rank ever holds the whole model unless the evaluator gathers it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from remix_ds import models

# DeepSpeed's ZeRO-3 hooks are closures in deepspeed.runtime.zero, some wrapped by
# deepspeed.utils.nvtx (whose wrapper does not keep __module__): match the package.
_DS_PACKAGE = "deepspeed."


def unwrap(model) -> tuple[torch.nn.Module, object | None]:
    """(the HF module, the DeepSpeed engine or None)."""
    try:
        from deepspeed import DeepSpeedEngine
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        return model, None
    if isinstance(model, DeepSpeedEngine):
        return model.module, model
    return model, None


def is_zero3(module: torch.nn.Module) -> bool:
    """Parameters partitioned by ZeRO-3 carry a ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _is_ds_hook(fn) -> bool:
    return (getattr(fn, "__module__", None) or "").startswith(_DS_PACKAGE)


@contextlib.contextmanager
def _without_module_hooks(module: torch.nn.Module) -> Iterator[None]:
    """Take DeepSpeed's forward hooks (the root's ``_start_of_forward_hook`` included) out of
    each submodule's hook dicts and put the same handles back afterwards, in their original order
    (nothing is re-registered, so the engine's bookkeeping is untouched)."""
    saved = []
    for m in module.modules():
        for name in ("_forward_pre_hooks", "_forward_hooks"):
            hooks = getattr(m, name)
            ds_keys = {k for k, fn in hooks.items() if _is_ds_hook(fn)}
            if ds_keys:
                saved.append((hooks, dict(hooks), ds_keys))
                for k in ds_keys:
                    del hooks[k]
    try:
        yield
    finally:
        for hooks, original, ds_keys in saved:
            # Put DeepSpeed's hooks back in their original places; keep what others changed meanwhile
            # (hooks added inside the context stay, hooks removed inside it stay removed).
            current = dict(hooks)
            hooks.clear()
            for k, fn in original.items():
                if k in ds_keys:
                    hooks[k] = fn
                elif k in current:
                    hooks[k] = current[k]
            for k, fn in current.items():
                hooks.setdefault(k, fn)


@contextlib.contextmanager
def eval_model(model, gather: bool = True) -> Iterator[torch.nn.Module]:
    """Yield the plain HF module in eval mode, whole on this rank when ZeRO-3 and ``gather``.

    Call on all ranks together (gathering is a collective). Restores train/eval mode on exit.
    """
    module, _ = unwrap(model)
    was_training = module.training
    module.eval()
    try:
        if not (gather and is_zero3(module)):
            yield module
            return
        import deepspeed

        # Engine or bare module: the same hook removal (see the NOTE in the module docstring).
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            with _without_module_hooks(module):
                yield module
    finally:
        module.train(was_training)


def zero3_inference_config(dtype: torch.dtype, overrides: dict | None = None) -> dict:
    """A DeepSpeed config for a ZeRO-3 inference engine (no optimizer) of a ``dtype`` model;
    ``overrides`` (e.g. ``{"zero_optimization": {"stage3_param_persistence_threshold": 0}}``) merge
    into it one level deep."""
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16},
          "zero_optimization": {"stage": 3}, "steps_per_print": 10**9}
    for key, value in (overrides or {}).items():
        ds[key] = {**ds[key], **value} if isinstance(value, dict) and isinstance(ds.get(key), dict) else value
    return ds


def load_zero3(source: str, *, dtype: torch.dtype, attn_implementation: str | None = None,
               ds_overrides: dict | None = None, trust_remote_code: bool = False):
    """The model at ``source`` as a ZeRO-3 inference engine, partitioned as it loads (call on all
    ranks, after ``dist.init_distributed``). Release it with ``engine.destroy()``."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    ds = zero3_inference_config(dtype, ds_overrides)
    keep = HfDeepSpeedConfig(ds)  # noqa: F841  # alive while from_pretrained runs: it builds under zero.Init
    model = models.load_for_inference(source, dtype=dtype, device=None, attn_implementation=attn_implementation,
                                      trust_remote_code=trust_remote_code, outside_zero3=False)
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine
