"""Stopping a sweep cleanly at SIGINT / SIGTERM: inside the training loop the first signal only
asks the loop to stop after its chunk (which then writes a checkpoint), elsewhere or at a second
signal the sweep is interrupted at once, and either way the message says how to continue."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Interrupted(BaseException):  # noqa: N818 -- a signal, not an error (as KeyboardInterrupt)
    """SIGINT or SIGTERM outside the training loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopOnSignal:
    """SIGINT and SIGTERM during a sweep. Inside ``deferred()`` (the training loop) the first
    signal only asks the loop to stop after its current chunk, which then writes a checkpoint,
    so a sweep is never cut mid-write; elsewhere, or at a second signal, it interrupts at once
    (``Interrupted``)."""

    def __init__(self) -> None:
        # Handlers can only be installed from the main thread (a library caller may use others).
        self.enabled = threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.out: Path | None = None  # a sweep that can be resumed once interrupted
        self._defer = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._defer and self.signum is None:
            self.signum = signum
            return
        raise Interrupted(signum)

    def requested(self) -> bool:
        return self.signum is not None

    def hint(self) -> str:
        if self.out is None or not (self.out / "sweep.json").exists():
            return ""
        return f"; continue with: python -m jaxae.sweep --resume --out {shlex.quote(str(self.out))}"

    @contextlib.contextmanager
    def deferred(self, enabled: bool = True) -> Iterator[None]:
        self._defer = enabled
        try:
            yield
        finally:
            self._defer = False

    def __enter__(self) -> StopOnSignal:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
