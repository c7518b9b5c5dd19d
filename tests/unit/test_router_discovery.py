"""Static pod lists: list order is the ordinal; addresses are checked."""

from __future__ import annotations

import pytest

from stt_router.discovery import Target, static_targets, status_url


def test_static_list_order_is_the_ordinal():
    targets = static_targets(["ws://127.0.0.1:9001", "ws://127.0.0.1:9000"])
    assert targets == [Target("ws://127.0.0.1:9001", "ws://127.0.0.1:9001", 0),
                       Target("ws://127.0.0.1:9000", "ws://127.0.0.1:9000", 1)]


@pytest.mark.parametrize("urls", [["http://127.0.0.1:9000"], ["ws://127.0.0.1"], ["127.0.0.1:9000"],
                                  ["ws://127.0.0.1:9000", "ws://127.0.0.1:9000"]])
def test_bad_static_lists_are_refused(urls):
    with pytest.raises(ValueError):
        static_targets(urls)


def test_status_url():
    assert status_url("ws://127.0.0.1:9000") == "http://127.0.0.1:9000/status"
    assert status_url("wss://pod.example:443", "/readyz") == "https://pod.example:443/readyz"
