"""``unit-gateway demo --replicas N``: N gateways sharing one private Redis (the ``store:``
section), in front of one local sandbox, show that each token is minted once for all of them.

The demo starts ``redis-server`` on a free loopback port in its run directory (no
persistence), writes a new store key to a file there, starts the sandbox and N gateways
(each with its own proxy and metrics port), and plays a story whose requests go through
different replicas: concurrent cold requests spread over all of them mint one token, a token
minted via one replica is used via the others, two-factor data read via one is read via the
others without a second verification, and a token that expires is replaced once for all.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .demo import (
    CARDHOLDER_LIFETIME,
    EXIT_NOT_STARTED,
    EXIT_OK,
    EXIT_STEP_FAILED,
    Environment,
    StepFailed,
    Story,
    apply_faults,
    attach,
    demo_config,
    launch,
    mask,
    metric_samples,
    metric_total,
    play_steps,
    print_line,
    proxied,
    sdk_result,
)
from .testing import harness
from .testing.redis_server import RedisNotInstalled, RedisProcess, redis_binary

#: Concurrent cold requests per replica in the first customer step.
BURST_PER_REPLICA = 10


def cannot_start(args: argparse.Namespace) -> str | None:
    """Why ``--replicas`` cannot run here, said before anything starts; None if it can."""
    if args.web:
        return "--web shows one gateway; leave out --replicas, or --web"
    try:
        redis_binary()
    except RedisNotInstalled as e:
        return f"--replicas {args.replicas} needs a Redis the replicas share: {e}"
    return None


@dataclass
class Fleet:
    """The replicas, the sandbox they all send to, and the Redis they share."""

    replicas: list[Environment]
    sandbox: harness.Sandbox
    redis: RedisProcess


def start(stack: ExitStack, run_dir: Path, org_token: str, count: int) -> Fleet:
    """Redis, the sandbox and ``count`` gateways; ``stack`` stops each when it closes."""
    redis = RedisProcess(run_dir / "redis")
    stack.callback(redis.stop)
    sandbox = harness.start_sandbox(run_dir, org_token=org_token)
    stack.callback(sandbox.process.stop)
    store = harness.store_overrides(run_dir, redis.url)["store"]
    launched = []
    for n in range(1, count + 1):  # all starting at once, then waited for in turn
        sandbox_port = urlsplit(sandbox.url).port or 0
        config = demo_config(sandbox_port, harness.free_port(), embedded=False, store=store)
        confdir = run_dir / f"replica-{n}-confdir"  # its own CA: none written concurrently
        one = launch(
            run_dir,
            f"replica-{n}",
            config,
            org_token,
            sandbox_url=sandbox.url,
            extra_args=["--set", f"confdir={confdir}"],
        )
        stack.callback(one.process.stop)
        launched.append(one)
    return Fleet([attach(one) for one in launched], sandbox, redis)


def run(
    args: argparse.Namespace,
    faults: dict[str, Any],
    run_dir: Path,
    secrets: dict[str, str],
    started: float,
) -> int:
    """Everything started, the story played, everything stopped (on Ctrl-C too)."""
    with ExitStack() as stack:
        try:
            fleet = start(stack, run_dir, secrets["org token"], args.replicas)
        except RuntimeError as e:  # harness.ProcessFailed, or Redis did not start
            print_line(f"unit-gateway demo: the replicas did not start:\n{e}")
            return EXIT_NOT_STARTED
        story = ReplicaStory(fleet.replicas[0], secrets=secrets, fleet=fleet)
        try:
            code = play(story, faults, started)
        finally:
            # What Unit issued, for the scan after everything stopped (a Ctrl-C in a terminal
            # may have stopped the sandbox already).
            with suppress(OSError):
                story.collect_issued()
    return code


@dataclass
class ReplicaStory(Story):
    """The story told through several replicas; ``env`` is replica 1."""

    fleet: Fleet | None = None

    @property
    def replicas(self) -> list[Environment]:
        assert self.fleet is not None
        return self.fleet.replicas

    def name(self, index: int) -> str:
        return f"replica {index % len(self.replicas) + 1}"

    def via(self, index: int, step: Callable[[], str]) -> Callable[[], str]:
        """``step`` with the SDK's requests sent through replica ``index`` (from 0, wrapping)."""

        def through() -> str:
            with proxied(self.replicas[index % len(self.replicas)].proxy_url):
                return step()

        return through

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        count = len(self.replicas)
        others = "the others" if count > 2 else "replica 2"
        return [
            (
                f"org opens a customer (individual application) via {self.name(0)}",
                self.via(0, self.open_customer),
            ),
            (
                f"org opens a checking account for the customer via {self.name(1)}",
                self.via(1, self.open_account),
            ),
            (f"org issues a virtual debit card via {self.name(2)}", self.via(2, self.issue_card)),
            (
                f"{BURST_PER_REPLICA * count} concurrent cold requests for the customer, "
                f"spread over {count} replicas: one token minted",
                self.cold_burst,
            ),
            (
                "customer reads accounts and cards via each replica: the same token",
                self.each_replica,
            ),
            (
                f"secure card data: two-factor via replica 1, then read via {others}",
                self.secure_data_everywhere,
            ),
            (
                f"cardholder token ({CARDHOLDER_LIFETIME} s) expires: replaced once for all",
                self.short_lived_shared,
            ),
            ("no token or card data in any output or saved flows", self.outputs_clean),
        ]

    def fleet_counts(self) -> list[dict[str, float]]:
        """Per replica: what its /metrics say about minting and sharing."""
        counts = []
        for env in self.replicas:
            samples = metric_samples(env)
            counts.append(
                {
                    "requests": metric_total(samples, "unit_gateway_requests_total"),
                    "minted": metric_total(samples, "unit_gateway_token_mints_total", outcome="ok"),
                    "shared_hit": metric_total(
                        samples, "unit_gateway_fleet_events_total", outcome="shared_hit"
                    ),
                    "mint_wait": metric_total(
                        samples, "unit_gateway_fleet_events_total", outcome="mint_wait"
                    ),
                    "store_up": metric_total(samples, "unit_gateway_store_up", store="redis"),
                }
            )
        return counts

    def cold_burst(self) -> str:
        before_stats, before = self.env.stats(), self.fleet_counts()
        count = BURST_PER_REPLICA * len(self.replicas)
        statuses = asyncio.run(
            harness.spread_requests(
                [env.proxy_url for env in self.replicas],
                f"{self.env.sandbox_url}/accounts",
                f"unitgw:customer:{self.customer_id}",
                count,
            )
        )
        if statuses != [200] * count:
            raise StepFailed(f"expected {count}x 200, got {sorted(set(statuses))}")
        minted = self.since(before_stats, "tokens_created", "customer")
        if minted != 1:
            raise StepFailed(
                f"expected 1 customer token at Unit for {count} requests, saw {minted}"
            )
        after = self.fleet_counts()
        minters = [
            self.name(i) for i, (a, b) in enumerate(zip(after, before, strict=True))
            if a["minted"] > b["minted"]
        ]  # fmt: skip
        shared = sum(a["shared_hit"] - b["shared_hit"] for a, b in zip(after, before, strict=True))
        waited = sum(a["mint_wait"] - b["mint_wait"] for a, b in zip(after, before, strict=True))
        return (
            f"{count}x 200, 1 customer token created at Unit, minted by "
            f"{', '.join(minters) or 'none'}; the others took it from Redis "
            f"({shared:.0f} shared hits, {waited:.0f} waits for the mint)"
        )

    def each_replica(self) -> str:
        before = self.env.stats()
        for index in range(len(self.replicas)):
            with proxied(self.replicas[index].proxy_url):
                customer = self.unit(f"unitgw:customer:{self.customer_id}")
                sdk_result(customer.accounts.list(), f"list accounts via {self.name(index)}")
                sdk_result(customer.cards.list(), f"list cards via {self.name(index)}")
        minted = self.since(before, "tokens_created", "customer")
        if minted != 0:
            raise StepFailed(f"expected no new customer token, Unit created {minted}")
        return f"{2 * len(self.replicas)} requests, 0 new tokens at Unit"

    def secure_data_everywhere(self) -> str:
        from unit.api.base_resource import BaseResource

        before = self.env.stats()
        with proxied(self.replicas[0].proxy_url):
            self.secure_data()  # PIN status and PAN, one verification
        for index in range(1, len(self.replicas)):
            with proxied(self.replicas[index].proxy_url):
                customer = self.unit(f"unitgw:customer:{self.customer_id}")
                response = BaseResource.get(customer.cards, f"cards/{self.card_id}/secure-data/pan")
                if response.status_code != 200:
                    raise StepFailed(
                        f"card PAN via {self.name(index)}: HTTP {response.status_code} "
                        f"{response.text[:200]}"
                    )
        verifications = self.since(before, "verifications_created", "customer")
        minted = self.since(before, "tokens_created", "customer")
        if (verifications, minted) != (1, 1):
            raise StepFailed(
                f"expected 1 verification and 1 two-factor token for the fleet, saw "
                f"{verifications} and {minted}"
            )
        return (
            f"PAN {mask(self.secrets['PAN'])} via all {len(self.replicas)} replicas: "
            "1 verification (code 000001), 1 two-factor token for the fleet"
        )

    def short_lived_shared(self) -> str:
        before = self.env.stats()
        count = len(self.replicas)

        def read(index: int, what: str) -> None:
            with proxied(self.replicas[index % count].proxy_url):
                cardholder = self.unit(f"unitgw:cardholder:{self.card_id}")
                sdk_result(cardholder.cards.get(self.card_id), f"{what} via {self.name(index)}")

        for index in range(count):
            read(index, "get card as cardholder")
        time.sleep(CARDHOLDER_LIFETIME + 0.2)
        for index in range(1, count + 1):  # replica 2 finds it expired first
            read(index, "get card after expiry")
        created = self.since(before, "tokens_created", "cardholder")
        if created != 2:
            raise StepFailed(f"expected 2 cardholder tokens (first, replacement), saw {created}")
        return (
            f"{2 * count} requests, 2 cardholder tokens: one minted via replica 1, its "
            f"replacement via replica {2 if count > 1 else 1}, each used by every replica"
        )


