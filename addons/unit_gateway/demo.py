"""``unit-gateway demo``: the gateway and the local Unit sandbox, driven by Unit's Python SDK.

The demo starts ``unit-gateway run`` with the sandbox embedded (free loopback ports, its own
run directory), then plays one story with placeholder tokens only: the org opens a customer,
an account and a card; the customer reads them with a minted token; a two-factor scope goes
through sandbox-otp; a short-lived cardholder token expires and is replaced; Unit's rate limit
answers 429. Each step checks what the sandbox saw, so the demo is also a smoke test: it exits
0 when the story ran as expected and 1 naming the step that did not.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .testing import harness

if TYPE_CHECKING:
    from .testing.leakscan import Leak

EXIT_OK, EXIT_STEP_FAILED, EXIT_NOT_STARTED = 0, 1, 2
#: As a shell reports a command that SIGINT ended.
EXIT_INTERRUPTED = 130
#: The cardholder token's lifetime in the demo: short enough to watch it expire.
CARDHOLDER_LIFETIME = 3
EXPIRY_MARGIN = 1
START_TIMEOUT = 30.0
ORG_TOKEN_ENV = "UNIT_ORG_TOKEN"


class StepFailed(Exception):
    """A step of the story did not turn out as expected; the message says what was seen."""


def demo_config(
    sandbox_port: int,
    metrics_port: int,
    *,
    embedded: bool = True,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The local configuration (config/local.yaml) with a short-lived cardholder token: with
    the sandbox embedded, or (replicas) in front of a sandbox of its own and with a store."""
    config: dict[str, Any] = {
        "unit": {
            "upstreams": [{"url": f"http://127.0.0.1:{sandbox_port}", "environment": "sandbox"}],
            # Made up by the demo and shared with the embedded sandbox, so the output scan
            # can look for it too.
            "org_token": {"env": ORG_TOKEN_ENV},
            "allow_plain_http_loopback": True,
            "missing_authorization": "reject",
        },
        "sandbox": {"embedded": True, "host": "127.0.0.1", "port": sandbox_port},
        "tokens": {
            "expiry_margin_seconds": EXPIRY_MARGIN,
            # No refresh ahead: the demo shows a token running out and a new one taking over.
            "refresh_ahead_seconds": 0,
            "customer": {
                "default_scopes": ["customers", "accounts", "cards", "transactions"],
                "expires_in": 3600,
                "two_factor": "sandbox-otp",
            },
            "cardholder": {
                "default_scopes": ["cards"],
                "expires_in": CARDHOLDER_LIFETIME + EXPIRY_MARGIN,
                "two_factor": "sandbox-otp",
            },
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }
    if not embedded:
        del config["sandbox"]
    if store is not None:
        config["store"] = store
    return config


@dataclass
class Environment:
    """The running gateway (with its embedded sandbox) and where it writes."""

    run_dir: Path
    process: harness.ManagedProcess
    proxy_url: str
    sandbox_url: str
    metrics_url: str
    flows_path: Path
    web_url: str | None = None

    def sandbox(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return harness.sandbox_admin(self.sandbox_url, method, path, body)

    def stats(self) -> dict[str, Any]:
        return self.sandbox("GET", "/__sandbox/stats")


def start(run_dir: Path, org_token: str, *, web: bool) -> Environment:
    """One gateway with the sandbox embedded."""
    sandbox_port, metrics_port = harness.free_port(), harness.free_port()
    config = demo_config(sandbox_port, metrics_port)
    return attach(launch(run_dir, "gateway", config, org_token, web=web), web=web)


@dataclass
class Launched:
    """A gateway process started, not yet listening."""

    process: harness.ManagedProcess
    flows_path: Path
    sandbox_url: str | None


def launch(
    run_dir: Path,
    name: str,
    config: dict[str, Any],
    org_token: str,
    *,
    web: bool = False,
    sandbox_url: str | None = None,
    extra_args: list[str] | None = None,
) -> Launched:
    """Start ``unit-gateway run`` with ``config`` (written to ``<run_dir>/<name>.yaml``; the
    single gateway's is ``demo.yaml``); ``sandbox_url`` is a sandbox outside it, if any."""
    config_path = run_dir / ("demo.yaml" if name == "gateway" else f"{name}.yaml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    flows_path = run_dir / ("flows.mitm" if name == "gateway" else f"{name}.flows.mitm")
    # flow_detail=3: headers and bodies in the output, so one can see what redaction leaves.
    mitmproxy_args = ["--set", f"save_stream_file={flows_path}", "--set", "flow_detail=3"]
    if web:
        mitmproxy_args += [
            "--set", f"web_port={harness.free_port()}", "--set", "web_open_browser=false",
        ]  # fmt: skip
    mitmproxy_args += extra_args or []
    argv = harness.gateway_command(config_path, web=web, mitmproxy_args=mitmproxy_args)
    env = {ORG_TOKEN_ENV: org_token}
    process = harness.ManagedProcess(name, argv, run_dir, env=env).start()
    return Launched(process, flows_path, sandbox_url)


def attach(launched: Launched, *, web: bool = False) -> Environment:
    """Wait until a launched gateway listens; stopped if it does not."""
    process = launched.process
    try:
        host, port = process.wait_for(
            r"unit-gateway: proxy listening on (\S+):(\d+)", START_TIMEOUT
        ).groups()
        sandbox_url = launched.sandbox_url or process.wait_for(
            r"unit-gateway: embedded sandbox on (\S+)", START_TIMEOUT
        ).group(1)
        metrics_url = process.wait_for(r"unit-gateway: metrics on (\S+)", START_TIMEOUT)
        web_url = None
        if web:
            web_url = process.wait_for(r"Web server listening at (\S+)", START_TIMEOUT).group(1)
    except BaseException:  # it did not start, or Ctrl-C
        process.stop()
        raise
    return Environment(
        process.run_dir,
        process,
        f"http://{host}:{port}",
        sandbox_url,
        metrics_url.group(1),
        launched.flows_path,
        web_url,
    )


@contextmanager
def proxied(proxy_url: str) -> Iterator[None]:
    """Unit's SDK sends with ``requests``, which takes its proxy from the environment."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = proxy_url
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sdk_result(result: Any, what: str) -> Any:
    """The data of an SDK response; a UnitError becomes a StepFailed that says what Unit said."""
    from unit.models import UnitError

    if isinstance(result, UnitError):
        reasons = "; ".join(
            f"{e.status} {e.code or e.title}: {e.detail or ''}".strip() for e in result.errors
        )
        raise StepFailed(f"{what}: {reasons}")
    return result.data


def mask(value: str, keep: int = 4) -> str:
    return "•" * max(len(value) - keep, 0) + value[-keep:]


def counted(stats: Mapping[str, Any], group: str, kind: str) -> int:
    return int(stats.get(group, {}).get(kind, 0))


@dataclass
class Story:
    """The scripted traffic. Each step returns a one-line result or raises StepFailed."""

    env: Environment
    #: Values the caller legitimately received that must appear in no output.
    secrets: dict[str, str] = field(default_factory=dict)
    customer_id: str = ""
    account_id: str = ""
    card_id: str = ""

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("org opens a customer (individual application)", self.open_customer),
            ("org opens a checking account for the customer", self.open_account),
            ("org issues a virtual debit card", self.issue_card),
            ("customer reads accounts and cards: one token minted, then reused", self.customer),
            ("customer reads secure card data: two-factor via sandbox-otp", self.secure_data),
            (
                f"cardholder token ({CARDHOLDER_LIFETIME} s) expires and is replaced",
                self.short_lived,
            ),
            ("Unit's rate limit answers 429", self.rate_limited),
            ("no token or card data in the gateway's output or saved flows", self.outputs_clean),
        ]

    def unit(self, placeholder: str) -> Any:
        from unit import Unit

        return Unit(self.env.sandbox_url, placeholder)

    def open_customer(self) -> str:
        from unit.models import Address, FullName, Phone
        from unit.models.application import CreateIndividualApplicationRequest

        run = time.time_ns()
        ssn = self.secrets["SSN"] = f"9{run % 10**8:08d}"
        application = sdk_result(
            self.unit("unitgw:org").applications.create(
                CreateIndividualApplicationRequest(
                    FullName("Avery", "Demo"),
                    datetime.date(1990, 5, 17),
                    Address("20 Ingram St", "Forest Hills", "NY", "11375", "US"),
                    "avery.demo@example.com",
                    Phone("1", "5555550199"),
                    ssn=ssn,
                    idempotency_key=f"demo-{run:x}",
                )
            ),
            "create application",
        )
        self.customer_id = application.relationships["customer"].id
        status = application.attributes["status"]
        return f"application {application.id} {status}, customer {self.customer_id}"

    def open_account(self) -> str:
        from unit.models import Relationship
        from unit.models.account import CreateDepositAccountRequest

        account = sdk_result(
            self.unit("unitgw:org").accounts.create(
                CreateDepositAccountRequest(
                    "checking", {"customer": Relationship("customer", self.customer_id)}
                )
            ),
            "create account",
        )
        self.account_id = account.id
        return f"account {account.id}"

    def issue_card(self) -> str:
        from unit.models import Relationship
        from unit.models.card import CreateIndividualVirtualDebitCard

        card = sdk_result(
            self.unit("unitgw:org").cards.create(
                CreateIndividualVirtualDebitCard(
                    {"account": Relationship("depositAccount", self.account_id)}
                )
            ),
            "create card",
        )
        self.card_id = card.id
        return f"card {card.id}, {card.attributes['status']}"

    def since(self, before: Mapping[str, Any], group: str, kind: str) -> int:
        """How many ``group`` of ``kind`` (tokens_created, customer) the sandbox counted
        since the stats ``before``."""
        return counted(self.env.stats(), group, kind) - counted(before, group, kind)

    def customer(self) -> str:
        before = self.env.stats()
        customer = self.unit(f"unitgw:customer:{self.customer_id}")
        accounts = sdk_result(customer.accounts.list(), "list accounts")
        cards = sdk_result(customer.cards.list(), "list cards")
        sdk_result(customer.cards.get(self.card_id), "get card")
        sdk_result(customer.customers.get(self.customer_id), "get customer")
        if [a.id for a in accounts] != [self.account_id] or [c.id for c in cards] != [self.card_id]:
            raise StepFailed("the customer does not see exactly its own account and card")
        minted = self.since(before, "tokens_created", "customer")
        if minted != 1:
            raise StepFailed(f"expected 1 customer token at Unit for 4 requests, saw {minted}")
        return "4 requests, 1 customer token created at Unit"

    def secure_data(self) -> str:
        from unit.api.base_resource import BaseResource

        before = self.env.stats()
        customer = self.unit(f"unitgw:customer:{self.customer_id}")
        pin = sdk_result(customer.cards.get_pin_status(self.card_id), "card PIN status")
        # The SDK has no method for the PAN; its generic GET sends the same headers.
        response = BaseResource.get(customer.cards, f"cards/{self.card_id}/secure-data/pan")
        if response.status_code != 200:
            raise StepFailed(f"card PAN: HTTP {response.status_code} {response.text[:200]}")
        pan = self.secrets["PAN"] = response.json()["data"]["attributes"]["pan"]
        verifications = self.since(before, "verifications_created", "customer")
        if verifications != 1:
            raise StepFailed(f"expected 1 verification at Unit, saw {verifications}")
        status = pin.attributes.get("status")
        return f"PIN {status}, PAN {mask(pan)} (1 verification, code 000001)"

    def short_lived(self) -> str:
        before = self.env.stats()
        cardholder = self.unit(f"unitgw:cardholder:{self.card_id}")
        sdk_result(cardholder.cards.get(self.card_id), "get card as cardholder")
        sdk_result(cardholder.cards.get(self.card_id), "get card as cardholder")
        time.sleep(CARDHOLDER_LIFETIME + 0.2)
        sdk_result(cardholder.cards.get(self.card_id), "get card after expiry")
        created = self.since(before, "tokens_created", "cardholder")
        if created != 2:
            raise StepFailed(f"expected 2 cardholder tokens (first, replacement), saw {created}")
        return "3 requests, 2 cardholder tokens: the second replaced the expired first"

    def rate_limited(self) -> str:
        from unit.models import UnitError

        limit = self.env.sandbox("GET", "/__sandbox/faults")["rate_limit_per_minute"]
        # Every request of the last minute already counts against a limit of 1.
        self.env.sandbox("POST", "/__sandbox/faults", {"rate_limit_per_minute": 1})
        try:
            result = self.unit(f"unitgw:customer:{self.customer_id}").accounts.list()
        finally:
            self.env.sandbox("POST", "/__sandbox/faults", {"rate_limit_per_minute": limit})
        if not isinstance(result, UnitError) or result.errors[0].status != "429":
            got = "a success"
            if isinstance(result, UnitError):
                got = f"HTTP {result.errors[0].status}"
            raise StepFailed(f"expected a 429 from Unit, got {got}")
        seen = metric_total(metric_samples(self.env), "unit_gateway_upstream_rate_limited_total")
        if seen < 1:
            raise StepFailed("the gateway did not count Unit's 429")
        return "the SDK got Unit's 429; the gateway counted it for the dashboard"

    def outputs_clean(self) -> str:
        self.collect_issued()
        leaks = find_leaks_in_outputs(self.secrets, self.env.run_dir)
        if leaks:
            raise StepFailed("found in the outputs: " + "; ".join(str(leak) for leak in leaks))
        files = sorted(p.name for p in self.env.run_dir.iterdir() if p.is_file())
        return f"{len(self.secrets)} secrets checked against {', '.join(files)}"

    def collect_issued(self) -> None:
        """Every token and verification token the sandbox issued, among the secrets."""
        issued = self.env.sandbox("GET", "/__sandbox/issued")
        for i, token in enumerate(issued["tokens"]):
            self.secrets[f"token {i + 1}"] = token
        for i, token in enumerate(issued["verificationTokens"]):
            self.secrets[f"verification token {i + 1}"] = token


# --- the summary -------------------------------------------------------------------------


def metric_samples(env: Environment) -> list[tuple[str, dict[str, str], float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(env.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_total(
    samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts keyed by ``le``."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = quantile * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def latency_buckets(
    samples: list[tuple[str, dict[str, str], float]], name: str
) -> dict[float, float]:
    """Cumulative buckets of one histogram, summed over its routes."""
    buckets: dict[float, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == f"{name}_bucket":
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def summary_rows(
    samples: list[tuple[str, dict[str, str], float]], stats: Mapping[str, Any]
) -> list[tuple[str, str]]:
    requests = latency_buckets(samples, "unit_gateway_request_duration_seconds")
    overhead = latency_buckets(samples, "unit_gateway_overhead_seconds")
    by_status: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "unit_gateway_requests_total":
            group = labels["status"][0] + "xx"
            by_status[group] = by_status.get(group, 0) + value
    statuses = ", ".join(f"{n:.0f} {group}" for group, n in sorted(by_status.items()))

    def per_kind(name: str, **labels: str) -> str:
        counts = [
            f"{kind} {metric_total(samples, name, kind=kind, **labels):.0f}"
            for kind in ("customer", "cardholder")
        ]
        return ", ".join(counts)

    created = stats.get("tokens_created", {})
    return [
        ("requests through the gateway", f"{sum(by_status.values()):.0f} ({statuses})"),
        ("tokens minted", per_kind("unit_gateway_token_mints_total", outcome="ok")),
        (
            "  created at Unit (sandbox count)",
            ", ".join(f"{k} {v}" for k, v in created.items()),
        ),
        ("tokens reused from the cache", per_kind("unit_gateway_token_cache_hits_total")),
        ("two-factor verifications", per_kind("unit_gateway_verifications_started_total")),
        (
            "values redacted from outputs",
            f"{metric_total(samples, 'unit_gateway_redactions_total'):.0f}",
        ),
        (
            "429s from Unit",
            f"{metric_total(samples, 'unit_gateway_upstream_rate_limited_total'):.0f}",
        ),
        (
            "latency p50 / p99 (whole request)",
            f"{milliseconds(histogram_quantile(0.5, requests))} / "
            f"{milliseconds(histogram_quantile(0.99, requests))}",
        ),
        (
            "gateway's own time p50 / p99",
            f"{milliseconds(histogram_quantile(0.5, overhead))} / "
            f"{milliseconds(histogram_quantile(0.99, overhead))}",
        ),
    ]


def redacted_excerpt(output: str) -> list[str]:
    """What a person reading the gateway's output sees where the caller got secrets."""
    wanted = ("authorization: Bearer unitgw:customer", '"pan":', '"ssn":')
    lines = output.splitlines()
    return [next((line.strip() for line in lines if key in line), "") for key in wanted]


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


# --- the command -------------------------------------------------------------------------


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


#: Everything the demo printed: its own output is scanned for secrets with the files it wrote.
_printed: list[str] = []


def print_line(text: str = "") -> None:
    _printed.append(text)
    print(text, flush=True)


def find_leaks_in_outputs(secrets: Mapping[str, str], run_dir: Path) -> list[Leak]:
    """Where any of ``secrets`` shows in the run's files or in what the demo printed."""
    from .testing.leakscan import find_leaks  # reads flow files: imports mitmproxy.io

    return find_leaks(secrets, [run_dir], [("the demo's output", "\n".join(_printed))])


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
