"""``unit-gateway demo``: the README's main command, run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Planted, port_of
from unit_gateway import cli, demo, demo_output
from unit_gateway.testing import harness

STEPS = 8


def run_demo(
    run_dir: Path,
    planted: Planted,
    *args: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> tuple[int, str, float]:
    """Run the demo as a user does; its files (in ``run_dir``) and what it printed go
    through the test's leak scan too, not only through the demo's own."""
    planted.add_sandbox_inside("the demo's embedded sandbox")
    started = time.monotonic()
    result = subprocess.run(
        harness.python_command("demo", "--run-dir", str(run_dir / "demo"), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    output = result.stdout + result.stderr
    planted.blobs.append(("the demo's output", output.encode()))
    return result.returncode, output, time.monotonic() - started


def summary_value(output: str, label: str) -> str:
    match = re.search(rf"^ +{re.escape(label)}  +(.+)$", output, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{output}"
    return match.group(1)


def test_the_story_runs_and_ends_with_a_summary(run_dir: Path, planted: Planted) -> None:
    code, output, seconds = run_demo(run_dir, planted)
    assert code == 0, output
    assert seconds < 60
    for number in range(1, STEPS + 1):
        assert re.search(rf"^\[{number}/{STEPS}\] .+\n      ok: ", output, re.MULTILINE), output
    assert "FAILED" not in output
    assert "1 customer token created at Unit" in output
    assert "1 verification, code 000001" in output
    assert "2 cardholder tokens" in output

    assert re.fullmatch(
        r"13 \(12 2xx, 1 4xx\)", summary_value(output, "requests through the gateway")
    )
    assert summary_value(output, "tokens minted") == "customer 2, cardholder 2"
    assert summary_value(output, "created at Unit (sandbox count)") == "customer 2, cardholder 2"
    assert summary_value(output, "tokens reused from the cache") == "customer 5, cardholder 1"
    assert summary_value(output, "two-factor verifications") == "customer 1, cardholder 0"
    assert int(summary_value(output, "values redacted from outputs")) > 0
    assert summary_value(output, "429s from Unit") == "1"
    assert re.fullmatch(
        r"[\d.]+ ms / [\d.]+ ms", summary_value(output, "latency p50 / p99 (whole request)")
    )
    # What a person sees in the gateway's output, and where to look next.
    assert '"pan": "[redacted:pan]"' in output
    assert "authorization: Bearer unitgw:customer:" in output
    assert str(run_dir / "demo" / "flows.mitm") in output
    # The demo prints the PAN masked and no token at all.
    assert not re.search(r"\b\d{15,16}\b", output)
    assert "v2.public." not in output
    assert (run_dir / "demo" / "metrics.txt").read_text().count("unit_gateway_") > 20


def test_a_failing_step_is_named_and_exits_non_zero(run_dir: Path, planted: Planted) -> None:
    code, output, _ = run_demo(run_dir, planted, "--fault", "token_outage=true")
    assert code == demo.EXIT_STEP_FAILED, output
    assert "[3/8] org issues a virtual debit card\n      ok:" in output, "org steps need no mint"
    assert "step 4 failed (customer reads accounts and cards" in output
    # The caller's error is the gateway's JSON:API error naming the failed token step.
    assert "503 token_endpoint_failed" in output
    assert "Summary" not in output
    # The same exit code would report a leak its own scan found: there is none, and what the
    # demo printed about the failure shows no token and no card number either.
    assert "found in the outputs" not in output
    assert not re.search(r"\b\d{15,16}\b", output)
    assert "v2.public." not in output


def test_the_demo_scans_what_it_printed_with_its_files(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its printed output is no file, and the gateway excerpt it prints comes from a log: the
    demo's own leak scan (its last step and its exit status) covers what it printed too."""
    monkeypatch.setattr(demo_output, "_printed", [])  # the module's record: not for other tests
    secret = "9" + "31337" * 3
    demo_output.print_line(f"a line that shows {secret}")
    (run_dir / "clean.log").write_text("nothing here\n")
    leaks = demo_output.find_leaks_in_outputs({"SSN": secret}, run_dir)
    assert [(leak.source, leak.label) for leak in leaks] == [("the demo's output", "SSN")]
    capsys.readouterr()  # the line went to the test's captured stdout; nobody shows it


def test_a_bad_fault_switch_is_refused_before_anything_starts(
    run_dir: Path, planted: Planted
) -> None:
    code, output, _ = run_demo(run_dir, planted, "--fault", "error_rate=2")
    assert code == demo.EXIT_NOT_STARTED
    assert "--fault error_rate: must be between 0 and 1" in output
    assert "listening" not in output and "[1/8]" not in output
    assert not (run_dir / "demo").exists()


def test_web_keeps_mitmweb_up_until_interrupted(run_dir: Path, planted: Planted) -> None:
    planted.add_sandbox_inside("the demo's embedded sandbox")
    out = run_dir / "demo-web.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            harness.python_command("demo", "--web", "--run-dir", str(run_dir / "demo")),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops it" not in out.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, out.read_text()
            time.sleep(0.2)
        text = out.read_text()
        web_url = re.search(r"^  mitmweb\s+(http://\S+)$", text, re.MULTILINE)
        metrics_url = re.search(r"^  metrics\s+(http://\S+/metrics)$", text, re.MULTILINE)
        assert web_url and metrics_url, text
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(web_url.group(1), timeout=10) as page:
            shown = page.read()
        assert b"mitmproxy" in shown
        planted.blobs.append(("mitmweb page", shown))
        with opener.open(metrics_url.group(1), timeout=10) as metrics:
            exported = metrics.read()
        assert b"unit_gateway_requests_total" in exported
        planted.blobs.append(("/metrics", exported))
        time.sleep(1)
        assert process.poll() is None, "still running until Ctrl-C"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The gateway went down with the demo.
    port = port_of(metrics_url.group(1))
    assert harness.port_is_free(port)


