"""The ``unit-gateway`` command: run, sandbox, demo, check-config."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import unit_gateway
from unit_gateway import demo
from unit_gateway.config import schema as config
from unit_gateway.config.core import OPTION, describe_problems

DEFAULT_CONFIG = Path("config/local.yaml")


def gateway_script() -> Path:
    """The mitmproxy script shipped in the package."""
    return Path(unit_gateway.__file__).resolve().parent / "script.py"


def mitmproxy_tool(name: str) -> str:
    """The mitmdump/mitmweb of this environment, not whatever else is on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"unit-gateway: {name} not found; is mitmproxy installed?")
    return found


def mitmproxy_argv(args: argparse.Namespace, config_path: Path) -> list[str]:
    argv = [
        mitmproxy_tool("mitmweb" if args.web else "mitmdump"),
        "-s",
        str(gateway_script()),
        "--set",
        f"{OPTION}={config_path}",
    ]
    for mode in args.mode or []:
        argv += ["--mode", mode]
    if args.listen_host is not None:
        argv += ["--listen-host", args.listen_host]
    if args.listen_port is not None:
        argv += ["--listen-port", str(args.listen_port)]
    return argv + args.mitmproxy_args


#: A URL that may carry a user name or password (``http://user:pass@proxy:3128``).
_USERINFO = re.compile(r"://[^/?#@]*@")


def quotes_credentials(mode: str) -> bool:
    """Whether mitmproxy refuses ``mode`` for credentials in its URL (and quotes them). An
    ``@`` that only starts the listen address (``reverse:http://host:80@8081``) parses."""
    if not _USERINFO.search(mode):
        return False
    from mitmproxy.proxy import mode_specs

    try:
        mode_specs.ProxyMode.parse(mode)
    except ValueError:
        return True
    return False


def modes_of(argv: Sequence[str]) -> list[str]:
    """Every proxy mode mitmproxy's arguments give (``--mode``, ``-m``, ``--set mode=``)."""
    found = []
    for arg, following in zip(argv, [*argv[1:], ""], strict=True):
        if arg in ("--mode", "-m"):
            found.append(following)
        elif arg.startswith("--mode="):
            found.append(arg.removeprefix("--mode="))
        elif arg == "--set" and following.startswith("mode="):
            found.append(following.removeprefix("mode="))
    return found


def cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.config or os.environ.get("UNIT_GATEWAY_CONFIG") or DEFAULT_CONFIG)
    try:
        config.load(path)
    except config.ConfigError as e:
        print(describe_problems(str(path), e), file=sys.stderr)
        return 2
    argv = mitmproxy_argv(args, path.resolve())
    if any(quotes_credentials(mode) for mode in modes_of(argv)):
        # mitmproxy refuses a mode URL with credentials, quoting them in its error.
        print(
            "unit-gateway: a --mode URL cannot carry credentials; give an upstream proxy's "
            "as -- --set upstream_auth=USER:PASSWORD",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    # Replace this process, so signals and the exit status are mitmproxy's own.
    os.execv(argv[0], argv)
    return 1  # pragma: no cover


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(args.file)
    except config.ConfigError as e:
        print(describe_problems(args.file, e), file=sys.stderr)
        return 1
    model = loaded.model
    upstreams = ", ".join(f"{u.url} ({u.environment})" for u in model.unit.upstreams)
    print(f"{args.file}: ok")
    print(f"  upstreams: {upstreams}")
    print(
        "  two-factor: customer "
        f"{model.tokens.customer.two_factor}, cardholder {model.tokens.cardholder.two_factor}"
    )
    if model.sandbox.embedded:
        print(f"  embedded sandbox: {model.sandbox.host}:{model.sandbox.port}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from unit_gateway.sandbox import server

    return server.run_from_args(args)


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unit-gateway",
        description="mitmproxy addons between your services and the Unit banking API.",
    )
    parser.add_argument("--version", action="version", version=unit_gateway.__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the gateway (mitmdump, or mitmweb with --web)",
        description="Run mitmdump (mitmweb with --web) with the unit-gateway addons. "
        "Arguments after -- go to mitmproxy unchanged.",
    )
    run.add_argument(
        "--config",
        help=f"configuration file (default: $UNIT_GATEWAY_CONFIG or {DEFAULT_CONFIG})",
    )
    run.add_argument("--web", action="store_true", help="run mitmweb instead of mitmdump")
    run.add_argument(
        "--mode",
        action="append",
        help="mitmproxy mode, e.g. regular, reverse:https://api.s.unit.sh, transparent "
        "(repeatable; default regular)",
    )
    run.add_argument(
        "--listen-host",
        default="127.0.0.1",
        help="address the proxy listens on (default 127.0.0.1; 0.0.0.0 to serve other hosts)",
    )
    run.add_argument("--listen-port", type=int, help="port the proxy listens on")
    run.add_argument("mitmproxy_args", nargs="*", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    sandbox = commands.add_parser(
        "sandbox",
        help="run the local Unit sandbox",
        description="A local stand-in for Unit's sandbox API, for the demo, tests and benchmarks.",
    )
    from unit_gateway.sandbox import server

    server.configure_parser(sandbox)
    sandbox.set_defaults(func=cmd_sandbox)

    demo_command = commands.add_parser(
        "demo",
        help="start the gateway and the local sandbox and drive them with Unit's SDK",
        description="Start the gateway with the local Unit sandbox embedded, drive a scripted "
        "story through it with Unit's Python SDK and placeholder tokens, and summarise what "
        "happened. Exits 0 when the story ran as expected, 1 naming the step that did not.",
    )
    demo.configure_parser(demo_command)
    demo_command.set_defaults(func=cmd_demo)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file, resolving its secret references.",
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
