"""torch.distributed helpers: start-up under the deepspeed launcher or as a single process."""

from __future__ import annotations

import numbers
import os
import socket
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_OWN_WORLD = "REMIX_DS_WORLD_OF_ONE_PID"


def quiet_dependency_warnings() -> None:
    """Silence the dependency warnings remix-ds cannot act on, narrowly (by message and module).

    DeepSpeed 0.19's ZeRO-3 calls torch.distributed's deprecated collective names
    (`all_gather_into_tensor`, `reduce_scatter_tensor`) on every step, and torch warns from its
    c10d logger in every rank; the calls work, and only a DeepSpeed release can change them.
    """
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated",
                            category=FutureWarning, module=r"torch\.distributed\.")


def init_distributed(backend: str = "auto") -> None:
    """Initialize the process group through DeepSpeed.

    Under the `deepspeed` launcher RANK/WORLD_SIZE/MASTER_* are set; run as a plain process
    (`remix-ds train ...`) we become a world of one on a free local port.
    """
    import deepspeed

    quiet_dependency_warnings()
    if dist.is_available() and dist.is_initialized():
        return
    own_port = "RANK" not in os.environ or _inherited_world_of_one(os.environ, os.getpid())
    if own_port:
        _claim_world_of_one(str(_free_port()))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    clear_stale_build_locks()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    else:
        _skip_shm_comm_op()
    for attempt in range(5):
        try:
            deepspeed.init_distributed(dist_backend=backend)
            return
        except dist.DistNetworkError as e:
            # NOTE: a free port found by _free_port can be taken by another process before the
            # store binds it (many runs starting at once on one machine). In a world of one the
            # port is ours to choose, so pick another; under a launcher the port is not ours.
            if not own_port or "EADDRINUSE" not in str(e) or attempt == 4:
                raise
            _claim_world_of_one(str(_free_port()))


SHM_OP = "deepspeed_shm_comm"  # the op DeepSpeed's CPU accelerator JIT-builds inside init_distributed
STALE_LOCK_S = 600.0  # older than any build of an op takes (the shm op: 47 s on 2 idle cores)


def _skip_shm_comm_op() -> None:
    """Tell DeepSpeed not to build its CPU shared-memory all-reduce op.

    NOTE: DeepSpeed's CPU backend JIT-compiles `deepspeed_shm_comm` in every process's
    init_distributed (47 s on 2 idle cores on a fresh machine, a C++ compiler required) and maps a
    69 MB /dev/shm file per rank that it never unlinks. The op serves only
    `inference_all_reduce` (DeepSpeed's tensor-parallel inference); ZeRO training and our
    collectives go through torch.distributed. Marking it incompatible makes DeepSpeed skip it
    (`build_shm_op` checks `deepspeed.ops.__compatible_ops__`, as in every 0.19 release).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False


def extension_build_root() -> Path:
    """The folder torch's JIT extension loader builds in (TORCH_EXTENSIONS_DIR, else its cache)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def clear_stale_build_locks(max_age_s: float = STALE_LOCK_S, log=print) -> list[Path]:
    """Remove the build locks of torch JIT extensions that are older than any build takes; name
    the younger ones. Returns the removed locks.

    NOTE: torch's JIT loader marks a build in progress with a `lock` file in the op's build folder,
    and every other process that needs the op waits, with no timeout and no word, until that file
    goes. A build that is killed (Ctrl-C, a killed job) leaves it behind, and every later run that
    needs the op then hangs forever (seen here: DeepSpeed's shm op, a lock 131 min old in
    ~/.cache/torch_extensions; ops such as cpu_adam are built inside deepspeed.initialize).
    """
    if os.environ.get("LOCAL_RANK", "0") != "0":  # one process per node looks (the others may wait on it)
        return []
    root = extension_build_root()
    removed = []
    for lock in sorted({*root.glob("*/lock"), *root.glob("*/*/lock")}):  # root/op or root/py311_cpu/op
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= max_age_s:
            lock.unlink(missing_ok=True)
            removed.append(lock)
            log(f"[remix-ds] removed {lock}: torch's build lock of {lock.parent.name}, {age / 60:.0f} min old, "
                "left by a killed build (a run needing that op would have waited on it forever)", flush=True)
        else:
            log(f"[remix-ds] note: {lock} is {age:.0f} s old: a build of {lock.parent.name} runs, or was killed; "
                "a run needing that op waits for it (remove the file if no build runs)", flush=True)
    return removed


