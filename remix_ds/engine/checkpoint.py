"""Checkpoints for exact resume: DeepSpeed state + per-rank RNG and data position.

Layout (RUN_DIR is train.output_dir):

    RUN_DIR/checkpoint-N/            DeepSpeed model/optimizer/scheduler files (ZeRO shards),
                                     rank_state_R.pt (step, RNG, loader state) for every rank,
                                     HF config.json + tokenizer (so `remix-ds export` needs nothing else),
                                     complete.json (written last inside the folder)
    RUN_DIR/latest                   text file naming the newest complete checkpoint

A save goes to RUN_DIR/.tmp-checkpoint-N and is renamed when every rank has finished writing;
`latest` is replaced atomically after that. A crash at any point leaves the previous checkpoint
and `latest` untouched (the partial temp folder is ignored and removed by the next save).
NOTE: the rename assumes RUN_DIR is on a filesystem all ranks share (the usual cluster setup).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from remix_ds.engine import dist

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "complete.json"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        m = _CKPT_RE.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one."""
    pointer = run_dir / "latest"
    if pointer.is_file():
        candidate = run_dir / pointer.read_text().strip()
        if candidate.is_dir() and is_complete(candidate):
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, run_dir: Path, step: int, rank_state: dict, hf_files_writer, keep_last: int) -> Path:
    """Save on all ranks; returns the final folder. See the module docstring for the protocol.

    hf_files_writer(folder): rank 0 writes the HF config and tokenizer into the folder.
    """
    name = checkpoint_name(step)
    tmp_name = f".tmp-{name}"
    tmp, final = run_dir / tmp_name, run_dir / name
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".tmp-checkpoint-*"):  # leftovers of a crashed save
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(run_dir), tag=tmp_name, client_state={"step": step}, save_latest=False)
    torch.save({"step": step, "rng": rng_state(), **rank_state}, tmp / f"rank_state_{dist.rank()}.pt")
    dist.barrier()
    if dist.is_main():
        hf_files_writer(tmp)
        (tmp / COMPLETE).write_text(json.dumps({"step": step, "world_size": dist.world_size()}) + "\n")
        if final.exists():  # re-saving the same step (e.g. after a resume)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_atomic(run_dir / "latest", name + "\n")
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(engine, ckpt: Path) -> dict:
    """Restore engine (model, optimizer, scheduler) and RNG; return this rank's saved state."""
    meta = json.loads((ckpt / COMPLETE).read_text())
    if meta["world_size"] != dist.world_size():
        raise RuntimeError(
            f"{ckpt} was written by {meta['world_size']} ranks but this run has {dist.world_size()}; "
            "exact resume needs the same world size (export it and start a new run with model.init_from)"
        )
    load_path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {ckpt}")
    state = torch.load(ckpt / f"rank_state_{dist.rank()}.pt", weights_only=False)
    set_rng_state(state["rng"])
    return state
