"""The dashboard, the alert rules and the scrape config against a real Prometheus.

promtool checks the rules and the scrape config; then a real Prometheus scrapes a real gateway
while traffic runs through it (placeholders of every kind, 404s, unknown routes, a host that is
not Unit, Unit 429s with rate-limit headers, a failed mint, two-factor verifications, a
challenge, 401 retries, the local verification limit, a refused and an accepted config
reload), and every query of every dashboard panel must return data, every alert expression
must parse, and the alerts the traffic provokes must be pending or firing.

Needs the ``prometheus`` and ``promtool`` binaries (Debian: ``apt-get install -y prometheus``).
Without them the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml

from conftest import (
    GatewayFactory,
    Planted,
    config_reloads,
    proxied_session,
    wait_until,
)
from unit_gateway.testing import harness
from unit_gateway.testing import prometheus as prom

if TYPE_CHECKING:
    from unit_gateway.testing.redis_server import RedisProcess

pytest_plugins = ["redis_fixtures"]

DASHBOARD = prom.DASHBOARDS / "unit-gateway.json"
ALERTS = prom.DASHBOARDS / "alerts.yml"
SCRAPE_CONFIG = prom.DASHBOARDS / "prometheus.yml"

CUSTOMER = "10001"  # card 30001 is hers
LEARNED_CUSTOMER = "10002"
FAILING_CUSTOMER = "10003"  # first asked for while Unit answers 429: its mint fails
CHALLENGE_CARD = "30001"
REFRESH_CARD = "30002"
SHARED_CUSTOMER = "10004"  # minted by a second replica, read from the store by the first
#: Ids of the sandbox's seed data used here: none may ever be a label value.
IDS = (CUSTOMER, LEARNED_CUSTOMER, FAILING_CUSTOMER, CHALLENGE_CARD, REFRESH_CARD, SHARED_CUSTOMER)

HISTOGRAMS = {
    "unit_gateway_request_duration_seconds",
    "unit_gateway_upstream_duration_seconds",
    "unit_gateway_overhead_seconds",
    "unit_gateway_token_mint_duration_seconds",
    "unit_gateway_store_operation_duration_seconds",
}
#: The metric catalogue (design.md, "Metrics"): the names dashboards and alerts may use.
CATALOGUE = HISTOGRAMS | {
    "unit_gateway_build_info",
    "unit_gateway_requests_total",
    "unit_gateway_non_unit_requests_total",
    "unit_gateway_upstream_rate_limited_total",
    "unit_gateway_upstream_retry_after_seconds",
    "unit_gateway_upstream_ratelimit_limit",
    "unit_gateway_upstream_ratelimit_remaining",
    "unit_gateway_rate_limit_requests_per_minute",
    "unit_gateway_rate_limit_configured_per_minute",
    "unit_gateway_rate_limit_headroom_ratio",
    "unit_gateway_verification_limit_refusals_total",
    "unit_gateway_token_cache_hits_total",
    "unit_gateway_token_cache_misses_total",
    "unit_gateway_token_cache_entries",
    "unit_gateway_token_mints_total",
    "unit_gateway_verifications_started_total",
    "unit_gateway_challenges_total",
    "unit_gateway_token_refreshes_total",
    "unit_gateway_upstream_401_retries_total",
    "unit_gateway_learned_tokens_total",
    "unit_gateway_config_reloads_total",
    "unit_gateway_config_last_reload_success_timestamp_seconds",
    "unit_gateway_redactions_total",
    "unit_gateway_redirect_loops_total",
    "unit_gateway_store_up",
    "unit_gateway_store_operations_total",
    "unit_gateway_fleet_events_total",
}
REQUIRED_ALERTS = {
    "UnitGatewayDown",
    "Unit429s",
    "UnitRequestsFailing",
    "RateLimitHeadroomLow",
    "SharedStoreDown",
    "TokenMintFailures",
    "LatencySLO",
    "VerificationLimitHit",
    "ConfigReloadFailed",
    "GatewayOverheadHigh",
    "RedirectLoop",
}
#: Alerts the traffic of the end-to-end test provokes: each must be pending or firing.
PROVOKED_ALERTS = {"Unit429s", "TokenMintFailures", "VerificationLimitHit", "ConfigReloadFailed"}

#: What Grafana puts in place of its variables, with Prometheus scraping every 15 s.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "route": ".*",  # "All", whose allValue is .*
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_METRIC = re.compile(r"\bunit_gateway_\w+")

GATEWAY_OVERRIDES: dict[str, Any] = {
    "tokens": {
        "expiry_margin_seconds": 1,
        "customer": {"two_factor": "sandbox-otp"},
        # Short-lived cardholder tokens: the steady traffic's tokens are refreshed every ~2.5 s.
        "cardholder": {"expires_in": 6},
    }
}


# --- tools -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """The prometheus and promtool binaries; skip without them, but never under CI."""
    found = {name: prom.binary(name) for name in ("prometheus", "promtool")}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install -y prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the Prometheus end-to-end tests")
        pytest.skip(reason)
    return {name: path for name, path in found.items() if path is not None}


def promtool(tools: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools["promtool"], *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- the dashboard as Grafana sees it ---------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref}: {self.expr}"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if not target.get("hide")
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables as Grafana would; ``$1`` / ``${1}`` (label_replace
    back-references) are not variables and stay. An unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name.isdigit():
            return match.group(0)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def grafana_regex_escape(value: str) -> str:
    """What Grafana does to a multi-value variable's value in a ``=~`` matcher."""
    return re.sub(r"[\\^$*+?.()|{}\[\]]", lambda m: "\\\\" + m.group(0), value)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def metric_names(text: str) -> set[str]:
    names = set()
    for name in _METRIC.findall(text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


# --- static checks ----------------------------------------------------------------------------


def test_alert_rules_pass_promtool(tools: dict[str, str]) -> None:
    result = promtool(tools, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_conditions(tools: dict[str, str]) -> None:
    """promtool's rule unit tests (tests/alert_rules_test.yml): series over half an hour, for
    alerts whose condition the end-to-end traffic cannot hold for minutes."""
    result = promtool(tools, "test", "rules", str(Path(__file__).parent / "alert_rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_passes_promtool(tools: dict[str, str], tmp_path: Path) -> None:
    # A copy: prometheus.yml names alerts.yml relative to itself.
    shutil.copy(SCRAPE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    result = promtool(tools, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == prom.JOB
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert metric_names(rule["expr"]) <= CATALOGUE, rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["UnitGatewayDown"]["for"] == "1m"
    assert by_name["RateLimitHeadroomLow"]["for"] == "5m"
    assert by_name["LatencySLO"]["for"] == "10m"


def test_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert isinstance(dashboard["__inputs"], list)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    route = variables["route"]
    assert route["type"] == "query"
    assert route["definition"] == "label_values(unit_gateway_requests_total, route)"
    assert route["datasource"]["uid"] == "${datasource}"
    assert route["includeAll"] and route["allValue"] == ".*"

    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in all_panels(dashboard):
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            substitute(target["expr"], GRAFANA_VARIABLES)  # no unknown variable

    used = metric_names(json.dumps([q.expr for q in panel_queries(dashboard)]))
    assert used <= CATALOGUE, f"not in the metric catalogue: {sorted(used - CATALOGUE)}"
    assert CATALOGUE <= used, f"no panel shows: {sorted(CATALOGUE - used)}"


# --- end to end -------------------------------------------------------------------------------


@dataclass
class SteadyTraffic:
    """Requests through the gateway every 0.4 s from a thread, until stopped."""

    gateway: harness.Gateway
    sandbox: harness.Sandbox
    non_unit_url: str
    statuses: dict[str, set[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def requests(self) -> list[tuple[str, str | None]]:
        url = self.sandbox.url
        return [
            (url + "/cards", "unitgw:org"),
            (url + "/customers", "unitgw:org"),
            (url + "/accounts", f"unitgw:customer:{CUSTOMER}"),
            (url + f"/cards/{REFRESH_CARD}", f"unitgw:cardholder:{REFRESH_CARD}"),
            (url + "/cards/99999", "unitgw:org"),  # 404 from Unit
            (url + "/no-such-route/here", "unitgw:org"),  # route "other"
            (self.non_unit_url, None),  # not a Unit host: passed through, counted apart
        ]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="steady-traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with proxied_session(self.gateway) as session:
            while not self._stop.is_set():
                for url, placeholder in self.requests():
                    headers = {"Authorization": f"Bearer {placeholder}"} if placeholder else {}
                    try:
                        status = session.get(url, headers=headers, timeout=15).status_code
                    except requests.RequestException as e:
                        self.errors.append(f"{url}: {type(e).__name__}")
                        continue
                    self.statuses.setdefault(url, set()).add(status)
                self._stop.wait(0.4)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "steady traffic did not stop"


def call(
    session: requests.Session,
    method: str,
    url: str,
    placeholder: str,
    body: dict[str, Any] | None = None,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {placeholder}"}
    if body is not None:
        headers["Content-Type"] = "application/vnd.api+json"
    return session.request(
        method, url, headers=headers, data=json.dumps(body) if body else None, timeout=30
    )


def error_code(response: requests.Response) -> str | None:
    try:
        return response.json()["errors"][0].get("code")
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def drive_one_off_events(
    gateway: harness.Gateway, sandbox: harness.Sandbox, run_dir: Path, overrides: dict[str, Any]
) -> None:
    """The events steady traffic does not make, each checked to have happened."""
    url = sandbox.url
    customer = f"unitgw:customer:{CUSTOMER}"
    pan = f"{url}/cards/{CHALLENGE_CARD}/secure-data/pan"
    with proxied_session(gateway) as session:
        # Two-factor with sandbox-otp: a verification, then a customer token.
        answer = call(session, "GET", pan, customer)
        assert answer.status_code == 200, answer.text

        # A token created through the gateway is learned; the caller gets the placeholder.
        created = call(
            session,
            "POST",
            f"{url}/customers/{LEARNED_CUSTOMER}/token",
            "unitgw:org",
            {"data": {"type": "customerToken", "attributes": {"scope": "customers accounts"}}},
        )
        assert created.status_code in (200, 201), created.text
        assert created.json()["data"]["attributes"]["token"] == (
            f"unitgw:customer:{LEARNED_CUSTOMER}"
        )
        learned = call(session, "GET", f"{url}/accounts", f"unitgw:customer:{LEARNED_CUSTOMER}")
        assert learned.status_code == 200, learned.text

        # A challenge (the cardholder strategy by default): issued, completed, then unknown.
        cardholder = f"unitgw:cardholder:{CHALLENGE_CARD}"
        first = call(session, "GET", pan, cardholder)
        assert first.status_code == 401 and error_code(first) == "verification_required", first.text
        challenge_id = first.json()["errors"][0]["meta"]["challengeId"]
        completion = {
            "data": {
                "type": "cardholderToken",
                "attributes": {
                    "scope": "cards cards-sensitive",
                    "verificationToken": challenge_id,
                    "verificationCode": "000001",
                },
            }
        }
        token_url = f"{url}/cards/{CHALLENGE_CARD}/cardholder/token"
        completed = call(session, "POST", token_url, "unitgw:org", completion)
        assert completed.status_code in (200, 201), completed.text
        again = call(session, "POST", token_url, "unitgw:org", completion)
        assert again.status_code == 400 and error_code(again) == "unknown_challenge", again.text

        # Unit refuses every user token: 401, evict, mint (and verify) again, retry once,
        # until the sixth verification in 10 minutes is refused by the gateway itself.
        sandbox.faults(reject_user_tokens=True)
        try:
            answers = []
            for _ in range(6):
                answers.append(call(session, "GET", pan, customer))
                if answers[-1].status_code == 429:
                    break
        finally:
            sandbox.faults(reject_user_tokens=False)
        assert [a.status_code for a in answers] == [401] * (len(answers) - 1) + [429]
        assert error_code(answers[-1]) == "verification_limit", answers[-1].text

        # Unit answers 429 (with Retry-After and X-RateLimit-*): to a request, and to a mint.
        sandbox.faults(rate_limit_per_minute=1)
        try:
            limited = call(session, "GET", f"{url}/cards", "unitgw:org")
            failed_mint = call(
                session, "GET", f"{url}/accounts", f"unitgw:customer:{FAILING_CUSTOMER}"
            )
        finally:
            sandbox.faults(rate_limit_per_minute=100_000)
        assert limited.status_code == 429, limited.text
        assert failed_mint.status_code == 429, failed_mint.text

    # A configuration change that does not validate (kept out), then one that does.
    config_path = run_dir / "gateway.yaml"
    assert config_path.exists()
    before = config_reloads(gateway, "error")
    harness.write_gateway_config(
        config_path,
        upstream_url=sandbox.url,
        overrides={**overrides, "tokens": {**overrides["tokens"], "cache_size": 0}},
    )
    # Soft wait: if the gateway never counts it, the reload panels report it below.
    wait_until(lambda: config_reloads(gateway, "error") > before, timeout=8)
    harness.write_gateway_config(
        config_path,
        upstream_url=sandbox.url,
        overrides={**overrides, "tokens": {**overrides["tokens"], "cache_size": 5000}},
    )


def has_data(result: list[dict[str, Any]]) -> bool:
    """Some series with a value Grafana can draw (NaN, e.g. 0/0, draws nothing)."""
    for series in result:
        values = series.get("values") or [series.get("value")]
        for value in values:
            if value is not None and not math.isnan(float(value[1])):
                return True
    return False


def evaluate(
    prometheus: prom.Prometheus, query: PanelQuery, expr: str, since: float
) -> list[dict[str, Any]]:
    if query.instant:
        return prometheus.query(expr)
    return prometheus.query_range(expr, since, time.time(), step=1)


@pytest.mark.timeout(150)
def test_dashboard_and_alerts_on_a_real_prometheus(
    tools: dict[str, str],
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    tmp_path: Path,
    planted: Planted,
    redis_server: RedisProcess,
) -> None:
    started = time.time()
    sandbox.faults(rate_limit_headers=True)
    overrides = {**GATEWAY_OVERRIDES, **harness.store_overrides(run_dir, redis_server.url)}
    gateway = gateway_factory(sandbox, overrides=overrides)
    assert gateway.metrics_url is not None
    # Outside run_dir: the leak scan reads every file there, and the TSDB is binary.
    prometheus = prom.start_prometheus(
        tmp_path / "prometheus", gateway.metrics_url, executable=tools["prometheus"]
    )
    traffic = SteadyTraffic(gateway, sandbox, f"{prometheus.url}/-/healthy")
    try:
        prometheus.wait_for_series(f'up{{job="{prom.JOB}"}} == 1', timeout=20)
        prometheus.wait_for_series("unit_gateway_build_info", timeout=10)
        traffic.start()
        drive_one_off_events(gateway, sandbox, run_dir, overrides)
        # A second replica mints for a customer; the first reads that token from the store.
        replica = gateway_factory(sandbox, overrides=overrides, name="replica")
        shared = f"unitgw:customer:{SHARED_CUSTOMER}"
        for each in (replica, gateway):
            with proxied_session(each) as session:
                answer = call(session, "GET", f"{sandbox.url}/accounts", shared)
                assert answer.status_code == 200, answer.text

        dashboard = load_dashboard()
        queries = panel_queries(dashboard)
        # Every query parses at once; then each must show data within the deadline (rates
        # need two scrapes after the event).
        pending = {q: substitute(q.expr, GRAFANA_VARIABLES) for q in queries}
        for query, expr in pending.items():
            evaluate(prometheus, query, expr, started)
        alerts = alert_rules()
        for rule in alerts:
            prometheus.query(rule["expr"])  # parses and evaluates; may be empty

        missing_alerts = set(PROVOKED_ALERTS)
        firing: list[dict[str, Any]] = []
        deadline = time.monotonic() + 25
        while (pending or missing_alerts) and time.monotonic() < deadline:
            for query, expr in list(pending.items()):
                if has_data(evaluate(prometheus, query, expr, started)):
                    del pending[query]
            firing = prometheus.alerts()
            active = {a["labels"]["alertname"] for a in firing}
            missing_alerts -= active
            if pending or missing_alerts:
                time.sleep(1)

        # The route variable offers real routes; panels filtered to one of them show data.
        routes = prometheus.label_values("route", "unit_gateway_requests_total")
        one_route: dict[PanelQuery, str] = {}
        if routes:
            route = "/cards" if "/cards" in routes else routes[0]
            values = {**GRAFANA_VARIABLES, "route": grafana_regex_escape(route)}
            for query in queries:
                if "$route" in query.expr and query not in pending:
                    expr = substitute(query.expr, values)
                    if not has_data(evaluate(prometheus, query, expr, started)):
                        one_route[query] = expr

        rule_errors = [
            f"{rule['name']}: {rule.get('lastError')}"
            for group in prometheus.rules()
            for rule in group["rules"]
            if rule.get("health") == "err"
        ]
        loaded = {rule["name"] for group in prometheus.rules() for rule in group["rules"]}
        exported = {s["__name__"] for s in prometheus.series('{__name__=~"unit_gateway_.+"}')}
        exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported} | exported
        label_sets = prometheus.series('{__name__=~"unit_gateway_.+"}')
    finally:
        traffic.stop()
        status = prometheus.stop()
        # Its log is outside run_dir: scanned whatever happened above.
        planted.blobs.append(("prometheus log", prometheus.process.output().encode()))
    assert status == 0, prometheus.process.output()[-2000:]
    # What Prometheus stored and alerted on goes through the leak scan too.
    planted.blobs.append(("prometheus series", json.dumps(label_sets).encode()))
    planted.blobs.append(("prometheus alerts", json.dumps(firing).encode()))

    problems = []
    if routes == []:
        problems.append(
            "the route variable (label_values(unit_gateway_requests_total, route)) offers nothing"
        )
    never_exported = sorted(CATALOGUE - exported)
    if never_exported:
        problems.append("metrics the gateway never exported: " + ", ".join(never_exported))
    if pending:
        problems.append(
            f"{len(pending)} of {len(queries)} panel queries returned no data:\n  "
            + "\n  ".join(str(q) for q in pending)
        )
    if one_route:
        problems.append(
            "panel queries with no data for a single route:\n  "
            + "\n  ".join(f"{q.panel!r} {q.ref}: {e}" for q, e in one_route.items())
        )
    if missing_alerts:
        problems.append(f"alerts the traffic should provoke are not active: {missing_alerts}")
    if rule_errors:
        problems.append("alert rules failing to evaluate: " + "; ".join(rule_errors))
    if {rule["alert"] for rule in alerts} - loaded:
        problems.append(f"rules Prometheus did not load: {loaded ^ {r['alert'] for r in alerts}}")
    assert not problems, "\n".join(problems)

    for labels in label_sets:
        for name, value in labels.items():
            if name in ("instance", "__name__"):
                continue
            assert not any(i in value for i in IDS), f"an id in a label: {labels}"
            assert "v2.public." not in value and "unitgw:" not in value, labels
    assert not traffic.errors, traffic.errors[:5]
