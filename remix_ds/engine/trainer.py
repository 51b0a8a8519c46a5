"""The training loop: build (model, engine, data), then train, then close.

*What a step does* lives in `Trainer.train_step` (forward, backward, optimizer step over one
optimizer step's micro-batches); *when* logging, evaluation and checkpointing happen lives in
`Trainer.fit`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from remix_ds import configtools, models
from remix_ds.config import RunConfig, config_drift
from remix_ds.configtools import ConfigError
from remix_ds.data.loader import BackgroundLoader, build_train_loader
from remix_ds.engine import checkpoint as ckpt_lib
from remix_ds.engine import dist
from remix_ds.engine.ds_config import build_ds_config, zero_stage
from remix_ds.engine.export import clean_stale_exports, export_checkpoint, export_engine
from remix_ds.engine.hooks import EvalHook, Regularizer
from remix_ds.engine.loss import token_loss_sum
from remix_ds.engine.metrics import MetricsWriter
from remix_ds.engine.schedule import apply_to_resumed, make_scheduler
from remix_ds.engine.stopping import LossStop
from remix_ds.errors import CheckpointError, NonFiniteError

RUN_CONFIG = "run_config.json"  # the resolved RunConfig a checkpoint was written with (drift check)


@dataclass
class StepStats:
    loss_sum: torch.Tensor
    """Summed token loss over all ranks, on the device: read through `loss` (a host sync) only when logging."""
    supervised_tokens: int
    tokens: int
    examples: int
    seconds: float
    extra: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    """Token-budget plan of the step (micro_batches, fill, ...; empty in example mode)."""

    @property
    def loss(self) -> float:
        """Mean token loss of the step (sum / global supervised tokens); synchronizes with the device."""
        return float(self.loss_sum) / max(self.supervised_tokens, 1)


class Trainer:
    """One training stage under DeepSpeed. Call `fit()`, then `close()` (also on error).

    The trainer builds no plugins: the caller passes its eval hooks and regularizers
    (`remix_ds.engine.hooks`); each gets `setup(trainer)` once the engine is built.
    """

    def __init__(self, cfg: RunConfig, eval_hooks: list[EvalHook] | None = None,
                 regularizers: list[Regularizer] | None = None):
        self.cfg = cfg
        # As given (before _init_source rewrites model.init_from): config.json, checkpoints' run_config.json
        self._cfg_text = json.dumps(configtools.to_dict(cfg), indent=2) + "\n"
        dist.init_distributed(cfg.deepspeed.backend)
        self.rank, self.world = dist.rank(), dist.world_size()
        cfg.validate(self.world)
        self.device = dist.device()
        self.out = Path(cfg.train.output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"train.output_dir={self.out} is an existing file, not a folder; name a folder")
        self.dtype = models.resolve_dtype(cfg.model.dtype)
        self.attn = models.choose_attn_implementation(cfg.model.attn_implementation)
        self.gas = cfg.grad_accum(self.world)
        self.ds_config = build_ds_config(cfg, self.world, self.dtype)
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in clean_stale_exports(self.out):  # a kill during an earlier export
                print(f"[remix-ds] removed {stale.name}, left by an interrupted export", flush=True)
        self.tokenizer = models.load_tokenizer(
            cfg.model.tokenizer or models.model_source(cfg.model), cfg.model.tiny, cfg.model.trust_remote_code
        )
        self.loader = self._build_loader()
        self.total_steps = self._total_steps()
        self.engine = self._build_engine()
        self.metrics = MetricsWriter(self.out, enabled=dist.is_main(), tensorboard=cfg.train.tensorboard,
                                     wandb=cfg.metrics.wandb, run_config=json.loads(self._cfg_text))
        self.eval_hooks = list(eval_hooks or [])
        self.regularizers = list(regularizers or [])
        # before resume: regularizers anchor at the starting weights
        for plugin in [*self.eval_hooks, *self.regularizers]:
            plugin.setup(self)
        self.step = 0
        self.stopped_early = False
        self.stop_reason = None
        """Why the stage ended: `cap` (train.epochs / max_steps), `eval_metric` (early_stop_metric) or `loss`
        (stop_loss_below); None while it runs or when it paused (stop_at_step)."""
        self._final_eval_due = False
        t = cfg.train
        self.loss_stop = LossStop(t.stop_loss_below, t.stop_loss_steps) if t.stop_loss_below > 0 else None
        self._saved_step = -1
        self._resume()
        if dist.is_main():  # after the drift check, which reads the previous one
            (self.out / "config.json").write_text(self._cfg_text)

    # ---- building -------------------------------------------------------------------------
    def _build_loader(self):
        t = self.cfg.train
        loader = build_train_loader(
            self.cfg.data,
            self.tokenizer,
            micro_batch_size=t.micro_batch_size,
            rank=self.rank,
            world_size=self.world,
            seed=t.seed,
            micro_batch_tokens=t.micro_batch_tokens,
            step_examples=t.global_batch_size,
        )
        if t.prefetch_steps:
            return BackgroundLoader(loader, depth=t.prefetch_steps, pin_memory=self.device.type == "cuda")
        return loader

    def _total_steps(self) -> int:
        if self.cfg.train.max_steps:
            return self.cfg.train.max_steps
        return max(1, math.ceil(self.cfg.train.epochs * self.loader.batches_per_epoch / self.gas))

    def _init_source(self):
        """An earlier stage's checkpoint is exported to an HF folder once (rank 0), then loaded."""
        init = self.cfg.model.init_from
        if init and models.is_deepspeed_checkpoint(init):
            target = self.out / f"init-{Path(init).parent.name}-{Path(init).name}"
            if dist.is_main() and not (target / "config.json").is_file():
                export_checkpoint(init, target, dtype=self.dtype)
            dist.barrier()
            self.cfg.model.init_from = str(target)

    def _build_engine(self):
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        self._init_source()
        # Keeping this object alive makes from_pretrained build the model under zero.Init, so an
        # 8B model is partitioned as it loads and never materializes whole on one rank.
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if zero_stage(self.ds_config) == 3 else None
        torch.manual_seed(self.cfg.train.seed)
        model = models.load_model(self.cfg.model, self.dtype, self.attn)
        model.config.use_cache = False
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.num_params = models.count_parameters(model)
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=make_scheduler(self.cfg.optim, self.total_steps),
        )
        engine.train()
        return engine

    def _regularize(self, event: str, *args) -> None:
        for r in self.regularizers:
            getattr(r, event)(*args)

    def _resume(self) -> None:
        t = self.cfg.train
        if t.resume == "none":
            return
        if t.resume == "auto":
            ckpt = ckpt_lib.select_checkpoint(ckpt_lib.resume_candidates(self.out), hashes=t.verify_hashes,
                                              fallback=t.resume_fallback)
        else:  # a checkpoint named explicitly: that one or an error, never another
            ckpt = Path(t.resume)
            if not ckpt_lib.is_complete(ckpt):
                raise CheckpointError(f"train.resume: {ckpt} is not a complete checkpoint (no {ckpt_lib.COMPLETE})")
            ckpt_lib.select_checkpoint([ckpt], hashes=t.verify_hashes, fallback=False,
                                       refusal="train.resume names this checkpoint, so there is no fallback")
        if ckpt is None:
            return
        drifted = self._check_drift(ckpt)
        state = ckpt_lib.load_checkpoint(self.engine, ckpt)
        if drifted:  # allowed: the changed optim.* / schedule keys take effect from this step on
            self.engine.lr_scheduler = apply_to_resumed(self.engine.basic_optimizer, self.engine.lr_scheduler,
                                                        self.ds_config["optimizer"]["params"], self.cfg.optim,
                                                        self.total_steps)
        self.loader.load_state_dict(state["loader"])
        self.step = self._saved_step = state["step"]
        self.stopped_early = state.get("stopped_early", False)
        self.stop_reason = state.get("stop_reason", "eval_metric" if self.stopped_early else None)
        if self.loss_stop is not None:
            self.loss_stop.load_state_dict(state.get("loss_stop", {}))
        dropped = self.metrics.drop_after(self.step)  # those steps run again: one row per step
        if dist.is_main():
            print(f"[remix-ds] resumed from {ckpt} at step {self.step}"
                  + (f" (dropped {dropped} metrics rows after it)" if dropped else ""), flush=True)

    def _check_drift(self, ckpt: Path) -> bool:
        """Refuse a resume whose trajectory keys changed since the checkpoint (RESUME_NEUTRAL_KEYS aside),
        unless train.allow_config_change, which records the change in RUN_DIR/config_changes.jsonl.
        True when the config changed (and that was allowed)."""
        saved_path = ckpt / RUN_CONFIG
        if not saved_path.is_file():  # checkpoints from before run_config.json: the run's config.json
            saved_path = self.out / "config.json"
        if not saved_path.is_file():
            return False
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{saved_path}: unreadable ({e})") from None
        changes = config_drift(saved, json.loads(self._cfg_text))
        if not changes:
            return False
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        if not self.cfg.train.allow_config_change:
            raise ConfigError(f"the config changed since {ckpt} ({listed}); resuming would mix two runs. "
                              "Use a new train.output_dir, or set train.allow_config_change=true to resume anyway")
        if dist.is_main():
            print(f"[remix-ds] WARNING: resuming {ckpt} with a changed config: {listed}", flush=True)
            row = {"time": time.time(), "checkpoint": str(ckpt), "step": ckpt_lib.read_manifest(ckpt)["step"],
                   "changes": {k: [a, b] for k, (a, b) in changes.items()}}
            with open(self.out / "config_changes.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return True

    # ---- one optimizer step -----------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict]) -> StepStats:
        """Forward/backward every micro-batch of one optimizer step, then the optimizer step.

        NOTE: answer-only masks give micro-batches very different supervised-token counts, so a
        per-micro-batch mean would weight tokens unequally. We divide the summed loss by the
        step's global supervised-token count N instead; DeepSpeed averages gradients over the
        data-parallel ranks, hence the factor world_size (and scale_wrt_gas=False).

        N comes from the loader's host-side plan (`StepBatches.info`: every rank knows every
        rank's rows), so the step needs no device all-reduce and no `.item()`; a plain list
        falls back to an all-reduce of the local counts. The number of micro-batches may change
        from step to step (token budget): the accumulation boundary is set explicitly before
        every forward, so DeepSpeed's fixed gradient_accumulation_steps plays no part.
        """
        start = time.perf_counter()
        info = getattr(micro_batches, "info", None) or {}
        if "num_supervised" in info:
            n_sup, n_tok, n_ex = (int(info[k]) for k in ("num_supervised", "num_tokens", "num_examples"))
        else:
            local = [sum(int(mb[k]) for mb in micro_batches) for k in ("num_supervised", "num_tokens", "num_examples")]
            n_sup, n_tok, n_ex = (int(x) for x in dist.all_reduce_sum(local, self.device))
        scale = self.world / max(n_sup, 1)
        # Accumulated on the device: a .item() per micro-batch would sync the GPU every time.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._regularize("begin_step", micro_batches)
        last = len(micro_batches) - 1
        for i, mb in enumerate(micro_batches):
            mb = self._to_device(mb)
            self.engine.set_gradient_accumulation_boundary(i == last)
            loss = token_loss_sum(self.engine, mb, self.attn, self.cfg.model.fused_loss)
            self.engine.backward(loss * scale, scale_wrt_gas=False)
            self._regularize("after_backward", i, mb)
            if i == last:
                self._regularize("before_optimizer_step")
            self.engine.step()
            loss_sum += loss.detach().to(torch.float64)
        dist.all_reduce_(loss_sum)  # a device collective: no host sync until `StepStats.loss` is read
        extra = {k: v for r in self.regularizers for k, v in r.end_step().items()}
        plan = {k: info[k] for k in ("micro_batches", "real_micro_batches", "fill", "fill_full") if k in info}
        return StepStats(loss_sum, n_sup, n_tok, n_ex, time.perf_counter() - start, extra, plan)

    # ---- the loop ---------------------------------------------------------------------------
    def _banner(self) -> None:
        if not dist.is_main():
            return
        c = self.cfg
        print(
            f"[remix-ds] world size {self.world} | device {self.device.type} | dtype {str(self.dtype).replace('torch.', '')}"
            f" | attention {self.attn} | ZeRO stage {zero_stage(self.ds_config)} | params {self.num_params:,}\n"
            + (f"[remix-ds] {c.train.global_batch_size} examples per optimizer step over {self.world} ranks, in micro-batches"
               f" of up to {c.train.micro_batch_tokens} token cells (rows x width, rows of at most {c.data.max_seq_len})"
               f" | {self.loader.batches_per_epoch} optimizer steps per epoch"
               if c.train.micro_batch_tokens else
               f"[remix-ds] {c.train.global_batch_size} examples per optimizer step = micro-batch {c.train.micro_batch_size}"
               f" x grad accum {self.gas} x {self.world} ranks | {self.loader.batches_per_epoch} micro-batches per rank per epoch")
            + f" | {self.total_steps} optimizer steps",
            flush=True,
        )

    def _next_step_batches(self) -> list[dict]:
        """The next optimizer step's micro-batches; `self.loader_wait_s` is the time spent waiting for them."""
        t0 = time.perf_counter()
        batches = self.loader.next_step(self.gas)
        self.loader_wait_s = time.perf_counter() - t0
        return batches

    def _save(self) -> Path:
        def write_hf_files(folder: Path) -> None:
            self.engine.module.config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            (folder / RUN_CONFIG).write_text(self._cfg_text)

        path = ckpt_lib.save_checkpoint(
            self.engine, self.out, self.step,
            {"loader": self.loader.state_dict(), "stopped_early": self.stopped_early, "stop_reason": self.stop_reason,
             **({"loss_stop": self.loss_stop.state_dict()} if self.loss_stop is not None else {})},
            write_hf_files,
            self.cfg.train.keep_last,
        )
        self._saved_step = self.step
        return path

    def _reached_target(self, metrics: dict) -> bool:
        name = self.cfg.train.early_stop_metric
        if not name:
            return False
        if name not in metrics:
            raise KeyError(f"train.early_stop_metric={name!r} is not among the eval metrics {sorted(metrics)}")
        return metrics[name] >= self.cfg.train.early_stop_value

    def _evaluate(self) -> dict:
        results = {}
        for hook in self.eval_hooks:
            results.update(hook(self.engine.module, step=self.step, out_dir=self.out / "eval"))
        self.engine.train()
        return results

    def _check_finite(self, stats: StepStats, lr: float) -> bool:
        """Stop at the first step whose loss or global gradient norm is not finite (one host sync per step).

        Raised before anything of the step is logged, saved or exported: `latest` keeps naming the
        last good checkpoint and no non-finite weights reach `final/`. Every rank sees the same
        all-reduced loss and global norm, so every rank raises. With `train.nonfinite=skip_step`,
        a step whose update DeepSpeed discarded (its optimizer's `overflow` flag) is only warned
        about; True is returned for it.
        """
        loss = stats.loss
        norm = self.engine.get_global_grad_norm()
        norm = None if norm is None else float(norm)
        if math.isfinite(loss) and (norm is None or math.isfinite(norm)):
            return False
        what = f"step {self.step}: non-finite training loss {loss} (global grad norm {norm}) at lr {lr:.6g}"
        discarded = bool(getattr(self.engine.optimizer, "overflow", False))
        if self.cfg.train.nonfinite == "skip_step" and discarded:
            if dist.is_main():
                print(f"[remix-ds] WARNING: {what}; DeepSpeed discarded the update, going on (train.nonfinite=skip_step)",
                      flush=True)
            return True
        last = ckpt_lib.latest_checkpoint(self.out)
        kept = (f"{self.out}/latest still names {last.name}" if last is not None else "no checkpoint was saved")
        applied = ("; the update was applied, so train.nonfinite=skip_step cannot skip it"
                   if self.cfg.train.nonfinite == "skip_step" else "")
        raise NonFiniteError(f"{what}; stopped before saving or exporting this step ({kept}){applied}. "
                             "Lower optim.lr or check the data")

    def fit(self) -> list[dict]:
        """Train to total_steps (or train.stop_at_step); returns the metrics rows this call logged."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        self._banner()
        stop = min(self.total_steps, t.stop_at_step) if t.stop_at_step else self.total_steps
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (dist.is_main() and t.progress_bar),
                   dynamic_ncols=True, desc="train")
        logged = []
        start_step = self.step
        while self.step < stop and not self.stopped_early:
            lr = self.engine.get_lr()[0]  # the rate this step's update uses
            self.loader_wait_s = 0.0
            stats = self.train_step(self._next_step_batches())
            self.step += 1
            skipped = self._check_finite(stats, lr)
            wait = self.loader_wait_s
            row = {
                "lr": lr,
                "epoch": self.loader.epoch,
                "tokens": stats.tokens,
                "supervised_tokens": stats.supervised_tokens,
                "examples": stats.examples,
                "tokens_per_s": stats.tokens / stats.seconds,
                "supervised_tokens_per_s": stats.supervised_tokens / stats.seconds,
                "step_time_s": stats.seconds,
                "loader_wait_s": wait,
                "loader_wait_frac": wait / (wait + stats.seconds),
                **{f"micro_batch_{k}" if k.startswith("fill") else k: v for k, v in stats.plan.items()},
                **stats.extra,
                **({"skipped_nonfinite": 1} if skipped else {}),
            }
            if self.step == 1 and dist.is_main():
                print(f"[remix-ds] tokens in the first optimizer step: {stats.tokens:,} "
                      f"({stats.supervised_tokens:,} supervised)", flush=True)
            evaluated = bool(t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps)
            if evaluated:
                row.update(self._evaluate())
                self.stopped_early = self._reached_target(row)
                self.stop_reason = "eval_metric" if self.stopped_early else None
            loss_stop = False
            if self.loss_stop is not None and not self.stopped_early:
                # a host sync every step, as the rule needs; the loss is all-reduced, so every rank counts alike
                # (the max over ranks below only guards against a rank deciding differently and hanging)
                loss_stop = bool(dist.all_reduce_max(int(self.loss_stop.update(stats.loss))))
                row["loss_stop_count"] = self.loss_stop.count
            if loss_stop:
                self.stopped_early, self.stop_reason = True, "loss"
            if evaluated or self.step % t.log_every == 0 or self.step == stop or loss_stop:
                # the step's only device -> host syncs, at log steps: the loss and device-scalar extras
                row = {"loss": stats.loss, **{k: float(v) if torch.is_tensor(v) else v for k, v in row.items()}}
                self.metrics.log(self.step, row)
                logged.append({"step": self.step, **row})
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                tok_s=f"{row['tokens_per_s']:.0f}", sup_tok_s=f"{row['supervised_tokens_per_s']:.0f}")
            bar.update(1)
            if self.stopped_early:
                if dist.is_main():
                    print(f"[remix-ds] {t.stop_loss_steps} optimizer steps with loss < {t.stop_loss_below} by step "
                          f"{self.step} (of {self.total_steps}); finishing the stage" if loss_stop else
                          f"[remix-ds] {t.early_stop_metric} reached {t.early_stop_value} at step {self.step}; "
                          "finishing the stage", flush=True)
                self._final_eval_due = loss_stop and not evaluated
                break
            if t.save_every and self.step % t.save_every == 0 and self.step < stop:
                self._save()
        bar.close()
        finished = self.step >= self.total_steps or self.stopped_early
        if finished and self.stop_reason is None:
            self.stop_reason = "cap"
        # the stage's last step is evaluated: at the cap, and at a loss stop that fell between evaluations
        if (self.step >= self.total_steps and not self.stopped_early) or self._final_eval_due:
            final = self._evaluate() if self.eval_hooks else {}
            if final:
                self.metrics.log(self.step, final)
                logged.append({"step": self.step, **final})
        if self._saved_step != self.step and (t.save_final or not finished):
            self._save()  # a paused run (stop_at_step) always saves: it is meant to be resumed
        if finished and t.export_final and (
            self.step > start_step or not (self.out / "final" / "config.json").is_file()
        ):
            export_engine(self.engine, self.out / "final", self.tokenizer, run_config=self.out / "config.json")
        return logged

    def close(self) -> None:
        if isinstance(getattr(self, "loader", None), BackgroundLoader):
            self.loader.close()
        for r in getattr(self, "regularizers", []):
            r.close()
        self.metrics.close()
