"""``unit-gateway demo``: the gateway and the local Unit sandbox, driven by Unit's Python SDK.

It starts ``unit-gateway run`` with the sandbox embedded (free loopback ports, its own run
directory) and plays the story (demo_story), so it is also a smoke test: it exits 0 when the
story ran as expected and 1 naming the step that did not.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# `name as name`: not used here; demo_replicas and the tests import them from this module.
from .demo_gateway import CARDHOLDER_LIFETIME as CARDHOLDER_LIFETIME
from .demo_gateway import Environment, proxied, start
from .demo_gateway import attach as attach
from .demo_gateway import demo_config as demo_config
from .demo_gateway import launch as launch
from .demo_output import (
    find_leaks_in_outputs,
    metric_samples,
    print_line,
    redacted_excerpt,
    summary_rows,
    table,
)
from .demo_output import histogram_quantile as histogram_quantile
from .demo_output import metric_total as metric_total
from .demo_story import StepFailed, Story
from .demo_story import mask as mask
from .demo_story import sdk_result as sdk_result
from .testing import harness

EXIT_OK, EXIT_STEP_FAILED, EXIT_NOT_STARTED = 0, 1, 2
#: As a shell reports a command that SIGINT ended.
EXIT_INTERRUPTED = 130


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web",
        action="store_true",
        help="run mitmweb and keep it (and the metrics endpoint) up until Ctrl-C",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="switch on a sandbox fault before the story, e.g. token_outage=true, "
        "error_rate=0.5, latency_ms=200 (repeatable), to see how failures reach callers",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="where the gateway's output, saved flows and config go (default: a new temp dir)",
    )
    parser.add_argument(
        "--replicas",
        type=replica_count,
        default=1,
        metavar="N",
        help="run N gateways sharing one private Redis (needs redis-server) and show that "
        "each token is minted once for all of them (default 1)",
    )


def replica_count(text: str) -> int:
    """``--replicas``: a whole number from 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {count}")
    return count


