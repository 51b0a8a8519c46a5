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
RUN_DIR may be shared by all ranks (rank 0 renames) or node-local (the first rank of each node
finishes its node's folder: its ranks' shards, the HF files and the same complete.json).

Integrity: every rank hashes the files it wrote (its ZeRO shards and rank_state_R.pt), rank 0
collects those records (`dist.all_gather_objects`) and hashes the shared files (HF config,
tokenizer, run_config.json); complete.json lists every file with its size and sha256. A resume
(and `remix-ds export`) checks sizes and, unless `train.verify_hashes=false`, hashes before
anything is unpickled, so a damaged file is refused naming the file and the failed check instead
of surfacing as a torch error (or an out-of-memory kill on a corrupt pickle). See docs/reliability.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from remix_ds.cachedir import write_text_atomic
from remix_ds.engine import dist
from remix_ds.errors import CheckpointError

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "complete.json"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


HASH = "sha256"  # hashlib (OpenSSL, SHA-NI): ~0.4 GB/s per core here; docs/reliability.md has the 8B estimate
_CHUNK = 8 << 20


def hash_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 8 MiB chunks (constant memory)."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path, rank: int | None) -> dict:
    """{"size", "sha256", "rank"} of one checkpoint file (rank None: shared, checked by rank 0)."""
    return {"size": path.stat().st_size, HASH: hash_file(path), "rank": rank}


def _rank_files(folder: Path, rank: int) -> list[Path]:
    """The files rank `rank` writes: its DeepSpeed ZeRO shards and its rank_state file."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name.startswith(f"zero_pp_rank_{rank}_") or p.name.startswith(f"bf16_zero_pp_rank_{rank}_")
        or p.name == f"rank_state_{rank}.pt"))


def read_manifest(ckpt: Path) -> dict:
    """complete.json of a checkpoint; CheckpointError naming the file when it is unreadable."""
    path = ckpt / COMPLETE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("world_size"), int):
        raise CheckpointError(f"{path}: not a remix-ds complete.json (needs integer step and world_size)")
    files = meta.get("files")
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get(HASH), str) for r in files.values())):
        raise CheckpointError(f"{path}: 'files' must map each file name to its size and {HASH}, "
                              f"got {type(files).__name__}")
    return meta


def verify_checkpoint(ckpt: Path, rank: int | None = None, hashes: bool = True) -> None:
    """Check the files complete.json records: present, same size, same sha256 (if `hashes`).

    rank None checks every file (export, offline checks); rank R checks the files rank R wrote,
    plus the shared ones on rank 0. Raises CheckpointError naming the file and the failed check.
    Checkpoints from before file records (no "files" key) pass with nothing to check.
    """
    ckpt = Path(ckpt)
    files = read_manifest(ckpt).get("files")
    if files is None:
        return
    for name, rec in sorted(files.items()):
        owner = rec.get("rank")
        if rank is not None and owner != rank and not (owner is None and rank == 0):
            continue
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (recorded in {COMPLETE})")
        size = path.stat().st_size
        if size != rec["size"]:
            raise CheckpointError(f"{path}: size check failed ({size} bytes, {COMPLETE} records {rec['size']})")
        if hashes and hash_file(path) != rec[HASH]:
            raise CheckpointError(f"{path}: {HASH} check failed (same size, different content)")


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


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def previous_size(run_dir: Path) -> tuple[int, Path] | None:
    """(bytes, checkpoint) of the newest complete checkpoint with file records: what the next save needs."""
    for ckpt in list_checkpoints(run_dir)[::-1]:
        try:
            files = read_manifest(ckpt).get("files")
        except CheckpointError:
            continue
        if files:
            return sum(int(r["size"]) for r in files.values()), ckpt
    return None


def _disk_full(e: BaseException) -> bool:
    """ENOSPC, however it surfaces (torch's zip writer raises RuntimeError 'unexpected pos ...')."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(m in text for m in ("No space left", "unexpected pos", "file write failed", "Disk quota exceeded"))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _full_message(run_dir: Path, name: str, known: tuple[int, Path] | None, when: str, written: int = 0) -> str:
    free = shutil.disk_usage(run_dir).free
    need = (f"the save needs about {_gib(known[0])} (the size of {known[1].name})" if known
            else f"the save needs more than the {_gib(written)} it wrote before the disk filled")
    keep = latest_checkpoint(run_dir)
    kept = f"{keep.name} stays latest" if keep is not None else "no earlier checkpoint exists"
    return (f"{run_dir}: disk full {when} {name}: {_gib(free)} free, {need}; {kept}. "
            "Free space there or point train.output_dir at a larger disk, then rerun to resume")


def save_checkpoint(engine, run_dir: Path, step: int, rank_state: dict, hf_files_writer, keep_last: int) -> Path:
    """Save on all ranks; returns the final folder. See the module docstring for the protocol.

    hf_files_writer(folder): rank 0 writes the HF config and tokenizer into the folder.

    Disk space: when an earlier checkpoint of this run records its size, rank 0 checks that the
    filesystem has that much free before anything is written; a write that fails for lack of space
    (on any rank) removes the partial folder. Both raise one CheckpointError on every rank naming
    the folder, the free space and the size needed; `latest` keeps naming the previous checkpoint.
    """
    name = checkpoint_name(step)
    tmp_name = f".tmp-{name}"
    tmp, final = run_dir / tmp_name, run_dir / name
    problem = None
    if dist.local_rank() == 0:  # every node: RUN_DIR may be node-local
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".tmp-checkpoint-*"):  # leftovers of a crashed save
            shutil.rmtree(stale, ignore_errors=True)
    if dist.is_main():
        known = previous_size(run_dir)
        if known is not None and shutil.disk_usage(run_dir).free < known[0]:
            problem = _full_message(run_dir, name, known, "before saving")
    problems = [p for p in dist.all_gather_objects(problem) if p]  # also the barrier before writing
    if problems:
        raise CheckpointError(problems[0])
    try:
        engine.save_checkpoint(str(run_dir), tag=tmp_name, client_state={"step": step}, save_latest=False)
        torch.save({"step": step, "rng": rng_state(), **rank_state}, tmp / f"rank_state_{dist.rank()}.pt")
        # Each rank hashes what it wrote (in parallel, while its files are in the page cache).
        mine = {p.name: file_record(p, dist.rank()) for p in _rank_files(tmp, dist.rank())}
        dist.barrier()  # every rank has written: what each one sees tells a shared RUN_DIR from node-local ones
        sees = sorted(int(p.stem.rsplit("_", 1)[1]) for p in tmp.glob("rank_state_*.pt"))
    except Exception as e:  # noqa: BLE001  # only a full disk is turned into a line; anything else re-raises
        if not _disk_full(e):
            raise
        mine, sees = {"__disk_full__": True}, []
    gathered = dist.all_gather_objects(mine)
    if any("__disk_full__" in part for part in gathered):
        if dist.is_main():  # the free space and what was written, after removing the partial folder
            written = _folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            problem = _full_message(run_dir, name, previous_size(run_dir), "while saving", written)
        raise CheckpointError([p for p in dist.all_gather_objects(problem) if p][0])
    # The lowest rank that sees a folder finishes it: rank 0 alone on a shared RUN_DIR, the first
    # rank of each node when RUN_DIR is node-local (each node's folder then holds its ranks' files
    # and the same complete.json; a resume checks each rank's own files where it runs).
    if sees and sees[0] == dist.rank():
        try:
            _finish_on_main(tmp, final, run_dir, name, step, gathered, hf_files_writer, keep_last)
        except Exception as e:  # noqa: BLE001
            if not _disk_full(e):
                raise
            written = _folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            problem = _full_message(run_dir, name, previous_size(run_dir), "while saving", written)
    problems = [p for p in dist.all_gather_objects(problem) if p]  # the barrier after the save
    if problems:
        raise CheckpointError(problems[0])
    return final


