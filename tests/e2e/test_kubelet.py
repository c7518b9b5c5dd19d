"""The local kubelet's safety rules, without a cluster: what it runs, where it binds."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.e2e.kubelet import KubeletError, LocalKubelet


class FakeApi:
    def call(self, method, path, body=None, content_type=None):
        assert method == "GET" and path == "/api/v1/namespaces/live-1/secrets/tok", path
        return {"data": {"hmac": "czNjcmV0"}}  # "s3cret"


def kubelet(tmp_path: Path) -> LocalKubelet:
    k = LocalKubelet.__new__(LocalKubelet)  # no thread, no API server: only the pure parts are used
    k.cluster = SimpleNamespace(workdir=tmp_path, server="https://127.0.0.1:1")
    k.api = FakeApi()
    return k


def pod(command=("voxfleet", "pod"), host=None, ip="127.2.0.7") -> dict:
    env = [{"name": "VOXFLEET_POD_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "VOXFLEET_POD_POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "VOXFLEET_POD_TOKEN_SECRET", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "hmac"}}},
           {"name": "VOXFLEET_POD_PORT", "value": "8765"}]
    if host is not None:
        env[0] = {"name": "VOXFLEET_POD_HOST", "value": host}
    return {
        "metadata": {"name": "live-stt-0", "namespace": "live-1", "uid": "u-1"},
        "spec": {"nodeName": "kwok-node-0", "automountServiceAccountToken": False, "containers": [{
            "name": "stt", "image": "voxfleet:e2e", "command": list(command), "env": env,
            "ports": [{"name": "ws", "containerPort": 8765}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "ws"}, "periodSeconds": 2, "timeoutSeconds": 2},
        }]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def test_runs_the_voxfleet_command_bound_to_the_pod_ip(tmp_path):
    argv, env, _, probe = kubelet(tmp_path)._command(pod())
    assert argv == [sys.executable, "-m", "voxfleet", "pod"]
    assert env["VOXFLEET_POD_HOST"] == "127.2.0.7" and env["VOXFLEET_POD_POD_ID"] == "live-stt-0"
    assert env["VOXFLEET_POD_TOKEN_SECRET"] == "s3cret" and "KUBECONFIG" not in env
    assert probe == ("http://127.2.0.7:8765/readyz", 1.0, 2.0)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_an_every_address_bind_becomes_the_pod_ip(tmp_path, host):
    assert kubelet(tmp_path)._command(pod(host=host))[1]["VOXFLEET_POD_HOST"] == "127.2.0.7"


@pytest.mark.parametrize("kwargs, message", [
    ({"host": "10.0.0.5"}, "not a loopback address"),
    ({"ip": "10.244.0.3"}, "pod IP 10.244.0.3 is not a loopback address"),
    ({"command": ("sh", "-c", "curl http://example.com")}, "only the voxfleet command is run"),
])
def test_refuses_what_would_leave_loopback_or_is_not_ours(tmp_path, kwargs, message):
    with pytest.raises(KubeletError, match=message):
        kubelet(tmp_path)._command(pod(**kwargs))
