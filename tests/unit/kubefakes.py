"""A fake Kubernetes API and watch for the router's discovery watchers (stt_router.kubewatch), and a runner."""

from __future__ import annotations

import asyncio
from typing import Callable


class FakeApi:
    """Answers the list calls the watchers make with scripted listings (the last one again and again)."""

    def __init__(self, listings: list[dict]):
        self.listings = listings
        self.calls: list[tuple] = []

    def _list(self, namespace, **kwargs):
        self.calls.append((namespace, kwargs))
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]

    list_namespaced_pod = _list
    list_namespaced_endpoint_slice = _list


class FakeWatch:
    """Plays one scripted list of events per watch call, like kubernetes.watch.Watch().stream."""

    def __init__(self, scripts: list[list]):
        self.scripts = scripts
        self.stopped = False
        self.kwargs: list[dict] = []
        self.funcs: list = []

    def __call__(self):
        return self

    def stream(self, func, namespace, **kwargs):
        self.funcs.append(func)
        self.kwargs.append(kwargs)
        script = self.scripts.pop(0) if self.scripts else []
        for event in script:
            if isinstance(event, Exception):
                raise event
            yield event

    def stop(self):
        self.stopped = True


class Gone(Exception):
    status = 410


async def first_updates(make_watcher: Callable, n: int) -> list:
    """Run the watcher `make_watcher(on_targets)` until it has reported `n` target lists; those lists."""
    seen: list = []
    watcher = None

    def on_targets(targets) -> None:
        seen.append(targets)
        if len(seen) == n:
            watcher.stop()

    watcher = make_watcher(on_targets)
    await asyncio.wait_for(watcher.run(), 10)
    return seen[:n]  # the watcher's thread may list once more before it stops
