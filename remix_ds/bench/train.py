"""`remix-ds bench train [CONFIG] [overrides] --out FILE.json`: engine throughput.

Runs `--warmup` + `--steps` optimizer steps of the real Trainer (same model, data, DeepSpeed
config as `remix-ds train`) without checkpoints, and reports tokens/s, supervised tokens/s and,
on GPU, TFLOP/s, MFU and peak memory, plus the loader wait per step (and its fraction of step time)
and, with token-budget micro-batches, passes per step and fill. `--vs-examples M` alternates with
example micro-batches of M examples. With `--hf-trainer` (default on CPU) the same model, the same
packed micro-batches and the same DeepSpeed template also go through Hugging Face `Trainer` in
the same invocation, and the JSON gives the ratio.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from remix_ds import models
from remix_ds.baselines import build_regularizers
from remix_ds.bench.flops import mfu, train_flops
from remix_ds.config import load_config
from remix_ds.engine import dist
from remix_ds.engine.ds_config import template_path


def example_lengths(batch: dict, pad_id: int) -> list[int]:
    """Lengths of the real examples in a packed batch (the all-pad tail segments excluded)."""
    flat = batch["input_ids"].reshape(-1)
    cu = batch["cu_seq_lens_q"].tolist()
    return [e - s for s, e in zip(cu, cu[1:]) if not bool((flat[s:e] == pad_id).all())]


def machine_info() -> dict:
    import deepspeed
    import transformers

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
        "world_size": dist.world_size(),
    }
    try:
        import cpuinfo

        info["cpu"] = cpuinfo.get_cpu_info().get("brand_raw", info["cpu"])
    except Exception:  # py-cpuinfo is optional
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _bench_cfg(config: str | None, overrides: list[str], steps: int, warmup: int, out_dir: str):
    cfg = load_config(config, overrides)
    cfg.train.output_dir = out_dir
    cfg.train.max_steps = warmup + steps
    cfg.train.resume = "none"
    cfg.train.progress_bar = False
    cfg.train.tensorboard = False
    return cfg


def bench_remix(cfg, steps: int, warmup: int) -> tuple[dict, list[list[dict]]]:
    """Time the engine; also return every step's micro-batches (rank-local) for the HF comparison."""
    # NOTE: imported here: `remix-ds --help` imports this module for its subcommand, and the
    # trainer and evaluator pull in transformers (seconds).
    from remix_ds.engine.trainer import Trainer
    from remix_ds.eval.hook import build_eval_hooks

    trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
    pad_id = trainer.tokenizer.pad_token_id
    all_batches, timed = [], []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    waits = []
    for i in range(warmup + steps):
        batches = trainer._next_step_batches()
        wait = trainer.loader_wait_s  # blocked on the (background) loader
        all_batches.append(batches)
        stats = trainer.train_step(batches)
        if i >= warmup:
            lengths = [n for b in batches for n in example_lengths(b, pad_id)]
            flops = dist.all_reduce_sum([train_flops(trainer.engine.module.config, trainer.num_params, lengths)],
                                        trainer.device)[0]
            timed.append((stats, flops))
            waits.append(wait)
    seconds = sum(s.seconds for s, _ in timed)
    result = {
        "engine": "remix-ds",
        "params": trainer.num_params,
        "zero_stage": trainer.ds_config["zero_optimization"]["stage"],
        "attn_implementation": trainer.attn,
        "dtype": str(trainer.dtype).replace("torch.", ""),
        "global_batch_examples": cfg.train.global_batch_size,
        "steps_timed": steps,
        "seconds": seconds,
        "tokens_per_s": sum(s.tokens for s, _ in timed) / seconds,
        "supervised_tokens_per_s": sum(s.supervised_tokens for s, _ in timed) / seconds,
        "tokens_per_s_per_device": sum(s.tokens for s, _ in timed) / seconds / dist.world_size(),
        "final_loss": timed[-1][0].loss,
        "micro_batch_tokens": cfg.train.micro_batch_tokens,
        "micro_batch_size": 0 if cfg.train.micro_batch_tokens else cfg.train.micro_batch_size,
        "micro_batches_per_step": sum(len(b) for b in all_batches[warmup:]) / steps,
        "step_time_s_median": _median([s.seconds for s, _ in timed]),
        "loader_wait_s_per_step": sum(waits) / steps,
        "loader_wait_frac": sum(waits) / (sum(waits) + seconds),
        "prefetch_steps": cfg.train.prefetch_steps,
    }
    if cfg.train.micro_batch_tokens:
        plans = [s.plan for s, _ in timed]
        result["micro_batch_fill"] = sum(p["fill"] for p in plans) / len(plans)
        full = [p["fill_full"] for p in plans if p["fill_full"]]
        result["micro_batch_fill_full"] = sum(full) / len(full) if full else None
    flops_per_s = sum(f for _, f in timed) / seconds
    result["tflops_per_s"] = flops_per_s / 1e12
    if torch.cuda.is_available():
        result["tflops_per_s_per_gpu"] = flops_per_s / 1e12 / dist.world_size()
        result["mfu"] = mfu(flops_per_s, torch.cuda.get_device_name(0), dist.world_size())
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    trainer.engine.destroy()
    trainer.close()
    return result, all_batches


