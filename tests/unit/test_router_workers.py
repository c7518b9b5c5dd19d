"""Worker processes: what a worker is started with (its environment: every setting, the shared secret, never argv)."""

from __future__ import annotations

import dataclasses

from stt_router import workers
from stt_router.settings import ENV_PREFIX, RouterSettings
from voxfleet import settings as settings_mod


def test_a_worker_runs_with_the_parents_resolved_settings():
    parent = RouterSettings(pods="ws://127.0.0.1:9000,ws://127.0.0.1:9001", anonymous=True, workers=3,
                            max_queue=7, placement="spread", token_secrets="s1,s2", router_id="edge",
                            status_timeout_seconds=0.5, anonymous_priority="low")
    env = workers.worker_environment(parent, 2, 40123, 99, {"PATH": "/bin", "VOXFLEET_ROUTER_MAX_QUEUE": "1"})
    child = settings_mod.load(RouterSettings, ENV_PREFIX, None, env)
    assert child == dataclasses.replace(parent, workers=1, port=40123, router_id="edge-w2")
    assert env["PATH"] == "/bin" and env[workers.PARENT_ENV] == "99"
    assert workers.worker_index(env) == 2 and workers.worker_index({}) == 0
    assert workers.worker_index({workers.WORKER_ENV: "x"}) == 0


def test_workers_share_one_secret_made_by_the_parent_unless_configured():
    plain = RouterSettings(pods="ws://127.0.0.1:9000", anonymous=True, workers=2)
    shared = workers.with_shared_secret(plain)
    assert len(shared.secrets()) == 1 and len(shared.secrets()[0]) >= 32
    assert workers.with_shared_secret(plain).secrets() != shared.secrets()  # random, per parent
    env = workers.worker_environment(shared, 1, 8765, 1, {})
    assert env["VOXFLEET_ROUTER_TOKEN_SECRETS"] == shared.secrets()[0]
    configured = dataclasses.replace(plain, token_secrets="mine")
    assert workers.with_shared_secret(configured) is configured
