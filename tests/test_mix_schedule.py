"""data.mix.schedule (pooled | stratified) and data.mix.redraw (stage | epoch | step)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.data.config import DataConfig, KVRConfig, MixConfig, ReplayConfig
from remix_ds.data.loader import BackgroundLoader, build_train_loader
from remix_ds.data.layout import stratified_plan


@pytest.fixture(scope="module")
def old_facts(tmp_path_factory):
    """An earlier stage's dataset (ids old-0 ...) to replay."""
    path = tmp_path_factory.mktemp("replay") / "old.jsonl"
    path.write_text("".join(json.dumps({"id": f"old-{i}", "prompt": f"fact {i}?", "answer": f"A{i}"}) + "\n"
                            for i in range(30)))
    return str(path)


def mixed_cfg(corpus, fmt="completion", replay=None, **mix) -> DataConfig:
    m = MixConfig(generic_ratio=2.0, generic_corpus=corpus, generic_format=fmt, raw_tokens=64, random_ratio=1.0,
                  raw_words=12, random_vocab_size=300, **mix)
    rep = [ReplayConfig(dataset=replay, ratio=0.25)] if replay else [ReplayConfig(dataset="kvr", ratio=0.25)]
    return DataConfig(kvr=KVRConfig(num_pairs=20), max_seq_len=512, mix=m, replay=rep)


def loaders(cfg, tok, world, micro, tokens=0, step=16, seed=5):
    return [build_train_loader(cfg, tok, micro_batch_size=micro, rank=r, world_size=world, seed=seed,
                               micro_batch_tokens=tokens, step_examples=step) for r in range(world)]


def kind(row_id: str) -> str:
    return row_id.split("-")[0]


# ---------------------------------------------------------------------------------------- pooled


def _digest(l) -> str:
    h = hashlib.sha256()
    for e in range(2):
        for s in range(l.batches_per_epoch):
            for r in l.rows_for(e, s):
                h.update(r.id.encode())
                h.update(r.input_ids.tobytes())
    return h.hexdigest()[:16]


# Recorded with the code before issue 19 (commit 2a00978): two epochs of every rank's rows, ids and tokens.
POOLED_BEFORE = {
    ("completion", 1, 8, 0): ["100c51c3a862a4bc"],
    ("completion", 2, 3, 1024): ["ba3e5ef7165c7e28", "644dee73e24a481d"],
    ("raw", 1, 8, 0): ["a3e4bb3293393939"],
    ("raw", 2, 3, 1024): ["e22ad6b1e5d91712", "47a1a5ea6be3d20f"],
}


@pytest.mark.parametrize("key", sorted(POOLED_BEFORE))
def test_pooled_gives_the_same_batches_as_before(bpe_tok, shard_corpus, key):
    fmt, world, micro, tokens = key
    ls = loaders(mixed_cfg(shard_corpus, fmt), bpe_tok, world, micro, tokens)
    assert [_digest(l) for l in ls] == POOLED_BEFORE[key]


def test_pooled_layout_is_the_epoch_items_order(bpe_tok, shard_corpus):
    stream = loaders(mixed_cfg(shard_corpus), bpe_tok, 1, 8)[0].stream
    assert not stream.lazy
    for epoch in (0, 3):
        ref = [r.id for r in stream.epoch_items(epoch)]
        assert [r.id for r in stream.rows(epoch, 0, len(stream), 16)] == ref


# ------------------------------------------------------------------------------------ stratified


@pytest.mark.parametrize("counts,block", [([20, 40, 20, 5], 16), ([2000, 4000], 32), ([7], 3), ([5, 0, 9, 1, 1], 4),
                                          ([1, 1, 1], 2), ([100, 3], 32)])
