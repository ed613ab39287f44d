"""The training engine: one loop for every experiment (images, text, clones).

An *experiment* turns a :class:`RunConfig` into a :class:`Task` (a model factory, a training
batch sampler and a list of fixed :class:`Probe` sets); :func:`train` runs it for several seeds
at once, evaluates every probe at log-spaced checkpoints, writes an xarray/netCDF result as it
goes and publishes each checkpoint to subscribers (the UI's run registry is one).
"""

from dsb_widgets.engine.loop import TrainResult, train
from dsb_widgets.engine.results import load_results
from dsb_widgets.engine.schedule import log_checkpoints
from dsb_widgets.engine.task import (
    ConfigError,
    Experiment,
    Probe,
    RunConfig,
    Task,
    build_task,
    get_experiment,
    list_experiments,
    register_experiment,
    resolve_config,
)

__all__ = [
    "ConfigError",
    "Experiment",
    "Probe",
    "RunConfig",
    "Task",
    "TrainResult",
    "build_task",
    "get_experiment",
    "list_experiments",
    "load_results",
    "log_checkpoints",
    "register_experiment",
    "resolve_config",
    "train",
]
