"""The training loop: S seeds at once, probes at log-spaced checkpoints, results as it goes.

Determinism: the probe sets come from ``cfg.seed`` alone (saved next to the results as
``<out>.probes.pt``); seed s initialises its model from ``cfg.seed + s`` and draws batches from
its own generator, whose state is saved with the model (``<out>.state.pt``). A killed run
resumed with ``resume=True`` therefore reproduces the uninterrupted run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import xarray as xr

from dsb_widgets.engine.accel import DeviceTimer, Forward, autocast
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.evaluate import evaluate_probe, probe_digest, train_loss
from dsb_widgets.engine.grouped import GroupedStack, load_stack_state, make_stack
from dsb_widgets.engine.optim import SGD, AdamW
from dsb_widgets.engine.results import (
    METRICS,
    ResultsTable,
    ResultsWriter,
    check_out_path,
    has_result,
    load_results,
    replace_atomic,
)
from dsb_widgets.engine.schedule import log_checkpoints, lr_at
from dsb_widgets.engine.task import (
    PROBE_SEEDING,
    ConfigError,
    RunConfig,
    Task,
    build_task,
    get_experiment,
    pick_device,
    required,
    resolve_config,
)
from dsb_widgets.errors import OutputWriteError, TrainingDivergedError
from dsb_widgets.threads import SMALL_MODEL_FLOPS, apply_threads, auto_threads, step_flops

log = logging.getLogger(__name__)
Subscriber = Callable[[dict[str, Any]], None]
DATA_SEED_OFFSET = 1_000_003
# Non-finite training loss is checked at every checkpoint (the loss is on the host there anyway)
# and every this many steps in between: one `isfinite().all()` host sync per 64 steps, none per step.
DIVERGENCE_CHECK_EVERY = 64


@dataclass
class TrainResult:
    dataset: xr.Dataset
    status: str  # "finished" | "stopped"
    path: Path | None
    timings: dict[str, float] = field(default_factory=dict)


def _publish(subscribers: Iterable[Subscriber], event: dict[str, Any]) -> None:
    for sub in subscribers:
        try:
            sub(event)
        except Exception:  # a broken viewer must never stop training
            log.exception("results subscriber failed")


class _Run:
    """State of one training run (models, optimizer, generators, results table)."""

    def __init__(self, cfg: RunConfig, out: Path | None, resume: bool, task: Task | None = None,
                 force: bool = False) -> None:
        self.cfg = cfg
        self.out = out
        self.device = pick_device(cfg.device)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.task: Task = task if task is not None else build_task(cfg)
        self.seed_values = [cfg.seed + s for s in range(cfg.seeds)]
        models = []
        for sv in self.seed_values:
            torch.manual_seed(sv)
            models.append(self.task.make_model(sv))
        with torch.random.fork_rng(devices=[]):  # an example batch for the stacking self-check
            example = self.task.sample_batch(torch.Generator().manual_seed(0), 2)[0]
        self.stack = make_stack(models, self.device, example)  # plain / grouped conv / vmap (engine/grouped.py)
        self.forward = Forward(self.stack, cfg.compile, self.device)  # torch.compile'd when asked and possible
        self.opt = self._optimizer()
        # on a GPU with a resident training set, the batch indices are drawn there (no sync per step)
        gen_device = self.device if self.device.type == "cuda" and self.task.device_sampling else torch.device("cpu")
        self.gens = [torch.Generator(device=gen_device).manual_seed(sv + DATA_SEED_OFFSET) for sv in self.seed_values]
        self.checkpoints = log_checkpoints(required(cfg.steps, "steps"), required(cfg.per_octave, "per_octave"))
        names = [p.name for p in self.task.probes] + list(self.task.extra_probes)
        orders = [p.order for p in self.task.probes] + list(self.task.extra_probes.values())
        floors = [p.floor for p in self.task.probes] + [math.nan] * len(self.task.extra_probes)
        attrs = {"config": cfg.to_json(), "experiment": cfg.experiment, "units": "nats", "probe_seeding": PROBE_SEEDING,
                 "probe_digest": probe_digest(self.task.probes),
                 **{k: v for k, v in self.task.info.items() if isinstance(v, (str, int, float))}}
        self.table = ResultsTable(names, orders, self.seed_values, attrs=attrs, floors=floors)
        self.step = 0
        self.elapsed = 0.0
        # training-loss accumulators since the last checkpoint (saved with the state, so a resumed
        # run reports the same batch-averaged train_loss as an uninterrupted one)
        self.loss_sum = torch.zeros(cfg.seeds, dtype=torch.float64, device=self.device)
        self.loss_n = 0
        self.writer = ResultsWriter(out) if out is not None else None  # appends rows in place
        if out is not None:
            self._prepare_files(resume, force)

    def _optimizer(self) -> AdamW | SGD:
        """SGD / AdamW with weight decay on the >= 2-D weights only (matmul / conv kernels and
        embeddings), none on biases and norm scales: nanoGPT's ``configure_optimizers``."""
        cfg = self.cfg
        decay, no_decay = self.stack.decay_groups()
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        lr = required(cfg.lr, "lr")
        if cfg.optimizer == "sgd":
            return SGD(groups, lr=lr, momentum=cfg.momentum)  # torch.optim's arithmetic, no dynamo import
        return AdamW(groups, lr=lr, betas=(0.9, cfg.beta2))

    @property
    def probes_path(self) -> Path:
        assert self.out is not None, "only a run with an output file has saved probes"
        return self.out.with_name(self.out.stem + ".probes.pt")

    @property
    def state_path(self) -> Path:
        assert self.out is not None, "only a run with an output file has a saved state"
        return self.out.with_name(self.out.stem + ".state.pt")

    def _prepare_files(self, resume: bool, force: bool = False) -> None:
        assert self.out is not None, "called only for a run with an output file"
        if resume and self.out.exists() and self.state_path.exists():
            if load_results(self.out).attrs.get("probe_seeding") == PROBE_SEEDING:
                self._resume()
                return
            # made before probes were seeded by name: its probe sets differ from today's, so the
            # run restarts (below: only over a result of the same config) rather than mixing them
            log.warning("%s has probe sets seeded the old way; restarting the run", self.out)
        if resume and has_result(self.out) and not force:
            # no state to continue from: restarting is safe only for the same config (the rerun
            # recomputes the same rows); another run's results are never overwritten
            if load_results(self.out).attrs.get("config") != self.cfg.to_json():
                raise ConfigError(f"{self.out} was made with another config; drop --resume or use the same options")
        if resume:
            log.warning("nothing to resume at %s; starting a fresh run", self.out)
        blob = {p.name: {"x": p.x, "y": p.y, **({"target": p.target} if p.target is not None else {})}
                for p in self.task.probes}
        replace_atomic(self.probes_path, lambda tmp: torch.save(blob, tmp))
        self.state_path.unlink(missing_ok=True)

    def _resume(self) -> None:
        assert self.out is not None, "called only for a run with an output file"
        ds = load_results(self.out)
        if ds.attrs.get("config") != self.cfg.to_json():
            raise ConfigError(f"{self.out} was made with another config; drop --resume or use the same options")
        state = torch.load(self.state_path, weights_only=True, map_location=self.device)
        load_stack_state(self.stack, state["model"])  # whichever stacking saved it
        self.opt.load_state_dict(state["optim"])
        for g, s in zip(self.gens, state["gens"]):
            try:
                g.set_state(s.cpu())
            except RuntimeError as err:  # a CPU generator's state saved, a CUDA one now (or back)
                raise ConfigError(f"{self.out} was saved with its batch generators on another device; resume it "
                                  "with the --device it was started on") from err
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        if "loss_sum" in state:
            self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
            self.loss_n = int(state["loss_n"])
        saved = torch.load(self.probes_path, weights_only=True)
        # evaluate on exactly the saved probe sets (new frozen Probes; the built ones are not mutated)
        self.task = dataclasses.replace(self.task, probes=[
            dataclasses.replace(p, x=saved[p.name]["x"], y=saved[p.name]["y"],
                                target=saved[p.name]["target"] if p.target is not None else None)
            for p in self.task.probes])
        self.table = ResultsTable.from_dataset(ds)
        # The state is saved after its step's checkpoint row was written, so that row is kept
        # (re-evaluating it would lose its train_loss); later rows are recomputed identically.
        self.table.truncate(self.step)

    def save_state(self) -> None:
        if self.out is None:
            return
        state = {"step": self.step, "elapsed": self.elapsed, "model": self.stack.state_dict(),
                 "optim": self.opt.state_dict(), "gens": [g.get_state() for g in self.gens],
                 "loss_sum": self.loss_sum.detach().cpu(), "loss_n": self.loss_n}
        replace_atomic(self.state_path, lambda tmp: torch.save(state, tmp))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = required(self.cfg.batch_size, "batch_size")
        if len(self.gens) == 1:  # one seed: a view, no stacking copy
            x, y = self.task.sample_batch(self.gens[0], bs)
            return x.to(self.device, non_blocking=True)[None], y.to(self.device, non_blocking=True)[None]
        xs, ys = zip(*(self.task.sample_batch(g, bs) for g in self.gens))
        return (torch.stack(xs).to(self.device, non_blocking=True),
                torch.stack(ys).to(self.device, non_blocking=True))

    def update(self) -> torch.Tensor:
        """One optimisation step for every seed; returns the per-seed training loss (S,)."""
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, required(self.cfg.lr, "lr"), required(self.cfg.steps, "steps"),
                                required(self.cfg.warmup, "warmup"), required(self.cfg.schedule, "schedule"))
        x, y = self.sample()
        if not self.stack.training:  # Module.train() walks every submodule: 7% of a digits MLP step
            self.stack.train()
        if self.task.step_loss is not None:  # the task's own loss on the stack (clones: masked read-out)
            with autocast(self.device, self.amp):
                losses = self.task.step_loss(self.stack, x, y)
        else:
            with autocast(self.device, self.amp):
                out = self.forward(x)
            losses = train_loss(out, y, self.task.loss)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # seeds are independent: the sum's gradient is each seed's own
        if self.cfg.grad_clip is not None:
            self.stack.clip_grad_norm_(self.cfg.grad_clip)  # per seed, as torch's clip on each model
        self.opt.step()
        self.step += 1
        return losses.detach()

    def step_flops(self) -> float:
        """Forward multiply-adds of one training step (all seeds), for the thread policy."""
        with torch.random.fork_rng(devices=[]):  # the run's random streams stay untouched
            x, _ = self.task.sample_batch(torch.Generator().manual_seed(0), 1)
            model = self.task.make_model(self.seed_values[0]).to(self.device)
        return step_flops(model, x.to(self.device)) * required(self.cfg.batch_size, "batch_size") * self.cfg.seeds

    def evaluate(self) -> dict[str, np.ndarray]:
        """All probes and extra measurements: metric -> (n_probe, S)."""
        self.stack.eval()
        stack: ModelStack | GroupedStack = self.stack
        if isinstance(stack, GroupedStack) and self.device.type == "cpu":
            # on CPU the grouped kernels lose to dense ones on a shared probe input (CNN 1.6x,
            # ConvNet 2x, bench_seeds.py): evaluate each seed's own copy of its weights
            stack = ModelStack([stack.member(i) for i in range(stack.size)], vectorize=False).eval()
        shared_x = [id(p.x) for p in self.task.probes]  # probes on one input tensor share its forward
        cache: dict[tuple[int, int], torch.Tensor] = {}
        rows = [evaluate_probe(stack, p, self.device, self.cfg.eval_batch, self.amp, self.task.loss,
                               cache if shared_x.count(id(p.x)) > 1 else None, readout=self.task.probe_readout)
                for p in self.task.probes]
        if self.task.measure is not None:
            extra = self.task.measure(self.stack)
            nan = np.full(self.stack.size, np.nan)
            for name in self.task.extra_probes:
                val = extra[name].detach().double().cpu().numpy()
                rows.append({"loss": val, "accuracy": nan, "target_loss": nan, "target_accuracy": nan})
        return {m: np.stack([r[m] for r in rows]) for m in METRICS}


