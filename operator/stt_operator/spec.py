"""The SttPool spec, modelled once: typed, defaulted, validated.

Why it exists: the same description must drive three things that may never
disagree: the CRD's OpenAPI schema and CEL rules (crd.py generates them from the
classes and RULES below), the operator's own check of what it reads (`parse`),
and the manifests built from it (manifests.py). Field names are snake_case here
and camelCase in Kubernetes; `camel()` is the one mapping.

It must never do I/O or import kopf/kubernetes: it is pure data and checks.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

GROUP = "voxfleet.io"
VERSION = "v1alpha1"
KIND = "SttPool"
PLURAL = "sttpools"
SINGULAR = "sttpool"
SHORT_NAMES = ("stp",)

# A Kubernetes resource quantity ("500m", "2", "4Gi"), as the apiserver's own schema spells it.
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Longest SttPool name: derived names add "-router" and StatefulSet pods add "-NNN" and a
# 10-character revision hash in a 63-character label value.
MAX_NAME_LENGTH = 40

DEFAULT_DRAIN_TIMEOUT_SECONDS = 4 * 3600
"""A pod's default max_session_seconds (stt_pod.settings; tests/unit/test_operator_spec.py checks they agree):
by default a drain outlasts any session, so scale-down and rollouts cut nobody. Lower it (and the pods'
maxSessionSeconds) where pods must go faster."""


class SpecError(ValueError):
    """An SttPool spec that cannot be served; the message names the field."""


def field(default: Any, help: str, **schema: Any) -> Any:
    """A spec field: default, one-line description, and extra OpenAPI keywords.

    `default=REQUIRED` makes the field required (no default); a callable default
    is a factory (nested objects, maps).
    """
    metadata = {"help": help, "schema": schema}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


REQUIRED = object()


def camel(name: str) -> str:
    """snake_case field name -> the camelCase key Kubernetes users write."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ---------------------------------------------------------------- the classes

@dataclass(frozen=True)
class ModelSpec:
    name: str = field("tiny.en", "faster-whisper model: a name the image ships, or a path inside the pod",
                      minLength=1)
    device: str = field("cpu", "where the model runs", enum=["cpu", "cuda"])
    compute_type: str = field("int8", "CTranslate2 compute type (int8, int8_float16, float16, float32, ...)",
                              minLength=1)


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: str = field("2", "CPU request of each STT pod (a Kubernetes quantity); no CPU limit, so no throttling",
                     pattern=QUANTITY)
    memory: str = field("2Gi", "memory request and limit of each STT pod (a Kubernetes quantity)",
                        pattern=QUANTITY)
    gpus: int = field(0, "GPUs per STT pod (nvidia.com/gpu); needs model.device cuda", minimum=0, maximum=16)


@dataclass(frozen=True)
class ScaleUpPolicy:
    stabilization_seconds: int = field(0, "load must stay high this long before pods are added",
                                       minimum=0, maximum=3600)
    max_step: int = field(10, "most pods added in one step (a burst needs several at once)", minimum=1, maximum=100)


@dataclass(frozen=True)
class ScaleDownPolicy:
    stabilization_seconds: int = field(300, "load must stay low this long before pods are drained",
                                       minimum=0, maximum=86400)
    max_step: int = field(1, "most pods drained in one step", minimum=1, maximum=100)


@dataclass(frozen=True)
class AutoscalingSpec:
    mode: str = field("builtin", "builtin: the operator scales from Prometheus; external: the SttPool's scale "
                      "subresource (spec.replicas) is left to HPA/KEDA", enum=["builtin", "external"])
    interval_seconds: int = field(10, "period of the operator's scaling loop", minimum=1, maximum=600)


PROMETHEUS_QUERIES = ("activeSessions", "freeSlots", "queueLength", "queueWaitSeconds", "computePerAudioSecond")