def bench_hf_trainer(cfg, all_batches: list[list[dict]], warmup: int, out_dir: str) -> dict:
    """The same model, micro-batches and DeepSpeed template through transformers.Trainer."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments

    flat = [b for step in all_batches for b in step]
    # Token-budget steps hold varying micro-batch counts; HF's accumulation is fixed, so it gets the
    # same micro-batches (same forward/backward passes) grouped by the mean count per step.
    gas = max(1, round(len(flat) / len(all_batches)))
    n_steps = len(flat) // gas

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(flat)

        def __getitem__(self, i):
            return flat[i]

    def collate(features):  # each item already is a packed micro-batch
        (b,) = features
        return {"input_ids": b["input_ids"], "position_ids": b["position_ids"], "labels": b["labels"],
                "use_cache": False}

    step_times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    ds = json.loads(template_path(cfg.deepspeed.config).read_text())  # HF fills its "auto" values
    dtype = models.resolve_dtype(cfg.model.dtype)
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=1,  # one packed micro-batch
        gradient_accumulation_steps=gas,
        max_steps=n_steps,
        learning_rate=cfg.optim.lr,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.grad_clip,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        bf16=dtype == torch.bfloat16,
        deepspeed=ds,
        save_strategy="no",
        report_to=[],
        logging_steps=10**9,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.train.seed,
    )
    model = models.load_model(cfg.model, dtype, models.choose_attn_implementation(cfg.model.attn_implementation))
    trainer = HFTrainer(model=model, args=args, train_dataset=Batches(), data_collator=collate, callbacks=[Clock()])
    trainer.train()
    timed = step_times[warmup:]
    tokens = sum(int(b["num_tokens"]) for b in flat[warmup * gas:n_steps * gas])
    tokens = dist.all_reduce_sum([tokens], dist.device())[0]
    seconds = sum(timed)
    return {"engine": "hf-trainer", "steps_timed": len(timed), "seconds": seconds, "tokens_per_s": tokens / seconds}


def run(config: str | None, overrides: list[str], steps: int = 10, warmup: int = 3, hf_trainer: bool | None = None,
        repeats: int = 1, vs_examples: int = 0) -> dict:
    """Bench the engine (and HF Trainer), alternating them `repeats` times; medians are reported.

    Alternating keeps the comparison fair on a machine whose load changes during the run.
    vs_examples=M (with train.micro_batch_tokens set): also run example micro-batches of M examples
    (micro_batch_tokens=0), alternating with the token-budget runs; the JSON gives the ratio.
    """
    if hf_trainer is None:
        hf_trainer = not torch.cuda.is_available()
    runs, hf_runs, ex_runs = [], [], []
    with tempfile.TemporaryDirectory(prefix="remix-bench-") as tmp:
        cfg = _bench_cfg(config, overrides, steps, warmup, tmp)
        if vs_examples and not cfg.train.micro_batch_tokens:
            raise ValueError("--vs-examples compares against token-budget micro-batches: set train.micro_batch_tokens")
        ex_cfg = _bench_cfg(config, [*overrides, "train.micro_batch_tokens=0", f"train.micro_batch_size={vs_examples}"],
                            steps, warmup, f"{tmp}/examples") if vs_examples else None
        for r in range(repeats):
            remix, batches = bench_remix(cfg, steps, warmup)
            runs.append(remix)
            if ex_cfg is not None:
                ex_runs.append(bench_remix(ex_cfg, steps, warmup)[0])
            if hf_trainer:
                hf_runs.append(bench_hf_trainer(cfg, batches, warmup, f"{tmp}/hf{r}"))
    result = {"machine": machine_info(), "config": config, "overrides": overrides, "repeats": repeats}
    result["remix_ds"] = min(runs, key=lambda x: abs(x["tokens_per_s"] - _median([y["tokens_per_s"] for y in runs])))
    result["remix_ds_tokens_per_s_all"] = [x["tokens_per_s"] for x in runs]
    result["loader_wait_frac_all"] = [x["loader_wait_frac"] for x in runs]
    result["loader_wait_frac"] = _median(result["loader_wait_frac_all"])
    if ex_runs:
        result["example_micro_batches"] = min(
            ex_runs, key=lambda x: abs(x["tokens_per_s"] - _median([y["tokens_per_s"] for y in ex_runs])))
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs, ex_runs)]
        result["tokens_per_s_ratio_tokens_over_examples_all"] = ratios
        result["tokens_per_s_ratio_tokens_over_examples"] = _median(ratios)
    if hf_runs:
        result["hf_trainer_tokens_per_s_all"] = [x["tokens_per_s"] for x in hf_runs]
        result["hf_trainer"] = {"engine": "hf-trainer", "tokens_per_s": _median(result["hf_trainer_tokens_per_s_all"])}
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs, hf_runs)]
        result["tokens_per_s_ratio_remix_over_hf_all"] = ratios
        result["tokens_per_s_ratio_remix_over_hf"] = _median(ratios)
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _main(args) -> int:
    result = run(args.config, args.overrides, steps=args.steps, warmup=args.warmup,
                 hf_trainer={"auto": None, "on": True, "off": False}[args.hf_trainer], repeats=args.repeats,
                 vs_examples=args.vs_examples)
    if dist.is_main():
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    return 0


def add_bench_train_command(bsub) -> None:
    p = bsub.add_parser("train", help="engine tokens/s (TFLOP/s and MFU on GPU; vs HF Trainer on CPU)")
    p.add_argument("config", nargs="?", help="run config (default: built-in defaults, tiny model)")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.add_argument("--out", default="bench_train.json", help="JSON output path")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    p.add_argument("--repeats", type=int, default=3, help="alternate engine / HF Trainer runs this many times")
    p.add_argument("--hf-trainer", choices=["auto", "on", "off"], default="auto",
                   help="also run transformers.Trainer on the same batches (auto: on CPU only)")
    p.add_argument("--vs-examples", type=int, default=0, metavar="M",
                   help="with train.micro_batch_tokens: also time example micro-batches of M examples, alternating")
    p.set_defaults(func=_main)
