"""The CI step that runs mitmproxy's own suite with the gateway's replacements
(tests/mitmproxy_suite/run.py): which outcomes fail it. (The step itself runs in .ci/run.)"""

from __future__ import annotations

from mitmproxy_suite import run

PASSED, FAILED, SKIPPED = ({"outcome": o} for o in ("passed", "failed", "skipped"))


def test_a_test_failing_only_with_the_replacements_fails_the_step_unless_listed() -> None:
    baseline = {"a": PASSED, "b": PASSED, "c": FAILED, "d": PASSED}
    gateway = {"a": PASSED, "b": {"outcome": "failed", "failure": "the assertion"}, "c": FAILED}
    problems = run.compare(baseline, gateway, {})
    assert [p.split(":")[0] for p in problems] == ["b", "d"], "d did not run at all"
    assert "the assertion" in problems[0]
    assert run.compare(baseline, gateway, {"b": "on purpose", "d": "on purpose"}) == []


def test_a_listed_test_that_no_longer_differs_fails_the_step() -> None:
    baseline = {"a": PASSED, "c": FAILED}
    gateway = {"a": PASSED, "c": FAILED}
    (stale_pass, stale_both, stale_gone) = run.compare(
        baseline, gateway, {"a": "on purpose", "c": "on purpose", "gone": "on purpose"}
    )
    assert stale_pass.startswith("a: listed") and "no longer differs" in stale_pass
    assert stale_both.startswith("c: listed"), "failing in both runs is not the gateway's"
    assert stale_gone.startswith("gone: listed")


def test_a_passing_test_skipped_with_the_replacements_is_a_difference() -> None:
    assert run.differences({"a": PASSED}, {"a": SKIPPED}) == {"a": ("passed", "skipped")}
    assert run.differences({"a": SKIPPED}, {"a": SKIPPED}) == {}
    assert run.differences({"a": FAILED}, {"a": PASSED}) == {}


def test_every_intended_difference_is_a_test_id_with_a_reason() -> None:
    listed = run.intended()
    assert listed
    for test, reason in listed.items():
        assert test.startswith("test/") and "::" in test
        assert len(reason) > 40, test
