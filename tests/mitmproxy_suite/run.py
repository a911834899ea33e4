"""mitmproxy's own test suite, run against the installed mitmproxy twice: as it is, and with
every replacement the gateway makes installed (``-p gateway_replacements``). A test that fails
only with the replacements is a change of mitmproxy's behaviour: this fails on each, unless
intended_differences.toml lists it with the reason, and on each listed test that no longer
fails only with them (so the list stays true). Tests that fail in both runs are not the
gateway's (see the suite's README).

    uv run python tests/mitmproxy_suite/run.py [--suite DIR] [--sequential]

The suite's folder is read-only and is never written: each run works in a copy of its own."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Where CI has it, next to the repository.
DEFAULT_SUITE = REPO.parent / "shared" / "third_party" / "mitmproxy-tests"
INTENDED = HERE / "intended_differences.toml"
#: A run that takes longer has hung (one run takes well under a minute).
RUN_TIMEOUT_SECONDS = 20 * 60
#: A test that takes longer has hung: it fails, and the run goes on.
TEST_TIMEOUT_SECONDS = 120

Outcomes = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Run:
    name: str
    plugins: tuple[str, ...]


BASELINE = Run("mitmproxy as it is", ())
GATEWAY = Run("with the gateway's replacements", ("gateway_replacements",))


def writable_copy(suite: Path, where: Path) -> Path:
    """The suite in a folder of its own that its tests may write in: some write next to
    themselves, hypothesis keeps its database there (as root they would write into the
    read-only original), and neither run sees what the other wrote."""
    shutil.copytree(suite, where, symlinks=True)
    for folder, _, files in os.walk(where):
        for name in [".", *files]:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return where


def start(run: Run, suite: Path, work: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    folder = writable_copy(suite, work / "suite")
    outcomes, log = work / "outcomes.json", work / "pytest.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "PYTHONDONTWRITEBYTECODE": "1",
        "MITMPROXY_SUITE_OUTCOMES": str(outcomes),
    }
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "outcomes"]
    for plugin in run.plugins:
        command += ["-p", plugin]
    command += [f"--timeout={TEST_TIMEOUT_SECONDS}", "test"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    return process, outcomes, log


def finish(run: Run, process: subprocess.Popen[bytes], outcomes: Path, log: Path) -> Outcomes:
    try:
        code = process.wait(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise SystemExit(f"{run.name}: no result after {RUN_TIMEOUT_SECONDS} s") from None
    text = log.read_text(errors="replace")
    # 0: all passed, 1: some failed; anything else means the run itself did not work.
    if code not in (0, 1) or not outcomes.exists():
        sys.stdout.write(text[-8000:])
        raise SystemExit(f"{run.name}: pytest exited with {code}")
    for line in text.splitlines():
        if line.startswith("gateway_replacements:"):
            print(line)
    found: Outcomes = json.loads(outcomes.read_text())
    return found


def intended(path: Path = INTENDED) -> dict[str, str]:
    """test id -> why it fails only with the gateway's replacements, on purpose."""
    listed: dict[str, str] = {}
    for entry in tomllib.loads(path.read_text())["difference"]:
        reason = " ".join(entry["reason"].split())
        if not reason:
            raise SystemExit(f"{path.name}: {entry['tests']} has no reason")
        for test in entry["tests"]:
            if test in listed:
                raise SystemExit(f"{path.name}: {test} is listed twice")
            listed[test] = reason
    return listed


def outcome(outcomes: Outcomes, test: str) -> str:
    return outcomes.get(test, {}).get("outcome", "not run")


def differences(baseline: Outcomes, gateway: Outcomes) -> dict[str, tuple[str, str]]:
    """test id -> (its outcome as mitmproxy is, with the replacements), for every test that
    did not pass with the replacements and had another outcome without them (not run at all
    with them counts too)."""
    found = {}
    for test in baseline.keys() | gateway.keys():
        before, after = outcome(baseline, test), outcome(gateway, test)
        if after != "passed" and after != before:
            found[test] = (before, after)
    return found


def compare(baseline: Outcomes, gateway: Outcomes, listed: dict[str, str]) -> list[str]:
    """What makes the step fail, one line each (nothing: it passes)."""
    found = differences(baseline, gateway)
    problems = []
    for test in sorted(found.keys() - listed.keys()):
        before, after = found[test]
        failure = gateway.get(test, {}).get("failure", "")
        problems.append(
            f"{test}: {before} as mitmproxy is, {after} with the gateway's replacements "
            f"(a bug in a replacement, or list it in {INTENDED.name} with the reason)"
            + (f"\n{failure}\n" if failure else "")
        )
    for test in sorted(listed.keys() - found.keys()):
        before, after = outcome(baseline, test), outcome(gateway, test)
        problems.append(
            f"{test}: listed in {INTENDED.name}, but it no longer differs ({before} as "
            f"mitmproxy is, {after} with the replacements): remove it from the list"
        )
    return problems


def counts(outcomes: Outcomes) -> str:
    found = Counter(entry["outcome"] for entry in outcomes.values())
    return ", ".join(f"{found[outcome]} {outcome}" for outcome in ("passed", "failed", "skipped"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="mitmproxy's tests")
    parser.add_argument(
        "--sequential", action="store_true", help="one run after the other (default: both at once)"
    )
    args = parser.parse_args()
    suite: Path = args.suite.resolve()
    if not (suite / "pytest.ini").is_file() or not (suite / "test").is_dir():
        raise SystemExit(f"no mitmproxy test suite at {suite}")
    listed = intended()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mitmproxy-suite-") as tmp:
        results = {}
        started = {}
        for run in (BASELINE, GATEWAY):
            work = Path(tmp, run.plugins[0] if run.plugins else "mitmproxy")
            work.mkdir()
            started[run] = start(run, suite, work)
            if args.sequential:
                results[run] = finish(run, *started.pop(run))
        for run, running in started.items():
            results[run] = finish(run, *running)
    baseline, gateway = results[BASELINE], results[GATEWAY]
    for run in (BASELINE, GATEWAY):
        print(f"{run.name}: {counts(results[run])}")
    for test in sorted(baseline):
        if outcome(baseline, test) == "failed" == outcome(gateway, test):
            print(f"  fails in both runs, not the gateway's: {test}")
    for test in sorted(listed.keys() & differences(baseline, gateway).keys()):
        print(f"  fails only with the replacements, listed as intended: {test}")
    problems = compare(baseline, gateway, listed)
    for problem in problems:
        print(f"FAIL {problem}")
    print(
        f"mitmproxy's suite with the gateway's replacements: "
        f"{'FAILED' if problems else 'as mitmproxy, less the listed differences'} "
        f"({time.monotonic() - began:.0f} s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
