"""A real Prometheus for end-to-end tests: scrapes a gateway's ``/metrics`` every second and
evaluates the repository's alert rules, so dashboard queries and alert expressions can be
checked against what the gateway really exports.

Uses the ``prometheus`` binary on ``PATH`` (Debian: ``apt-get install -y prometheus``); the
package's own service plays no part: this starts a process of its own on a free loopback port
with a temporary TSDB, and always stops it.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unit_gateway.testing.harness import ManagedProcess, ProcessFailed, free_port

#: The repository's ``dashboards/`` folder: the dashboard, the alert rules, the scrape config.
DASHBOARDS = Path(__file__).resolve().parents[3] / "dashboards"
ALERT_RULES = DASHBOARDS / "alerts.yml"
JOB = "unit-gateway"


class PrometheusError(RuntimeError):
    """The HTTP API refused a request (e.g. a query that does not parse)."""

    def __init__(self, message: str, *, error_type: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status


def binary(name: str = "prometheus") -> str | None:
    """The path of ``prometheus`` (or ``promtool``), or None when it is not installed."""
    return shutil.which(name)


@dataclass
class Prometheus:
    process: ManagedProcess
    url: str
    config_path: Path

    # --- HTTP API --------------------------------------------------------------------------

    def api(self, path: str, params: Sequence[tuple[str, str]] = (), *, post: bool = False) -> Any:
        """Call ``/api/v1/<path>``; the ``data`` of a success. ``post`` sends ``params``
        form-encoded (long queries), otherwise they go in the query string."""
        encoded = urllib.parse.urlencode(list(params))
        if post:
            request = urllib.request.Request(
                f"{self.url}/api/v1/{path}", data=encoded.encode(), method="POST"
            )
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        else:
            suffix = f"?{encoded}" if encoded else ""
            request = urllib.request.Request(f"{self.url}/api/v1/{path}{suffix}")
        # Loopback only: never let a proxy from the environment get in between.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                document = json.loads(e.read())
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {e.code}", status=e.code) from None
            raise PrometheusError(
                f"{path}: {document.get('errorType', '')}: {document.get('error', '')}",
                error_type=str(document.get("errorType", "")),
                status=e.code,
            ) from None
        if document.get("status") != "success":
            raise PrometheusError(f"{path}: {document.get('error', document)}")
        return document["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result as a list (a scalar or string becomes one element)."""
        params = [("query", expr)]
        if at is not None:
            params.append(("time", f"{at:.3f}"))
        data = self.api("query", params, post=True)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query: one matrix entry per series, each with its ``values``."""
        params = [
            ("query", expr),
            ("start", f"{start:.3f}"),
            ("end", f"{end:.3f}"),
            ("step", f"{step:g}"),
        ]
        return self.api("query_range", params, post=True)["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's ``label_values(match, label)`` offers."""
        return list(self.api(f"label/{label}/values", [("match[]", match)]))

    def series(self, match: str) -> list[dict[str, str]]:
        return self.api("series", [("match[]", match)], post=True)

    def rules(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_for_series(
        self, expr: str, timeout: float = 30.0, *, interval: float = 0.25
    ) -> list[dict[str, Any]]:
        """Poll an instant query until it returns something; raise TimeoutError if it never
        does. A query that does not parse raises PrometheusError at once."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for {expr!r} within {timeout:g} s")
            time.sleep(interval)

    # --- life cycle ------------------------------------------------------------------------

    def stop(self) -> int:
        return self.process.stop()


def scrape_config(
    targets: Sequence[str],
    *,
    rule_files: Sequence[Path] = (ALERT_RULES,),
    scrape_interval: str = "1s",
    metrics_path: str = "/metrics",
    job: str = JOB,
) -> dict[str, Any]:
    """A Prometheus configuration that scrapes ``targets`` (``host:port``) as ``job`` and
    evaluates ``rule_files`` as often as it scrapes."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


def target_of(metrics_url: str) -> tuple[str, str]:
    """``http://127.0.0.1:9464/metrics`` → (``127.0.0.1:9464``, ``/metrics``)."""
    parts = urllib.parse.urlsplit(metrics_url)
    return parts.netloc, parts.path or "/metrics"


def start_prometheus(
    work_dir: Path,
    metrics_url: str,
    *,
    rule_files: Sequence[Path] = (ALERT_RULES,),
    scrape_interval: str = "1s",
    job: str = JOB,
    executable: str | None = None,
    name: str = "prometheus",
    timeout: float = 30.0,
) -> Prometheus:
    """Start Prometheus on a free loopback port, scraping ``metrics_url``; return once it is
    ready. Its configuration, TSDB and output go under ``work_dir``."""
    executable = executable or binary("prometheus")
    if executable is None:
        raise ProcessFailed("prometheus is not installed (apt-get install -y prometheus)")
    target, path = target_of(metrics_url)
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / f"{name}.yml"
    config = scrape_config(
        [target],
        rule_files=rule_files,
        scrape_interval=scrape_interval,
        metrics_path=path,
        job=job,
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    storage = work_dir / f"{name}-data"
    storage.mkdir(exist_ok=True)
    last_error: Exception | None = None
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        argv = [
            executable,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={storage}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ]
        process = ManagedProcess(name, argv, work_dir).start()
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, timeout)
        except ProcessFailed as e:
            process.stop(timeout=5)
            last_error = e
            if "address already in use" in str(e):
                continue
            raise
        return Prometheus(process, url, config_path)
    raise ProcessFailed(f"prometheus did not start: {last_error}")


def _wait_ready(process: ManagedProcess, url: str, timeout: float) -> None:
    assert process.proc is not None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise ProcessFailed(
                f"prometheus exited with {process.proc.returncode}:\n{process.output()[-4000:]}"
            )
        try:
            with opener.open(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise ProcessFailed(f"prometheus not ready within {timeout:g} s:\n{process.output()[-4000:]}")
