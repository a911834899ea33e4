"""What redacting a body costs, per KB of JSON, for the bodies Unit sends.

    uv run python benchmarks/redaction_cost.py

Builds JSON:API list documents of cards, customers and accounts like the local sandbox's
(PII, card and bank fields in every resource) at several sizes, plain and gzip-encoded, and
times ``Redactor.redact_body`` on each. Writes ``benchmarks/results/redaction_cost.json`` and
``.md``. The proxy-level cost (gateway/bare ratio with redaction on) is in proxy_overhead.md.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
import time
from typing import Any

from report import heading, write
from report import machine as report_machine
from unit_gateway.redaction.engine import Redactor

MEDIA_TYPE = "application/vnd.api+json"


def resource(i: int) -> dict[str, Any]:
    return {
        "type": "individualDebitCard",
        "id": str(30000 + i),
        "attributes": {
            "createdAt": "2024-01-04T16:04:05.000Z",
            "last4Digits": "0026",
            "expirationDate": "2028-03",
            "status": "Active",
            "fullName": {"first": "Jane", "last": "Doe"},
            "address": {"street": "5230 Newell Rd", "city": "Palo Alto", "state": "CA"},
            "phone": {"countryCode": "1", "number": "5555550101"},
            "email": "jane.doe@example.com",
            "dateOfBirth": "1991-05-14",
            "accountNumber": f"10001{i:05d}",
            "routingNumber": "812345678",
            "tags": {"purpose": "groceries", "note": f"card number {i}"},
        },
        "relationships": {
            "account": {"data": {"type": "depositAccount", "id": str(20000 + i)}},
            "customer": {"data": {"type": "individualCustomer", "id": "10001"}},
        },
    }


def document(target_bytes: int) -> bytes:
    items: list[dict[str, Any]] = []
    body = b""
    while len(body) < target_bytes:
        items.append(resource(len(items)))
        body = json.dumps({"data": items, "meta": {"pagination": {"total": len(items)}}}).encode()
    return body


def time_it(redactor: Redactor, body: bytes, encoding: str | None, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        redactor.redact_body(body, MEDIA_TYPE, encoding, path="/cards")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    redactor = Redactor()
    rows = []
    for size in (1_000, 10_000, 100_000, 1_000_000):
        plain = document(size)
        rounds = max(5, 2_000_000 // len(plain))
        for encoding, body in ((None, plain), ("gzip", gzip.compress(plain))):
            seconds = time_it(redactor, body, encoding, rounds)
            rows.append(
                {
                    "json_bytes": len(plain),
                    "content_encoding": encoding or "identity",
                    "median_us": round(seconds * 1e6, 1),
                    "us_per_kb": round(seconds * 1e6 / (len(plain) / 1024), 1),
                }
            )
    report = {
        "benchmark": "redaction_cost",
        "command": "uv run python benchmarks/redaction_cost.py",
        **report_machine(),
        "results": rows,
    }
    lines = [
        "# Redaction cost per KB of JSON",
        "",
        heading(report),
        "",
        "| JSON bytes | Content-Encoding | median us | us per KB |",
        "|---|---|---|---|",
        *(
            f"| {r['json_bytes']} | {r['content_encoding']} | {r['median_us']} | {r['us_per_kb']} |"
            for r in rows
        ),
    ]
    write("redaction_cost", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
