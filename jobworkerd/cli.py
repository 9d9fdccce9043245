"""`jobworkerd` command line: `serve` runs the daemon, `ca` manages certificates."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import DEFAULT_CONFIG_PATH


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobworkerd", description="Single-host job runner daemon.")
    parser.add_argument("--version", action="version", version=f"jobworkerd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon (as root)")
    serve.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"YAML config (default {DEFAULT_CONFIG_PATH})")
    serve.set_defaults(func=_serve)
    from . import ca

    ca.add_parser(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .api.server import serve

    return serve(args.config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
