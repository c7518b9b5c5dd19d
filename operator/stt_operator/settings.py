"""Every knob of the operator process, with its default and its reason.

Set by flag (`python -m stt_operator run --namespaces voxfleet`) or environment
(`VOXFLEET_OPERATOR_NAMESPACES=voxfleet`); see voxfleet.settings. The SttPool
spec configures pools; this configures the operator that serves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxfleet.settings import setting

ENV_PREFIX = "VOXFLEET_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: str = setting("", "comma-separated namespaces to serve; empty: all namespaces (cluster-wide)")
    field_manager: str = setting("voxfleet-operator", "server-side apply field manager: owns exactly the "
                                 "fields the operator sets, so manual changes to other fields are kept")
    resync_seconds: float = setting(10.0, "period of the resync that re-applies every pool's owned objects "
                                    "(self-healing) and refreshes status")
    retry_seconds: float = setting(10.0, "delay before a failed reconcile is retried")
    liveness: str = setting("", "kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz; empty: none")
    standalone: bool = setting(True, "run without kopf peering (one operator replica); false needs the "
                                     "kopf peering CRDs")
    annotation_prefix: str = setting("operator.voxfleet.io", "prefix of the annotations where kopf keeps "
                                     "its progress and last-handled spec")
    log_level: str = setting("info", "logging level", choices=("debug", "info", "warning", "error"))

    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]
