"""`remix-ds bench all`: the kernel sections at toy sizes (each loss path in its own subprocess), and the CLI."""

import argparse

import pytest

from remix_ds.bench import all as bench_all


@pytest.mark.slow  # subprocess
def test_fused_loss_section_measures_both_paths():
    r = bench_all.bench_fused_loss(tokens=300, vocab=3000, hidden=32, supervised=0.5, repeats=2, timeout=120)
    for path in ("plain", "fused"):
        assert "error" not in r[path], r[path]
        assert r[path]["seconds"] > 0 and len(r[path]["seconds_all"]) == 2
        assert r[path]["peak_bytes_above_inputs"] > 0
    assert r["fused_backend"] == "chunked" and r["dtype"] == "float32"
    assert r["plain"]["loss"] > 0 and r["loss_rel_diff"] < 1e-6 and r["grad_weight_norm_rel_diff"] < 1e-5
    assert r["time_ratio_fused_over_plain"] > 0 and r["peak_memory_ratio_plain_over_fused"] > 0
    assert r["full_logits_fp32_gib"] == pytest.approx(300 * 3000 * 4 / 2**30)


def test_attention_section_matches_reference():
    r = bench_all.bench_attention(rows=2, row_len=160, heads=4, kv_heads=2, head_dim=16, repeats=1)
    assert r["backend"] == "sdpa" and r["dtype"] == "float32"  # CPU: the dispatch is the reference
    assert r["sequences"] >= 4 and r["max_abs_diff"] < 1e-5
    assert r["reference_seconds"] > 0 and r["dispatch_seconds"] > 0


def test_cli_registers_all():
    from remix_ds.bench import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "all", "--skip", "train,data,eval", "--loss-vocab", "128256"])
    assert args.func is bench_all._main and args.loss_vocab == 128256 and args.loss_tokens == 1024
    with pytest.raises(SystemExit, match="unknown section"):
        bench_all.run(parser.parse_args(["bench", "all", "--skip", "nope"]))