def play(story: ReplicaStory, faults: dict[str, Any], started: float) -> int:
    """The story, the replicas' counts and where to look next; the exit status."""
    fleet = story.fleet
    assert fleet is not None
    run_dir = story.env.run_dir
    for n, env in enumerate(fleet.replicas, 1):
        print_line(f"  replica {n}  {env.proxy_url} (mitmdump), metrics {env.metrics_url}")
    print_line(f"  sandbox    {fleet.sandbox.url}")
    print_line(f"  redis      {fleet.redis.url} (private: loopback, no persistence)")
    print_line(f"  outputs    {run_dir}")
    apply_faults(story.env, faults)
    if not play_steps(story.steps(), f"The replicas' output is in {run_dir}/replica-*.stdout."):
        return EXIT_STEP_FAILED
    counts = story.fleet_counts()
    stats = story.env.stats()
    print_line()
    print_line(f"Replicas (each one's /metrics), {time.monotonic() - started:.1f} s:")
    header = ("", "requests", "tokens minted", "from Redis", "waited for a mint", "store up")
    rows = [header] + [
        (
            story.name(i),
            *(f"{c[k]:.0f}" for k in ("requests", "minted", "shared_hit", "mint_wait", "store_up")),
        )
        for i, c in enumerate(counts)
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    for row in rows:
        print_line("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    created = stats.get("tokens_created", {})
    minted = sum(c["minted"] for c in counts)
    print_line(
        f"  Unit created (sandbox count): {', '.join(f'{k} {v}' for k, v in created.items())}; "
        f"the replicas minted {minted:.0f}"
    )
    # Each identity's token was minted once: its two-factor successor and its replacement
    # after expiry are new tokens, each minted once too.
    expected = {"customer": 2, "cardholder": 2}
    if created != expected or minted != sum(expected.values()):
        print_line(f"unit-gateway demo: expected {expected} tokens for the fleet.")
        return EXIT_STEP_FAILED
    if any(c["store_up"] != 1 for c in counts):
        print_line("unit-gateway demo: a replica does not report unit_gateway_store_up 1.")
        return EXIT_STEP_FAILED
    print_line(
        f"Each token was minted once for all {len(counts)} replicas: customer "
        f"{story.customer_id} (its token and its two-factor token), cardholder {story.card_id} "
        "(its token and the replacement after expiry)."
    )
    print_line()
    print_line("Where to look next:")
    print_line(f"  each replica's output (redacted)   {run_dir}/replica-N.stdout")
    print_line(f"  each replica's saved flows         {run_dir}/replica-N.flows.mitm")
    print_line(f"  the sandbox's and Redis' logs      {run_dir}/sandbox.stdout, {run_dir}/redis/")
    print_line("  how to run replicas                docs/deployment.md")
    return EXIT_OK