@dataclass(frozen=True)
class PrometheusSpec:
    url: str = field("", "Prometheus HTTP API base URL; empty: no metrics, the pool holds its size",
                     pattern=r"^(https?://.+)?$", maxLength=2048)
    queries: dict[str, str] = field(dict, "PromQL overrides by name (" + ", ".join(PROMETHEUS_QUERIES) + ")",
                                    maxProperties=len(PROMETHEUS_QUERIES))


@dataclass(frozen=True)
class IngressSpec:
    enabled: bool = field(False, "create an Ingress for the router")
    host: str = field("", "host name clients connect to; required when enabled", maxLength=253)
    class_name: str = field("", "IngressClass; empty: the cluster's default", maxLength=253)
    tls_secret_name: str = field("", "Secret with the TLS certificate for host; empty: plain HTTP", maxLength=253)
    timeout_seconds: int = field(3600, "read/send timeout of the proxy; a WebSocket session may last this long "
                                 "without traffic in one direction", minimum=60, maximum=86400)
    annotations: dict[str, str] = field(dict, "extra annotations for the Ingress (controller-specific)",
                                        maxProperties=64)


@dataclass(frozen=True)
class RouterSpec:
    replicas: int = field(2, "router replicas (stateless; sessions resume through any of them)",
                          minimum=0, maximum=100)
    image: str = field("", "router image; empty: the pool's image", maxLength=1024)
    placement: str = field("pack", "pack: fill the lowest-ordinal ready pod first (scale-down empties the "
                           "highest); spread: least-loaded pod first", enum=["pack", "spread"])
    port: int = field(8080, "router WebSocket/HTTP port", minimum=1, maximum=65535)
    api_key_secret: str = field("", "Secret holding API keys (mounted read-only); empty: no authentication",
                                maxLength=253)
    cpu: str = field("500m", "CPU request of each router pod", pattern=QUANTITY)
    memory: str = field("256Mi", "memory request and limit of each router pod", pattern=QUANTITY)
    drain_timeout_seconds: int = field(300, "on rollout, how long a stopping router relays its sessions before "
                                       "it tells them to resume through another replica (nothing is lost)",
                                       minimum=0, maximum=86400)
    ingress: IngressSpec = field(IngressSpec, "Ingress in front of the router")


@dataclass(frozen=True)
class PriorityClassesSpec:
    pods: str = field("", "PriorityClass of the STT pods", maxLength=253)
    router: str = field("", "PriorityClass of the router pods", maxLength=253)


@dataclass(frozen=True)
class SecretKeySpec:
    name: str = field("", "Secret name; empty: each pod makes a random secret (resume works per pod only)",
                      maxLength=253)
    key: str = field("secret", "key inside the Secret", minLength=1, maxLength=253)


