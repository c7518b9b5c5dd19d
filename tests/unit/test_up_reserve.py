"""`voxfleet up --reserve`: given to the router and to the autoscaling policy (no processes)."""

from __future__ import annotations

import pytest

from voxfleet import up
from voxfleet.cli import build_parser


def test_reserve_shares():
    assert up.reserve_shares("") == ()
    assert up.reserve_shares("high=0.2") == (("high", 0.2),)
    assert up.reserve_shares(" normal=0.1 , high=0.2") == (("high", 0.2), ("normal", 0.1))
    for wrong in ("vip=0.1", "high", "high=x", "high=1", "high=-0.1", "high=0.1,high=0.2", "high=0.5,low=0.5",
                  "high=nan"):
        with pytest.raises(ValueError, match="--reserve"):
            up.reserve_shares(wrong)


def test_the_router_and_the_policy_get_the_reserve(monkeypatch):
    spawned: list[list[str]] = []
    fleet = up.LocalFleet(port=0, pods=1, env={}, min_pods=1, max_pods=2, reserve="high=0.25")
    assert fleet.policy.reserve == (("high", 0.25),)
    monkeypatch.setattr(up, "check_port_free", lambda port: None)
    monkeypatch.setattr(fleet, "_spawn", lambda name, args, port: spawned.append(args) or up.Child(name, None, port))
    monkeypatch.setattr(fleet, "_wait_ready", lambda children: None)
    fleet.start()
    router = spawned[-1]
    assert router[0] == "router" and router[router.index("--reserve") + 1] == "high=0.25"

    plain = up.LocalFleet(port=0, pods=1, env={})
    assert plain.policy.reserve == ()
    spawned.clear()
    monkeypatch.setattr(plain, "_spawn", lambda name, args, port: spawned.append(args) or up.Child(name, None, port))
    monkeypatch.setattr(plain, "_wait_ready", lambda children: None)
    plain.start()
    assert "--reserve" not in spawned[-1]


def test_a_wrong_reserve_stops_up_before_anything_starts(capsys):
    assert up.run_up(port=0, pods=1, reserve="vip=0.5") == 2
    assert "--reserve" in capsys.readouterr().err


def test_the_routers_reserved_slots_in_use_reach_the_policy():
    text = ('voxfleet_router_sessions_queued 1.0\n'
            'voxfleet_router_reserved_slots{priority="high"} 2.0\n'
            'voxfleet_router_reserved_slots_in_use{priority="high"} 1.0\n'
            'voxfleet_router_reserved_slots_in_use{priority="normal"} 1.0\n')
    numbers = up.router_numbers(text)
    assert numbers["reserved_in_use"] == 2.0 and numbers["queued"] == 1.0
    obs = up.local_observations(1.0, 1, {0: {"ready": True, "capacity": 4, "active_sessions": 2, "free_slots": 2}},
                                (), 0, reserved_in_use=2)
    assert obs.reserved_in_use == 2


def test_the_cli_takes_reserve_for_up():
    args = build_parser().parse_args(["up", "--reserve", "high=0.2"])
    assert args.reserve == "high=0.2"
    assert build_parser().parse_args(["up"]).reserve == ""
