"""Single-flight: at most one piece of work per key in flight, awaited by every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class SingleFlight:
    """One task per key; later callers await the running one. A caller that goes away does
    not cancel the work others wait for."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task[Any]] = {}

    def running(self, key: Any) -> asyncio.Task[Any] | None:
        return self._tasks.get(key)

    def find(self, matches: Callable[[Any], bool]) -> asyncio.Task[Any] | None:
        """A running task whose key ``matches``."""
        return next((task for key, task in self._tasks.items() if matches(key)), None)

    async def run(self, key: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: Any, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left awaiting it

    def __len__(self) -> int:
        return len(self._tasks)