def _finish_on_main(tmp: Path, final: Path, run_dir: Path, name: str, step: int, gathered: list, hf_files_writer,
                    keep_last: int) -> None:
    """Rank 0 (and the first rank of each other node on node-local folders): shared files,
    complete.json, the rename, `latest`, pruning."""
    hf_files_writer(tmp)
    files = {name: rec for part in gathered for name, rec in part.items()}
    for p in sorted(tmp.iterdir()):  # shared files (HF config, tokenizer, any other DeepSpeed file)
        if p.is_file() and p.name not in files and p.name != COMPLETE:
            files[p.name] = file_record(p, None)
    meta = {"step": step, "world_size": dist.world_size(), "hash": HASH, "files": files}
    (tmp / COMPLETE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if final.exists():  # re-saving the same step (e.g. after a resume)
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_text_atomic(run_dir / "latest", name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(engine, ckpt: Path) -> dict:
    """Restore engine (model, optimizer, scheduler) and RNG; return this rank's saved state.

    Call `verify_checkpoint` first (the Trainer does, on every rank): this only loads.
    """
    meta = read_manifest(ckpt)
    if meta["world_size"] != dist.world_size():
        raise CheckpointError(
            f"{ckpt} was written by {meta['world_size']} ranks but this run has {dist.world_size()}; "
            "exact resume needs the same world size (export it and start a new run with model.init_from)"
        )
    load_path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise CheckpointError(f"{ckpt}: DeepSpeed could not load the checkpoint")
    path = ckpt / f"rank_state_{dist.rank()}.pt"
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:  # a damaged file that got past size-only checks
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from None
    set_rng_state(state["rng"])
    return state


def resume_candidates(run_dir: Path) -> list[Path]:
    """Complete checkpoints to resume from, preferred first: the one `latest` names, then newest first."""
    found = list_checkpoints(run_dir)[::-1]
    first = latest_checkpoint(run_dir)
    return ([first] + [p for p in found if p != first]) if first else found


def select_checkpoint(candidates: list[Path], hashes: bool, fallback: bool,
                      refusal: str = "not falling back to an older checkpoint (train.resume_fallback=false)") -> Path | None:
    """The first candidate that passes `verify_checkpoint` on every rank (all ranks must call).

    Each rank checks its own files; the verdicts are gathered so every rank picks the same one.
    A damaged candidate is reported (rank 0, with the file and the failed check) and skipped when
    `fallback`, else raised as CheckpointError. None when there are no candidates.
    """
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt, rank=dist.rank(), hashes=hashes)
            problem = None
        except CheckpointError as e:
            problem = str(e)
        problems = [p for p in dist.all_gather_objects(problem) if p]
        if not problems:
            return ckpt
        if not fallback:
            raise CheckpointError(f"{problems[0]}; {refusal}")
        if dist.is_main():
            print(f"[remix-ds] WARNING: {ckpt} is damaged: {'; '.join(problems)}; trying the next older checkpoint",
                  flush=True)
    if candidates:
        raise CheckpointError(f"{candidates[0].parent}: every checkpoint is damaged ({', '.join(p.name for p in candidates)}); "
                              "set train.resume=none to start over")
    return None
