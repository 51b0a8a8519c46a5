"""Weights that do not fit their config are refused in one line, never loaded half-random or truncated."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from remix_ds import cli, models
from remix_ds.config import ModelConfig, TinyModelConfig
from remix_ds.errors import CheckpointError


def _variant(tmp_path, name: str, **change):
    """A copy of the tiny model folder whose config.json says `change` (the weights stay the 4-layer, 128-wide ones)."""
    out = tmp_path / name
    shutil.copytree(models.tiny_model_dir(), out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(change)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("change, says", [
    ({"num_hidden_layers": 6}, "num_hidden_layers=6 in config.json, but the weights hold no layers 4-5 "
                               "(they would be randomly initialised). Tensors: 18 missing (model.layers.4."),
    ({"num_hidden_layers": 2}, "num_hidden_layers=2 in config.json, but the weights hold layers up to 3 "
                               "(layers 2-3 would be dropped). Tensors: 18 unexpected (model.layers.2."),
    ({"hidden_size": 64}, "hidden_size=64 in config.json, but the weights say 128. Tensors: 39 mis-shaped "
                          "(lm_head.weight [2048, 128] in the file vs [2048, 64] in the model"),
])
def test_config_that_disagrees_with_the_weights_is_refused(tmp_path, change, says):
    folder = _variant(tmp_path, "m", **change)
    with pytest.raises(CheckpointError) as e:
        models.load_for_inference(folder, device="cpu")
    assert str(e.value).startswith(f"{folder}: the weights do not fit the model its config.json describes: ")
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_eval_of_a_broken_folder_is_one_line_and_exit_2(tmp_path, capsys):
    """The eval command used to score layers 4-5 randomly initialised and exit 0."""
    folder = _variant(tmp_path, "six", num_hidden_layers=6)
    assert cli.main(["eval", str(folder), "--data", "kvr", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"remix-ds: error: {folder}: the weights do not fit")
    assert not (tmp_path / "ev").exists()


def test_truncated_safetensors_and_missing_tokenizer_name_the_folder(tmp_path):
    folder = _variant(tmp_path, "trunc")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"^{folder}: weights unreadable \(SafetensorError: .*truncated or damaged"):
        models.load_for_inference(folder, device="cpu")
    bare = _variant(tmp_path, "bare")
    for p in bare.glob("tokenizer*"):
        p.unlink()
    with pytest.raises(CheckpointError, match=rf"^{bare}: cannot load a tokenizer from this folder \(tokenizer files: none;"):
        models.load_tokenizer(str(bare))


def test_init_from_with_another_shape_is_refused_naming_the_run_key():
    """`model.init_from=... model.tiny.hidden_size=64` used to train the 128-wide weights and record 64."""
    src = str(models.tiny_model_dir())
    cfg = ModelConfig(init_from=src, tiny=TinyModelConfig(hidden_size=64))
    with pytest.raises(CheckpointError) as e:
        models.load_model(cfg, torch.float32, "sdpa")
    assert str(e.value).startswith(f"model.init_from={src} does not fit the run's model: "
                                   "model.tiny.hidden_size=64 but init_from has hidden_size=128")
    ok = models.load_model(ModelConfig(init_from=src), torch.float32, "sdpa")  # the same shape loads
    assert ok.config.hidden_size == 128 and ok.model.layers[0].mlp.up_proj.weight.shape == (344, 128)


def test_export_refuses_mis_shaped_weights(tmp_path):
    from transformers import AutoConfig

    from remix_ds.engine.export import _save_folder

    config = AutoConfig.from_pretrained(models.tiny_model_dir())
    state = {k: v.clone() for k, v in models.load_for_inference("tiny", device="cpu").state_dict().items()}
    state["model.norm.weight"] = torch.ones(64)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'x'}: the weights do not match the architecture of config.json: 1 mis-shaped "
                                              r"\(model.norm.weight \[64\] in the weights vs \[128\] in the model\)"):
        _save_folder(config, state, tmp_path / "x", tokenizer_src=None)
    del state["model.norm.weight"]
    with pytest.raises(CheckpointError, match=r"missing \['model.norm.weight'\]"):
        _save_folder(config, state, tmp_path / "x", tokenizer_src=None)
    state["model.norm.weight"] = torch.ones(128)
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to export non-finite weights \(1 tensor\(s\) hold nan/inf: "
                                              r"model.layers.1.mlp.up_proj.weight\)"):
        _save_folder(config, state, tmp_path / "x", tokenizer_src=None)
    assert not (tmp_path / "x").exists()


def test_exported_files_get_the_modes_of_a_checkpoint(tmp_path):
    """Exports were 0700 / 0600 (mkdtemp, safetensors) while checkpoints are 0755 / 0644 under umask 022."""
    import os

    from transformers import AutoConfig

    from remix_ds.engine.export import _save_folder

    old = os.umask(0o022)
    try:
        config = AutoConfig.from_pretrained(models.tiny_model_dir())
        state = models.load_for_inference("tiny", device="cpu").state_dict()
        out = _save_folder(config, dict(state), tmp_path / "final", tokenizer_src=models.tiny_model_dir())
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert modes["model.safetensors"] == "0o644" and set(modes.values()) == {"0o644"}, modes
