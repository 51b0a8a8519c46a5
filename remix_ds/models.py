"""Model and tokenizer loading: any Hugging Face causal LM, plus the built-in `tiny` spec.

`tiny` is a random-init small Llama with a sentencepiece tokenizer trained here on generated
text. It is built once, saved as an ordinary Hugging Face folder in the cache
(``$REMIX_DS_CACHE``, default ``~/.cache/remix_ds``) and from then on loaded through the same
``from_pretrained`` path as a hub model, so tests exercise the real loading code.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from remix_ds.cachedir import build_once, cache_root
from remix_ds.config import ModelConfig, TinyModelConfig
from remix_ds.errors import CheckpointError, RemixError
from remix_ds.kernels import attention as attention_kernels

TINY = "tiny"
# Bump when the way the tiny model or tokenizer is built changes, so caches are rebuilt.
_TINY_VERSION = 1


def _tiny_key(cfg: TinyModelConfig) -> str:
    blob = json.dumps({"v": _TINY_VERSION, **asdict(cfg)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _tokenizer_training_text(seed: int, n_sentences: int = 20000) -> list[str]:
    """Generated text: English word salad from wordfreq, key/value strings and chat markers.

    Covers what the demo and the tests feed the tiny model: prose-like text, 8-character
    uppercase alphanumeric keys and values, digits and the plain-text chat template.
    """
    import wordfreq

    rng = np.random.default_rng(seed)
    words = np.array(wordfreq.top_n_list("en", 5000))
    lengths = rng.integers(5, 31, size=n_sentences)
    picks = rng.integers(0, len(words), size=int(lengths.sum()))
    lines, start = [], 0
    for n in lengths:
        lines.append(" ".join(words[picks[start : start + n]]))
        start += n
    alnum = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    codes = alnum[rng.integers(0, len(alnum), size=(n_sentences // 4, 16))]
    for row in codes:
        key, value = "".join(row[:8]), "".join(row[8:])
        lines.append(f"<|user|>\nThe value of key {key} is?\n<|assistant|>\n{value}")
    return lines


def _build_tiny(cfg: TinyModelConfig, out: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_training_text(cfg.seed)),
        model_writer=model_bytes,
        vocab_size=cfg.vocab_size,
        model_type="bpe",
        byte_fallback=True,  # any text tokenizes, nothing maps to <unk>
        character_coverage=1.0,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    sp_dir = out / "_sp"
    sp_dir.mkdir()
    (sp_dir / "tokenizer.model").write_bytes(model_bytes.getvalue())
    (sp_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": cfg.max_position_embeddings,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(sp_dir)  # converts the sentencepiece model
    tokenizer.save_pretrained(out)
    shutil.copy(sp_dir / "tokenizer.model", out / "tokenizer.model")
    shutil.rmtree(sp_dir)

    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)


class SlidingWindowError(RemixError, attention_kernels.SlidingWindowError):
    """A packed sequence is longer than the model's sliding window on an attention backend without one."""


def register_attention() -> str:
    """Make `remix_varlen` selectable; its sliding-window check raises :class:`SlidingWindowError`."""
    return attention_kernels.register(window_error=SlidingWindowError)


def tiny_model_dir(cfg: TinyModelConfig | None = None) -> Path:
    """Hugging Face folder of the built-in tiny model (built on first use, then cached)."""
    cfg = cfg or TinyModelConfig()
    final = cache_root() / "models" / f"tiny-{_tiny_key(cfg)}"
    return build_once(final, lambda tmp: _build_tiny(cfg, tmp), marker="config.json")


def resolve_path(name_or_path: str, tiny: TinyModelConfig | None = None) -> str:
    """`tiny` -> the cached tiny folder; anything else is passed to `from_pretrained` as is."""
    return str(tiny_model_dir(tiny)) if name_or_path == TINY else name_or_path


def load_tokenizer(name_or_path: str = TINY, tiny: TinyModelConfig | None = None, trust_remote_code: bool = False):
    """A Hugging Face tokenizer with a pad token (EOS when the model defines none)."""
    from transformers import AutoTokenizer

    source = resolve_path(name_or_path, tiny)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  # a local folder: say which files are missing, in one line
        if not Path(source).is_dir():
            raise
        found = sorted(p.name for p in Path(source).glob("tokenizer*")) or "none"
        raise CheckpointError(f"{source}: cannot load a tokenizer from this folder (tokenizer files: {found}; "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); copy the tokenizer files "
                              "there or name one with model.tokenizer") from e
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no EOS token; remix-ds trains answers to end with EOS")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def flash_attn_available() -> bool:
    """CUDA is present and the flash-attn package imports."""
    return torch.cuda.is_available() and attention_kernels._flash_attn_installed()


