"""Grid strategies for the EWC and KL baselines: a spec dict -> dotted run-config overrides.

    strategy_overrides({"ewc": {"lambda": 1000, "dataset": "kvr"}})
        -> ['regularize.ewc.lam=1000', 'regularize.ewc.dataset="kvr"']
    strategy_overrides({"kl": {"beta": 0.1, "data": "generic"}})
        -> ['regularize.kl.beta=0.1', 'regularize.kl.data="generic"']

The overrides go on the stage-2 run only (stage 1 trains plainly). Keys are the fields of
`regularize.ewc` / `regularize.kl` (remix_ds/baselines/config.py); `lambda` is accepted for `lam`.
An unknown key raises ConfigError naming it. Both strategies may be combined in one spec.

For `+`-joined grid strategy strings (remix_ds/experiments/config.py), `parse_term` reads the
terms `ewc=LAMBDA`, `kl=BETA` and `kl:DATA=BETA` (DATA: batch, generic or a dataset), and
`strategy_patch` gives the dotted-key patch a stage-2 config derivation applies.
"""

from __future__ import annotations

import dataclasses
import json
import re

from remix_ds.baselines.config import EWCConfig, KLConfig, RegularizeConfig
from remix_ds.configtools import ConfigError, apply_overrides, from_dict

STRATEGIES = {"ewc": EWCConfig, "kl": KLConfig}
ALIASES = {"ewc": {"lambda": "lam"}, "kl": {}}
STRENGTH = {"ewc": "lam", "kl": "beta"}


def _value(v) -> str:
    # apply_overrides parses values as YAML; JSON is YAML, and quoting keeps strings such as `no` strings
    return json.dumps(v)


def strategy_overrides(spec: dict, stage1_dataset: str | None = None) -> list[str]:
    """Overrides for `spec` (``{"ewc": {...}}``, ``{"kl": {...}}`` or both).

    stage1_dataset: D_A of the experiment, used as `regularize.ewc.dataset` when the spec has none.
    Validated against the config dataclasses before returning.
    """
    unknown = sorted(set(spec) - set(STRATEGIES))
    if unknown:
        raise ConfigError(f"unknown strategy {', '.join(unknown)}; known: {', '.join(STRATEGIES)}")
    out, checked = [], {}
    for name, params in spec.items():
        params = dict(params or {})
        params = {ALIASES[name].get(k, k): v for k, v in params.items()}
        if name == "ewc" and not params.get("dataset") and stage1_dataset:
            params["dataset"] = stage1_dataset
        if STRENGTH[name] not in params:
            raise ConfigError(f"strategy {name}: set {STRENGTH[name]!r} (the regularization strength)")
        checked[name] = params
        out += [f"regularize.{name}.{k}={_value(v)}" for k, v in params.items()]
    from_dict(RegularizeConfig, checked, prefix="regularize")  # types, names, validation
    return out


def strategy_regularize(spec: dict, stage1_dataset: str | None = None) -> RegularizeConfig:
    """The `regularize` section a spec stands for (what the overrides produce)."""
    data = apply_overrides({}, [o[len("regularize."):] for o in strategy_overrides(spec, stage1_dataset)])
    return from_dict(RegularizeConfig, data, prefix="regularize")


def describe(cfg: RegularizeConfig) -> dict:
    """Short label of the active baselines, for grid cell names and reports."""
    out = {}
    if cfg.ewc.lam > 0:
        out["ewc"] = dataclasses.asdict(cfg.ewc)
    if cfg.kl.beta > 0:
        out["kl"] = dataclasses.asdict(cfg.kl)
    return out


_TERM = re.compile(r"^(ewc|kl)(?::([^=]+))?=([0-9.eE+-]+)$")


def parse_term(term: str) -> dict | None:
    """`ewc=1000` -> {"ewc": {"lam": 1000.0}}; `kl=0.1` / `kl:generic=0.1` -> {"kl": {"beta": 0.1[, "data": "generic"]}};
    None for any other term (so a grid parser can try its own grammar first or after)."""
    m = _TERM.match(term.strip())
    if not m:
        return None
    name, data = m.group(1), m.group(2)
    try:
        value = float(m.group(3))
    except ValueError:
        raise ConfigError(f"strategy term {term!r}: {m.group(3)!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise ConfigError(f"strategy term {term!r}: the {STRENGTH[name]} must be a finite number >= 0, got {value}")
    if name == "ewc":
        if data:
            raise ConfigError(f"strategy term {term!r}: ewc takes no ':DATA' (D_A is the stage-1 dataset)")
        return {"ewc": {"lam": value}}
    return {"kl": {"beta": value, **({"data": data} if data else {})}}


def strategy_patch(spec: dict, stage1_dataset: str | None = None, ewc_state_dir: str | None = None) -> dict:
    """Dotted-key patch (`{"regularize.ewc.lam": 1000.0, ...}`) for a stage-2 config derived from a base run config.

    ewc_state_dir: share one Fisher/anchor folder between cells with the same stage-1 model, D_A
    and Fisher settings (e.g. STAGE1_RUN/ewc-fisher): the first cell computes it, the others load it.
    """
    cfg = strategy_regularize(spec, stage1_dataset)
    patch = {}
    for name in spec:
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            patch[f"regularize.{name}.{f.name}"] = getattr(section, f.name)
    if "ewc" in spec and ewc_state_dir and not spec["ewc"].get("state_dir"):
        patch["regularize.ewc.state_dir"] = ewc_state_dir
    return patch
