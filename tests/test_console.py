"""What a user's console shows: dependency warnings the package cannot act on are filtered where they
arise, no warning line repeats, and the package's own lines stay."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from helpers import REPO, free_port, run_cmd

_PROGRESS = re.compile(r"(it/s|s/it)[\],]")
_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\s*")


def console_lines(text: str) -> list[str]:
    """Lines as a terminal shows them: carriage returns split, progress bars and timestamps dropped."""
    lines = []
    for line in re.split(r"[\r\n]+", text):
        line = _STAMP.sub("", line.strip())
        if line and not _PROGRESS.search(line):
            lines.append(line)
    return lines


def test_the_torch_distributed_deprecations_deepspeed_causes_are_filtered_and_nothing_else():
    from remix_ds.engine.dist import quiet_dependency_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_dependency_warnings()
        # as torch's c10d logger raises it (module torch.distributed.c10d_logger) ...
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                               "`torch.distributed.all_gather_single` instead.", FutureWarning,
                               "c10d_logger.py", 83, module="torch.distributed.c10d_logger")
        # ... but the same words from another module, or another warning of torch's, still show
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning,
                               "mine.py", 1, module="remix_ds.engine.mine")
        warnings.warn_explicit("`torch.cuda.amp` is deprecated.", FutureWarning, "amp.py", 1,
                               module="torch.distributed.c10d_logger")
    assert [str(w.message) for w in seen] == ["`torch.distributed.all_gather_into_tensor` is deprecated.",
                                              "`torch.cuda.amp` is deprecated."]


@pytest.mark.slow
def test_two_rank_launcher_console_has_no_repeated_line(tmp_path):
    """launch/cpu.sh (the README's CPU launcher: `deepspeed` with 2 gloo ranks) prints each line once."""
    bin_dir = str(Path(sys.executable).parent)
    out = run_cmd([str(REPO / "launch" / "cpu.sh"), "configs/tiny.yaml", "train.max_steps=3",
                   f"train.output_dir={tmp_path / 'run'}"], timeout=400,
                  env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "MASTER_PORT": str(free_port()), "NUM_RANKS": "2"})
    lines = [re.sub(r"^\[rank\d\]:", "", l) for l in console_lines(out.stdout + out.stderr)]
    assert not [l for l in lines if "is deprecated" in l], "a torch.distributed deprecation reached the console"
    repeated = {l: n for l, n in Counter(lines).items() if n > 1}
    assert repeated == {}
    assert sum(l.startswith("[remix-ds] world size 2") for l in lines) == 1  # the package's own lines stay


@pytest.mark.slow
def test_tiny_grid_console_repeats_no_warning(tmp_path):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'grid'}
run:
  model: {{name_or_path: tiny}}
  train: {{global_batch_size: 8, micro_batch_size: 8, save_every: 100, keep_last: 1, tensorboard: false}}
  data: {{max_seq_len: 256}}
  eval: {{mode: fused}}
data_a: [{{name: kvr_a, dataset: kvr, num_examples: 8}}]
data_b: [{{name: kvr_b, dataset: kvr, num_examples: 8}}]
strategies: [none, random@1]
stage1: {{max_epochs: 2, em_threshold: 1.0}}
stage2: {{epochs: 1}}
""")
    remix = str(Path(sys.executable).with_name("remix-ds"))
    out = run_cmd([remix, "experiment", str(cfg)], timeout=600)
    lines = console_lines(out.stdout + out.stderr)
    assert any(l.startswith("| kvr_a | kvr_b | none |") for l in lines)  # the table is there
    warning_lines = [l for l in lines if re.search(r"warn", l, re.I)]
    assert len(warning_lines) == len(set(warning_lines)), Counter(warning_lines).most_common(3)
    assert not [l for l in lines if "is deprecated" in l]
    # a line seen twice is one of the package's own per-stage status lines, nothing else
    repeated = [l for l, n in Counter(lines).items() if n > 1]
    assert all(l.startswith("[remix-ds] ") for l in repeated), repeated
