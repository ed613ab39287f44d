"""The ``dsb`` command line: ``dsb run images|text|clones``, ``dsb serve``, ``dsb clone``, ``dsb sweep``.

Every bad option fails before any training with one line naming the fix (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# Parsing imports nothing heavy (no torch, no xarray): `dsb --help` and bad flags answer at once;
# each command function imports what it needs. The clone/sweep parsers live in cli_parsers.py.
from dsb_widgets.cli_parsers import add_clone_parser, add_sweep_parser, add_threads_argument
from dsb_widgets.errors import ConfigError, DataNotFoundError, DSBError, MalformedDataError

if TYPE_CHECKING:  # annotations only: parsing imports no torch
    from dsb_widgets.engine.task import RunConfig

# Each experiment's typed -o options (small modules, no torch import): listed in `dsb run --help`.
EXPERIMENT_OPTIONS = {"images": ("dsb_widgets.options_images", "ImageOptions"),
                      "text": ("dsb_widgets.options_text", "TextOptions"),
                      "clones": ("dsb_widgets.options_clones", "CloneOptions"),
                      "symmetry": ("dsb_widgets.options_symmetry", "SymmetryOptions"),
                      "checkpoints": ("dsb_widgets.options_checkpoints", "CheckpointOptions")}


def options_epilog() -> str:
    """``-o KEY=VALUE`` options of every experiment, from their schemas (dsb_widgets.options)."""
    import importlib

    from dsb_widgets.options import options_help

    parts = ["experiment options (-o KEY=VALUE):"]
    for name, (module, cls) in EXPERIMENT_OPTIONS.items():
        lines = options_help(getattr(importlib.import_module(module), cls)).splitlines()
        parts.append(f"  {name}:\n" + "\n".join("    " + line for line in lines))
    return "\n".join(parts)


def _add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="train with probes at log-spaced checkpoints; writes netCDF results",
                       epilog=options_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default="images", help="images | text | clones (default images)")
    p.add_argument("--dataset", "--corpus", dest="dataset", help="dataset name (images: digits, mnist, "
                   "fashion_mnist, cifar10, svhn) or text corpus name / path to a UTF-8 file or folder")
    p.add_argument("--model", help="images: mlp | cnn | convnet | airbench | resnet; text: gpt | bert")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds trained together")
    p.add_argument("--seed", type=int, default=0, help="first seed (probe sets come from it)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--schedule", choices=["cosine", "constant"], default=None,
                   help="lr schedule after warm-up (default: the experiment's; clones: constant, else cosine)")
    p.add_argument("--per-octave", type=int, help="checkpoints per doubling of the step count")
    p.add_argument("--probe-size", type=int, help="examples per probe set")
    p.add_argument("--probes", nargs="+", help="subset of the experiment's probes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (needs g++ on CPU, "
                   "Triton on GPU; falls back with a one-line message)")
    p.add_argument("--data-dir", help="local data folder (else $DSB_DATA_DIR, else the Hugging Face hub)")
    p.add_argument("--out", help="results netCDF (default runs/<experiment>-<dataset>-<model>.nc)")
    p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    p.add_argument("--force", action="store_true", help="overwrite an existing result at --out (else refused)")
    p.add_argument("--grad-clip", type=float, help="clip each seed's gradient 2-norm to this (nanoGPT: 1.0; "
                   "default off)")
    p.add_argument("--per-seed", action="store_true", help="summary: one row per seed as well as the mean")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="experiment option, e.g. -o train_on=gauss_clone, -o taylor=true")
    # Text / clones options (stored in RunConfig.options).
    p.add_argument("--tokenizer", help="text: char | gpt2")
    p.add_argument("--vocab-size", type=int, help="text: keep the top-V tokens, the rest -> <unk>")
    p.add_argument("--context", type=int, help="text: sequence length")
    p.add_argument("--clones", help="clones: folder written by `dsb clone`")
    p.add_argument("--revisions", nargs="+", help="checkpoints: step<N> checkpoints / hub revisions to evaluate")
    add_threads_argument(p, "training")
    p.set_defaults(func=_cmd_run)


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _clones_corpus(folder: Path) -> str | None:
    """The corpus a `dsb clone` folder was made from (its provenance.json), or None."""
    import json

    try:
        return str(json.loads((folder / "provenance.json").read_text())["corpus"])
    except (OSError, ValueError, KeyError):
        return None  # the experiment reports the missing/broken folder with its own message


def config_from_args(args: argparse.Namespace) -> "RunConfig":
    from dsb_widgets.engine.task import RunConfig

    options: dict[str, Any] = {}
    for item in args.option:
        if "=" not in item:
            raise ConfigError(f"bad --option {item!r}; write KEY=VALUE, e.g. -o train_on=gauss_clone")
        key, value = item.split("=", 1)
        options[key.strip()] = _parse_value(value.strip())
    for key in ("tokenizer", "vocab_size", "context", "clones", "revisions"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    if args.experiment == "clones" and args.dataset is None and args.clones:
        args.dataset = _clones_corpus(Path(args.clones))
    return RunConfig(
        experiment=args.experiment, dataset=args.dataset, model=args.model, steps=args.steps,
        seeds=args.seeds, seed=args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, schedule=args.schedule,
        grad_clip=getattr(args, "grad_clip", None),
        per_octave=args.per_octave, probe_size=args.probe_size,
        probes=tuple(args.probes) if args.probes else None, device=args.device, amp=not args.no_amp,
        data_dir=args.data_dir, options=options, compile=bool(getattr(args, "compile", False)),
    )


def print_summary(ds: Any, out: Path | None, per_seed: bool = False) -> None:
    from dsb_widgets.engine.results import format_summary

    print("\n" + format_summary(ds, per_seed=per_seed))
    if out is not None:
        print(f"\nresults: {out}  (xarray.open_dataset(path, engine='scipy'))")


def _cmd_run(args: argparse.Namespace) -> int:
    from dsb_widgets.threads import check_threads

    check_threads(args.threads)
    from dsb_widgets.engine.loop import train
    from dsb_widgets.engine.results import check_out_path, has_result
    from dsb_widgets.engine.task import resolve_config

    cfg = resolve_config(config_from_args(args))
    default_name = f"{cfg.experiment}-{Path(str(cfg.dataset)).stem}-{Path(str(cfg.model)).name}.nc"
    out = Path(args.out) if args.out else Path("runs") / default_name
    if not args.out and not (args.resume or args.force):  # the default name: write beside an earlier run
        stem, n = out.stem, 2
        while has_result(out):
            out, n = out.with_name(f"{stem}-{n}.nc"), n + 1
    check_out_path(out, resume=args.resume, force=args.force)  # before any data loads: never clobber
    print(f"dsb run {cfg.experiment}: dataset={cfg.dataset} model={cfg.model} steps={cfg.steps} "
          f"seeds={cfg.seeds} probes={','.join(cfg.probes or ())} -> {out}", flush=True)
    result = train(cfg, out=out, resume=args.resume, progress=True, threads=args.threads or "auto",
                   force=args.force)
    print_summary(result.dataset, out, per_seed=getattr(args, "per_seed", False))
    if cfg.experiment == "clones":  # per clone: the step where its loss stops improving
        from dsb_widgets.engine.clones import format_saturation

        print("\n" + format_saturation(result.dataset))
    t = result.timings
    print(f"wall {t['total_s']:.1f}s: training {t['train_s']:.1f}s, probe evaluation {t['eval_s']:.1f}s "
          f"({100 * t['eval_s'] / max(t['total_s'], 1e-9):.1f}%)")
    return 0


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the live Panel dashboard on localhost")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="localhost")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--start", action="store_true", help="start the default digits run at once")
    p.add_argument("--runs-dir", default="runs", help="where runs are written and saved runs are listed")
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="another address browsers may use (default: --address, localhost, 127.0.0.1); repeatable")
    p.add_argument("--data-root", action="append", default=[], metavar="PATH",
                   help="a folder the page may read corpora/datasets from (besides --runs-dir and the data dir)")
    p.add_argument("--data-dir", help="local data folder for dashboard runs and a data root (else $DSB_DATA_DIR)")
    p.add_argument("--max-runs", type=int, help="runs trained at once; more are refused with a message "
                   "(default: one per CPU core)")
    add_threads_argument(p, "each dashboard run")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from dsb_widgets.threads import check_threads

    check_threads(args.threads)
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError(f"--max-runs must be >= 1 (got {args.max_runs})")
    from dsb_widgets.runs import REGISTRY
    from dsb_widgets.ui.app import serve

    REGISTRY.configure(threads=args.threads, max_runs=args.max_runs)
    if args.data_dir:
        os.environ["DSB_DATA_DIR"] = str(args.data_dir)  # the dashboard's runs read it as their data dir
    serve(port=args.port, address=args.address, show=args.show, start=args.start, runs_dir=args.runs_dir,
          allow_origins=args.allow_websocket_origin, data_roots=args.data_root, data_dir=args.data_dir)
    return 0


# Top-level modules of the optional extras: a missing one is a one-line install hint, not a traceback.
OPTIONAL_EXTRAS = {**dict.fromkeys(("panel", "bokeh", "param", "plotly", "ipywidgets", "anywidget", "tornado"), "ui"),
                   **dict.fromkeys(("dask", "distributed"), "sweep")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsb", description="Watch networks learn statistics of "
                                     "increasing complexity (distributional simplicity bias).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_serve_parser(sub)
    add_clone_parser(sub)
    add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DSBError, ConfigError, DataNotFoundError, MalformedDataError, FileNotFoundError) as err:
        print(f"dsb: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = OPTIONAL_EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"dsb: error: dsb {args.command} needs {err.name!r}: pip install 'dsb-widgets[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"run": "rerun with --resume to continue", "sweep": "rerun the same command; finished runs are skipped"}
        print(f"\ndsb: interrupted; {hint.get(args.command, 'stopped')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
