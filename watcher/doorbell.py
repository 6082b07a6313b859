"""What wakes the daemon's main loop between its timers: a doorbell that other threads ring
(stop, a loop that crashed) and that signals ring (SIGTERM, SIGHUP).

The main loop sleeps until its next duty (a watchdog ping, a status line), so a signal must
end that sleep. A Python signal handler runs in the main thread only once that thread runs
bytecode, and the kernel may deliver a process's signal to any thread: `signal.set_wakeup_fd`
makes the interpreter's C handler write to the bell whichever thread took the signal, and the
main loop, waiting in `select` on it, wakes and lets the Python handler run.
"""

from __future__ import annotations

import select
import signal
import socket


class Doorbell:
    def __init__(self) -> None:
        self._bell, self._ringer = socket.socketpair()
        self._bell.setblocking(False)
        self._ringer.setblocking(False)  # set_wakeup_fd needs a non-blocking fd
        self._signals_rang: int | None = None  # the wakeup fd we replaced, while we ring

    def ring(self) -> None:
        """Wake the waiting main loop (or its next wait); safe from any thread and from a
        signal handler. A full buffer means it rings already; a closed bell, that the daemon
        has stopped."""
        try:
            self._ringer.send(b"\0")
        except OSError:
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout` seconds passed; True if rung. Every ring so far is
        taken: one wake-up answers them all."""
        readable, _, _ = select.select([self._bell], [], [], max(0.0, timeout))
        rung = False
        while readable:
            try:
                if not self._bell.recv(4096):
                    break
            except BlockingIOError:
                break
            rung = True
        return rung

    def ring_on_signals(self) -> None:
        """From the main thread: every signal with a Python handler rings the bell too."""
        self._signals_rang = signal.set_wakeup_fd(self._ringer.fileno(), warn_on_full_buffer=False)

    def close(self) -> None:
        """Give signals back the wakeup fd they had (from the main thread, which set it up),
        then close."""
        if self._signals_rang is not None:
            signal.set_wakeup_fd(self._signals_rang)
            self._signals_rang = None
        self._bell.close()
        self._ringer.close()