def test_stratified_plan_floor_or_ceil_of_each_share(counts, block):
    plan = stratified_plan(counts, block)
    total = sum(counts)
    sizes = [min(block, total - b * block) for b in range(len(plan))]
    assert plan.sum(axis=1).tolist() == sizes and plan.sum(axis=0).tolist() == counts
    share = np.array(sizes)[:, None] * np.array(counts)[None, :]  # exact share * total
    assert ((plan * total >= share - total + 1) & (plan * total <= share + total - 1)).all()
    if counts == [2000, 4000]:  # the example: 10 or 11 facts in every step of 32
        assert set(plan[:-1, 0].tolist()) == {10, 11}


@pytest.mark.parametrize("world,micro,tokens", [(1, 16, 0), (2, 4, 0), (2, 3, 1024), (3, 5, 1024)])
def test_stratified_steps_hold_the_proportions_summed_over_ranks(bpe_tok, shard_corpus, old_facts, world, micro, tokens):
    cfg = mixed_cfg(shard_corpus, replay=old_facts, schedule="stratified")
    ls = loaders(cfg, bpe_tok, world, micro, tokens)
    counts = {"kvr": 20, "generic": 40, "random": 20, "old": 5}
    total = sum(counts.values())
    per_step = 16
    units = 1 if tokens else per_step // (micro * world)  # loader units per optimizer step
    for epoch in range(2):
        seen = Counter()
        for step in range(-(-total // per_step)):
            rows = [r for l in ls for u in range(step * units, (step + 1) * units) for r in l.rows_for(epoch, u)]
            g = min(per_step, total - step * per_step)
            assert len(rows) == g
            got = Counter(kind(r.id) for r in rows)
            for k, c in counts.items():
                exact = g * c / total
                assert got[k] in (int(np.floor(exact)), int(np.ceil(exact))), (epoch, step, k, got)
            seen.update(r.id for r in rows if kind(r.id) == "kvr")
        assert len(seen) == 20 and set(seen.values()) == {1}


@pytest.mark.parametrize("schedule", ["pooled", "stratified"])
@pytest.mark.parametrize("redraw", ["stage", "epoch", "step"])
def test_every_factoid_once_per_epoch(bpe_tok, shard_corpus, old_facts, schedule, redraw):
    ls = loaders(mixed_cfg(shard_corpus, replay=old_facts, schedule=schedule, redraw=redraw), bpe_tok, 2, 3, 1024)
    for epoch in range(2):
        rows = [r for l in ls for s in range(l.batches_per_epoch) for r in l.rows_for(epoch, s)]
        facts = Counter(r.id for r in rows if kind(r.id) == "kvr")
        assert len(rows) == 85 and len(facts) == 20 and set(facts.values()) == {1}
        assert Counter(kind(r.id) for r in rows) == {"kvr": 20, "generic": 40, "random": 20, "old": 5}


def test_epoch_items_of_a_lazy_stream_is_the_training_order(bpe_tok, shard_corpus):
    l = loaders(mixed_cfg(shard_corpus, schedule="stratified", redraw="step"), bpe_tok, 1, 16)[0]
    order = [r.id for s in range(l.batches_per_epoch) for r in l.rows_for(1, s)]
    assert [r.id for r in l.stream.epoch_items(1, 16)] == order and len(order) == 85


def test_stratified_batches_are_the_same_through_the_background_loader(bpe_tok, shard_corpus):
    cfg = mixed_cfg(shard_corpus, schedule="stratified", redraw="step")
    sync, bg = loaders(cfg, bpe_tok, 1, 4, 1024)[0], BackgroundLoader(loaders(cfg, bpe_tok, 1, 4, 1024)[0], depth=2)
    try:
        for _ in range(2 * sync.batches_per_epoch + 1):
            a, b = sync.next_step(1), bg.next_step(1)
            assert a.info == b.info
            assert [x["input_ids"].tolist() for x in a] == [x["input_ids"].tolist() for x in b]
    finally:
        bg.close()


# ---------------------------------------------------------------------------------------- redraw


def _mixed_tokens(l, epoch, prefix):
    return sorted(tuple(r.input_ids.tolist()) for s in range(l.batches_per_epoch) for r in l.rows_for(epoch, s)
                  if r.id.startswith(prefix))


@pytest.mark.parametrize("fmt", ["completion", "raw"])
def test_redraw_epoch_gives_fresh_rows_every_epoch(bpe_tok, shard_corpus, fmt):
    l = loaders(mixed_cfg(shard_corpus, fmt, redraw="epoch"), bpe_tok, 1, 16)[0]
    assert l.stream.generic == [] and l.stream.counts()["generic"] == 40
    for prefix in ("generic", "random"):
        e0, e1 = _mixed_tokens(l, 0, prefix), _mixed_tokens(l, 1, prefix)
        assert len(e0) == len(e1) == (40 if prefix == "generic" else 20)
        assert e0 != e1
        # without replacement: only draws past the end of the first pass over the corpus can repeat
        wrap = max(0, 80 - len(l.stream.generic_source._units)) if prefix == "generic" else 0
        assert len(set(e0) & set(e1)) <= wrap, prefix
    # redraw=stage keeps them fixed
    fixed = loaders(mixed_cfg(shard_corpus, fmt), bpe_tok, 1, 16)[0]
    assert _mixed_tokens(fixed, 0, "generic") == _mixed_tokens(fixed, 1, "generic")


@pytest.mark.parametrize("schedule", ["pooled", "stratified"])
def test_redraw_epoch_and_step_give_the_same_rows(bpe_tok, shard_corpus, schedule):
    a = loaders(mixed_cfg(shard_corpus, schedule=schedule, redraw="epoch"), bpe_tok, 2, 4)
    b = loaders(mixed_cfg(shard_corpus, schedule=schedule, redraw="step"), bpe_tok, 2, 4)
    for epoch in range(3):
        for la, lb in zip(a, b):
            for s in range(la.batches_per_epoch):
                assert [r.input_ids.tolist() for r in la.rows_for(epoch, s)] == \
                       [r.input_ids.tolist() for r in lb.rows_for(epoch, s)]


@pytest.mark.parametrize("redraw", ["epoch", "step"])
@pytest.mark.parametrize("schedule", ["pooled", "stratified"])
def test_kill_and_resume_sees_the_same_fresh_rows(bpe_tok, shard_corpus, redraw, schedule):
    cfg = mixed_cfg(shard_corpus, schedule=schedule, redraw=redraw)
    run = loaders(cfg, bpe_tok, 1, 3, 1024)[0]
    steps = run.batches_per_epoch + 2  # into epoch 1: its rows are drawn fresh
    for _ in range(steps):
        run.next_step(1)
    state = run.state_dict()
    expected = [run.next_step(1) for _ in range(run.batches_per_epoch)]
    resumed = loaders(cfg, bpe_tok, 1, 3, 1024)[0]  # a new process: nothing cached
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for want in expected:
        got = resumed.next_step(1)
        assert got.info == want.info
        assert [b["input_ids"].tolist() for b in got] == [b["input_ids"].tolist() for b in want]


@pytest.mark.parametrize("fmt", ["completion", "raw"])
def test_redraw_never_repeats_a_unit_within_a_pass(bpe_tok, shard_corpus, fmt):
    l = loaders(mixed_cfg(shard_corpus, fmt, redraw="step"), bpe_tok, 1, 16)[0]
    drawer = l.stream.generic_source
    n_units = len(drawer._units)
    per_epoch = drawer.per_epoch
    draws = np.concatenate([drawer.units(e, np.arange(per_epoch)) for e in range(6)])  # 240 draws, > 3 passes
    for p in range(len(draws) // n_units):
        one_pass = draws[p * n_units:(p + 1) * n_units]
        assert sorted(one_pass.tolist()) == sorted(drawer._units.tolist())  # each unit exactly once
    # the rows the loader trains on are those units' text
    if fmt == "raw":
        row = next(r for r in l.rows_for(2, 0) if kind(r.id) == "generic")
        slot = int(row.id.rsplit("-", 1)[1])
        unit = int(drawer.units(2, np.array([slot]))[0])
        assert row.input_ids.tolist() == drawer._reader.window(unit, 64).tolist()
    assert drawer.substituted == 0


def test_bad_schedule_and_redraw_values_are_config_errors():
    with pytest.raises(ConfigError, match="data.mix.schedule"):
        DataConfig(mix=MixConfig(schedule="blocked"))
    with pytest.raises(ConfigError, match="data.mix.redraw"):
        DataConfig(mix=MixConfig(redraw="always"))
    with pytest.raises(ConfigError, match="reference_compat"):
        DataConfig(mix=MixConfig(redraw="epoch"), reference_compat=True)


# ------------------------------------------------------------------------------------------ grid


@pytest.mark.parametrize("spec,schedule,redraw,tag", [
    ("generic@12", None, None, "generic2"),
    ("generic@12+schedule=stratified", "stratified", None, "generic2+stratified"),
    ("random@1+redraw=step+schedule=pooled", "pooled", "step", "random2+pooled+redraw-step"),
    ("redraw=epoch", None, "epoch", "redraw-epoch"),
])
def test_strategy_terms_set_the_mixing_modes(spec, schedule, redraw, tag):
    from remix_ds.experiments.config import parse_strategy

    s = parse_strategy(spec, 2.0)
    assert (s.schedule, s.redraw, s.stage1_tag()) == (schedule, redraw, tag)


@pytest.mark.parametrize("spec", ["schedule=blocked", "redraw=always", "redraw=step+redraw=epoch"])
def test_bad_mixing_terms(spec):
    from remix_ds.experiments.config import parse_strategy

    with pytest.raises(ConfigError):
        parse_strategy(spec)


def test_grid_stages_and_results_table_carry_the_mixing_modes(tmp_path):
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import Grid
    from remix_ds.experiments.report import COLUMNS, main_table

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"prompt": "p", "answer": "x"}\n' * 4)
    cfg = load_experiment(None, [f"output_dir={tmp_path / 'grid'}",
                                 "strategies=[generic@12, generic@12+schedule=stratified+redraw=epoch]",
                                 f"data_a=[{{name: a, dataset: {tmp_path / 'a.jsonl'}}}]",
                                 f"data_b=[{{name: b, dataset: {tmp_path / 'b.jsonl'}}}]"])
    grid = Grid(cfg)
    grid.paths = {"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}
    plain, fresh = grid.cells()
    assert plain.stage1_key != fresh.stage1_key  # stage 1 mixes differently: not shared
    for stage in (grid.stage1_config, grid.stage2_config):
        assert (stage(plain).data.mix.schedule, stage(plain).data.mix.redraw) == ("pooled", "stage")
        assert (stage(fresh).data.mix.schedule, stage(fresh).data.mix.redraw) == ("stratified", "epoch")
    assert grid.mix_columns(fresh) == {"mix_schedule": "stratified", "mix_redraw": "epoch"}
    assert {"mix_schedule", "mix_redraw"} <= set(COLUMNS)
    rows = [{"d_a": "a", "d_b": "b", "strategy": c.strategy.spec, **grid.mix_columns(c)} for c in (plain, fresh)]
    header = main_table(rows).splitlines()[0]
    assert "mix_schedule" in header and "mix_redraw" in header
    assert "mix_schedule" not in main_table(rows[:1]).splitlines()[0]  # shown only when the grid varies it


@pytest.mark.slow
def test_bench_mix_quick_writes_json(tmp_path):
    from remix_ds.bench.mix import run

    out = tmp_path / "mix.json"
    res = run(out, quick=True)
    assert json.loads(out.read_text())["benchmark"] == "mix"
    assert set(res["stage_start"]["generic_completion"]["seconds_median"]) == {"stage", "epoch", "step"}
    assert all(v > 0 for v in res["loader"]["loader_tokens_per_s"].values()) and res["loader"]["train_tokens_per_s"] > 0