@dataclass(frozen=True)
class SttPoolSpec:
    image: str = field(REQUIRED, "container image with the `voxfleet` command (STT pod, and router by default)",
                       minLength=1, maxLength=1024)
    image_pull_policy: str = field("IfNotPresent", "pull policy of every container",
                                   enum=["Always", "IfNotPresent", "Never"])
    model: ModelSpec = field(ModelSpec, "the resident model of every STT pod")
    resources: ResourcesSpec = field(ResourcesSpec, "what each STT pod requests")
    port: int = field(8765, "STT pod WebSocket/HTTP port (health, readiness, metrics share it)",
                      minimum=1, maximum=65535)
    min_replicas: int = field(1, "prewarmed pods, always loaded and warm", minimum=0, maximum=1000)
    max_replicas: int = field(4, "most pods the pool may grow to", minimum=1, maximum=1000)
    replicas: Optional[int] = field(None, "desired pods when autoscaling.mode is external (the scale "
                                    "subresource, written by HPA/KEDA); clamped to [minReplicas, maxReplicas]",
                                    minimum=0, maximum=1000)
    sessions_per_pod: int = field(8, "concurrent sessions per pod; more are refused, and the router queues",
                                  minimum=1, maximum=1024)
    target_utilization: float = field(0.8, "share of all session slots the autoscaler aims to fill",
                                      minimum=0.05, maximum=1.0)
    buffer: int = field(2, "free session slots to keep ready for arrivals", minimum=0, maximum=100000)
    reserve: dict[str, float] = field(dict, "reserved capacity by priority class (high, normal, low), e.g. "
                                      "{high: 0.2}: that share of the pool's session slots (rounded up) only "
                                      "sessions of the class may take (an API key's class: a key client); the "
                                      "routers keep it free for them and the autoscaler keeps it on top of buffer. "
                                      "Each share in [0, 1), together below 1", maxProperties=3)
    scale_up: ScaleUpPolicy = field(ScaleUpPolicy, "how fast pods are added")
    scale_down: ScaleDownPolicy = field(ScaleDownPolicy, "how slowly pods are drained and removed")
    idle_seconds: int = field(300, "surplus capacity must be idle this long before it is reclaimed",
                              minimum=0, maximum=86400)
    drain_timeout_seconds: int = field(DEFAULT_DRAIN_TIMEOUT_SECONDS, "on scale-down or rollout, how long a "
                                       "pod's sessions may continue (default: a pod's longest session, so none "
                                       "is cut)", minimum=0, maximum=86400)
    autoscaling: AutoscalingSpec = field(AutoscalingSpec, "who sets the number of pods")
    prometheus: PrometheusSpec = field(PrometheusSpec, "where load is measured")
    router: RouterSpec = field(RouterSpec, "the session-pinning router in front of the pods")
    priority_classes: PriorityClassesSpec = field(PriorityClassesSpec, "PriorityClass names")
    anti_affinity: str = field("preferred", "spread STT pods over nodes: none, preferred or required",
                               enum=["none", "preferred", "required"])
    node_selector: dict[str, str] = field(dict, "node labels the STT pods must match (e.g. a GPU type)",
                                          maxProperties=32)
    session_token_secret: SecretKeySpec = field(SecretKeySpec, "HMAC secret shared by pods and routers for "
                                                "resume tokens")
    pod_settings: dict[str, Any] = field(dict, "any other STT pod setting by camelCase name (maxBatch, "
                                         "beamSize, ...): becomes VOXFLEET_POD_<NAME>", maxProperties=64)


# ------------------------------------------------------------ the pod's contract
#
# Every setting of an STT pod (stt_pod.settings.PodSettings) and its type. The
# operator only talks to pods through Kubernetes objects, so it does not import the
# pod; tests/unit/test_operator_spec.py checks this table against PodSettings.

POD_ENV_PREFIX = "VOXFLEET_POD_"
POD_SETTINGS: dict[str, type] = {
    "host": str, "port": int, "pod_id": str,
    "model": str, "device": str, "compute_type": str, "cpu_threads": int, "beam_size": int, "final_beam_size": int,
    "max_batch": int, "batch_window_ms": int, "partial_max_wait_ms": int, "encode_pad_seconds": float,
    "encode_bucket_seconds": float, "final_input_seconds": float, "partial_input_seconds": float, "prompt_tokens": int, "temperature_fallback": bool,
    "partial_commits": bool, "partial_interval_ms": int, "max_window_seconds": float, "final_merge_seconds": float, "context_seconds": float, "final_silence_ms": int,
    "vad_threshold": float,
    "speech_pad_ms": int, "min_speech_ms": int,
    "max_sessions": int, "max_frame_bytes": int, "max_session_seconds": float, "max_backlog_seconds": float,
    "max_reorder_frames": int, "start_timeout_seconds": float, "idle_timeout_seconds": float,
    "max_file_jobs": int, "max_upload_bytes": int, "max_file_seconds": float, "max_file_audio_held_seconds": float,
    "upload_timeout_seconds": float, "file_beam_size": int, "file_chapter_seconds": float,
    "file_batch_with_live": int,
    "resume_grace_seconds": float, "drain_timeout_seconds": float, "token_secret": str, "log_level": str,
}
# Pod settings that the spec itself sets (so podSettings may not).
SPEC_OWNED_POD_SETTINGS = ("host", "port", "pod_id", "model", "device", "compute_type", "max_sessions",
                           "drain_timeout_seconds", "token_secret")
