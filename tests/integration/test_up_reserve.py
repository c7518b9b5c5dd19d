"""`voxfleet up --reserve`: its real router reserves the slots, and the scaler reads what is in use.

One pod of 2 slots, `--reserve normal=0.5`: the router keeps 1 slot for `normal` (up's anonymous
clients' class), and a scaling decision counts it. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.request

import pytest

from tests.integration.conftest import free_port
from voxfleet.up import LocalFleet

pytestmark = pytest.mark.integration


def router_status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def test_up_gives_its_router_and_its_scaler_the_reserve():
    fleet = LocalFleet(port=free_port(), max_sessions=2, min_pods=1, max_pods=2, reserve="normal=0.5",
                       env={**os.environ, "VOXFLEET_POD_CPU_THREADS": "1"})
    assert fleet.policy.reserve == (("normal", 0.5),)
    fleet.policy = dataclasses.replace(fleet.policy, buffer=0)  # the reserve alone: 1 of 2 slots, no new pod
    try:
        fleet.start()
        deadline = time.monotonic() + 30
        while router_status(fleet.port)["reserve"] != {"normal": {"slots": 1, "in_use": 0}}:
            assert time.monotonic() < deadline, router_status(fleet.port)
            time.sleep(0.2)
        decision = fleet.scale_step()
        assert decision.inputs["reservedSlots"] == 1 and decision.inputs["reservedInUse"] == 0
        assert "reserve 1 of 1 unused" in decision.reason and decision.replicas == 1
    finally:
        fleet.stop()
