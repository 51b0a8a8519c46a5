"""MFU arithmetic (remix_ds/bench/flops.py) against a case worked by hand: 6N + 12*L*d*s FLOPs per token."""

from types import SimpleNamespace

import pytest

from remix_ds.bench import flops

# 2 layers, hidden 8, 2 heads of head_dim 4 (d = 8), vocab 10, 1000 parameters in all.
CFG = SimpleNamespace(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, head_dim=4)


def test_train_flops_hand_computed():
    # N = 1000 - 10 * 8 (input embedding table) = 920 matmul parameters.
    assert flops.matmul_params(CFG, 1000) == 920
    # Example of 3 tokens: per token 6 * 920 + 12 * 2 * 8 * 3 = 5520 + 576 = 6096, times 3 = 18288.
    # Example of 5 tokens: per token 5520 + 12 * 2 * 8 * 5 = 5520 + 960 = 6480, times 5 = 32400.
    assert flops.train_flops(CFG, 1000, [3]) == 18288
    assert flops.train_flops(CFG, 1000, [5]) == 32400
    # Packed together they do not attend to each other: the sum, not one sequence of 8.
    assert flops.train_flops(CFG, 1000, [3, 5]) == 50688
    assert flops.train_flops(CFG, 1000, [8]) == 8 * (5520 + 12 * 2 * 8 * 8) == 56448


def test_head_dim_defaults_to_hidden_over_heads():
    cfg = SimpleNamespace(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2)
    assert flops.train_flops(cfg, 1000, [3, 5]) == 50688
    wide = SimpleNamespace(**{**vars(CFG), "head_dim": 8})  # d = heads * head_dim = 16, not hidden
    assert flops.train_flops(wide, 1000, [3]) == 3 * (5520 + 12 * 2 * 16 * 3)


def test_llama3_8b_order_of_magnitude():
    """Llama-3-8B, one 8192-token example: 6N dominates, attention adds ~ 12*32*4096*8192/(6*7.5e9) = 29%."""
    cfg = SimpleNamespace(vocab_size=128_256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          head_dim=128)
    n_total = 8_030_261_248
    n = n_total - 128_256 * 4096
    per_token = flops.train_flops(cfg, n_total, [8192]) / 8192
    assert per_token == pytest.approx(6 * n + 12 * 32 * 4096 * 8192)
    assert per_token / (6 * n) == pytest.approx(1 + 12 * 32 * 4096 * 8192 / (6 * n), rel=1e-12)
    assert 1.28 < per_token / (6 * n) < 1.30


def test_mfu():
    # 494.5 TFLOP/s on one H100 SXM (989 dense bf16 peak) is 50%; over two GPUs 25%.
    assert flops.mfu(494.5e12, "NVIDIA H100 80GB HBM3", 1) == pytest.approx(0.5)
    assert flops.mfu(494.5e12, "NVIDIA H100 80GB HBM3", 2) == pytest.approx(0.25)
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0  # the more specific name wins over "H100"
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.mfu(1e12, "cpu", 1) is None
