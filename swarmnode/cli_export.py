"""`swarmnode export` and `swarmnode predict`: the model afterwards (`swarmnode.export`).

Registered by `swarmnode.cli.build_parser`; like every command, each imports what it needs
when it runs, so `--help` stays light.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_export_commands(sub: Any) -> None:
    """The `export` and `predict` sub-commands on `sub` (argparse's sub-parsers action)."""
    p = sub.add_parser("export", help="write the final model, its preprocessing and a model card")
    _add_export_options(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("predict", help="apply an exported model to a data file; write predictions")
    _add_predict_options(p)
    p.set_defaults(handler=cmd_predict)


def cmd_export(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, _out
    from .export import export_site

    written = export_site(Path(args.config), args.format, Path(args.out))
    for path in written:
        _out(f"wrote {path}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, CommandFailed, _out
    from .export import predict_file

    model_dir = Path(args.model)
    out = Path(args.out) if args.out is not None else Path(f"{Path(args.data).stem}.predictions.csv")
    rows, metrics = predict_file(model_dir, args.data, out)
    _out(f"wrote {out}: {rows} predictions")
    if metrics is None:
        _out("no labels in the data: no metrics")
        if args.metrics_out is not None:
            raise CommandFailed(f"--metrics-out {args.metrics_out}: {args.data} has no labels to score")
        return EXIT_OK
    _out("metrics: " + json.dumps(metrics.to_dict()))
    if args.metrics_out is not None:
        Path(args.metrics_out).write_text(json.dumps(metrics.to_dict(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def _add_export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="site.toml", help="this site's site.toml (its swarm has stopped)")
    p.add_argument(
        "--format",
        default="torch",
        help="torch (state_dict, default), torchscript, safetensors or onnx (those two need their package)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the export to")


def _add_predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a `swarmnode export` directory")
    p.add_argument(
        "--data", required=True, metavar="FILE", help="a .csv/.h5ad/.npz file, read as in training"
    )
    p.add_argument("--out", metavar="CSV", help="predictions file (default: DATA_STEM.predictions.csv)")
    p.add_argument("--metrics-out", metavar="JSON", help="also write the metrics on the file's labels here")
