"""Hugging Face model folders out of DeepSpeed checkpoints or a live engine.

Both paths write to a temp folder (`.tmp-NAME-XXXX` beside the target) and rename it into place,
so an interrupted export never leaves a folder that looks finished; a kill leaves the temp folder,
which `clean_stale_exports` removes on the next start. `export_checkpoint` verifies the
checkpoint's sizes and hashes (complete.json) before reading it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from remix_ds.engine import dist
from remix_ds.engine.checkpoint import verify_checkpoint
from remix_ds.errors import CheckpointError


def clean_stale_exports(folder: Path, names: tuple[str, ...] = ("final-", "init-", "eval-export-")) -> list[Path]:
    """Remove `.tmp-NAME*` export folders a killed export left in `folder` (call on one rank, at start)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for child in Path(folder).iterdir():
        if child.is_dir() and any(child.name.startswith(f".tmp-{n}") for n in names):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


DATA_CONFIG_FILE = "remix_ds_data.json"
"""Written beside config.json: the data (and eval.sources) settings of the run the weights come
from, so `remix-ds eval MODEL_DIR --data NAME` scores what the model was trained on."""


def write_data_config(run_config: str | Path | None, folder: Path) -> Path | None:
    """Copy ``data`` and ``eval.sources`` of a run's saved config.json into ``folder/remix_ds_data.json``."""
    if run_config is None or not Path(run_config).is_file():
        return None
    cfg = json.loads(Path(run_config).read_text())
    if not isinstance(cfg, dict) or "data" not in cfg:
        return None
    record = {"data": cfg["data"], "eval": {"sources": (cfg.get("eval") or {}).get("sources", [])},
              "run_config": str(Path(run_config).resolve())}
    path = folder / DATA_CONFIG_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_modes(folder: Path) -> None:
    """Give an export the modes of a checkpoint (0777 / 0666 less the umask: usually 0755 / 0644):
    `mkdtemp` makes its folder 0700 and safetensors writes 0600, which other users (or a job under
    another account) could not read."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)


def _save_folder(config, state_dict: dict, out: Path, tokenizer_src: Path | None, tokenizer=None, dtype=None,
                 run_config: Path | None = None) -> Path:
    """Build the architecture on the meta device, assign the weights, save safetensors + tokenizer."""
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        # The class itself, not AutoModel.from_config: inside a ZeRO-3 run the latter would build
        # a partitioned model again.
        with torch.device("meta"):
            model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
        if dtype is not None:
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{out}: refusing to export non-finite weights ({len(bad)} tensor(s) hold "
                                  f"nan/inf: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        expected = model.state_dict()
        bad = [f"{k} {list(v.shape)} in the weights vs {list(expected[k].shape)} in the model"
               for k, v in state_dict.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        if bad:
            raise CheckpointError(f"{out}: the weights do not match the architecture of config.json: "
                                  f"{len(bad)} mis-shaped ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise CheckpointError(f"{out}: the weights do not match the architecture of config.json: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        if config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is None and tokenizer_src is not None:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_src)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_data_config(run_config, tmp)
        _plain_modes(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Consolidate the ZeRO shards of RUN_DIR/checkpoint-N (fp32 master weights) into an HF folder.

    Runs on CPU in a single process. dtype: cast the weights before saving (default: keep fp32).
    The run's data settings (RUN_DIR/config.json) are recorded in ``OUT/remix_ds_data.json``.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig

    ckpt = Path(ckpt)
    if not (ckpt / "config.json").is_file():
        raise CheckpointError(f"{ckpt} is not a remix-ds checkpoint folder (no config.json)")
    verify_checkpoint(ckpt, rank=None, hashes=True)
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    config = AutoConfig.from_pretrained(ckpt)
    return _save_folder(config, state_dict, Path(out), tokenizer_src=ckpt, dtype=dtype,
                        run_config=ckpt.parent / "config.json")


def export_engine(engine, out: Path, tokenizer, run_config: Path | None = None) -> Path | None:
    """Gather the live engine's weights to rank 0 and save them there (all ranks must call).

    run_config: the run's saved config.json, whose data settings go to ``OUT/remix_ds_data.json``.

    Under ZeRO-3 DeepSpeed gathers one layer at a time into rank 0's CPU memory, so no rank ever
    holds the full model on its accelerator.
    """
    if engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # gathers on rank 0 only
    else:
        state_dict = engine.module.state_dict()
    path = None
    if dist.is_main():
        state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
        path = _save_folder(engine.module.config, state_dict, out, tokenizer_src=None, tokenizer=tokenizer,
                            run_config=run_config)
    dist.barrier()
    return path
