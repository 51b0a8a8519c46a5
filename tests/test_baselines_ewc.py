"""EWC / KL maths, the partition-agnostic store and grid strategy specs (single process, fast)."""

import math

import pytest
import torch

from remix_ds.baselines import store
from remix_ds.baselines.ewc import ewc_grads, ewc_penalty
from remix_ds.baselines.kl import kl_positions, kl_sum
from remix_ds.baselines.partitions import Slot
from remix_ds.baselines.strategies import strategy_overrides, strategy_regularize
from remix_ds.config import load_config
from remix_ds.configtools import ConfigError


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    anchors = [torch.randn(s, generator=g) for s in shapes]
    fishers = [torch.rand(s, generator=g) for s in shapes]
    deltas = [torch.randn(s, generator=g) for s in shapes]
    return anchors, fishers, deltas


def test_ewc_penalty_zero_at_anchor_and_quadratic_in_the_shift():
    anchors, fishers, deltas = _state()
    lam = 3.5
    assert ewc_penalty(anchors, fishers, anchors, lam).item() == 0.0
    values = [ewc_penalty([a + c * d for a, d in zip(anchors, deltas)], fishers, anchors, lam).item() for c in (0.5, 1, 2, 4)]
    assert values[0] > 0
    for c, v in zip((0.5, 1, 2, 4), values):
        assert v == pytest.approx(values[1] * c * c, rel=1e-6)
    # and it is the formula: lam/2 sum F d^2
    want = 0.5 * lam * sum(float((f * d * d).sum()) for f, d in zip(fishers, deltas))
    assert values[1] == pytest.approx(want, rel=1e-6)


def test_ewc_gradient_equals_autograd_of_the_penalty():
    anchors, fishers, deltas = _state(1)
    lam = 0.7
    thetas = [(a + d).requires_grad_(True) for a, d in zip(anchors, deltas)]
    # autograd through the same expression on differentiable tensors
    total = sum(0.5 * lam * (f * (t - a) ** 2).sum() for t, f, a in zip(thetas, fishers, anchors))
    total.backward()
    closed = ewc_grads(thetas, fishers, anchors, lam)
    for t, g in zip(thetas, closed):
        torch.testing.assert_close(g, t.grad, rtol=1e-6, atol=1e-7)
    assert ewc_penalty(thetas, fishers, anchors, lam).item() == pytest.approx(total.item(), rel=1e-6)


def test_kl_is_zero_for_equal_logits_positive_otherwise_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    frozen = torch.randn(6, 11, generator=g)
    assert kl_sum(frozen.clone(), frozen).item() == pytest.approx(0.0, abs=1e-6)
    current = frozen + 0.5 * torch.randn(6, 11, generator=g)
    p, q = frozen.softmax(-1), current.softmax(-1)
    want = float((p * (p.log() - q.log())).sum())
    assert kl_sum(current, frozen).item() == pytest.approx(want, rel=1e-5) and want > 0
    labels = torch.tensor([[-100, 5, -100, 7], [-100, -100, 3, 4]])
    assert kl_positions(labels).tolist() == [[True, False, True], [False, True, True]]


def _slots_for(world, numel, name="w"):
    pn = math.ceil(numel / world)
    return [Slot(name, None, r * pn, max(0, min(pn, numel - r * pn)), pn, numel, (numel,)) for r in range(world)]


def test_store_loads_pieces_under_another_world_size(tmp_path):
    full = {"a": torch.arange(10.0), "b": torch.arange(7.0) * -1}
    slots = [Slot(n, None, 0, len(t), len(t), len(t), (len(t),)) for n, t in full.items()]
    store.save(tmp_path / "st", slots, {"fisher": list(full.values()), "anchor": [t + 100 for t in full.values()]}, {"x": 1})
    assert store.exists(tmp_path / "st") and store.read_meta(tmp_path / "st")["info"] == {"x": 1}
    for name, t in full.items():
        pieces = _slots_for(3, len(t), name)
        got = [store.load(tmp_path / "st", [s], ["fisher", "anchor"]) for s in pieces]
        joined = torch.cat([g["fisher"][0][: s.real] for g, s in zip(got, pieces)])
        torch.testing.assert_close(joined, t)
        assert all(float(g["fisher"][0][s.real:].abs().sum()) == 0 for g, s in zip(got, pieces))  # padding
        torch.testing.assert_close(torch.cat([g["anchor"][0][: s.real] for g, s in zip(got, pieces)]), t + 100)
    wrong = Slot("a", None, 0, 11, 11, 11, (11,))
    with pytest.raises(ValueError, match="another model"):
        store.load(tmp_path / "st", [wrong], ["fisher"])


def test_strategy_specs_become_validated_overrides():
    o = strategy_overrides({"ewc": {"lambda": 1000}, "kl": {"beta": 0.1, "data": "generic"}}, stage1_dataset="kvr")
    assert o == ['regularize.ewc.lam=1000', 'regularize.ewc.dataset="kvr"', 'regularize.kl.beta=0.1',
                 'regularize.kl.data="generic"']
    cfg = load_config(None, o)
    assert cfg.regularize.ewc.lam == 1000.0 and cfg.regularize.ewc.dataset == "kvr"
    assert cfg.regularize.kl.beta == 0.1 and cfg.regularize.kl.data == "generic" and cfg.regularize.active
    assert strategy_regularize({"kl": {"beta": 0.2}}).kl.beta == 0.2
    with pytest.raises(ConfigError, match="lamda"):
        strategy_overrides({"ewc": {"lamda": 3, "lam": 1}}, "kvr")
    with pytest.raises(ConfigError, match="unknown strategy"):
        strategy_overrides({"si": {}})
    with pytest.raises(ConfigError, match="needs regularize.ewc.dataset"):
        load_config(None, ["regularize.ewc.lam=1"])
    assert not load_config().regularize.active


def test_grid_terms_and_stage2_patch():
    from remix_ds.baselines.strategies import parse_term, strategy_patch

    assert parse_term("ewc=1000") == {"ewc": {"lam": 1000.0}}
    assert parse_term("kl=0.1") == {"kl": {"beta": 0.1}}
    assert parse_term("kl:generic=0.05") == {"kl": {"beta": 0.05, "data": "generic"}}
    assert parse_term("replay=0.1") is None and parse_term("random@1") is None
    with pytest.raises(ConfigError, match="no ':DATA'"):
        parse_term("ewc:x=1")
    patch = strategy_patch({"ewc": {"lam": 5}}, stage1_dataset="/d/a.jsonl", ewc_state_dir="/s1/ewc-fisher")
    assert patch["regularize.ewc.lam"] == 5.0 and patch["regularize.ewc.dataset"] == "/d/a.jsonl"
    assert patch["regularize.ewc.state_dir"] == "/s1/ewc-fisher" and not any(k.startswith("regularize.kl") for k in patch)
    # the patch applies to a base run config's dict like the grid's stage derivation does
    from remix_ds import configtools
    from remix_ds.config import RunConfig

    d = configtools.to_dict(RunConfig())
    for dotted, value in {**patch, **strategy_patch({"kl": {"beta": 0.2}})}.items():
        node = d
        *head, last = dotted.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    cfg = configtools.from_dict(RunConfig, d)
    assert cfg.regularize.ewc.lam == 5.0 and cfg.regularize.kl.beta == 0.2 and cfg.regularize.kl.data == "batch"
