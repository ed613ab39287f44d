"""What an experiment hands the engine: the run config, probe sets and the task.

Adding an experiment (text, clones, ...) means writing one module that calls
:func:`register_experiment` with a builder ``RunConfig -> Task``; the engine, the CLI, the run
registry and the dashboard then work with it unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from dsb_widgets.errors import ConfigError  # re-exported for `from dsb_widgets.engine.task import ConfigError`


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved as JSON in the results' ``attrs``.

    Fields left as ``None`` are filled from the experiment's defaults by :func:`resolve_config`.
    Experiment-specific settings (tokenizer, context length, clone directory...) go in ``options``.
    """

    experiment: str = "images"
    dataset: str | None = None  # image dataset, or text corpus name / path
    model: str | None = None
    steps: int | None = None
    seeds: int = 1
    seed: int = 0
    batch_size: int | None = None
    optimizer: str | None = None  # "sgd" | "adamw"
    lr: float | None = None
    momentum: float = 0.9
    beta2: float = 0.95
    weight_decay: float | None = None
    warmup: int | None = None
    schedule: str | None = None  # "cosine" | "constant"; None: the experiment's default (clones: constant), else cosine
    per_octave: int | None = None
    probe_size: int | None = None
    probes: tuple[str, ...] | None = None  # None: all of the experiment's probes
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    data_dir: str | None = None
    eval_batch: int = 2048
    save_interval_s: float = 5.0  # min seconds between model-state saves (results: every checkpoint)
    grad_clip: float | None = None  # clip each seed's gradient 2-norm (nanoGPT: 1.0); None: off
    options: Mapping[str, Any] = field(default_factory=dict)
    compile: bool = False  # torch.compile the training forward (engine/accel.py; falls back, saying why)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["options"] = dict(self.options)
        if not d["compile"]:  # left out when off: results saved before the field existed keep their config
            del d["compile"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        d = json.loads(text)
        if d.get("probes") is not None:
            d["probes"] = tuple(d["probes"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


_T = typing.TypeVar("_T")


def required(value: _T | None, name: str) -> _T:
    """``value``, a :class:`RunConfig` field that :func:`resolve_config` fills, never ``None``.

    Raises ConfigError naming the field when a config was used without being resolved first.
    """
    if value is None:
        raise ConfigError(f"config field {name!r} is not set: pass the config through resolve_config() first")
    return value


@dataclass(frozen=True)
class Probe:
    """A named, fixed evaluation set, built once per run from training-set statistics.

    ``order`` is the interaction order of the statistics the probe keeps (1: means/marginals,
    2: covariances/bigrams, ..., ``math.inf`` for real data); the UI colours curves by it.
    ``y`` holds labels ((N,) classes, or (N, T) tokens with -100 where not scored); ``target``
    holds the alternative labels of edited probes (OT/CQN: the class the image was moved to).
    ``floor`` is the best achievable loss when known (entropy rate of an n-gram probe).
    """

    name: str
    order: float
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None
    floor: float = math.nan
    description: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])


PROBE_SEEDING = "sha256(seed/name)"  # recorded in results' attrs; sweeps rerun results seeded otherwise


def probe_seed(seed: int, name: str) -> int:
    """Seed of probe ``name``'s generator in a run with seed ``seed``: a stable hash of both.

    Probes are seeded by name, never by position, so a probe's data is the same whichever other
    probes are built and in whatever order (and adding a probe to an experiment changes no other).
    """
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: fits torch's and numpy's seeds


# Extra probe-like measurements per checkpoint (e.g. Taylor predictions of the loss): given the
# model stack, returns {name: tensor (S,)}; the names appear as extra probes (loss only).
Measurement = Callable[[nn.Module], Mapping[str, torch.Tensor]]


@dataclass
class Task:
    """A built experiment: model factory, training sampler, probes and extra measurements.

    make_model(seed) -> fresh nn.Module (same architecture for every seed).
    sample_batch(generator, batch_size) -> (x, y) on CPU or the run device; y as in Probe.
    """

    make_model: Callable[[int], nn.Module]
    sample_batch: Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]
    probes: list[Probe]
    extra_probes: Mapping[str, float] = field(default_factory=dict)  # name -> order, from measure
    measure: Measurement | None = None
    info: Mapping[str, Any] = field(default_factory=dict)  # units, bytes_per_token, classes...
    # "ce": cross-entropy on class/token labels; "mse": squared error on float targets, outputs
    # (B, K), probe y (N, K) with NaN where a probe does not score that output (engine/symmetry.py)
    loss: str = "ce"
    # sample_batch also takes a generator on the run device (training set resident there, indices
    # drawn there: no host-to-device copy, no sync per step); the engine then seeds CUDA generators
    device_sampling: bool = False
    # step_loss(stack, x, y) -> (S,) per-seed training loss, used instead of cross-entropy on
    # stack(x) (e.g. a masked LM sending only its masked positions through the read-out); None: that
    step_loss: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (ModelStack, x, y)
    # probe_readout(stack, x (B, ...), scored (B, ...) bool on the CPU) -> (S, N, V) logits of the N
    # scored positions only (row-major), for evaluate_probe; None: the full read-out stack(x, shared=True)
    probe_readout: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: how to build its task, its defaults and its choices."""

    name: str
    build: Callable[[RunConfig], Task]
    defaults: Mapping[str, Any]
    models: tuple[str, ...]
    probes: tuple[str, ...]
    datasets: tuple[str, ...]
    description: str = ""
    validate: Callable[[RunConfig], None] | None = None
    # Typed ``-o KEY=VALUE`` options: a frozen dataclass (see dsb_widgets.options). When set,
    # resolve_config rejects unknown names / bad types / out-of-range values and stores the full,
    # typed option set in the config; builders read it with ``exp.parse(cfg)``.
    options: type | None = None
    # Evaluation-only experiments (``checkpoints``) bring their own driver instead of the training
    # loop: ``driver(cfg, out=, resume=, subscribers=, stop_event=, progress=) -> TrainResult``,
    # writing the same Dataset and publishing the same events; ``train`` hands the run to it.
    driver: Callable[..., Any] | None = None
    open_models: bool = False  # --model is free (a path / hub id); ``models`` are only suggestions
    # ``adjust(resolved_cfg, asked_options) -> cfg``: called by resolve_config (before ``validate``)
    # with the options the caller passed, before any default was merged in. It may turn off a
    # default option that does not apply to this run (so the saved config says what ran) or raise
    # ConfigError for an asked-for option the run would ignore (images: crops/flips on a clone).
    adjust: Callable[["RunConfig", Mapping[str, Any]], "RunConfig"] | None = None

    def parse(self, cfg: "RunConfig") -> Any:
        """The run's options as this experiment's typed dataclass."""
        from dsb_widgets.options import parse_options

        if self.options is None:
            raise ConfigError(f"experiment {self.name!r} declares no typed options")
        return parse_options(self.options, cfg.options, experiment=self.name)


_EXPERIMENTS: dict[str, Experiment] = {}
# Built-in experiments live in these modules and register themselves when imported.
_BUILTIN = {
    "images": "dsb_widgets.engine.images",
    "text": "dsb_widgets.engine.text",
    "clones": "dsb_widgets.engine.clones",
    "symmetry": "dsb_widgets.engine.symmetry",
    "checkpoints": "dsb_widgets.engine.checkpoints",
}


def register_experiment(exp: Experiment) -> Experiment:
    _EXPERIMENTS[exp.name] = exp
    return exp


def get_experiment(name: str) -> Experiment:
    if name not in _EXPERIMENTS and name in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[name])
        except ModuleNotFoundError as err:  # the module is not written yet / optional dep missing
            raise ConfigError(f"experiment {name!r} is not available here ({err})") from err
    if name not in _EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {sorted(list_experiments())}")
    return _EXPERIMENTS[name]


def list_experiments() -> list[str]:
    names = set(_EXPERIMENTS)
    for name, module in _BUILTIN.items():
        if importlib.util.find_spec(module) is not None:
            names.add(name)
    return sorted(names)


_COMMON_DEFAULTS: dict[str, Any] = {
    "steps": 1024,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 5e-4,
    "warmup": 0,
    "schedule": "cosine",
    "per_octave": 4,
    "probe_size": 1000,
}


def _check_choice(value: str | None, choices: Iterable[str], what: str, flag: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; pass {flag} one of: {', '.join(choices)}")


_FLAGS = {"batch_size": "--batch-size", "per_octave": "--per-octave", "probe_size": "--probe-size",
          "weight_decay": "--weight-decay", "grad_clip": "--grad-clip", "data_dir": "--data-dir",
          "eval_batch": "eval_batch", "save_interval_s": "save_interval_s"}


def _check_types(cfg: RunConfig) -> RunConfig:
    """Coerce each field to its declared type (``"64"`` -> 64, YAML's ``"1e-3"`` -> 0.001) or raise a
    one-line ConfigError (``steps: abc``, ``seeds: 1.5``, ``probes: real`` instead of a list)."""
    from dsb_widgets.options import _coerce

    hints = typing.get_type_hints(RunConfig)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"options must be a mapping of name -> value (got {value!r}), "
                                  "e.g. options: {width: 64}")
            continue
        if value is None:
            continue
        flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        if f.name == "probes":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"probes must be a list of names (got {value!r}); write probes: [{value}] "
                                  f"or pass --probes {value}")
            changes[f.name] = tuple(str(v) for v in value)
            continue
        try:
            coerced = _coerce(f.name, value, hints[f.name])
        except ConfigError:
            coerced = None
        if coerced is None or (isinstance(coerced, float) and not math.isfinite(coerced)):
            kind = {int: "an integer", float: "a number", bool: "true or false"}.get(
                next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name]), "a string")
            raise ConfigError(f"{f.name} must be {kind} (got {value!r}); pass {flag} with {kind}")
        if coerced != value or type(coerced) is not type(value):
            changes[f.name] = coerced
    return cfg.replace(**changes) if changes else cfg


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Fill ``None`` fields from the experiment's defaults and validate; raises ConfigError."""
    cfg = _check_types(cfg)
    exp = get_experiment(cfg.experiment)
    # per-dataset defaults (``defaults["by_dataset"][name]``) override the experiment's own
    dataset = cfg.dataset if cfg.dataset is not None else exp.defaults.get("dataset")
    defaults = {**exp.defaults, **exp.defaults.get("by_dataset", {}).get(dataset, {})}
    filled = {}
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is None and f.name != "data_dir" and (f.name != "probes" or "probes" in defaults):
            if f.name in defaults:
                filled[f.name] = defaults[f.name]
            elif f.name in _COMMON_DEFAULTS:
                filled[f.name] = _COMMON_DEFAULTS[f.name]
    options = {**exp.defaults.get("options", {}), **defaults.get("options", {}), **dict(cfg.options)}
    if exp.options is not None:
        from dsb_widgets.options import options_dict, parse_options

        options = options_dict(parse_options(exp.options, options, experiment=exp.name))
    asked = dict(cfg.options)
    cfg = cfg.replace(**filled, options=options)
    if cfg.probes is None:
        cfg = cfg.replace(probes=tuple(exp.defaults.get("probes", exp.probes)))  # opt-in probes left out
    if cfg.steps is None or cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1 (got {cfg.steps}); pass e.g. --steps 512")
    if cfg.seeds < 1:
        raise ConfigError(f"seeds must be >= 1 (got {cfg.seeds}); pass e.g. --seeds 3")
    if cfg.batch_size is None or cfg.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1 (got {cfg.batch_size}); pass --batch-size 128")
    if cfg.lr is None or not cfg.lr > 0:
        raise ConfigError(f"learning rate must be > 0 (got {cfg.lr}); pass e.g. --lr 0.05")
    if cfg.probe_size is None or cfg.probe_size < 1:
        raise ConfigError(f"probe size must be >= 1 (got {cfg.probe_size}); pass --probe-size 1000")
    if cfg.per_octave is None or cfg.per_octave < 1:
        raise ConfigError(f"checkpoints per octave must be >= 1 (got {cfg.per_octave}); pass e.g. --per-octave 4")
    if cfg.weight_decay is None or cfg.weight_decay < 0:
        raise ConfigError(f"weight decay must be >= 0 (got {cfg.weight_decay}); pass e.g. --weight-decay 0.05")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"gradient clipping norm must be > 0 (got {cfg.grad_clip}); pass e.g. --grad-clip 1.0 "
                          "or leave it out")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise ConfigError(f"warmup must be >= 0 steps (got {cfg.warmup}); pass e.g. --warmup 0")
    if not exp.open_models:
        _check_choice(cfg.model, exp.models, "model", "--model")
    _check_choice(cfg.optimizer, ("sgd", "adamw"), "optimizer", "--optimizer")
    _check_choice(cfg.schedule, ("cosine", "constant"), "schedule", "--schedule")
    for p in cfg.probes or ():  # filled above
        _check_choice(p, exp.probes, "probe", "--probes")
    if not (cfg.device in ("auto", "cpu", "mps") or cfg.device.startswith("cuda")):
        raise ConfigError(f"unknown device {cfg.device!r}; pass --device auto, cpu or cuda")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no GPU is visible; pass --device cpu")
    if exp.adjust is not None:
        cfg = exp.adjust(cfg, asked)
    if exp.validate is not None:
        exp.validate(cfg)
    return cfg


def build_task(cfg: RunConfig) -> Task:
    """Build the experiment's task for ``cfg`` (probes, sampler, model factory, measurements) as
    the engine does; pass it to :func:`dsb_widgets.engine.train` (``task=``) to train on it, or
    inspect it (e.g. ``task.measure``, the Taylor measurement) without monkeypatching."""
    cfg = resolve_config(cfg)
    torch.manual_seed(cfg.seed)
    return get_experiment(cfg.experiment).build(cfg)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
