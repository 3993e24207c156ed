"""Which tracking store a command-line tool reads, found the way kdexp-train writes it: `--uri`, else
$MLFLOW_TRACKING_URI, else the SQLite store under the run's `paths.root` (`--root DIR`, or `paths.root=DIR`
pasted from a kdexp-train command line; default `outputs`, relative to the working folder)."""

from __future__ import annotations

import argparse
import os

DEFAULT_ROOT = "outputs"  # conf/train.yaml's paths.root


def store_uri(uri: str | None = None, root: str | None = None) -> str:
    """The tracking URI: `uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<root>/mlflow.db`.

    Args:
        uri: an explicit tracking URI (wins over everything).
        root: kdexp-train's `paths.root` (default `outputs`).
    Returns:
        The URI kdexp-train would have written to with the same settings.
    """
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or DEFAULT_ROOT).rstrip('/')}/mlflow.db"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """`--uri` and `--root` on a command-line tool's parser; read them back with `parsed_uri(args)`."""
    parser.add_argument("--uri", help="tracking store (default: $MLFLOW_TRACKING_URI, else the SQLite store of "
                                      "--root)")
    parser.add_argument("--root", help=f"kdexp-train's paths.root, whose mlflow.db is read (default: {DEFAULT_ROOT}; "
                                       "`paths.root=DIR` is accepted too)")


def hydra_style(argv: list[str]) -> list[str]:
    """argv with `paths.root=DIR` (as typed for kdexp-train) turned into `--root DIR`."""
    out: list[str] = []
    for arg in argv:
        out += ["--root", arg.split("=", 1)[1]] if arg.startswith("paths.root=") else [arg]
    return out


def parsed_uri(args: argparse.Namespace) -> str:
    return store_uri(args.uri, args.root)
