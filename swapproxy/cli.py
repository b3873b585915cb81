"""Command line: ``swapproxy -c FILE``, ``swapproxy check -c FILE``, ``swapproxy --version``.

Only argument parsing and exit codes live here; the work is in
:mod:`swapproxy.config` and :mod:`swapproxy.server`. llama-swap's own spellings
(``-config``, ``-config-dir``, ``-listen``, ``-tls-cert-file``, ``-tls-key-file``,
``-watch-config``) are accepted too, so its command line (a systemd unit's
``ExecStart``) works unchanged.
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
    _sources(p)
    p.add_argument("--listen", "-listen", help="HOST:PORT, :PORT for all interfaces, or several, comma-separated "
                   "(127.0.0.1,::1 takes the port of the others); default 127.0.0.1:8080, 127.0.0.1:8443 with TLS")
    p.add_argument("--tls-cert-file", "-tls-cert-file", metavar="FILE", help="serve HTTPS with this certificate "
                   "(PEM, its chain after it); needs --tls-key-file")
    p.add_argument("--tls-key-file", "-tls-key-file", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--log-level", choices=sorted(_LEVELS), help="overrides the config's logLevel")
    p.add_argument("--watch-config", "-watch-config", action="store_true",
                   help="reload when the config changes (SIGHUP always reloads)")
    p.add_argument("--version", "-version", action="version", version=f"swapproxy {__version__}")
    return p


def _sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", "-config", help="config file (llama-swap format)")
    p.add_argument("--config-dir", "-config-dir", metavar="DIR", help="also merge the *.yaml/*.yml files of DIR, "
                   "in name order, after --config (as llama-swap's -config-dir)")


def _load(path: str | None, config_dir: str | None = None) -> Config | None:
    try:
        config = load_config(path, config_dir=config_dir)
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
    _sources(p)
    args = p.parse_args(argv)
    if args.config is None and args.config_dir is None:
        p.error("give a config file (-c FILE) or a directory (--config-dir DIR)")
    config = _load(args.config, args.config_dir)
    if config is None:
        return 2
    from .checkreport import describe
    from .nvml import gpu_provider

    print("\n".join(describe(config.file, config, gpu_provider())))
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
    parser = _serve_parser()
    args = parser.parse_args(args_in)
    if args.config is None and args.config_dir is None:
        parser.error("give a config file (-c FILE) or a directory (--config-dir DIR)")
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        parser.error("--tls-cert-file and --tls-key-file go together")
    config = _load(args.config, args.config_dir)
    if config is None:
        return 2
    from .listen import DEFAULT_PORT, DEFAULT_TLS_PORT, parse_listen, tls_context
    from .server import run  # aiohttp is imported only when serving

    tls = None
    try:
        if args.tls_cert_file is not None:
            tls = tls_context(args.tls_cert_file, args.tls_key_file)
        port = DEFAULT_PORT if tls is None else DEFAULT_TLS_PORT
        addresses = parse_listen(args.listen or f"127.0.0.1:{port}", default_port=port)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        print(f"swapproxy: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config, args.log_level)
    return run(config, addresses, watch_config=args.watch_config, tls=tls)


if __name__ == "__main__":
    sys.exit(main())
