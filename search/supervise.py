"""`python -m search.grid` runs the search in a child process and watches it, so that whatever ends the search, the
user gets a line saying what happened and the table of what the trials finished.

    status = supervise(argv, post_mortem)   # in the command's own process: the exit status to end with
    status = drive(main)                    # in the child: the search itself, its exit status reported back

Why a second process: when one of Ray's daemons dies under the search (the raylet, the GCS server), Ray's core ends
the driver process from C++ (`_exit(1)` after 10-60 s of Ray's own timeouts), and no Python code of the driver runs
after that: only another process can still tell the user. The parent stays small (no Ray, no torch) unless it has
to write the table itself.

- Signals sent to the parent (SIGINT, SIGTERM, SIGHUP) are passed on to the child, which runs in its own process
  group, so a Ctrl-C in the terminal reaches it once; the child stops as search/signals.py says. A signal that
  comes while the child is still starting waits until the child has its handlers in place.
- The child reports over a pipe where its results go, the pids of the Ray daemons it started, and, as it ends, its
  exit status. The parent checks those daemons twice a second: when one is gone it sends the child SIGUSR2 (stop,
  Ray died: the trials' work is saved and the partial table written, as for a signal), and SIGKILL if the child
  has not ended GRACE_S later (a driver whose GCS is gone can hang in Ray's calls for a minute).
- A child that ends without reporting its exit status (ended by Ray's C++ core, the kernel's OOM killer, kill -9)
  is reported here: what ended it, the partial table (`post_mortem`), `--resume`; exit status 75 (signals.FAULT).
- The child dies with the parent (Linux PR_SET_PDEATHSIG), as a single process would: kill -9 of the command ends
  the search, its Ray with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from search.signals import RAY_DIED, detach
from search.store import alive

REPORT_FD = "SEARCH_GRID_REPORT_FD"  # set in the child's environment: the pipe it reports on
GRACE_S = 20.0  # after a Ray daemon died, how long the child has to save and write the table itself
POLL_S = 0.5
RAY_DAEMONS = {"raylet": "raylet", "gcs_server": "GCS server"}  # Ray's process types, as a user reads them


# ---------------------------------------------------------------------------- in the child


def is_driver() -> bool:
    return REPORT_FD in os.environ


def report(**message) -> None:
    """Tell the supervising process something (nothing happens without one: main() called in a process of its own)."""
    fd = os.environ.get(REPORT_FD)
    if fd:
        try:
            os.write(int(fd), (json.dumps(message) + "\n").encode())
        except OSError:  # the parent is gone: this process is about to follow it
            pass


def drive(main) -> int:
    """Run the search (`main()`) and report its exit status; an exception of our own is not caught (its traceback
    is a bug report), and the parent then reports the search as ended unexpectedly."""
    try:
        main()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:
        # Ray shuts down as this process ends, its daemons with it: that is not what ended the search.
        signal.signal(RAY_DIED, signal.SIG_IGN)
        report(failed=" ".join(f"{type(e).__name__}: {e}".split())[:300])
        raise
    signal.signal(RAY_DIED, signal.SIG_IGN)  # from here on Ray's daemons end because Ray shuts down, as it should
    report(exit=status)
    return status


def ray_daemons() -> dict[str, int]:
    """The pids of the Ray daemons this process started (a local Ray); none when it joined a cluster."""
    import ray._private.worker

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    return {kind: infos[0].process.pid for kind in RAY_DAEMONS if (infos := processes.get(kind))}


def dead_daemons(daemons: dict[str, int]) -> str | None:
    """'Ray's raylet (pid 12) died' for the first of `daemons` that is gone, or None."""
    for kind, pid in daemons.items():
        if not alive(int(pid)):
            return f"Ray's {RAY_DAEMONS.get(kind, kind)} (pid {pid}) died under the search"
    return None


# ---------------------------------------------------------------------------- in the command's own process


def _die_with(parent: int):
    """For the child, before it runs: SIGKILL when the parent dies (Linux; elsewhere the child may outlive it)."""
    def preexec():
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call: nobody would send it
                os._exit(1)
    return preexec


class Watch:
    """The command's own process: the search runs in `child`; its reports arrive on a pipe (`messages`); signals
    are held until the child can take them, then passed on; a dead Ray daemon stops it (RAY_DIED, then SIGKILL
    after GRACE_S)."""

    def __init__(self, argv: list[str]):
        self.read_end, write_end = os.pipe()
        self.child = subprocess.Popen(
            [sys.executable, "-m", "search.grid", *argv], env={**os.environ, REPORT_FD: str(write_end)},
            pass_fds=(write_end,), start_new_session=True, preexec_fn=_die_with(os.getpid()))
        os.close(write_end)
        os.set_blocking(self.read_end, False)
        self.messages, self.pending, self.queued = {}, b"", []
        self.died, self.deadline = None, None
        self.ttys = [fd for fd in (1, 2) if os.isatty(fd)]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.forward)

    def send(self, signum) -> None:
        try:
            self.child.send_signal(signum)
        except ProcessLookupError:
            pass

    def deliverable(self, signum) -> bool:
        # Held until the child has its handlers in place ("ready"), and SIGTERM until Ray has started ("daemons"):
        # ray.init puts Ray's own SIGTERM handler in place of the child's (a C++ stack dump) until the child puts
        # its own back.
        return bool(self.messages.get("ready")) and (signum != signal.SIGTERM or "daemons" in self.messages)

    def forward(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            detach(self.ttys)  # the terminal is gone: the child's output and ours go nowhere rather than fail
        if self.deliverable(signum):
            self.send(signum)
        else:
            self.queued.append(signum)

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_end, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                self.messages.update(json.loads(line))

    def step(self) -> None:
        """One poll: reports read, held signals passed on, the daemons checked (the child reports how it ends before
        Ray's own shutdown ends them), a child that outlived its grace killed."""
        self.read()
        while self.queued and self.deliverable(self.queued[0]):
            self.send(self.queued.pop(0))
        ending = ("exit", "failed")
        if self.died is None and not any(k in self.messages for k in ending):
            self.died = dead_daemons(self.messages.get("daemons") or {})
            self.read()
            if self.died and any(k in self.messages for k in ending):
                self.died = None
            elif self.died:
                self.child.send_signal(RAY_DIED)
                self.deadline = time.monotonic() + GRACE_S
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.child.kill()
            self.deadline = None

    def wait(self) -> int:
        while True:
            try:
                rc = self.child.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                self.step()
        self.read()
        os.close(self.read_end)
        return rc

    def what_ended(self, rc: int) -> str:
        """Why the child ended without an exit status of its own."""
        messages, pid = self.messages, self.child.pid
        if messages.get("failed"):
            return f"the search's driver failed ({messages['failed']}; its traceback is above)"
        if self.died:
            return self.died
        if rc < 0:
            name = signal.Signals(-rc).name
            return f"the search's driver (pid {pid}) was killed by {name}" + (
                " (sent by the kernel's out-of-memory killer, or by kill -9)" if -rc == signal.SIGKILL else "")
        lost = f" (it lost the Ray cluster at {messages['address']})" if messages.get("address") else ""
        return f"the search's driver (pid {pid}) ended unexpectedly with exit status {rc}{lost}"


def supervise(argv: list[str], post_mortem) -> int:
    """Run `python -m search.grid argv` as the child, pass signals on, watch its Ray; its exit status, or, when it
    ended without one, `post_mortem(messages, what ended it)`'s."""
    watch = Watch(argv)
    rc = watch.wait()
    if "exit" in watch.messages:
        return watch.messages["exit"]
    return post_mortem(watch.messages, watch.what_ended(rc))
