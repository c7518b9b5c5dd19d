"""Router settings: every option by flag or environment; a router without pods or an access rule is refused."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from stt_router.settings import ENV_PREFIX, RouterSettings
from voxfleet import settings as settings_mod


def parse(argv: list[str], environ: dict[str, str] | None = None) -> RouterSettings:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser, RouterSettings, ENV_PREFIX)
    return settings_mod.load(RouterSettings, ENV_PREFIX, parser.parse_args(argv), environ or {})


def test_every_field_has_help_and_an_environment_variable():
    for f in dataclasses.fields(RouterSettings):
        assert f.metadata.get("help"), f.name
    env = {"VOXFLEET_ROUTER_PODS": "ws://127.0.0.1:9000", "VOXFLEET_ROUTER_ANONYMOUS": "true",
           "VOXFLEET_ROUTER_MAX_QUEUE": "7", "VOXFLEET_ROUTER_PLACEMENT": "spread"}
    s = parse([], env)
    assert (s.pod_urls(), s.anonymous, s.max_queue, s.placement) == (["ws://127.0.0.1:9000"], True, 7, "spread")
    assert parse(["--max-queue", "3"], env).max_queue == 3  # a flag beats the environment


def test_pods_and_secrets_lists():
    s = RouterSettings(pods=" ws://127.0.0.1:9000/, ,ws://127.0.0.1:9001", token_secrets="new, old", anonymous=True)
    assert s.pod_urls() == ["ws://127.0.0.1:9000", "ws://127.0.0.1:9001"]
    assert s.secrets() == ["new", "old"]
    s.validate()


@pytest.mark.parametrize("kwargs,match", [
    ({"anonymous": True}, "no pods"),
    ({"pods": "ws://127.0.0.1:9000"}, "access rule"),
    ({"pods": "http://127.0.0.1:9000", "anonymous": True}, "ws://"),
    ({"pods": "ws://127.0.0.1:9000", "anonymous": True, "max_replay_seconds": 0}, "replay"),
])
def test_settings_that_cannot_work_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RouterSettings(**kwargs).validate()


def test_kubernetes_discovery_needs_no_static_list():
    RouterSettings(discover="kubernetes", api_keys="/keys").validate()


def test_bad_environment_values_are_refused():
    with pytest.raises(ValueError):
        parse([], {"VOXFLEET_ROUTER_PLACEMENT": "random"})


def test_workers_and_the_poll_failure_threshold():
    s = parse([], {"VOXFLEET_ROUTER_WORKERS": "4", "VOXFLEET_ROUTER_PODS": "ws://127.0.0.1:9000",
                   "VOXFLEET_ROUTER_ANONYMOUS": "1"})
    assert (s.workers, s.status_failure_threshold) == (4, 3)
    s.validate()
    for bad in ({"workers": 0}, {"status_failure_threshold": 0}):
        with pytest.raises(ValueError):
            RouterSettings(pods="ws://127.0.0.1:9000", anonymous=True, **bad).validate()