def choose_attn_implementation(requested: str = "auto") -> str:
    """`auto`: flash_attention_2 when flash-attn imports and CUDA is present, else sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and not flash_attn_available():
            raise ValueError("model.attn_implementation=flash_attention_2 needs CUDA and the flash-attn package "
                             "(pip install 'remix-ds[gpu]')")
        return requested
    return "flash_attention_2" if flash_attn_available() else "sdpa"


def resolve_dtype(requested: str = "auto") -> torch.dtype:
    """`auto` is bf16 on GPU and fp32 on CPU."""
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]


def model_source(cfg: ModelConfig) -> str:
    """Where the weights come from: `init_from` when it is an exported HF folder, else the model.

    A `RUN_DIR/checkpoint-N` folder holds the architecture's config.json too, but its weights are
    ZeRO shards; the engine loads those after building the model (see engine/checkpoint.py).
    """
    if cfg.init_from and not is_deepspeed_checkpoint(cfg.init_from):
        return cfg.init_from
    return resolve_path(cfg.name_or_path, cfg.tiny)


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.glob("*model_states.pt"))


def load_model(cfg: ModelConfig, dtype: torch.dtype, attn_implementation: str, from_config_only: bool = False):
    """Load a causal LM. Under ZeRO-3 the caller keeps an `HfDeepSpeedConfig` alive first, so
    `from_pretrained` builds the model under `deepspeed.zero.Init` and no rank holds it whole.

    from_config_only: build the architecture with random weights (weights loaded afterwards
    from a DeepSpeed checkpoint).

    With `init_from`, the architecture the run's config names (`model.tiny.*`, or
    `model.name_or_path`'s config.json) must be the one `init_from` holds: a shape key that
    differs is refused, naming the config field (the weights would otherwise be loaded with
    init_from's shapes while the run records others).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    register_attention()  # makes `remix_varlen` selectable
    source = model_source(cfg)
    if cfg.init_from and is_deepspeed_checkpoint(cfg.init_from):
        from_config_only = True
        source = cfg.init_from  # the checkpoint folder carries config.json
    if cfg.init_from:
        check_init_architecture(cfg, source)
    if from_config_only:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        return AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=cfg.trust_remote_code
        )
    return load_pretrained(source, dtype=dtype, attn_implementation=attn_implementation,
                           trust_remote_code=cfg.trust_remote_code)


ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                     "tie_word_embeddings")
"""config.json keys that decide the weights' shapes (or how they are used): must agree between a
run's model and the `init_from` it starts from."""


def check_init_architecture(cfg: ModelConfig, init_source: str | Path) -> None:
    """Refuse an `init_from` whose config.json disagrees with the run's model in an ARCHITECTURE_KEYS key."""
    from transformers import AutoConfig

    init_cfg_path = Path(init_source) / "config.json"
    if not init_cfg_path.is_file():
        return  # a hub id: from_pretrained resolves it; the weights check still applies
    try:
        held = json.loads(init_cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{init_cfg_path}: unreadable ({e})") from None
    if cfg.name_or_path == TINY:
        wanted = {k: v for k, v in asdict(cfg.tiny).items() if k in ARCHITECTURE_KEYS}
        wanted["tie_word_embeddings"] = False
        field_of = {k: f"model.tiny.{k}" for k in wanted}
    else:
        try:
            wanted = AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code).to_dict()
        except (OSError, ValueError) as e:
            print(f"[remix-ds] WARNING: cannot read model.name_or_path={cfg.name_or_path}'s config ({e}); "
                  f"model.init_from={cfg.init_from} is not checked against it", flush=True)
            return
        field_of = {k: f"model.name_or_path ({cfg.name_or_path}) {k}" for k in wanted}
    diffs = [(k, wanted[k], held[k]) for k in ARCHITECTURE_KEYS
             if k in wanted and k in held and wanted[k] is not None and held[k] is not None and wanted[k] != held[k]]
    if diffs:
        listed = ", ".join(f"{field_of[k]}={a!r} but init_from has {k}={b!r}" for k, a, b in diffs)
        raise CheckpointError(f"model.init_from={cfg.init_from} does not fit the run's model: {listed} "
                              f"({init_cfg_path}); start from a matching checkpoint or change the model keys back")