def checkpoint_rows(table: ResultsTable, i: int = -1) -> list[dict[str, Any]]:
    """Row ``i`` of the table as flat records (one per probe and seed) for subscribers."""
    step, wall = table.steps[i], table.wall[i]
    rows = []
    for p, (name, order) in enumerate(zip(table.probes, table.orders)):
        for s, seed in enumerate(table.seeds):
            rec = {"step": step, "wall_time": wall, "probe": name, "order": order, "seed": seed}
            rec.update({m: float(table.values[m][i][p, s]) for m in METRICS})
            rows.append(rec)
    return rows


def _diverged(run: _Run, table: ResultsTable, bar: Any, bad: Any) -> None:
    """Stop a run whose training loss went NaN/inf: one line naming the learning rate."""
    if bar is not None:
        bar.close()
    cfg = run.cfg
    seeds = ", ".join(str(run.seed_values[int(i)]) for i in bad)
    kept = (f"; checkpoints up to step {table.steps[-1]} are kept in {run.out}" if run.out is not None and table.steps
            else "")
    lr = required(cfg.lr, "lr")
    raise TrainingDivergedError(
        f"training diverged: the loss of seed(s) {seeds} became NaN/inf by step {run.step} with learning rate "
        f"{lr:g}; lower it (e.g. --lr {lr / 10:g}){kept}")


