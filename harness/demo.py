"""The demo: a local Broadcast, a demo account, a batch of events, a delivery report.

Run with `make demo`. Starts a throwaway Redis, a worker, beat, a moto S3 server and a
webhook receiver (which verifies every Standard Webhooks signature and, to show the retry
path, answers 503 to the first attempt of every tenth request; enough of those in a row
open the webhook's circuit, so some deliveries are parked and come back through beat's
sweep and the circuit's probe), configures `user:demo`
with both destinations, sends events with `broadcast.delay(...)`, waits for every
delivery to settle, prints a per-destination report, and stops what it started.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

import boto3
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from harness.receiver import ReceivedRequest, Receiver, Reply
from harness.samples import chat_event, error_event, tool_call_event
from harness.stack import local_stack
from harness.waiting import wait_for

OWNER = "user:demo"
SIGNING_SECRET = "whsec_" + "ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5YWJj"


class DemoReceiver:
    """Verifies signatures; fails the first attempt of every tenth request with a 503."""

    def __init__(self) -> None:
        self.verified = 0
        self.bad_signatures = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.server = Receiver(self.respond)

    def respond(self, request: ReceivedRequest) -> Reply:
        try:
            payload = Webhook(SIGNING_SECRET).verify(request.body, request.headers)
        except WebhookVerificationError:
            with self._lock:
                self.bad_signatures += 1
            return Reply(400, b"bad signature")
        if request.headers.get("x-test-connection"):
            return Reply(200)
        request_id = payload["data"]["requestId"]
        with self._lock:
            self.verified += 1
            first_time = request_id not in self._seen
            self._seen.add(request_id)
        if first_time and request_id.endswith("0"):
            return Reply(503, b"demo: try again", {"Retry-After": "1"})
        return Reply(200, b'{"ok":true}')


def sample_events(count: int) -> list[dict[str, Any]]:
    makers = (chat_event, chat_event, tool_call_event, chat_event, error_event)
    events = [makers[i % len(makers)](i, user_id="demo") for i in range(count)]
    for index, event in enumerate(events):
        event["id"] = f"demo-{index:05d}"
    return events


def report(service: Any, destinations: dict[str, str], expected: int) -> list[dict[str, Any]]:
    rows = []
    for name, destination_id in destinations.items():
        counters = service.store.counters(destination_id)
        attempts = service.deliveries(destination_id, limit=expected * 3)
        latencies = [a["latency_ms"] for a in attempts if a["outcome"] == "delivered"]
        rows.append(
            {
                "destination": name,
                "delivered": counters["delivered"],
                "retried": counters["retried"],
                "dropped": counters["dropped_overflow"],
                "failed": counters["failed"],
                "median_latency_ms": round(statistics.median(latencies), 1) if latencies else None,
                "worst_latency_ms": round(max(latencies), 1) if latencies else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    print("starting a local Redis, moto (S3), a Celery worker and beat ...", flush=True)
    receiver = DemoReceiver()
    with (
        local_stack(
            with_moto=True, extra_env={"BROADCAST_DELIVERY_LOG_SIZE": str(args.events * 3)}
        ) as stack,
        receiver.server,
    ):
        from broadcast_interfaces.service import settings_service
        from tasks import broadcast

        service = settings_service()
        assert stack.moto is not None
        boto3.client(
            "s3",
            endpoint_url=stack.moto.url,
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo-secret",
        ).create_bucket(Bucket="demo-traces")
        service.set_enabled(OWNER, True)
        webhook = service.add_destination(
            OWNER,
            "webhook",
            "Demo webhook",
            {"url": receiver.server.url + "/traces", "signing_secret": SIGNING_SECRET},
        )
        s3 = service.add_destination(
            OWNER,
            "s3",
            "Demo archive",
            {
                "bucket": "demo-traces",
                "endpoint_url": stack.moto.url,
                "access_key_id": "demo",
                "secret_access_key": "demo-secret",
            },
        )
        destinations = {"webhook": webhook["id"], "s3": s3["id"]}
        print(f"configured {OWNER}: webhook {webhook['id']}, s3 {s3['id']}", flush=True)
        print(
            "the demo webhook fails on purpose: it answers 503 to the first attempt of every "
            "tenth request, so you see retries (and the circuit opening) in the report",
            flush=True,
        )

        events = sample_events(args.events)
        started = time.monotonic()
        for event in events:
            broadcast.delay(event)
        broadcast.delay({"id": "demo-broken", "user_id": "demo"})  # rejected, with a reason
        print(
            f"sent {len(events)} events (+1 invalid) in "
            f"{(time.monotonic() - started) * 1000:.0f} ms; waiting for deliveries ...",
            flush=True,
        )

        def settled() -> bool:
            return all(
                (c := service.store.counters(i))["delivered"] + c["failed"] >= len(events)
                for i in destinations.values()
            )

        wait_for(settled, timeout=180, interval=0.2, what="every delivery to settle")
        elapsed = time.monotonic() - started
        rows = report(service, destinations, len(events))
        rejected = service.rejected_events(OWNER)
        if args.json:
            print(json.dumps({"destinations": rows, "rejected_events": rejected}, indent=2))
        else:
            print(f"\nall deliveries settled in {elapsed:.1f} s\n")
            header = (
                f"{'destination':<12}{'delivered':>10}{'retried':>9}{'dropped':>8}{'failed':>8}"
                f"{'median ms':>11}{'worst ms':>10}"
            )
            print(header)
            for row in rows:
                print(
                    f"{row['destination']:<12}{row['delivered']:>10}{row['retried']:>9}"
                    f"{row['dropped']:>8}{row['failed']:>8}{row['median_latency_ms']:>11}"
                    f"{row['worst_latency_ms']:>10}"
                )
            print(
                f"\nwebhook signatures verified: {receiver.verified}, "
                f"bad: {receiver.bad_signatures}"
            )
            for entry in rejected:
                # The whole reason, however long: it names every field that failed.
                print(f"rejected event {entry['id']} (on purpose):\n    {entry['reason']}")
            print(f"\n$ broadcast status --owner {OWNER}")
            from broadcast_interfaces.cli import main as cli

            cli(["status", "--owner", OWNER], service=service)
            print(
                "\nNext, on your own install: `broadcast status` (every owner), "
                "`broadcast deliveries DESTINATION_ID` (each attempt), `broadcast rejected`."
            )
        ok = all(row["delivered"] == len(events) for row in rows) and not receiver.bad_signatures
    print("stopped the local Redis, moto, worker and beat.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
