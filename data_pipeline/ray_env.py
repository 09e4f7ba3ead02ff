"""Start or join Ray the way this project needs it: a local instance listens on 127.0.0.1 only.

    from data_pipeline.ray_env import init_ray
    init_ray()                          # local Ray on all cores, loopback only, quiet
    init_ray(num_cpus=2)                # local Ray limited to 2 CPUs
    init_ray(address="auto")            # join a running cluster (`ray start --head` on this machine)
    with ray_logs_to(Path("prepare.log")):      # Ray's log lines into the file, not the console
        ...

Ray chooses its node address when `ray` is *imported* (it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
into a constant then): with the variable at "0" a local node uses 127.0.0.1, otherwise it binds
the machine's outward-facing address. So the variable is set when this module is imported, and
re-read by `init_ray` in case something imported ray earlier. A user who wants a real multi-machine
cluster sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 in the environment; setdefault leaves that alone.

A local instance also starts no idle workers: Ray prestarts one worker process per CPU when the first
driver connects (RAY_prestart_worker_first_driver), but a Tune trial runs in a worker of its own (Tune gives
every trial actor a runtime environment, so the plain prestarted ones never take it). For a search they were
N idle Python processes, about half a CPU-second each to start; Ray Data's tasks start the workers they need.

Ray Data logs a dozen INFO lines per dataset it runs (the execution plan, its progress, "execution
finished"), and Ray its own notices, to the console. `ray_logs_to` sends them to a file for a while
(the caller names it in its own progress line) and leaves only errors on the console as well.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from pathlib import Path

CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(CLUSTER_ENV, "0")
PRESTART_ENV = "RAY_prestart_worker_first_driver"  # read by the raylet a local ray.init starts


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """ray.init with this project's defaults; a no-op when Ray is already initialized.

    `address=None` starts a local instance (`num_cpus` caps it); an address joins an existing
    cluster (then `num_cpus` must be None: the cluster's nodes declare their own CPUs).
    `kwargs` go to ray.init and override the defaults (no dashboard, warnings only, worker logs
    forwarded to this process). Raises if a local instance did not end up on loopback.
    """
    os.environ.setdefault(CLUSTER_ENV, "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    # Re-read the variable: ray may have been imported (and the constant fixed) before this module.
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(CLUSTER_ENV, False)

    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    options.update(kwargs)
    if address is not None:
        if num_cpus is not None:
            raise ValueError("num_cpus only applies to a local Ray instance; the cluster's nodes set their CPUs")
        ray.init(address=address, **options)
        return
    os.environ.setdefault(PRESTART_ENV, "0")  # a user's own setting wins
    ray.init(num_cpus=num_cpus, **options)
    node_ip = ray.util.get_node_ip_address()
    if not ray_constants.ENABLE_RAY_CLUSTER and not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"local Ray came up on {node_ip}, not loopback; is {CLUSTER_ENV} overridden somewhere?")


RAY_LOGGERS = ("ray", "ray.data")  # each has its own console handler and does not propagate
RAY_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"  # Ray's own


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def ray_logs_to(path: Path, title: str = ""):
    """While inside, the records of Ray's loggers (INFO and up) go to `path`, appended after a line with
    the time and `title`, instead of the console; errors go to both, so a failure still reaches the user."""
    import ray.data  # noqa: F401 — importing it configures the "ray.data" logger, replacing its handlers

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} {title}\n")
    log = logging.FileHandler(path, mode="a", encoding="utf-8")
    log.setLevel(logging.INFO)
    log.setFormatter(logging.Formatter(RAY_LOG_FORMAT))
    consoles = []
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(_errors_only)
                consoles.append(handler)
        logger.addHandler(log)
    try:
        yield
    finally:
        for name in RAY_LOGGERS:
            logging.getLogger(name).removeHandler(log)
        for handler in consoles:
            handler.removeFilter(_errors_only)
        log.close()
