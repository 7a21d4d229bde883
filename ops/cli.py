"""``dai``: the command line of Democratic_AI."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

__all__ = ["main"]

USAGE_FLUSH_ENV = "DAI_USAGE_FLUSH_SECONDS"  # longest a gateway buffers usage events (default 1 s)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"dai: set {name} (e.g. {'nats://127.0.0.1:4222' if name == 'NATS_URL' else 'postgresql://…'})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dai", description="Democratic_AI: an open platform for sharing AI tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole platform on this machine (embedded NATS and Postgres)")
    up.add_argument("--data-dir", type=Path, default=Path(".dai"), help="where all state lives (default: ./.dai)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    up.add_argument("--nats-port", type=int, default=None, help="embedded NATS port (default: 4222, from nats.conf)")

    gateway = commands.add_parser(
        "gateway", help="run the HTTP gateway (needs NATS_URL and DATABASE_APP_URL, or DATABASE_URL to derive it)"
    )
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)

    commands.add_parser("hub", help="run the hub: module announcements and presence (needs NATS_URL)")

    module = commands.add_parser("module", help="module commands")
    module_commands = module.add_subparsers(dest="module_command", required=True, metavar="ACTION")
    run = module_commands.add_parser("run", help="run a module class against NATS_URL")
    run.add_argument("spec", metavar="package.module:Class")

    projections = commands.add_parser("projections", help="projection commands")
    projection_commands = projections.add_subparsers(dest="projection_command", required=True, metavar="ACTION")
    prun = projection_commands.add_parser("run", help="fold events into read models (needs NATS_URL, DATABASE_URL)")
    prun.add_argument("names", nargs="*", metavar="NAME", help="projections to run (default: all)")
    rebuild = projection_commands.add_parser("rebuild", help="empty a read model and replay its stream")
    rebuild.add_argument("name", metavar="NAME")
    identity = commands.add_parser("identity", help="identity commands")
    identity_commands = identity.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    identity_commands.add_parser("rotate-jwt-key", help="sign new access tokens with a new key (old ones stay valid)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .runtime import run_until_signalled, setup_logging

    setup_logging()
    if args.command == "up":
        from .up import UpOptions, up

        return up(UpOptions(data_dir=args.data_dir, port=args.port, nats_port=args.nats_port))

    from . import services

    if args.command == "gateway":
        from democratic_ai.services.gateway import GatewayConfig

        from democratic_ai.schemas import app_dsn

        from democratic_ai.services.metering import MeteringConfig, PublisherConfig

        database_url = os.environ.get("DATABASE_APP_URL") or app_dsn(_env("DATABASE_URL"))
        flush = services.env_seconds(USAGE_FLUSH_ENV, PublisherConfig().max_delay)
        if flush <= 0:
            raise SystemExit(f"dai: {USAGE_FLUSH_ENV} must be a positive number of seconds")
        metering = MeteringConfig(publisher=PublisherConfig(max_delay=flush))
        config = GatewayConfig(nats_url=_env("NATS_URL"), database_url=database_url, host=args.host, port=args.port,
                               metering=metering)
        run_until_signalled(lambda stop: services.run_gateway(config, stop))
    elif args.command == "hub":
        nats_url = _env("NATS_URL")
        run_until_signalled(lambda stop: services.run_hub(nats_url, stop))
    elif args.command == "module":
        module_class = services.load_module_class(args.spec)
        nats_url = _env("NATS_URL")
        run_until_signalled(lambda stop: services.run_module(nats_url, module_class, stop))
    elif args.command == "projections" and args.projection_command == "run":
        nats_url, database_url = _env("NATS_URL"), _env("DATABASE_URL")
        run_until_signalled(lambda stop: services.run_projections(nats_url, database_url, args.names, stop))
    elif args.command == "identity":
        kid = asyncio.run(services.rotate_jwt_key(_env("NATS_URL")))
        print(f"new JWT signing key {kid}; tokens signed by the previous key stay valid until they expire")
    elif args.command == "projections" and args.projection_command == "rebuild":
        count = asyncio.run(services.rebuild_projection(_env("NATS_URL"), _env("DATABASE_URL"), args.name))
        print(f"rebuilt {args.name} from {count} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
