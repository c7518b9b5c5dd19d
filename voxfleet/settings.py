"""Typed settings that come from flags, environment variables or defaults.

Each component declares one frozen dataclass; every field has a default and a
`help` text in its metadata. This module turns such a class into command-line
flags (`--max-sessions`) and environment variables (`VOXFLEET_POD_MAX_SESSIONS`)
so that a local user and a Kubernetes manifest configure the same thing the
same way. Precedence: flag, then environment, then default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, choices: tuple | None = None) -> Any:
    """Declare a settings field: its default and a one-line reason for it."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _env_name(prefix: str, name: str) -> str:
    return f"{prefix}{name.upper()}"


def _convert(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: {raw!r} is not a boolean")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a valid {kind.__name__}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str) -> None:
    """Add one flag per field of `cls`; defaults stay unset so env can apply."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        env = _env_name(env_prefix, f.name)
        help_text = f"{f.metadata.get('help', '')} [env {env}, default {f.default!r}]".replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=None, choices=f.metadata.get("choices"), help=help_text
            )


def load(cls: type[T], env_prefix: str, args: argparse.Namespace | None = None,
         environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from flags, then environment, then its defaults."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        flag_value = getattr(args, f.name, None) if args is not None else None
        env = _env_name(env_prefix, f.name)
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif flag_value is not None:
            values[f.name] = flag_value
        elif env in environ:
            value = _convert(hints[f.name], environ[env], env)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{env}: {value!r} is not one of {', '.join(map(str, choices))}")
            values[f.name] = value
    return cls(**values)
