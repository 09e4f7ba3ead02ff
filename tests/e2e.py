"""What the end-to-end tests share: run the real CLI (`python -m ...`) as a subprocess, as a user would (its own
local Ray, the embedded synthetic data), interrupt it with a signal, and read the files it leaves."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# For a search whose subject is not trials running side by side: one Ray worker process instead of two, so one
# start-up (torch, the text encoder, diffusers: 10-20 s of CPU) instead of two, and on two cores shared with the
# other pytest worker it also finishes sooner (the 4-trial diffusion Optuna search: 44 s instead of 58 s).
ONE_AT_A_TIME = ("--max-concurrent", "1")


def run_cli(*args, timeout=300, status=0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == status, f"{args} exited {r.returncode}, not {status}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid` (the search's driver, its Ray daemons and workers)."""
    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)], commands[int(stat.parent.name)] = int(fields[1]), cmdline
    below, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in below:
                below[child] = commands[child]
                frontier.append(child)
    return below


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `text` is in the log (event-driven: what the command says, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"ended before saying {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not said in {timeout} s"
        time.sleep(0.1)


def read_table(exp: Path) -> list[dict]:
    with open(exp / "best_config.csv") as f:
        return list(csv.DictReader(f))


def trial_states(exp: Path) -> dict[str, str]:
    """trial_id -> status, from the experiment snapshot Tune keeps on disk (what --resume reads)."""
    from ray.tune import ExperimentAnalysis

    # Trials that have not reported yet have no result files: expected mid-search, not worth a warning.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}


def assert_valid_png(path: Path):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100
        im.verify()


def interrupt_after(cmd, tune_exp: Path, at_least: int, sig: int, log: Path, while_waiting=None, send=None,
                    again_after: str | None = None) -> tuple[int, dict]:
    """Run `cmd` until `at_least` trials have finished, then send `sig` to its process group (Ctrl-C reaches the
    whole foreground group: the command, which passes it on to the search it runs; SIGKILL takes the command, the
    search and its local Ray, like a crash), or call `send(proc)` instead. With `again_after`, the signal again once
    the log says that. `while_waiting()` is called at every poll. Returns the exit status and the trials finished
    at the signal."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            finished = {}
            while len(finished) < at_least:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"fewer than {at_least} trials finished in 240 s"
                time.sleep(0.5)
                if while_waiting is not None:
                    while_waiting()
                try:
                    finished = {t: s for t, s in trial_states(tune_exp).items() if s == "TERMINATED"}
                except Exception:  # noqa: BLE001 — the experiment is still being created
                    pass
            send(proc) if send is not None else os.killpg(proc.pid, sig)
            if again_after is not None:
                wait_for_text(log, again_after, proc)
                os.killpg(proc.pid, sig)
            rc = proc.wait(timeout=180)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of its local Ray is left
            except ProcessLookupError:
                pass
            proc.wait()
    return rc, finished