def _claim_world_of_one(port: str) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **{_OWN_WORLD: f"{os.getpid()}:{port}"})


def _inherited_world_of_one(environ, pid: int) -> bool:
    """Whether RANK/MASTER_PORT in ``environ`` are a parent world of one's, not a launcher's.

    A world of one sets the launcher's variables itself and marks them "pid:port". A child
    process inherits them and must not take them for a launcher's (the parent holds that port).
    A child that a launcher started (the parent ran `deepspeed ...`) inherits the marker too,
    but the launcher has set MASTER_PORT (and RANK, WORLD_SIZE) anew: those are the launcher's.
    """
    marker = environ.get(_OWN_WORLD)
    if not marker:
        return False
    owner, _, port = marker.partition(":")
    return owner != str(pid) and environ.get("MASTER_PORT") == port and environ.get("WORLD_SIZE") == "1"


def shutdown(engine=None) -> None:
    """Tear down before interpreter exit: destroy the DeepSpeed ``engine`` (its hooks and ZeRO-3
    prefetch state), wait for every rank, destroy the process group.

    NOTE: leaving the process group (and the threads of gloo/DeepSpeed behind it) to interpreter
    exit lets a rank abort with "terminate called without an active exception" (exit 250) after
    the work is done (e.g. rank 1 of `bench eval`): a C++ thread still joinable when its owner
    is destroyed calls std::terminate. Tear down explicitly, in order, on every rank.
    """
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks in one collective (float64, exact for token counts)."""
    return all_reduce_(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


_HOST_GROUP = None


def all_reduce_sum_host(values: list[float]) -> list[float]:
    """Sum a few host scalars over all ranks without touching the accelerator (no device sync).

    Under nccl this goes through a gloo CPU group created on first use (a collective: every rank
    makes its first call at the same point); under gloo through the default group.
    """
    global _HOST_GROUP
    t = torch.tensor(values, dtype=torch.float64)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t.tolist()
    if dist.get_backend() == "gloo":
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    else:
        if _HOST_GROUP is None:
            _HOST_GROUP = dist.new_group(backend="gloo")
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_HOST_GROUP)
    return t.tolist()


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over all ranks (a no-op in a world of one); returns ``t``."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a world of one or without a process group).

    ``all_gather_object`` (not ``gather_object``): works on gloo and nccl alike.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def all_reduce_max(value: int | float) -> int | float:
    """The largest ``value`` over all ranks, of the same Python type (``value`` in a world of one).

    The scalar travels as a long (int) or float64 tensor, on CUDA under nccl and on CPU otherwise.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    is_int = isinstance(value, numbers.Integral)
    t = torch.tensor([value], dtype=torch.long if is_int else torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) if is_int else float(t.item())


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "Socket Timeout", "Timed out waiting", "watchdog")


def peer_lost(e: BaseException) -> str | None:
    """The first line of a collective's error when it says another rank went away (gloo closes the
    socket at once when a peer dies, NCCL aborts its communicator), else None."""
    name = type(e).__name__
    text = str(e).strip()
    if name == "DistBackendError" or (isinstance(e, RuntimeError) and any(m in text for m in _PEER_LOST)):
        line = text.splitlines()[0] if text else name
        line = line.split("] ", 1)[1] if line.startswith("[/") and "] " in line else line
        return line.split(". ", 1)[0]  # gloo appends advice and an emoji
    return None

