"""What a gateway pays to import the task: no vendor module, no OTLP, no cryptography."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from tasks import broadcast
print(json.dumps(sorted(sys.modules)))
"""
FORBIDDEN = (
    "destinations",
    "opentelemetry",
    "google.protobuf",
    "cryptography",
    "boto3",
    "botocore",
    "marshmallow",
    "broadcast_engine.runtime",
    "broadcast_interfaces.service",
    "tasks.deliver",
    "broadcast_engine",
    "broadcast_interfaces",
)


def test_from_tasks_import_broadcast_loads_no_vendor_otlp_or_crypto_module():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    modules = json.loads(out.stdout)
    assert [m for m in modules if m.startswith(FORBIDDEN)] == []
    assert "celery" in modules and "tasks.fan_out" in modules