def train(cfg: RunConfig, out: str | Path | None = None, resume: bool = False,
          subscribers: Iterable[Subscriber] = (), stop_event: threading.Event | None = None,
          progress: bool = False, threads: int | str | None = None, concurrent: int = 1,
          force: bool = False, task: Task | None = None) -> TrainResult:
    """Train ``cfg.seeds`` models and evaluate every probe at log-spaced checkpoints.

    ``out``: netCDF path, one row appended at every checkpoint (plus ``.probes.pt`` and
    ``.state.pt`` beside it); ``resume``: continue from the saved state. An existing result at ``out`` is never
    overwritten unless ``force`` (:class:`~dsb_widgets.errors.ResultExistsError`, raised before any
    data loads). ``task``: an already built task (:func:`~dsb_widgets.engine.task.build_task`).
    A NaN/inf training loss stops the run with :class:`~dsb_widgets.errors.TrainingDivergedError`
    (checkpoints written so far are kept). ``subscribers`` receive events
    ``{"type": "start" | "checkpoint" | "progress" | "done", ...}`` from the training thread;
    setting ``stop_event`` ends the run after the current step (state saved, resumable).
    ``threads``: torch CPU threads for this thread (None: leave as is; "auto": this run's share of
    the cores among ``concurrent`` runs, 1 for small models; see :mod:`dsb_widgets.threads`).
    """
    cfg = resolve_config(cfg)
    subscribers = list(subscribers)
    if out is not None:
        out = check_out_path(out, resume=resume, force=force)
    driver = get_experiment(cfg.experiment).driver
    if driver is not None:  # evaluation-only experiment (checkpoints): same files, same events
        if threads is not None:
            apply_threads(threads if isinstance(threads, int) else auto_threads(concurrent))
        return driver(cfg, out=out, resume=resume, subscribers=subscribers, stop_event=stop_event,
                      progress=progress)
    if threads is not None:
        apply_threads(threads if isinstance(threads, int) else auto_threads(concurrent))
    run = _Run(cfg, Path(out) if out is not None else None, resume, task=task, force=force)
    if threads == "auto" and run.device.type == "cpu" and run.step_flops() < SMALL_MODEL_FLOPS:
        apply_threads(1)
    table, ckpts = run.table, set(run.checkpoints)
    _publish(subscribers, {"type": "start", "config": cfg, "probes": table.probes, "orders": table.orders,
                           "floors": table.floors, "seeds": table.seeds, "checkpoints": run.checkpoints,
                           "step": run.step, "rows": [r for i in range(len(table.steps))
                                                      for r in checkpoint_rows(table, i)]})
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=run.step, desc=f"{cfg.experiment}/{cfg.dataset}/{cfg.model}",
                   unit="step", dynamic_ncols=True)
    t_eval = 0.0
    train_timer = DeviceTimer(run.device)  # CUDA events on a GPU: device time, read without a sync per step
    t0 = time.perf_counter() - run.elapsed
    last_save, last_progress = time.perf_counter(), 0.0
    status = "finished"
    while True:
        if run.step in ckpts and not (table.steps and table.steps[-1] == run.step):  # (resumed: done)
            te = time.perf_counter()
            metrics = run.evaluate()
            t_eval += time.perf_counter() - te
            run.elapsed = time.perf_counter() - t0
            tl = (run.loss_sum / run.loss_n).cpu().numpy() if run.loss_n else np.full(cfg.seeds, np.nan)
            if run.loss_n and not np.isfinite(tl).all():
                _diverged(run, table, bar, np.flatnonzero(~np.isfinite(tl)))
            run.loss_sum.zero_()
            run.loss_n = 0
            table.add(run.step, run.elapsed, metrics, tl)
            if run.writer is not None:
                try:
                    run.writer.write(table)  # one appended record per checkpoint (engine/results.py)
                    if time.perf_counter() - last_save >= cfg.save_interval_s or run.step == cfg.steps:
                        run.save_state()
                        last_save = time.perf_counter()
                except OutputWriteError:  # disk full: the bar closes before the one-line error
                    if bar is not None:
                        bar.close()
                    raise
            _publish(subscribers, {"type": "checkpoint", "step": run.step, "wall_time": run.elapsed,
                                   "rows": checkpoint_rows(table)})
            if bar is not None:
                real = table.probes.index("real") if "real" in table.probes else 0
                bar.set_postfix({table.probes[real]: f"{metrics['loss'][real].mean():.3f}"})
        if run.step >= required(cfg.steps, "steps"):
            break
        if stop_event is not None and stop_event.is_set():
            status = "stopped"
            run.elapsed = time.perf_counter() - t0
            run.save_state()
            break
        train_timer.start()
        run.loss_sum += run.update()
        run.loss_n += 1
        train_timer.stop()
        if run.step % DIVERGENCE_CHECK_EVERY == 0 and not bool(torch.isfinite(run.loss_sum).all()):
            _diverged(run, table, bar, torch.nonzero(~torch.isfinite(run.loss_sum)).flatten().tolist())
        if run.step in ckpts:
            train_timer.seconds()  # fold in the finished CUDA event pairs (the list stays short)
        if bar is not None:
            bar.update(1)
        now = time.perf_counter()
        if now - last_progress > 0.5:
            last_progress = now
            _publish(subscribers, {"type": "progress", "step": run.step, "total": cfg.steps,
                                   "elapsed": now - t0})
    if bar is not None:
        bar.close()
    ds = table.to_dataset()
    timings = {"train_s": train_timer.total(), "eval_s": t_eval, "total_s": time.perf_counter() - t0}
    _publish(subscribers, {"type": "done", "status": status, "step": run.step, "timings": timings})
    return TrainResult(ds, status, run.out, timings)
