"""Per-parameter state stored partition-agnostically: safetensors pieces by parameter name.

Layout of a state folder (written by all ranks together, each writing only what it holds)::

    DIR/part-00000-of-00002.safetensors   rank 0's pieces: KIND.NAME -> 1-D fp32 (real elements only)
    DIR/part-00001-of-00002.safetensors
    DIR/meta.json                         written last (its presence = complete):
        {"format": "remix-ds-partitioned/1", "kinds": [...], "world_size": 2,
         "params": {NAME: {"shape": [...], "numel": N}},
         "parts": [{"file": "part-...", "ranges": {NAME: [start, end]}}, ...], "info": {...}}

A piece is the slice ``[start, end)`` of the flattened full parameter. Loading under any world
size reads, for each of this rank's pieces, only the overlapping slices of the stored pieces
(`safe_open(...).get_slice`), so no rank ever holds a full parameter, at save or at load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from remix_ds.engine import dist

FORMAT = "remix-ds-partitioned/1"


def exists(folder: str | Path) -> bool:
    return (Path(folder) / "meta.json").is_file()


def save(folder: str | Path, slots, tensors: dict[str, list[torch.Tensor]], info: dict | None = None) -> Path:
    """Write ``tensors[kind][i]`` (this rank's piece of ``slots[i]``) on every rank; collective.

    Written into ``DIR.tmp`` and renamed by rank 0 once every rank has finished, so a folder with
    meta.json is always complete.
    """
    from safetensors.torch import save_file

    rank, world = dist.rank(), dist.world_size()
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    fname = f"part-{rank:05d}-of-{world:05d}.safetensors"
    out, ranges = {}, {}
    for i, s in enumerate(slots):
        if s.real == 0:
            continue
        ranges[s.name] = [s.start, s.start + s.real]
        for kind, values in tensors.items():
            out[f"{kind}.{s.name}"] = values[i][: s.real].detach().to("cpu", torch.float32).contiguous()
    save_file(out, str(tmp / fname), metadata={"format": FORMAT})
    parts = dist.all_gather_objects({"file": fname, "ranges": ranges})
    if rank == 0:
        meta = {
            "format": FORMAT,
            "kinds": sorted(tensors),
            "world_size": world,
            "params": {s.name: {"shape": list(s.shape), "numel": s.numel} for s in slots},
            "parts": parts,
            "info": info or {},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    dist.barrier()
    return folder


def read_meta(folder: str | Path) -> dict:
    meta = json.loads((Path(folder) / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: not a {FORMAT} state folder (format {meta.get('format')!r})")
    return meta


def load(folder: str | Path, slots, kinds: list[str], device="cpu") -> dict[str, list[torch.Tensor]]:
    """This rank's pieces (length partition_numel, zero padding) of each kind; no collectives."""
    from safetensors import safe_open

    folder = Path(folder)
    meta = read_meta(folder)
    missing = [k for k in kinds if k not in meta["kinds"]]
    if missing:
        raise ValueError(f"{folder}: has kinds {meta['kinds']}, not {missing}")
    for s in slots:
        stored = meta["params"].get(s.name)
        if stored is None or stored["numel"] != s.numel:
            raise ValueError(f"{folder}: parameter {s.name} ({s.numel} elements) is not in the stored state "
                             f"({stored}); was it written for another model?")
    out = {k: [torch.zeros(s.partition_numel, dtype=torch.float32) for s in slots] for k in kinds}
    filled = [0] * len(slots)
    for part in meta["parts"]:
        wanted = []
        for i, s in enumerate(slots):
            r = part["ranges"].get(s.name)
            if r is None or s.real == 0:
                continue
            lo, hi = max(r[0], s.start), min(r[1], s.start + s.real)
            if lo < hi:
                wanted.append((i, s, r[0], lo, hi))
        if not wanted:
            continue
        with safe_open(str(folder / part["file"]), framework="pt") as f:
            for i, s, r0, lo, hi in wanted:
                for k in kinds:
                    out[k][i][lo - s.start: hi - s.start] = f.get_slice(f"{k}.{s.name}")[lo - r0: hi - r0]
                filled[i] += hi - lo
    for i, s in enumerate(slots):
        if filled[i] != s.real:
            raise ValueError(f"{folder}: stored pieces cover {filled[i]} of the {s.real} elements of {s.name} this rank needs")
    return {k: [t.to(device) for t in v] for k, v in out.items()}
