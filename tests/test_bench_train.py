"""`remix-ds bench train`: the JSON's numbers are consistent with each other."""

import json
import sys

import pytest
import torch

from helpers import REPO, run_cmd
from remix_ds.bench.train import example_lengths


def test_example_lengths_skip_the_pad_tail():
    pad = 0
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]])
    batch = {"input_ids": ids, "cu_seq_lens_q": torch.tensor([0, 2, 5, 8], dtype=torch.int32)}
    assert example_lengths(batch, pad) == [2, 3]


@pytest.mark.slow  # subprocess
def test_bench_train_json(tmp_path):
    out = tmp_path / "bench.json"
    run_cmd([sys.executable, "-m", "remix_ds.cli", "bench", "train", str(REPO / "configs/tiny.yaml"),
             "data.kvr.num_pairs=64", "--steps", "2", "--warmup", "1", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    remix, hf = result["remix_ds"], result["hf_trainer"]
    assert remix["steps_timed"] == 2 and remix["zero_stage"] == 3 and remix["params"] == 1250432
    assert remix["tokens_per_s"] > remix["supervised_tokens_per_s"] > 0
    assert hf["tokens_per_s"] > 0
    assert abs(result["tokens_per_s_ratio_remix_over_hf"] - remix["tokens_per_s"] / hf["tokens_per_s"]) < 1e-9
    # 6N + attention FLOPs per token for the tiny model: TFLOP/s is consistent with tokens/s.
    n_matmul = 1250432 - 2048 * 128
    assert remix["tflops_per_s"] * 1e12 >= 6 * n_matmul * remix["tokens_per_s"] * 0.999