def parse_faults(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs, checked by the sandbox's own rules before anything starts."""
    from .sandbox.faults import FaultError, Faults

    faults: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--fault takes NAME=VALUE, not {item!r}")
        faults[name] = yaml.safe_load(raw)
    try:
        Faults().update(faults)
    except FaultError as e:
        known = ", ".join(Faults().as_json())
        raise ValueError(f"--fault {e} (switches: {known})") from None
    return faults


def run(args: argparse.Namespace) -> int:
    try:
        faults = parse_faults(args.fault)
    except ValueError as e:
        print(f"unit-gateway demo: {e}", file=sys.stderr)
        return EXIT_NOT_STARTED
    runner = run_one
    if args.replicas > 1:
        from . import demo_replicas

        problem = demo_replicas.cannot_start(args)
        if problem:
            print(f"unit-gateway demo: {problem}", file=sys.stderr)
            return EXIT_NOT_STARTED
        runner = demo_replicas.run
    try:
        import unit  # noqa: F401 - the SDK the story is told with
    except ImportError:
        print(
            "unit-gateway demo: needs Unit's Python SDK: uv sync (from a clone), or "
            "pip install 'unit-gateway[demo]'",
            file=sys.stderr,
        )
        return EXIT_NOT_STARTED
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="unit-gateway-demo-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    print_line("unit-gateway demo: Unit's Python SDK -> gateway -> local Unit sandbox")
    print_line("Callers hold placeholder tokens only (unitgw:org, unitgw:customer:<id>, ...).")
    started = time.monotonic()
    org_token = harness.make_org_token()
    secrets = {"org token": org_token}
    # SIGTERM as Ctrl-C: either way every process the demo started is stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = runner(args, faults, run_dir, secrets, started)
    except KeyboardInterrupt:
        print_line("unit-gateway demo: interrupted; everything it started is stopped.")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Once more over everything the run wrote, now that every process has stopped.
    leaks = find_leaks_in_outputs(secrets, run_dir)
    if leaks:
        print_line("unit-gateway demo: found in the outputs: " + "; ".join(map(str, leaks)))
        return EXIT_STEP_FAILED
    return code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_one(
    args: argparse.Namespace,
    faults: dict[str, Any],
    run_dir: Path,
    secrets: dict[str, str],
    started: float,
) -> int:
    """One gateway with the sandbox embedded; the story adds what it saw to ``secrets``."""
    try:
        env = start(run_dir, secrets["org token"], web=args.web)
    except harness.ProcessFailed as e:
        print_line(f"unit-gateway demo: the gateway did not start:\n{e}")
        return EXIT_NOT_STARTED
    story = Story(env, secrets=secrets)
    try:
        code = play(story, args, faults, started)
        if env.process.proc is not None and env.process.proc.poll() is None:
            story.collect_issued()
    finally:
        env.process.stop()
    return code


def play(story: Story, args: argparse.Namespace, faults: dict[str, Any], started: float) -> int:
    """The story, its summary and where to look next; the exit status."""
    env = story.env
    run_dir = env.run_dir
    print_line(f"  gateway  {env.proxy_url} ({'mitmweb' if args.web else 'mitmdump'})")
    print_line(f"  sandbox  {env.sandbox_url} (embedded)")
    print_line(f"  metrics  {env.metrics_url}")
    print_line(f"  outputs  {run_dir}")
    apply_faults(env, faults)
    with proxied(env.proxy_url):
        if not play_steps(story.steps(), f"The gateway's output is in {env.process.stdout_path}."):
            return EXIT_STEP_FAILED
    samples = metric_samples(env)
    (run_dir / "metrics.txt").write_text(
        "\n".join(f"{n} {labels} {v}" for n, labels, v in samples) + "\n"
    )
    print_line()
    print_line(f"Summary (from the gateway's /metrics), {time.monotonic() - started:.1f} s:")
    print_line(table(summary_rows(samples, env.stats())))
    print_line()
    excerpt = [line for line in redacted_excerpt(env.process.output()) if line]
    if excerpt:
        print_line("Unit got real tokens, the callers the real PAN and SSN; the output shows:")
        print_line("\n".join(f"  {line}" for line in excerpt))
        print_line()
    print_line("Where to look next:")
    print_line(f"  gateway output (redacted)   {env.process.stdout_path}")
    print_line(f"  saved flows (redacted)      {env.flows_path}")
    print_line(f"    open them in mitmweb:     uv run mitmweb -r {env.flows_path}")
    print_line(f"  metrics snapshot            {run_dir / 'metrics.txt'}")
    print_line("  dashboards and alerts       dashboards/ (docs/metrics.md)")
    if args.web:
        print_line(f"  mitmweb                     {env.web_url}")
        print_line(f"  metrics                     {env.metrics_url}")
        print_line("The gateway keeps running; Ctrl-C stops it.")
        story.collect_issued()  # Ctrl-C stops the sandbox too
        wait_for_interrupt(env.process)
    else:
        print_line("  live: uv run unit-gateway demo --web  (mitmweb, kept up until Ctrl-C)")
    return EXIT_OK


def apply_faults(env: Environment, faults: dict[str, Any]) -> None:
    """The ``--fault`` switches, set at the sandbox before the story."""
    if faults:
        env.sandbox("POST", "/__sandbox/faults", faults)
        print_line(f"  faults   {faults}")
    print_line()


def play_steps(steps: list[tuple[str, Callable[[], str]]], where_to_look: str) -> bool:
    """Each step with its outcome, until one fails; whether all of them ran."""
    for number, (title, step) in enumerate(steps, 1):
        print_line(f"[{number}/{len(steps)}] {title}")
        step_started = time.monotonic()
        try:
            outcome = step()
        except Exception as e:  # any failure is this step's failure
            reason = str(e) if isinstance(e, StepFailed) else f"{type(e).__name__}: {e}"
            print_line(f"      FAILED: {reason}")
            print_line()
            print_line(f"unit-gateway demo: step {number} failed ({title}).")
            print_line(where_to_look)
            return False
        elapsed = (time.monotonic() - step_started) * 1000
        print_line(f"      ok: {outcome} ({elapsed:.0f} ms)")
    return True


def wait_for_interrupt(process: harness.ManagedProcess) -> None:
    """Until Ctrl-C or SIGTERM, or the gateway exits on its own."""
    stop = False

    def interrupted(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    # Explicit handlers: a shell may start a background job with SIGINT ignored.
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop and process.proc is not None and process.proc.poll() is None:
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_line()
