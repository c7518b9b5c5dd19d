"""voxfleet.settings: one typed object from flags, then environment, then defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from stt_pod.settings import ENV_PREFIX, PodSettings
from voxfleet.settings import add_arguments, load, setting

PREFIX = "TEST_"


@dataclass(frozen=True)
class Knobs:
    count: int = setting(3, "an int")
    ratio: float = setting(0.5, "a float")
    name: str = setting("alpha", "a string")
    enabled: bool = setting(False, "a bool that is off by default")
    verbose: bool = setting(True, "a bool that is on by default")
    mode: str = setting("fast", "one of a few", choices=("fast", "slow"))


def parser_for(cls: type, prefix: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    add_arguments(parser, cls, prefix)
    return parser


def knobs(argv: list[str] = (), env: dict[str, str] | None = None, **overrides) -> Knobs:
    args = parser_for(Knobs, PREFIX).parse_args(list(argv))
    return load(Knobs, PREFIX, args, environ=env or {}, **overrides)


# --- precedence ------------------------------------------------------------------


def test_defaults_when_nothing_is_set():
    assert knobs() == Knobs()


def test_load_without_args_reads_env_only():
    assert load(Knobs, PREFIX, None, environ={"TEST_COUNT": "9"}).count == 9


def test_env_beats_default():
    got = knobs(env={"TEST_COUNT": "7", "TEST_RATIO": "0.25", "TEST_NAME": "beta", "TEST_MODE": "slow"})
    assert (got.count, got.ratio, got.name, got.mode) == (7, 0.25, "beta", "slow")


def test_flag_beats_env():
    got = knobs(["--count", "11", "--name", "gamma"], env={"TEST_COUNT": "7", "TEST_NAME": "beta"})
    assert (got.count, got.name) == (11, "gamma")


@pytest.mark.parametrize("argv, field, value", [
    (["--count", "0"], "count", 0),
    (["--ratio", "0"], "ratio", 0.0),
    (["--name", ""], "name", ""),
    (["--no-verbose"], "verbose", False),
])
def test_a_falsy_flag_still_beats_env(argv, field, value):
    env = {"TEST_COUNT": "7", "TEST_RATIO": "0.9", "TEST_NAME": "beta", "TEST_VERBOSE": "yes"}
    assert getattr(knobs(argv, env=env), field) == value


def test_bool_flag_turns_on_against_env():
    assert knobs(["--enabled"], env={"TEST_ENABLED": "off"}).enabled is True


def test_an_empty_env_string_is_a_value_for_a_string_field():
    assert knobs(env={"TEST_NAME": ""}).name == ""


def test_env_of_another_prefix_is_ignored():
    assert knobs(env={"OTHER_COUNT": "9", "count": "9", "TEST_count": "9"}).count == 3


def test_overrides_beat_flags_and_env():
    assert knobs(["--count", "11"], env={"TEST_COUNT": "7"}, count=42).count == 42


# --- conversion ------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "True", "YES", "on", " On "])
def test_true_env_values(raw):
    assert knobs(env={"TEST_ENABLED": raw}).enabled is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off", " off\n"])
def test_false_env_values(raw):
    assert knobs(env={"TEST_VERBOSE": raw}).verbose is False


@pytest.mark.parametrize("var, raw", [
    ("TEST_ENABLED", "maybe"),
    ("TEST_ENABLED", ""),
    ("TEST_ENABLED", "2"),
    ("TEST_COUNT", "three"),
    ("TEST_COUNT", "2.5"),
    ("TEST_COUNT", ""),
    ("TEST_RATIO", "half"),
])
def test_a_bad_env_value_names_its_variable(var, raw):
    with pytest.raises(ValueError, match=var):
        knobs(env={var: raw})


def test_env_choices_are_enforced():
    with pytest.raises(ValueError, match="TEST_MODE"):
        knobs(env={"TEST_MODE": "medium"})


def test_flag_choices_are_enforced():
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser_for(Knobs, PREFIX).parse_args(["--mode", "medium"])


def test_a_bad_flag_value_is_refused():
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser_for(Knobs, PREFIX).parse_args(["--count", "many"])


def test_flags_leave_unset_fields_as_none_so_env_can_apply():
    args = parser_for(Knobs, PREFIX).parse_args([])
    assert vars(args) == dict.fromkeys(["count", "ratio", "name", "enabled", "verbose", "mode"])


def test_help_names_the_env_variable_and_default():
    text = parser_for(Knobs, PREFIX).format_help()
    assert "TEST_COUNT" in text and "default 3" in text


# --- the pod's settings ------------------------------------------------------------


def pod(argv: list[str] = (), env: dict[str, str] | None = None) -> PodSettings:
    args = parser_for(PodSettings, ENV_PREFIX).parse_args(list(argv))
    return load(PodSettings, ENV_PREFIX, args, environ=env or {})


def test_pod_defaults_are_safe():
    s = pod()
    assert s == PodSettings()
    assert s.host.startswith("127.")  # loopback unless told otherwise
    assert s.max_batch >= 1 and s.max_sessions >= 1


def test_pod_env_names_and_precedence():
    env = {"VOXFLEET_POD_MAX_SESSIONS": "4", "VOXFLEET_POD_BATCH_WINDOW_MS": "10",
           "VOXFLEET_POD_MAX_WINDOW_SECONDS": "7.5"}
    s = pod(["--max-sessions", "2"], env)
    assert (s.max_sessions, s.batch_window_ms, s.max_window_seconds) == (2, 10, 7.5)


def test_pod_port_zero_from_a_flag_beats_env():
    assert pod(["--port", "0"], {"VOXFLEET_POD_PORT": "9000"}).port == 0


def test_pod_bad_env_names_its_variable():
    with pytest.raises(ValueError, match="VOXFLEET_POD_MAX_SESSIONS"):
        pod(env={"VOXFLEET_POD_MAX_SESSIONS": "lots"})


@pytest.mark.parametrize("var, raw", [("VOXFLEET_POD_DEVICE", "tpu"), ("VOXFLEET_POD_LOG_LEVEL", "loud")])
def test_pod_env_choices(var, raw):
    with pytest.raises(ValueError, match=var):
        pod(env={var: raw})


def test_pod_flag_choices():
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser_for(PodSettings, ENV_PREFIX).parse_args(["--device", "tpu"])


def test_every_pod_setting_has_help_and_renders_in_help():
    parser_for(PodSettings, ENV_PREFIX).format_help()  # '%' in a help text would break this
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(PodSettings))


def test_pod_settings_that_cannot_work_are_refused_naming_the_flag():
    from stt_pod.settings import PodSettings

    PodSettings().validate()  # the defaults work
    for bad, flag in [(dict(max_sessions=-1), "--max-sessions"), (dict(beam_size=0), "--beam-size"),
                      (dict(vad_threshold=1.5), "--vad-threshold"), (dict(context_seconds=-1), "--context-seconds"),
                      (dict(max_backlog_seconds=10.0), "--max-backlog-seconds")]:
        with pytest.raises(ValueError, match=flag):
            PodSettings(**bad).validate()


def test_every_subcommand_renders_its_help():
    import argparse

    from voxfleet.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"pod", "router", "up", "demo", "transcribe"} <= set(sub.choices)
    for name, command in sub.choices.items():
        assert command.format_help(), name  # a '%' in any help text raises here
