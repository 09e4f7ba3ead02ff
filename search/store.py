"""Files a search writes, written so that a crash, a second process or a full disk loses nothing, and its Plan.

    from search.store import Plan, staged_dir, experiment_lock, check_writable, storage_full
    plan.save("results/grid")                                  # provenance.json, atomically
    plan = Plan.load("results/grid")                           # typed: plan.settings.train.epochs, plan.search.fuse.on
    with staged_dir("results/grid") as tmp:                    # a whole folder, swapped in at the end
        (tmp / "a.csv").write_text(...)
    check_writable("results", "--results")                     # before Ray starts: StoreError if not
    with experiment_lock(Path("results"), "grid-laptop"):      # one search per experiment: LockHeld if taken
        ...
    storage_full(exc)                                          # "No space left on device", or None

Temporary names carry the host, the process id and a random tag (`.<name>.staged-<host>-<pid>-<tag>`), so two
processes never share one, and a leftover is removed only by a later process on the same host once its owner is
gone (never the staging folder of an export still being filled).

The Plan is a search as decided before its first trial (the command, the resolved Settings, how the trials run, the
data, CLIP, the baselines, the cluster, the versions), plus what its runs measured beside it (fit_s, devices,
exported, best_trial/best_trials). provenance.json holds it as JSON; `Plan.load` reads it back typed, so --resume,
search.export and the table read attributes, never strings into a dict.

The experiment lock is a file beside the results folder, `<results>/.<experiment>.lock`, held with flock(2) for
the whole search: the kernel releases it when the process ends, however it ends, so a lock is never left held by
a dead process. The file names its holder (host, pid, start time, command): a second search refuses in one line
naming it; a file naming a holder that is gone (killed before it could remove the file) is taken over, and the
search says so.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from model.files import HOST, atomic_write, beside

if TYPE_CHECKING:  # imported where a Plan is read: a search's supervising process uses this module and never torch
    from search.settings import Settings

PROVENANCE = "provenance.json"

# A full disk, or a full quota: nothing more can be written there until someone frees space.
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# How those errors read once Ray or pyarrow has turned them into text (a trial's error crosses processes as text).
FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "[Errno 122]", "[errno 28]", "[errno 122]")


class StoreError(ValueError):
    """A place the search cannot write to, found before anything started."""


class LockHeld(StoreError):
    """Another search holds the experiment."""


def storage_full(error: BaseException | str | None) -> str | None:
    """'no space left on device' or 'disk quota exceeded' when `error` (an exception, its causes, or its text, as a
    trial's error reaches the driver) is that; else None."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL:
            return FULL[error.errno]
        cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError keeps the trial's exception here
        text = str(error)
        error = cause if isinstance(cause, BaseException) else (error.__cause__ or error.__context__ or text)
    if isinstance(error, str):
        for marker in FULL_TEXT:
            if marker in error:
                return FULL[errno.EDQUOT] if ("122" in marker or "quota" in marker) else FULL[errno.ENOSPC]
    return None


# ---------------------------------------------------------------------------- temporary names



def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and has not ended (a zombie, ended but not reaped yet, has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    if not os.path.exists("/proc/self/stat"):
        return True  # no procfs: kill(0) is all there is to know
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _leftover(name: str, prefix: str) -> bool:
    """Whether `name` (".<dst>.<tag>-<host>-<pid>-<hex>") was left by a process of this host that is gone. Names
    from other hosts, and from before names carried the host, are left alone: their owner cannot be checked."""
    parts = name[len(prefix):].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    return int(parts[1]) != os.getpid() and not alive(int(parts[1]))


# ---------------------------------------------------------------------------- atomic files and folders


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(filled_tmp: str | Path, dst: str | Path) -> None:
    """Swap a fully written directory into place: `dst` is always the old or the new one, never half.

    On Linux the two trade places atomically; elsewhere (or on a filesystem without the call)
    there is a moment between two renames when `dst` is absent.
    """
    filled_tmp, dst = Path(filled_tmp), Path(dst)
    if dst.exists() and _exchange(filled_tmp, dst):
        shutil.rmtree(filled_tmp)  # the old directory, now under the temporary name
        return
    old = beside(dst, "old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(filled_tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(dst: str | Path):
    """An empty folder beside `dst` to build a new version in; when the block ends without an
    error it replaces `dst` as a whole (replace_dir), otherwise it is removed and `dst` is untouched.

        with staged_dir("results/grid") as tmp:
            (tmp / "a.csv").write_text(...)       # readers still see the old results/grid

    Another process's staging folder is left alone while that process lives (two exports at once each swap in a
    whole set; the last to finish wins); one left by a process that was killed is removed.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for tag in ("staged", "old"):
        prefix = f".{dst.name}.{tag}-"
        for stale in dst.parent.glob(prefix + "*"):
            if _leftover(stale.name, prefix):
                shutil.rmtree(stale, ignore_errors=True)
    tmp = beside(dst, "staged")
    tmp.mkdir()  # os.mkdir: the usual mode, not mkdtemp's 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dst)


# ---------------------------------------------------------------------------- before Ray starts


def check_writable(path: str | Path, flag: str) -> None:
    """StoreError naming `flag` unless a file can be created (and removed) in folder `path`, which is created if
    missing. A remote URI (s3://, gs://) is left to Ray: checking it here would need its credentials."""
    if "://" in str(path):
        return
    path = Path(path).expanduser().absolute()
    where = f"{flag} {path}"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise StoreError(f"{where}: {existing} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = beside(path / "write-check", "probe")
        with open(probe, "xb") as f:
            f.write(b"x" * 4096)  # a block: a full disk refuses it, where an empty file may still be created
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        why = FULL.get(e.errno) or {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                                    errno.EPERM: "permission denied"}.get(e.errno, e.strerror or str(e))
        fix = "free some space" if e.errno in FULL else "make it writable"
        raise StoreError(f"{where} is not writable ({why}): {fix}, or pass another {flag}") from None


# ---------------------------------------------------------------------------- one search per experiment


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str
    command: str

    @classmethod
    def me(cls) -> "Holder":
        return cls(HOST, os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(sys.argv) or "python")

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def lock_path(results_root: Path, experiment: str) -> Path:
    return Path(results_root) / f".{experiment}.lock"


def _read_holder(f) -> Holder | None:
    f.seek(0)
    try:
        return Holder(**json.loads(f.read() or "null"))
    except (TypeError, ValueError):  # empty (being written, or released), or not ours
        return None


@contextmanager
def experiment_lock(results_root: str | Path, experiment: str, say=print):
    """Hold `<results_root>/.<experiment>.lock` while inside; LockHeld (naming the holder) if another process holds
    it. A file left by a holder that is gone is taken over, and `say` tells. The file is removed on the way out."""
    path = lock_path(Path(results_root), experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(f)
            f.close()
            raise LockHeld(f"{experiment} is in use by another search ({holder or 'its holder is starting'}; lock file "
                           f"{path}): wait for it to end, or pass --experiment NAME for a new search") from None
        except OSError as e:  # a filesystem without locks (some network mounts): say so, and go on unguarded
            f.close()
            say(f"[search] warning: cannot lock {path} ({e.strerror}): nothing stops a second search on "
                f"{experiment} meanwhile")
            yield None
            return
        # The holder before us may have removed the file between our open and our lock: then we hold a lock on a
        # file nobody else can see, and must lock the new one instead.
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    stale = _read_holder(f)  # a holder named in a file nobody locks: gone without removing it
    try:
        if stale is not None:
            say(f"[search] taking over the lock on {experiment} from a search that is gone ({stale}): it was "
                "stopped without releasing it (killed, or its machine went down)")
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(Holder.me())))
        f.flush()
        yield stale
    finally:
        try:
            path.unlink()  # before the lock goes, so a waiter never locks a file about to vanish (checked above)
        except FileNotFoundError:
            pass
        f.close()


# ---------------------------------------------------------------------------- the plan


class DamagedProvenance(ValueError):
    """provenance.json cannot be read: cut short, or edited into something else."""


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class Fuse:
    """Whether the trials are fused: the mode asked for, the decision and its one-line reason, each fused trial's
    member points (None: unfused)."""
    mode: str = "auto"
    on: bool = False
    reason: str = ""
    members: list | None = None


@dataclass(frozen=True)
class SearchPlan:
    """How the trials run (provenance.json's "search")."""
    search: str = "grid"  # "grid", "random" or "optuna"
    scheduler: str = "fifo"  # "fifo" or "asha"
    trials: int = 0  # Tune trials: grid points, or fused architectures, or --num-samples
    points: int = 0  # grid points (rows of the table)
    fuse: Fuse = field(default_factory=Fuse)
    objectives: list = field(default_factory=list)  # (metric, "min"|"max") pairs a searcher optimizes; the Pareto front
    resources_per_trial: dict = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    search_seed: int = 0  # the seed of a searcher's draws (random, optuna)
    grace_period: int | None = None  # ASHA's epochs before a trial can be stopped (None: a tenth of the epochs)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchPlan":
        return cls(**{**d, "fuse": Fuse(**d.get("fuse", {})), "objectives": [tuple(o) for o in d.get("objectives", [])]})


@dataclass(frozen=True)
class Plan:
    """A search as decided before its first trial, then what its runs measured beside it. Frozen: a run records
    what it measured with `dataclasses.replace` and `save`."""
    experiment: str
    ray_experiment: str
    settings: Settings
    search: SearchPlan
    command: list = field(default_factory=list)
    preset_about: str = ""
    dataset: dict = field(default_factory=dict)  # the --data argument, the prepared data's info, counts, split ids
    clip: dict = field(default_factory=dict)  # model, pretrained, mode, status
    baselines: dict = field(default_factory=dict)  # the text-blind reference points beside the table
    cluster: dict = field(default_factory=dict)  # CPU, GPU, nodes
    started: str = field(default_factory=_now)
    code_version: str = field(default_factory=code_version)
    ray_version: str = ""
    torch_version: str = ""
    python: str = ""
    # What runs measured: Tune's wall time per driver run, the devices the trials ran on, the last export's time,
    # the best row's point (per family in a mixed search).
    fit_s: tuple = ()
    devices: str | None = None
    exported: str | None = None
    best_trial: dict | None = None
    best_trials: dict | None = None

    @property
    def data_arg(self) -> str | None:
        return self.dataset.get("data_arg")

    @property
    def clip_status(self) -> str:
        return self.clip.get("status", "off")

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "settings": self.settings.to_dict(),
                "search": asdict(self.search), "fit_s": list(self.fit_s)}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        from search.settings import Settings

        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, "settings": Settings.from_dict(d["settings"]),
                      "search": SearchPlan.from_dict(d["search"]), "fit_s": tuple(d.get("fit_s", ()))})

    def save(self, results_dir: str | Path) -> None:
        atomic_write(Path(results_dir) / PROVENANCE, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, results_dir: str | Path) -> "Plan":
        """The plan in <results_dir>/provenance.json: FileNotFoundError if there is none, DamagedProvenance if it
        cannot be read as one."""
        path = Path(results_dir) / PROVENANCE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass the results directory of a search "
                                    "(results/<experiment>, written by python -m search.grid)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:  # written atomically by us: damaged by hand or by the disk
            raise DamagedProvenance(f"{path} is damaged ({type(e).__name__}: {e}): it cannot say where the search's Ray "
                                    "experiment is or what it trained; restore it from a backup, or start a new "
                                    "search") from None

    def measured(self, **values) -> "Plan":
        """The plan with what a run measured beside it (fit_s, devices, exported, best_trial, best_trials)."""
        return replace(self, **values)
