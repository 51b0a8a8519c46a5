"""One lm_head + cross-entropy path timed in a fresh process (the fused-loss benchmarks of `bench all`
and `bench all --record`): time is the median over repeats after the first; peak memory is, on
CUDA, `torch.cuda.max_memory_allocated` above the inputs, on CPU the rise of `ru_maxrss` above the
resident size before the loss (see remix_ds/bench/all.py's docstring)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def matmuls_only(hidden, weight, target):
    """The floor of every exact lm_head + CE with gradients: only its three matrix products over the
    supervised rows (logits, grad_hidden, grad_weight), no softmax. Returns a zero "loss" that
    backpropagates nothing, so the timing is the products alone."""
    keep = (target != -100).nonzero().squeeze(1)
    with torch.no_grad():
        h = hidden.index_select(0, keep)
        z = h @ weight.t()  # (M, V): the logits
        z @ weight  # grad_hidden's product
        z.t() @ h  # grad_weight's product
    return (hidden.sum() * 0).float()


def loss_worker(spec: dict) -> dict:
    """Run in a fresh process: one loss path, `repeats` times; time and peak memory (see module docstring)."""
    from remix_ds.kernels.linear_cross_entropy import linear_cross_entropy, reference_linear_cross_entropy

    if spec.get("max_growth_bytes"):  # cap the address space at what it is now + the memory available
        with open("/proc/self/statm") as f:
            vm_size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm_size + spec["max_growth_bytes"],) * 2)
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    n, h, v = spec["tokens"], spec["hidden"], spec["vocab"]
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, generator=g, device=device, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, device=device, dtype=dtype).mul_(h**-0.5).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g, device=device)
    keep = torch.rand(n, generator=g, device=device) < spec["supervised"]
    target[~keep] = -100
    if spec["path"] == "plain_indexed":  # the strong plain baseline: unsupervised rows dropped before the lm_head
        from remix_ds.bench.checkout import baseline

        plain_indexed = baseline("loss").plain_indexed
    else:
        plain_indexed = None
    fn = {"plain": reference_linear_cross_entropy, "plain_indexed": plain_indexed, "matmuls": matmuls_only}.get(
        spec["path"], lambda *a: linear_cross_entropy(*a, backend=spec["backend"]))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes()
    times, loss = [], None
    for _ in range(spec["repeats"]):
        hidden.grad = weight.grad = None
        t0 = time.perf_counter()
        loss = fn(hidden, weight, target)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed = times[1:] or times
    return {"seconds": statistics.median(timed), "seconds_all": times, "peak_bytes_above_inputs": peak - base,
            "loss": loss.item(), "grad_weight_norm": None if weight.grad is None else weight.grad.float().norm().item(),
            "memory_method": "cuda max_memory_allocated" if cuda else "ru_maxrss - RSS before the loss (fresh process)"}


def spawn_loss_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "remix_ds.bench.loss_worker", "--loss-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


if __name__ == "__main__":  # one path in a fresh process, JSON on the last stdout line
    parser = argparse.ArgumentParser()
    parser.add_argument("--loss-worker", required=True)
    print(json.dumps(loss_worker(json.loads(parser.parse_args().loss_worker))))