def _layer_range(keys) -> list[int]:
    import re

    return sorted({int(m.group(1)) for k in keys for m in [re.search(r"\.layers\.(\d+)\.", k)] if m})


def _weights_verdict(source: str, config, info: dict) -> str | None:
    """One line on what does not fit between config.json and the weights, or None when all fits."""
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda t: t[0])
    if not (missing or unexpected or mismatched):
        return None
    values = {k: v for k, v in config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
    fields: list[str] = []
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and (missing or unexpected):
        extra, absent = _layer_range(unexpected), _layer_range(missing)
        if extra and min(extra) >= layers:
            fields.append(f"num_hidden_layers={layers} in config.json, but the weights hold layers up to {max(extra)}"
                          f" (layers {min(extra)}-{max(extra)} would be dropped)")
        elif absent and max(absent) == layers - 1:
            fields.append(f"num_hidden_layers={layers} in config.json, but the weights hold no layers "
                          f"{min(absent)}-{max(absent)} (they would be randomly initialised)")
    for key, file_shape, model_shape in mismatched:
        for fdim, mdim in zip(tuple(file_shape), tuple(model_shape)):
            if fdim != mdim:
                for name, v in values.items():
                    line = f"{name}={v} in config.json, but the weights say {fdim}"
                    if v == mdim and line not in fields and not name.endswith("_id"):
                        fields.append(line)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if mismatched:
        shown = ", ".join(f"{k} {list(f)} in the file vs {list(m)} in the model" for k, f, m in mismatched[:3])
        parts.append(f"{len(mismatched)} mis-shaped ({shown}{', ...' if len(mismatched) > 3 else ''})")
    why = "; ".join(fields) if fields else "config.json and the weights disagree"
    return f"{source}: the weights do not fit the model its config.json describes: {why}. Tensors: {'; '.join(parts)}"


def load_pretrained(source: str | Path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained`, refusing any missing, unexpected or mis-shaped tensor.

    Every weight load goes through here (training, init_from, eval, export checks, preserve,
    filter-known, forgetting), so no tensor is ever randomly initialised or dropped: a mismatch is
    one `CheckpointError` naming the first keys and the config.json field that disagrees, and an
    unreadable weights file (truncated safetensors) names the folder and the reader's message.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report table: our one line says it
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **kwargs)
    except Exception as e:  # noqa: BLE001  # unreadable weights: name the folder, keep the reader's message
        if type(e).__name__ == "SafetensorError" or isinstance(e, (EOFError, OSError)) and Path(source).is_dir():
            raise CheckpointError(f"{source}: weights unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "the file is truncated or damaged, re-export or re-download it") from e
        raise
    finally:
        hf_logging.set_verbosity(level)
    verdict = _weights_verdict(str(source), model.config, info)
    if verdict:
        raise CheckpointError(verdict)
    return model


def load_for_inference(path_or_name: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device | None = "auto",
                       attn_implementation: str | None = None, trust_remote_code: bool = False,
                       tiny: TinyModelConfig | None = None, outside_zero3: bool = True):
    """A causal LM for scoring (an HF folder, hub id, or ``tiny``), in eval mode.

    Model only: callers that need the tokenizer load it with :func:`load_tokenizer` (an exported
    analysis folder is read for its weights alone).

    dtype: a torch dtype, or ``auto`` / ``bf16`` / ``fp16`` / ``fp32`` (``auto``: bf16 when the
      model goes to a CUDA device, else fp32; with ``device=None``, bf16 when CUDA is present).
    device: where the model goes (``auto``: ``cuda`` when present, else ``cpu``); None leaves it
      where ``from_pretrained`` put it (a caller that wraps it in a DeepSpeed engine).
    attn_implementation: passed to ``from_pretrained`` (None: the transformers default); resolve
      ``auto`` with :func:`choose_attn_implementation` first.
    outside_zero3: drop an ``HfDeepSpeedConfig`` a trainer in this process may have left
      registered, so the weights load whole instead of partitioned under ``zero.Init``; False
      for a caller that keeps one alive on purpose.
    """
    if outside_zero3:
        try:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        except ImportError:
            pass
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        dtype = (torch.bfloat16 if on_gpu else torch.float32) if dtype == "auto" else resolve_dtype(dtype)
    if attn_implementation == attention_kernels.ATTN_NAME:
        register_attention()
    source = resolve_path(str(path_or_name), tiny)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    model = load_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def count_parameters(model) -> int:
    """Parameter count that also works on ZeRO-3 partitioned models (`ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
