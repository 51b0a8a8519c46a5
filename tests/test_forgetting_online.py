"""The in-run online variant (forgetting/online.py) end to end on the tiny model: uniform replay for
the first steps, the probe and completed row at the configured step, prediction-weighted replay
after it, and a real kill before and after the switch that resumes to the same replay draw and losses.

The forgetting matrix is synthetic (written with MatrixStore): the online arm reads only the
training rows, the base NLLs and the upstream ids, so no `measure` run is needed."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, run_cmd
from remix_ds import configtools
from remix_ds.forgetting.config import load_forgetting_config

pytestmark = pytest.mark.slow  # a killed subprocess and two tiny fine-tunes

WORDS = "apple river music table green light stone happy quick seven water paper dream cloud house bread".split()
STEPS, SWITCH = 12, 3  # measure.steps 10 x (1 + 0.25); switch_fraction 0.25; checkpoints every 2 steps


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_study(root, tokenizer):
    from remix_ds.data.shard_builder import tokenize_to_shards
    from remix_ds.forgetting.measure import upstream_for
    from remix_ds.forgetting.store import MatrixStore

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 40)) + "." for _ in range(40)]
    tokenize_to_shards(texts, root / "shards", tokenizer, tokenizer_name="tiny", progress=False)
    tasks = []
    for name in ("a", "b", "c"):
        write_jsonl(root / f"{name}.jsonl", [{"prompt": f"{name} {w}?", "answer": " ".join(rng.choice(WORDS, 4))}
                                             for w in WORDS])
        tasks.append(f"{{name: {name}, dataset: {root / f'{name}.jsonl'}}}")
    overrides = [
        f"output_dir={root / 'study'}", "upstream.kind=windows", f"upstream.corpus={root / 'shards'}",
        "upstream.num_examples=40", "upstream.window_tokens=24", f"tasks=[{', '.join(tasks)}]",
        "measure.steps=10", "measure.lr=1e-3", "measure.keep_task_runs=true",
        "finetune.train.global_batch_size=4", "finetune.train.micro_batch_size=4",
        "finetune.train.progress_bar=false", "finetune.train.tensorboard=false", "finetune.optim.warmup_ratio=0.0",
        "finetune.data.max_seq_len=128", "predict.revealed=6",
        "replay.arms=[online]", "replay.num_heldout=1", "replay.seeds=[0]", "replay.ratio=0.25",
        "replay.heldout_size=10", "replay.save_every=2", "replay.switch_fraction=0.25", "replay.method=additive",
    ]
    cfg = load_forgetting_config(None, overrides)
    upstream, _ = upstream_for(cfg)
    n = len(upstream)
    store = MatrixStore(root / "study")
    before = 7.0 + rng.random(n)
    store.save_base(upstream.ids, before, upstream.counted_tokens(), rng.normal(size=(n, 4)))
    strength, suscept = np.array([0.5, 1.0, 0.8]), rng.gamma(2.0, 0.2, size=n)
    for i, name in enumerate("abc"):  # rank-1 forgetting, some examples far more forgotten than others
        store.save_row(name, {"synthetic": 1}, before + strength[i] * suscept, {}, rng.normal(size=4))
    store.assemble({t: {"synthetic": 1} for t in "abc"}, {"steps": 10})
    (root / "study" / "config.json").write_text(json.dumps(configtools.to_dict(cfg), indent=2) + "\n")
    return cfg


def run_in_process(cfg):
    from remix_ds.forgetting.replay import replay_experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): the same float reductions
    try:
        return replay_experiment(cfg, log=lambda *a: None)["runs"][0]
    finally:
        torch.set_num_threads(threads)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.mark.parametrize("kill_at", [2, 4], ids=["before-switch", "after-switch"])
def test_online_switch_at_its_step_survives_a_kill_and_resume(tmp_path, tiny_tokenizer, kill_at):
    cfg = make_study(tmp_path, tiny_tokenizer)
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "study", killed)
    work = "replay/work/c-online-seed0"

    ref = run_in_process(cfg)
    state = json.loads((tmp_path / "study" / work / "online_switch.json").read_text())
    assert state["step"] == SWITCH == ref["online_switch_step"]
    assert state["position"] == [0, SWITCH * 4]  # 16 task rows + 5 replay rows per epoch: still epoch 0
    assert len(state["cols"]) == 6 and len(state["draw"]) == 5 == len(set(state["draw"]))
    pool_rows = json.loads((tmp_path / "study" / "replay" / "results.json").read_text())["pool_size"]
    assert pool_rows == 30  # 40 upstream windows - 10 held out for evaluation
    # The probed forgetting is real (current - initial NLL after 3 steps of lr 1e-3), and the
    # weighted draw is the completed row's most forgotten pool examples (softmax(z_hat / 0.1)).
    assert np.abs(state["probe_z"]).max() > 1e-3
    z_hat = np.array(state["z_hat"])
    assert np.mean(z_hat[state["draw"]]) > np.mean(z_hat)
    ref_losses = losses(tmp_path / "study" / work)
    assert sorted(ref_losses) == list(range(1, STEPS + 1))

    # A real SIGKILL right after the checkpoint at `kill_at` (step 2: before the switch, which the
    # resumed run then makes; step 4: after it, which the resumed run must reuse), then a resume.
    proc = run_cmd([sys.executable, str(REPO / "tests" / "scripts" / "kill_after_checkpoint.py"), str(kill_at),
                    "forgetting", "replay-experiment", str(killed), f"output_dir={killed}"], check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (killed / work / f"checkpoint-{kill_at}").is_dir() and not (killed / "replay" / "runs").exists()
    switch = killed / work / "online_switch.json"
    if kill_at < SWITCH:
        assert not switch.exists()
    else:
        assert json.loads(switch.read_text()) == state
    resumed = run_in_process(load_forgetting_config(killed, [f"output_dir={killed}"]))
    assert json.loads(switch.read_text()) == state  # the same probe, completed row and draw
    got = losses(killed / work)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got[STEPS] == pytest.approx(ref_losses[STEPS], rel=1e-6)
    assert [got[s] for s in range(kill_at + 1, STEPS + 1)] == pytest.approx(
        [ref_losses[s] for s in range(kill_at + 1, STEPS + 1)], rel=1e-6)
    assert resumed["forgetting"] == pytest.approx(ref["forgetting"], rel=1e-6)
    assert resumed["online_replayed_true_z"] == pytest.approx(ref["online_replayed_true_z"])