FREE_POD_SETTINGS = tuple(camel(n) for n in POD_SETTINGS if n not in SPEC_OWNED_POD_SETTINGS)


RESERVE_CLASSES = ("high", "normal", "low")
"""Priority classes a reserve may name: a client's classes (stt_router.apikeys.PRIORITY_ORDER)."""


def reserve_setting(reserve: Mapping[str, float]) -> str:
    """spec.reserve as the router's --reserve text (stt_router.reserve.parse_reserve): 'high=0.2,normal=0.05'."""
    return ",".join(f"{name}={float(reserve[name])!r}" for name in RESERVE_CLASSES if reserve.get(name))


_RESERVE_SUM = " + ".join(f"('{n}' in self.reserve ? self.reserve['{n}'] : 0.0)" for n in RESERVE_CLASSES)


# ------------------------------------------------------ cross-field rules (CEL)

@dataclass(frozen=True)
class Rule:
    """One rule over the whole spec: CEL for the API server, Python for the operator."""
    cel: str
    message: str
    holds: Callable[[SttPoolSpec], bool]


RULES: tuple[Rule, ...] = (
    Rule("self.minReplicas <= self.maxReplicas",
         "minReplicas must be less than or equal to maxReplicas",
         lambda s: s.min_replicas <= s.max_replicas),
    Rule("self.buffer < self.sessionsPerPod * self.maxReplicas",
         "buffer must be less than sessionsPerPod * maxReplicas (the pool's whole capacity)",
         lambda s: s.buffer < s.sessions_per_pod * s.max_replicas),
    Rule("self.model.device == 'cuda' || self.resources.gpus == 0",
         "resources.gpus needs model.device cuda",
         lambda s: s.model.device == "cuda" or s.resources.gpus == 0),
    Rule("self.model.device != 'cuda' || self.resources.gpus >= 1",
         "model.device cuda needs resources.gpus of at least 1",
         lambda s: s.model.device != "cuda" or s.resources.gpus >= 1),
    Rule("!self.router.ingress.enabled || self.router.ingress.host != ''",
         "router.ingress.host is required when router.ingress.enabled is true",
         lambda s: not s.router.ingress.enabled or bool(s.router.ingress.host)),
    Rule("self.podSettings.all(k, k in [" + ", ".join(f"'{n}'" for n in FREE_POD_SETTINGS) + "])",
         "podSettings: unknown or spec-owned pod setting; allowed: " + ", ".join(FREE_POD_SETTINGS),
         lambda s: all(k in FREE_POD_SETTINGS for k in s.pod_settings)),
    Rule("self.prometheus.queries.all(k, k in [" + ", ".join(f"'{n}'" for n in PROMETHEUS_QUERIES) + "])",
         "prometheus.queries: unknown query name; known: " + ", ".join(PROMETHEUS_QUERIES),
         lambda s: all(k in PROMETHEUS_QUERIES for k in s.prometheus.queries)),
    Rule("self.reserve.all(k, k in [" + ", ".join(f"'{n}'" for n in RESERVE_CLASSES) + "])",
         "reserve: unknown priority class; known: " + ", ".join(RESERVE_CLASSES),
         lambda s: all(k in RESERVE_CLASSES for k in s.reserve)),
    Rule("self.reserve.all(k, self.reserve[k] >= 0.0 && self.reserve[k] < 1.0)",
         "reserve: every share must be at least 0 and less than 1",
         lambda s: all(0 <= v < 1 for v in s.reserve.values())),
    Rule(f"{_RESERVE_SUM} < 1.0",
         "reserve: the shares must add up to less than 1",
         lambda s: sum(s.reserve.values()) < 1),
)
NAME_RULE_CEL = f"self.metadata.name.size() <= {MAX_NAME_LENGTH}"
NAME_RULE_MESSAGE = f"an SttPool name may have at most {MAX_NAME_LENGTH} characters (derived object names)"


