"""Stopping a search: SIGTERM and SIGHUP do what Ctrl-C does, and a fault (a full disk, Ray dying) stops it the same way.

    stop = Stop()
    stop.install()                 # again after ray.init: Ray's driver installs its own SIGTERM handler
    with stop.during_fit():        # while Tune's loop runs
        tuner.fit()
    stop.reason                    # None, or Reason(status=143, what="SIGTERM", signal=True)
    stop.request(Reason(75, "no space left on device", False))   # a fault found while Tune runs

A first signal while Tune runs goes to Tune's own stop (the handler it keeps on SIGUSR1, which Ctrl-C reaches
too): Tune stops the trials, writes its snapshot and returns, and the search writes the partial table. Outside Tune's loop (data preparation, the export) it raises
`Stopped` at once: everything written there is atomic (search/store.py), so nothing is left half written.

A second signal is honoured without damage: while Tune is still stopping, the stop is not cut short (Tune's snapshot
copy to storage is not atomic: cut short, it could not be resumed), but the table that would follow is skipped;
during the export, the export stops and the previous table stays. A third signal exits at once, as a user who
insists expects; the snapshot may then be cut short, which `--resume` detects (search/snapshot.py).

Exit statuses are the shell's for a signal (128 + its number: SIGINT 130, SIGTERM 143, SIGHUP 129), so scripts and
schedulers see what stopped the search; a fault that stopped it is FAULT (75, sysexits' EX_TEMPFAIL: try again
later, here with --resume, once the disk has room or Ray is back).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
FAULT = 75
# The supervising process (search/supervise.py) sends this when one of Ray's daemons died under the search.
RAY_DIED = signal.SIGUSR2


@dataclass(frozen=True)
class Reason:
    status: int  # the exit status it leads to
    what: str  # "SIGTERM", or the fault: "no space left on device (...)", "Ray's raylet (pid 12) died"
    signal: bool  # a signal (a person or a scheduler asked) rather than a fault


class Stopped(BaseException):
    """Raised where a stop takes effect at once. A BaseException, like KeyboardInterrupt: Tune's and our own
    `except Exception` blocks must not swallow it."""

    def __init__(self, reason: Reason):
        super().__init__(reason.what)
        self.reason = reason


def say(line: str) -> None:
    """One line to stderr from a signal handler: os.write, not print, which may be in the middle of a line already."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:  # a terminal that hung up
        pass


def detach(ttys: list[int]) -> None:
    """After SIGHUP the terminal is gone and a write to it fails (EIO), which would end the search mid-save: what
    would have gone to it goes to /dev/null instead. Only the descriptors that were a terminal at the start."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in ttys:
        os.dup2(null, fd)
    os.close(null)


class Stop:
    def __init__(self, ray_died=lambda: "one of Ray's daemons died under the search"):
        self.reason: Reason | None = None  # the first stop, which decides the exit status
        self.signals = 0
        self.skip_table = False  # a second signal: stop without writing the results table
        self.in_fit = False
        self.ray_died = ray_died  # what died, asked when RAY_DIED arrives
        self.ttys = [fd for fd in (1, 2) if os.isatty(fd)]  # stdout, stderr: a terminal that SIGHUP may take away

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only; elsewhere signals keep their defaults
        for sig in STATUS:
            signal.signal(sig, self._on_signal)
        signal.signal(RAY_DIED, self._on_ray_died)

    @contextmanager
    def during_fit(self):
        """While inside, a first stop is Tune's to carry out, through the handler Tune keeps on SIGUSR1 (its own
        way to be stopped). Tune would also put its handler on SIGINT, in place of ours, so that a Ctrl-C reached
        Tune but not this class: TUNE_DISABLE_SIGINT_HANDLER keeps ours there."""
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            detach(self.ttys)
        self.signals += 1
        if self.reason is None:
            self._first(Reason(STATUS[signum], name, True), frame)
        elif not self.skip_table:  # the second signal, or the first after a fault
            self.skip_table = True
            if self.in_fit:
                say(f"[search] {name} again: the results table will be skipped; stopping as soon as Tune's snapshot "
                    "is on storage (cutting it short would leave a search that cannot be resumed; a third signal "
                    "exits at once)")
                return
            raise Stopped(self.reason)
        else:
            say(f"[search] {name} a third time: exiting now; --resume checks whether Tune's snapshot was cut short")
            os._exit(self.reason.status)

    def _on_ray_died(self, signum, frame) -> None:
        self.request(Reason(FAULT, self.ray_died(), False), frame)

    def request(self, reason: Reason, frame=None) -> None:
        """A fault stops the search as a first signal does (Tune's loop ends, the trials' work is saved); later
        faults add nothing (several trials hitting the same full disk make one stop)."""
        if self.reason is None:
            self._first(reason, frame)

    def _first(self, reason: Reason, frame) -> None:
        self.reason = reason
        tune = signal.getsignal(signal.SIGUSR1)
        if self.in_fit and callable(tune):  # Tune's loop runs (before it starts, the stop is ours, at once)
            say(f"[search] {reason.what}: stopping the trials and saving what they did"
                + (" (a second signal skips the results table)" if reason.signal else ""))
            tune(signal.SIGUSR1, frame)  # Tune's: its loop ends, it snapshots the experiment, fit() returns
            return
        raise Stopped(reason)
