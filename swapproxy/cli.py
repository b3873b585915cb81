"""Command line: ``swapproxy -c FILE``, ``swapproxy check -c FILE``, ``swapproxy --version``.

Only argument parsing and exit codes live here; the work is in
:mod:`swapproxy.config` and :mod:`swapproxy.server`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, ConfigError, json_schema, load_config

__all__ = ["main"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swapproxy",
        description="Model-swap reverse proxy for llama-server. Subcommands: check, schema.",
        epilog="swapproxy check -c FILE   validate a config and summarise it\n"
        "swapproxy schema          print the config's JSON Schema",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="config file (llama-swap format)")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT, or :PORT for all interfaces (default 127.0.0.1:8080)")
    p.add_argument("--log-level", choices=sorted(_LEVELS), help="overrides the config's logLevel")
    p.add_argument("--watch-config", action="store_true", help="reload when the config file changes (SIGHUP always reloads)")
    p.add_argument("--version", action="version", version=f"swapproxy {__version__}")
    return p


def _load(path: str) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return None
    except OSError as exc:
        print(f"{path}: cannot read config: {exc.strerror or exc}", file=sys.stderr)
        return None
    for notice in config.notices:
        print(f"notice: {notice}", file=sys.stderr)
    return config


def _check(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="swapproxy check", description="Validate a config file and summarise it.")
    p.add_argument("-c", "--config", required=True)
    args = p.parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 2
    from .checkreport import describe
    from .nvml import gpu_provider

    print("\n".join(describe(args.config, config, gpu_provider())))
    return 0


def _setup_logging(config: Config, override: str | None) -> None:
    level = _LEVELS[override or config.log_level]
    handler: logging.Handler
    if config.log_to_stdout in ("proxy", "both"):
        handler = logging.StreamHandler(sys.stdout)
    else:  # upstream-only or none: keep proxy warnings visible on stderr
        handler = logging.StreamHandler(sys.stderr)
        level = max(level, logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["check"]:
        return _check(args_in[1:])
    if args_in[:1] == ["schema"]:
        print(json.dumps(json_schema(), indent=2))
        return 0
    args = _serve_parser().parse_args(args_in)
    config = _load(args.config)
    if config is None:
        return 2
    from .server import parse_listen, run  # aiohttp is imported only when serving

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"swapproxy: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config, args.log_level)
    return run(config, host, port, watch_config=args.watch_config)


if __name__ == "__main__":
    sys.exit(main())