# ---------------------------------------------------------------- parsing

def _check_scalar(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
    return value


def _check_schema(f: dataclasses.Field, value: Any, where: str) -> None:
    schema = f.metadata.get("schema", {})
    if "enum" in schema and value not in schema["enum"]:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(map(str, schema['enum']))}")
    if "minimum" in schema and value < schema["minimum"]:
        raise SpecError(f"{where}: {value!r} is less than the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise SpecError(f"{where}: {value!r} is more than the maximum {schema['maximum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SpecError(f"{where}: must not be empty" if schema["minLength"] == 1
                        else f"{where}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SpecError(f"{where}: longer than {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise SpecError(f"{where}: {value!r} does not match {schema['pattern']}")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise SpecError(f"{where}: more than {schema['maxProperties']} entries")


def _parse(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {camel(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        here = f"{where}.{key}"
        if key not in data or data[key] is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{here}: required")
            continue
        kind = hints[f.name]
        value = data[key]
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if dataclasses.is_dataclass(kind):
            value = _parse(kind, value, here)
        elif typing.get_origin(kind) is dict:
            if not isinstance(value, Mapping):
                raise SpecError(f"{here}: expected an object, got {value!r}")
            value_kind = typing.get_args(kind)[1]
            if value_kind is not Any:
                value = {k: _check_scalar(value_kind, v, f"{here}.{k}") for k, v in value.items()}
            else:
                value = dict(value)
            _check_schema(f, value, here)
        else:
            value = _check_scalar(kind, value, here)
            _check_schema(f, value, here)
        values[f.name] = value
    return cls(**values)


def parse(spec: Mapping[str, Any]) -> SttPoolSpec:
    """A validated SttPoolSpec from an SttPool's .spec (camelCase), or SpecError.

    The API server applies the same defaults and rules (crd.py); checking again here
    keeps the operator safe against objects stored before a schema change.
    """
    pool = _parse(SttPoolSpec, spec, "spec")
    broken = [rule.message for rule in RULES if not rule.holds(pool)]
    if broken:
        raise SpecError("spec: " + "; ".join(broken))
    for key, value in pool.pod_settings.items():
        pod_setting_value(key, value)  # raises SpecError for a wrong type
    return pool


def pod_setting_value(key: str, value: Any) -> str:
    """A podSettings entry as the string its VOXFLEET_POD_* variable carries."""
    name = re.sub(r"([A-Z])", r"_\1", key).lower()
    kind = POD_SETTINGS.get(name)
    if kind is None or name in SPEC_OWNED_POD_SETTINGS:
        raise SpecError(f"spec.podSettings.{key}: unknown or spec-owned pod setting")
    if isinstance(value, str) and kind is bool:
        value = {"true": True, "false": False}.get(value.strip().lower(), value)
    elif isinstance(value, str) and kind is not str:
        try:
            value = kind(value)
        except ValueError:
            raise SpecError(f"spec.podSettings.{key}: {value!r} is not a valid {kind.__name__}") from None
    value = _check_scalar(kind, value, f"spec.podSettings.{key}")
    return ("true" if value else "false") if kind is bool else str(value)


def to_dict(obj: Any) -> dict[str, Any]:
    """A spec (or part of it) back to the camelCase dict Kubernetes stores."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, dict):
            value = dict(value)
        if value is not None:
            out[camel(f.name)] = value
    return out


def desired_replicas(spec: SttPoolSpec, current: int | None) -> int:
    """How many STT pods the StatefulSet should have now, before any autoscaling.

    external mode: spec.replicas (the scale subresource) wins; builtin mode: the
    current size is kept (the autoscaler changes it), a new pool starts at
    minReplicas. Always within [minReplicas, maxReplicas].
    """
    if spec.autoscaling.mode == "external" and spec.replicas is not None:
        wanted = spec.replicas
    elif current is not None:
        wanted = current
    else:
        wanted = spec.min_replicas
    return max(spec.min_replicas, min(spec.max_replicas, wanted))