def test_replicas_share_one_redis_and_mint_each_token_once(run_dir: Path, planted: Planted) -> None:
    code, output, _ = run_demo(run_dir, planted, "--replicas", "3", timeout=180)
    assert code == 0, output
    for number in range(1, STEPS + 1):
        assert re.search(rf"^\[{number}/{STEPS}\] .+\n      ok: ", output, re.MULTILINE), output
    assert "FAILED" not in output
    # whichever replica's request took the lease first minted; one replica, once
    assert re.search(r"30x 200, 1 customer token created at Unit, minted by replica \d;", output)
    assert "6 requests, 0 new tokens at Unit" in output
    assert "via all 3 replicas: 1 verification (code 000001), 1 two-factor token" in output
    assert "2 cardholder tokens: one minted via replica 1, its replacement via replica 2" in output
    assert "Unit created (sandbox count): customer 2, cardholder 2; the replicas minted 4" in output
    assert "Each token was minted once for all 3 replicas" in output
    rows = re.findall(r"^  replica (\d)  +(\d+)  +(\d+)  +(\d+)  +(\d+)  +(\d)$", output, re.M)
    assert [(n, up) for n, *_, up in rows] == [("1", "1"), ("2", "1"), ("3", "1")], output
    assert not re.search(r"\b\d{15,16}\b", output)
    assert "v2.public." not in output
    # Redis and the gateways went down with the demo; Redis kept nothing on disk.
    redis_url = re.search(r"^  redis +redis://127\.0\.0\.1:(\d+)/0 ", output, re.MULTILINE)
    assert redis_url, output
    assert harness.port_is_free(int(redis_url.group(1)))
    for metrics_url in re.findall(r"metrics (http://\S+/metrics)$", output, re.MULTILINE):
        assert harness.port_is_free(port_of(metrics_url))
    assert sorted(p.name for p in (run_dir / "demo" / "redis").iterdir()) == ["redis.log"]


def test_replicas_without_redis_server_say_how_to_install_it(
    run_dir: Path, planted: Planted, tmp_path: Path
) -> None:
    no_redis = tmp_path / "bin"  # a PATH with no redis-server on it
    no_redis.mkdir()
    env = {**os.environ, "PATH": str(no_redis)}
    code, output, _ = run_demo(run_dir, planted, "--replicas", "3", env=env)
    assert code == demo.EXIT_NOT_STARTED, output
    assert "--replicas 3 needs a Redis the replicas share: redis-server is not installed" in output
    assert "apt-get install -y redis-server" in output
    assert "listening" not in output and "[1/" not in output
    assert not (run_dir / "demo").exists()


@pytest.mark.parametrize("value", ["0", "-2", "three"])
def test_replicas_must_be_a_whole_number_from_one(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["demo", "--replicas", value])
    assert exited.value.code == 2
    assert "argument --replicas: " in capsys.readouterr().err
    assert cli.build_parser().parse_args(["demo"]).replicas == 1


def test_replicas_with_web_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cli.build_parser().parse_args(["demo", "--replicas", "2", "--web"])
    assert demo.run(args) == demo.EXIT_NOT_STARTED
    assert "--web shows one gateway" in capsys.readouterr().err


def test_ctrl_c_stops_redis_and_every_replica(run_dir: Path, planted: Planted) -> None:
    planted.add_sandbox_inside("the demo's sandbox")
    out = run_dir / "demo-replicas.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            harness.python_command("demo", "--replicas", "2", "--run-dir", str(run_dir / "demo")),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 120
        while "[5/8]" not in out.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, out.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # to the demo alone, not its process group
        assert process.wait(timeout=60) == demo.EXIT_INTERRUPTED, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = out.read_text()
    planted.blobs.append(("the demo's output", text.encode()))
    assert "interrupted; everything it started is stopped" in text
    redis_url = re.search(r"^  redis +redis://127\.0\.0\.1:(\d+)/0 ", text, re.MULTILINE)
    sandbox_url = re.search(r"^  sandbox +(http://\S+)$", text, re.MULTILINE)
    assert redis_url and sandbox_url, text
    ports = [int(redis_url.group(1)), port_of(sandbox_url.group(1))]
    ports += [port_of(url) for url in re.findall(r"(http://\S+) \(mitmdump\)", text)]
    ports += [port_of(url) for url in re.findall(r"metrics (http://\S+/metrics)$", text, re.M)]
    assert len(ports) == 6
    assert all(harness.port_is_free(port) for port in ports), text


@pytest.mark.parametrize(
    ("quantile", "expected"),
    [(0.5, 0.00875), (0.99, 0.024625), (1.0, 0.025), (0.1, 0.00175)],
)
def test_histogram_quantile_matches_prometheus(quantile: float, expected: float) -> None:
    # 10 observations: 2 up to 2.5 ms, 6 up to 10 ms, 10 up to 25 ms (cumulative, as exposed).
    buckets = {0.001: 0, 0.0025: 2, 0.005: 2, 0.01: 6, 0.025: 10, float("inf"): 10}
    assert demo.histogram_quantile(quantile, buckets) == pytest.approx(expected, rel=1e-3)


def test_histogram_quantile_without_observations() -> None:
    assert demo.histogram_quantile(0.5, {0.01: 0, float("inf"): 0}) is None
    assert demo.histogram_quantile(0.5, {}) is None
