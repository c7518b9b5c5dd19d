"""Placement policy: pack fills low ordinals first; spread balances; ineligible pods get nothing."""

from __future__ import annotations

import pytest

from stt_router.placement import PACK, SPREAD, PodView, choose, free_slots, ordinal_of


def pod(ordinal: int, capacity: int = 4, active: int = 0, **kwargs) -> PodView:
    view = PodView(f"voxfleet-pod-{ordinal}", f"ws://127.0.0.1:{9000 + ordinal}", ordinal)
    view.report(ready=kwargs.pop("ready", True), draining=kwargs.pop("draining", False), capacity=capacity, active=active)
    for key, value in kwargs.items():
        setattr(view, key, value)
    return view


def test_pack_takes_the_lowest_ordinal_with_a_free_slot():
    pods = [pod(2), pod(0, active=4), pod(1, active=3)]
    assert choose(pods, PACK).ordinal == 1


def test_pack_keeps_filling_one_pod_until_it_is_full():
    pods = [pod(0, capacity=2), pod(1, capacity=2)]
    placed = []
    for _ in range(4):
        chosen = choose(pods, PACK)
        chosen.placed()
        placed.append(chosen.ordinal)
    assert placed == [0, 0, 1, 1]
    assert choose(pods, PACK) is None


def test_spread_takes_the_least_loaded_and_breaks_ties_by_ordinal():
    pods = [pod(0, active=2), pod(1, active=1), pod(2, active=1)]
    assert choose(pods, SPREAD).ordinal == 1
    pods[1].placed()
    assert choose(pods, SPREAD).ordinal == 2


def test_spread_compares_load_relative_to_capacity():
    pods = [pod(0, capacity=2, active=1), pod(1, capacity=16, active=4)]
    assert choose(pods, SPREAD).ordinal == 1


@pytest.mark.parametrize("change", [
    {"ready": False},
    {"draining": True},
    {"reachable": False},
    {"listed_ready": False},
    {"terminating": True},
    {"refused_full": True},
])
def test_ineligible_pods_get_nothing(change):
    low = pod(0, **change)
    assert low.free_slots == 0
    assert choose([low, pod(1)], PACK).ordinal == 1
    assert choose([low], PACK) is None


def test_unreachable_pod_gets_nothing_until_it_reports_again():
    p = pod(0)
    p.unreachable()
    assert choose([p]) is None
    p.report(ready=True, draining=False, capacity=4, active=0)
    assert choose([p]) is p


def test_load_is_the_larger_of_the_report_plus_new_placements_and_own_sessions():
    p = pod(0, capacity=4, active=1)
    p.placed()
    assert p.load == 2 and p.free_slots == 2
    p.report(ready=True, draining=False, capacity=4, active=0)  # a report that has not seen our session yet
    assert p.load == 1  # our own accounting still counts it
    p.released()
    assert p.load == 0
    p.released()
    assert p.own_sessions == 0


def test_exclude_and_free_slots():
    pods = [pod(0, capacity=2), pod(1, capacity=3, active=1)]
    assert choose(pods, PACK, exclude=frozenset({"voxfleet-pod-0"})).ordinal == 1
    assert free_slots(pods) == 4


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError):
        choose([pod(0)], "random")


@pytest.mark.parametrize("name,ordinal", [("voxfleet-pod-3", 3), ("stt-12", 12), ("ws://127.0.0.1:9000", 7),
                                          ("pod", 7), ("-4", 7)])
def test_ordinal_from_statefulset_names(name, ordinal):
    assert ordinal_of(name, 7) == ordinal
