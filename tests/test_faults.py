"""A search stopped, misused or out of disk (README, "Faults"): each fault's logic in this process, against what it
must say and keep. The real processes meet them in the end-to-end tests: SIGTERM and a double Ctrl-C
(tests/test_search_e2e.py, tests/test_search_e2e_families.py), Ray's raylet killed and a second search on a held
experiment (tests/test_search_e2e.py), a full disk under a real Tune run (here, on a small tmpfs).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import checkpoint
from search import grid as grid_cli
from search import store
from conftest import modules_after
from search.signals import FAULT, Reason, Stop, Stopped

REPO = Path(__file__).resolve().parents[1]


def _usage_error(capsys) -> str:
    """argparse's one `error:` line (after its usage lines)."""
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


# ---------------------------------------------------------------------------- values checked at the boundary


@pytest.mark.parametrize("argv,flag", [
    (["--seeds", "0"], "--seeds"), (["--max-failures", "-5"], "--max-failures"),
    (["--max-concurrent", "-1"], "--max-concurrent"), (["--max-concurrent", "0"], "--max-concurrent"),
    (["--search", "optuna", "--num-samples", "0"], "--num-samples"), (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial"), (["--cpus-per-trial", "nan"], "--cpus-per-trial"),
    (["--cpus-per-trial", "-2"], "--cpus-per-trial"), (["--experiment", "a/b"], "--experiment"),
    (["--experiment", ".hidden"], "--experiment"), (["--seeds", "two"], "--seeds"),
    (["--cpus-per-trial", "0", "--gpus-per-trial", "0"], "--cpus-per-trial 0")])
def test_search_flags_outside_the_configs_are_refused_out_of_range(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        grid_cli.parse_args(argv)
    assert e.value.code == 2 and flag in _usage_error(capsys)


def test_ray_conventions_are_kept_and_in_range_values_pass():
    args = grid_cli.parse_args(["--max-failures", "-1", "--gpus-per-trial", "0.25", "--cpus-per-trial", "0",
                                "--seeds", "3", "--max-concurrent", "1"])
    assert (args.max_failures, args.gpus_per_trial, args.cpus_per_trial, args.seeds) == (-1, 0.25, 0.0, 3)
    help_text = subprocess.run([sys.executable, "-c", "from search.grid import parse_args; parse_args(['--help'])"],
                               cwd=REPO, capture_output=True, text=True).stdout
    assert "-1 to retry without limit" in " ".join(help_text.split())


def test_bad_flags_fail_before_anything_heavy_loads():
    """The flags are checked by the parser: Ray is not imported (nor started) when one is refused. (torch is: the
    flags include every registered model family's own fields, and a family's module is its network too.)"""
    code = ("from search.grid import parse_args\n"
            "for argv in (['--seeds', '0'], ['--max-failures', '-5'], ['--gpus-per-trial', '-1']):\n"
            "    try: parse_args(argv)\n    except SystemExit as e: assert e.code == 2\n")
    assert modules_after(code, ("ray", "matplotlib", "diffusers", "open_clip"))[0] == []


NODE = {"CPU": 2.0, "memory": 1e9}
GPU_WORKERS = [{"name": "head", "resources": {"CPU": 0}, "max_count": 1},
               {"name": "gpu_worker", "resources": {"CPU": 8, "GPU": 1}, "max_count": 4}]


def test_resources_no_node_can_ever_grant_are_refused_before_tune_starts():
    assert grid_cli.check_resources({"cpu": 1.0, "gpu": 0.0}, [NODE], []) is None
    with pytest.raises(ValueError, match=r"--gpus-per-trial 2: no node .* largest node has 2 CPU and 0 GPU.* no "
                                         r"autoscaler"):
        grid_cli.check_resources({"cpu": 1.0, "gpu": 2.0}, [NODE], [])
    with pytest.raises(ValueError, match=r"--cpus-per-trial 8: no node"):
        grid_cli.check_resources({"cpu": 8.0, "gpu": 0.0}, [NODE], [])
    # Two nodes of 2 CPUs are not one of 4: a trial is one bundle, on one node.
    with pytest.raises(ValueError, match="--cpus-per-trial 4"):
        grid_cli.check_resources({"cpu": 4.0, "gpu": 0.0}, [NODE, NODE], [])
    # cluster.yaml's autoscaler can start g5.2xlarge workers (8 CPU, 1 GPU): a one-GPU trial waits for one, and the
    # warning says how long; two GPUs per trial no node type has.
    warning = grid_cli.check_resources({"cpu": 1.0, "gpu": 1.0}, [{"CPU": 8.0}], GPU_WORKERS)
    assert "gpu_worker (up to 4)" in warning and "no time limit" in warning and "Ctrl-C" in warning
    with pytest.raises(ValueError, match="autoscaler's node types cannot add one"):
        grid_cli.check_resources({"cpu": 1.0, "gpu": 2.0}, [{"CPU": 8.0}], GPU_WORKERS)


# ---------------------------------------------------------------------------- exit status


def _row(tid, status, member=None):
    return {"trial_id": tid, "member": member, "status": status}


def test_exit_status_is_zero_only_when_every_trial_completed(tmp_path):
    ok = [_row("a_00000", "ok"), _row("a_00001", "stopped early (asha) at epoch 1")]
    assert grid_cli.outcome(ok, None, tmp_path) == (0, None)
    errored = [*ok, _row("a_00003", "error: ValueError: batch_size must be >= 1"),
               _row("a_00002", "error: FloatingPointError: training loss became nan")]
    assert grid_cli.outcome(errored, None, tmp_path) == (grid_cli.TRIALS_ERRORED, None)
    # The summary says how many, and why for the first (by trial id, not by the table's order).
    assert grid_cli.summary_line(errored, 12.3) == (
        "[search] 4 trials, 1 completed, 1 stopped early, 2 errored (the first, a_00002: FloatingPointError: training "
        "loss became nan); wall time 12 s")
    assert "0 errored" in grid_cli.summary_line(ok) and "not finished" not in grid_cli.summary_line(ok)
    every = [_row("b_00000", "error: RuntimeError: x"), _row("b_00001", "error: RuntimeError: y")]
    assert grid_cli.outcome(every, None, tmp_path)[0] == 1  # a search in which every trial errored is not a success

    (tmp_path / "provenance.json").write_text("{}")  # the search was saved: --resume can continue it
    partial = [*ok, _row("a_00004", "pending")]
    for reason, status in ((Reason(143, "SIGTERM", True), 143), (Reason(129, "SIGHUP", True), 129),
                           (Reason(FAULT, "no space left on device: trial x could not save its results to /d", False),
                            FAULT), (None, FAULT)):
        got, line = grid_cli.outcome(partial, reason, tmp_path)
        assert got == status and line.endswith("rerun the same command with --resume") and "partial results" in line
    assert "free some space there, then rerun" in grid_cli.outcome(partial, Reason(FAULT, "no space left on device",
                                                                                    False), tmp_path)[1]
    # A signal that came when every trial had finished changed nothing: the search's own status.
    assert grid_cli.outcome(ok, Reason(143, "SIGTERM", True), tmp_path) == (0, None)
    # ... but a stopped grid's table lacks the trials Tune had not created yet: they count, unfinished.
    assert grid_cli.outcome(ok, Reason(129, "SIGHUP", True), tmp_path, planned=8)[0] == 129
    assert grid_cli.outcome(ok, None, tmp_path, planned=8)[0] == FAULT
    assert grid_cli.summary_line(ok, planned=8) == "[search] 8 trials, 1 completed, 1 stopped early, 0 errored, 6 not finished"


# ---------------------------------------------------------------------------- signals


@pytest.fixture
def own_handlers():
    """Stop installs process-wide handlers: the test's own are put back afterwards."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the signal was not handled"
        time.sleep(0.01)


def test_sighup_and_sigterm_stop_as_ctrl_c_does_outside_tune(own_handlers):
    for sig, status in ((signal.SIGHUP, 129), (signal.SIGTERM, 143), (signal.SIGINT, 130)):
        stop = Stop()
        stop.install()
        with pytest.raises(Stopped) as e:
            os.kill(os.getpid(), sig)
            _wait_for(lambda: False)
        assert (e.value.reason.status, e.value.reason.what, e.value.reason.signal) == (status, sig.name, True)


def test_in_tune_the_first_signal_is_tunes_and_a_second_skips_the_table(own_handlers, capfd, monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    stop = Stop()
    stop.install()
    calls = []
    ours = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # Tune's stop: it sets its event

    with stop.during_fit():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Ctrl-C stays ours while Tune runs
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: calls)
        assert stop.reason == Reason(130, "SIGINT", True) and not stop.skip_table
        os.kill(os.getpid(), signal.SIGTERM)  # while Tune saves: not cut short, the table skipped
        _wait_for(lambda: stop.skip_table)
    assert calls == [signal.SIGUSR1] and signal.getsignal(signal.SIGINT) == ours
    err = capfd.readouterr().err
    assert "[search] SIGINT: stopping the trials and saving what they did" in err
    assert "SIGTERM again: the results table will be skipped" in err and "Traceback" not in err


def test_a_second_signal_during_the_export_stops_it_and_keeps_the_old_table(own_handlers, tmp_path):
    dst = tmp_path / "exp"
    dst.mkdir()
    (dst / "best_config.csv").write_text("old")
    stop = Stop()
    stop.install()
    stop.reason, stop.signals = Reason(143, "SIGTERM", True), 1  # the first came while Tune ran; Tune stopped
    with pytest.raises(Stopped), store.staged_dir(dst) as out:
        (out / "best_config.csv").write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: False)
    assert stop.skip_table and (dst / "best_config.csv").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # the staging folder went with it


def test_faults_stop_once_and_ray_dying_names_the_daemon(own_handlers):
    stop = Stop(ray_died=lambda: "Ray's raylet (pid 12) died under the search")
    stop.install()
    stop.in_fit = True
    signal.signal(signal.SIGUSR1, lambda s, f: None)  # Tune's stop
    stop.request(Reason(FAULT, "no space left on device: a", False))
    stop.request(Reason(FAULT, "no space left on device: b", False))  # another trial, the same full disk
    os.kill(os.getpid(), signal.SIGUSR2)
    assert stop.reason.what.endswith(": a") and stop.signals == 0 and not stop.skip_table
    other = Stop(ray_died=lambda: "Ray's raylet (pid 12) died under the search")
    other.install()
    with pytest.raises(Stopped) as e:  # outside Tune: the supervisor's notice stops the search there and then
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: False)
    assert e.value.reason == Reason(FAULT, "Ray's raylet (pid 12) died under the search", False)


def test_tune_logs_become_one_line_and_a_full_disk_stops_the_search():
    from search.progress import TuneLogs

    stop = Stop()
    requested = []
    stop.request = lambda reason, frame=None: requested.append(reason)
    logs = TuneLogs(stop, "/mnt/store/exp")

    def record(message, exc=None):
        return logging.LogRecord("ray.tune.execution.tune_controller", logging.ERROR, "x.py", 1, message, None,
                                 (type(exc), exc, None) if exc else None)

    full = OSError(errno.ENOSPC, "No space left on device")
    assert not logs.filter(record("Trial task failed for trial train_trial_ab12c_00003", ValueError("batch 0")))
    assert requested == []  # a failing trial: dropped (Progress prints its reason), the search goes on
    assert not logs.filter(record("Trial task failed for trial train_trial_ab12c_00004", full))
    assert requested == [Reason(FAULT, "no space left on device: trial ab12c_00004 could not save its results to "
                                       "/mnt/store/exp", False)]
    wrapped = RuntimeError("ray::ImplicitFunc.train() ... OSError: [Errno 122] Disk quota exceeded")
    assert not logs.filter(record("Saving experiment state to storage at '/mnt/store/exp' failed", wrapped))
    assert requested[-1].what == "disk quota exceeded: Tune could not save its snapshot to /mnt/store/exp"
    for tune_says in ("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.",
                      "Experiment has been interrupted, but the most recent state was saved.\nResume experiment with: "
                      "Tuner.restore(path=...)", "Trials did not complete: [train_trial_ab12c_00004]"):
        assert not logs.filter(record(tune_says))
    other = record("Saving experiment state to storage at '/x' failed", TimeoutError("slow"))
    assert logs.filter(other) and other.exc_info is None and "TimeoutError('slow')" in other.getMessage()
    assert logs.filter(record("Wrote the latest version of all result files"))


# ---------------------------------------------------------------------------- one search per experiment


def test_one_search_per_experiment_a_second_is_refused_naming_the_holder(tmp_path, capsys):
    code = ("import sys\nfrom search.store import experiment_lock, LockHeld\n"
            "try:\n    with experiment_lock(sys.argv[1], 'exp'): print('took it')\n"
            "except LockHeld as e: print(e)")
    with store.experiment_lock(tmp_path, "exp") as stale:
        assert stale is None
        holder = json.loads(store.lock_path(tmp_path, "exp").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == store.HOST
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
        assert f"host {store.HOST}, pid {os.getpid()}, started {holder['started']}" in other.stdout
        assert "exp is in use by another search" in other.stdout and "--experiment NAME" in other.stdout
        with pytest.raises(SystemExit) as e, grid_cli.locked(tmp_path / "exp"):  # the CLI's: one line, exit 2
            pass
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: exp is in use") and err.count("\n") == 1
    assert not store.lock_path(tmp_path, "exp").exists()  # released: nothing left beside the results
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert other.stdout.strip() == "took it"


def test_a_lock_left_by_a_search_that_is_gone_is_taken_over_and_said(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that ended: what a search killed with -9 leaves in the file
    left = {"host": store.HOST, "pid": gone.pid, "started": "2026-01-01 00:00:00", "command": "python -m search.grid"}
    store.lock_path(tmp_path, "exp").write_text(json.dumps(left))
    said = []
    with store.experiment_lock(tmp_path, "exp", say=said.append) as stale:
        assert stale == store.Holder(**left)
        assert json.loads(store.lock_path(tmp_path, "exp").read_text())["pid"] == os.getpid()
    assert said == [f"[search] taking over the lock on exp from a search that is gone (host {store.HOST}, pid "
                    f"{gone.pid}, started 2026-01-01 00:00:00): it was stopped without releasing it (killed, or its "
                    "machine went down)"]


def test_staging_folders_are_unique_per_process_and_only_a_dead_ones_are_removed(tmp_path):
    dst = tmp_path / "exp"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        other_export = tmp_path / f".exp.staged-{store.HOST}-{live.pid}-0123abcd"  # another export, still filling it
        killed_export = tmp_path / f".exp.staged-{store.HOST}-{gone.pid}-0123abcd"
        elsewhere = tmp_path / ".exp.staged-otherhost-1-0123abcd"  # another machine's: its owner cannot be checked
        for d in (other_export, killed_export, elsewhere):
            d.mkdir()
            (d / "best_config.csv").write_text("half")
        with store.staged_dir(dst) as out:
            assert out.name.startswith(f".exp.staged-{store.HOST}-{os.getpid()}-")
            (out / "best_config.csv").write_text("new")
        assert (other_export / "best_config.csv").read_text() == "half" and elsewhere.is_dir()
        assert not killed_export.exists() and (dst / "best_config.csv").read_text() == "new"
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------- storage


@pytest.fixture
def tmpfs(tmp_path):
    """mount(kind, size) -> a fresh tmpfs folder: "ro" read-only, "full" filled to its last block. Needs root (the
    sandbox and CI run as root); elsewhere the test skips and says why."""
    mounts = []

    def mount(kind: str, size: str = "256k") -> Path:
        path = tmp_path / f"mnt{len(mounts)}"
        path.mkdir()
        options = f"size={size}" + (",ro" if kind == "ro" else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
        mounts.append(path)
        if kind == "full":
            with open(path / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_results_and_storage_are_checked_writable_before_ray_starts(tmpfs, tmp_path, capsys, monkeypatch,
                                                                   own_handlers):
    ro, full = tmpfs("ro"), tmpfs("full")
    (tmp_path / "a_file").write_text("x")
    for path, why in ((ro, "read-only file system"), (full, "no space left on device"),
                      (tmp_path / "a_file" / "results", "is a file, not a folder")):
        with pytest.raises(store.StoreError, match=why):
            store.check_writable(path, "--results")
    store.check_writable(tmp_path / "new" / "results", "--results")  # created, and writable
    store.check_writable("s3://bucket/x", "--storage-path")  # left to Ray: its credentials are Ray's
    monkeypatch.setattr(grid_cli, "start_ray", lambda args: pytest.fail("Ray started before the check"))
    for argv, flag in ((["--results", str(ro)], "--results"), (["--storage-path", str(full / "tune")], "--storage-path")):
        with pytest.raises(SystemExit) as e:
            grid_cli.main(["--preset", "smoke", "--results", str(tmp_path / "r"), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {flag} ") and err.count("\n") == 1


def test_a_full_disk_is_named_in_any_form_a_trial_error_takes():
    assert store.storage_full(OSError(errno.ENOSPC, "x")) == "no space left on device"
    assert store.storage_full(OSError(errno.EDQUOT, "x")) == "disk quota exceeded"
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving the checkpoint failed") from inner
    except RuntimeError as outer:
        assert store.storage_full(outer) == "no space left on device"
    # Ray passes a trial's exception as text in a RayTaskError; pyarrow words it its own way.
    assert store.storage_full("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left "
                              "on device") == "no space left on device"
    assert store.storage_full(ValueError("range() arg 3 must not be zero")) is None


def _provenance_file(results_dir: Path, ray_experiment: str) -> None:
    from test_search import _provenance

    _provenance(experiment=results_dir.name, ray_experiment=ray_experiment).save(results_dir)


@pytest.mark.parametrize("damage", ["cut short", "missing experiment", "not ours"])
def test_a_damaged_provenance_or_a_missing_experiment_is_a_one_line_error(damage, tmp_path, capsys):
    from search.export import main as export

    results_dir = tmp_path / "results" / "exp"
    _provenance_file(results_dir, str(tmp_path / "results" / "tune" / "gone"))
    prov = results_dir / "provenance.json"
    if damage == "cut short":
        prov.write_text(prov.read_text()[:100])
    elif damage == "not ours":
        prov.write_text('{"settings": {}}')
    with pytest.raises(SystemExit) as e:
        export([str(results_dir)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert (str(prov) in err) if damage != "missing experiment" else ("tune/gone, which is not there" in err)


@pytest.mark.slow
def test_a_full_disk_stops_a_real_tune_run_at_once(tmpfs, tmp_path, own_handlers, capfd):
    """A real Tune run on a 1 MB tmpfs, its toy trials writing a 300 KB checkpoint per report: the first trial
    error that says the disk is full stops the search (no retry after retry, no next trial), with one line and no
    traceback. Also the cluster's shape as check_resources reads it from a real local Ray."""
    import ray
    from ray import tune

    from data_pipeline.ray_env import init_ray
    from search.progress import TuneLogs

    full, attempts = tmpfs("empty", size="1m"), tmp_path / "attempts"

    def trainable(config):
        import os as _os
        import tempfile as _tempfile
        from pathlib import Path as _Path

        from ray import tune as _tune

        with open(attempts, "a") as f:  # outside the full disk: every start of a trial, retries included
            f.write(f"{config['x']}\n")
        for epoch in range(1, 30):
            with _tempfile.TemporaryDirectory() as d:
                (_Path(d) / "state.bin").write_bytes(_os.urandom(300_000))
                _tune.report({"epoch": epoch}, checkpoint=_tune.Checkpoint.from_directory(d))

    init_ray(num_cpus=2)
    try:
        nodes, node_types = grid_cli.cluster_shape()
        assert len(nodes) == 1 and nodes[0]["CPU"] == 2 and node_types == []  # a local Ray: no autoscaler
        with pytest.raises(ValueError, match="--gpus-per-trial 1: .* no autoscaler"):
            grid_cli.check_resources({"cpu": 1.0, "gpu": 1.0}, nodes, node_types)
        stop = Stop()
        stop.install()
        tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2, 3])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=1),
                           run_config=tune.RunConfig(name="exp", storage_path=str(full), verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=5)))
        with TuneLogs(stop, str(full / "exp")).attached(), stop.during_fit():
            try:
                tuner.fit()
            except Exception:  # noqa: BLE001 — Tune's closing summary may fail on what the full disk left
                pass
    finally:
        ray.shutdown()
    assert stop.reason is not None and stop.reason.status == FAULT
    # A trial's checkpoint, or Tune's own snapshot, whichever met the full disk first.
    assert stop.reason.what.startswith("no space left on device: ") and str(full / "exp") in stop.reason.what
    started = attempts.read_text().split()
    assert started[0] == "1" and len(started) <= 2, started  # the trial, at most one retry, and no other trial
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Trial task failed" not in err


# ---------------------------------------------------------------------------- model.generate and checkpoints


@pytest.mark.parametrize("argv,message", [
    (["--samples", "0"], "--samples 0: must be at least 1"), (["--steps", "-2"], "--steps -2: must be at least 1"),
    (["--steps", "5000"], "at most 1000"), (["--size", "0"], "--size 0"), (["--member", "-1"], "--member -1"),
    (["--guidance", "nan"], "--guidance nan"), (["--device", "bogus"], "not a device torch knows"),
    (["--device", "cuda:7"], "this machine has no such device"), (["--out", "{tmp}/missing/x.png"], "does not exist"),
    (["--out", "{tmp}/noext"], "no extension"), (["--out", "{tmp}/x.foo"], "Pillow cannot write"),
    (["--out", "{tmp}"], "that is a folder"), (["--prompt", " "], "a prompt is empty")])
def test_generate_checks_its_command_before_loading_anything(argv, message, tmp_path, capsys, monkeypatch):
    from model import generate

    monkeypatch.setattr(generate, "read_checkpoint", lambda *a: pytest.fail("the checkpoint was read first"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if not any(a.startswith("--out") for a in argv):
        argv += ["--out", str(tmp_path / "x.png")]
    if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 or more CUDA devices")
    prompts = ["a red creature"]
    if argv[0] == "--prompt":  # a second prompt, blank
        prompts.append(argv.pop(1))
        argv.pop(0)
    with pytest.raises(SystemExit) as e:
        generate.main(["--checkpoint", str(tmp_path / "ckpt"), *prompts, *argv])
    assert e.value.code == 2 and message in _usage_error(capsys)


def test_generate_accepts_the_formats_pillow_writes(tmp_path, monkeypatch):
    from model import generate

    class Reached(Exception):
        pass

    def reached(path, member):
        seen.append(path)
        raise Reached

    seen = []
    monkeypatch.setattr(generate, "read_checkpoint", reached)
    for name in ("a.png", "b.JPG", "c.webp"):
        with pytest.raises(Reached):  # past the checks: it went on to read the checkpoint
            generate.main(["--checkpoint", "ckpt", "a red creature", "--out", str(tmp_path / name), "--steps", "1000"])
    assert seen == ["ckpt"] * 3


def _state(model: dict) -> checkpoint.TrainingState:
    """A one-member training state holding `model` as its last weights (nothing else matters here)."""
    return checkpoint.TrainingState(model_config={}, family_config={}, train_configs=[{}], text_encoder={}, epoch=1,
                                    rng={}, best_selection=[0.0], best_model=[None], history=[[]], errors=[None],
                                    model=model)


def test_a_checkpoint_with_damaged_weights_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    from model.generate import main

    w = torch.arange(4096, dtype=torch.float32)
    path = checkpoint.save(_state({"w": w}), tmp_path / "best")
    assert torch.equal(checkpoint.load(path).model["w"], w)  # whole: it loads as saved
    raw = bytearray(path.read_bytes())
    at = raw.find(w.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 1000] ^= 0x40  # one bit inside the tensor's bytes: torch.load alone reads it without a word
    path.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], w)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=str(path)):
        checkpoint.load(path)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path / "best"), "a red creature", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and str(path) in err and "is damaged" in err
    assert not (tmp_path / "x.png").exists()


def test_checkpoint_temporary_names_are_per_process(tmp_path, monkeypatch):
    """Two writers of one checkpoint path never share a temporary file: each renames its own whole file in place."""
    names = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: names.append(Path(f).name) or real_save(obj, f))
    checkpoint.save(_state({"w": torch.zeros(2)}), tmp_path / "c")
    checkpoint.save(_state({"w": torch.ones(2)}), tmp_path / "c")
    assert len(set(names)) == 2 and all(f".checkpoint.pt.tmp-{store.HOST}-{os.getpid()}-" in n for n in names)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["checkpoint.pt"]


# ---------------------------------------------------------------------------- config fields' ranges


def test_every_numeric_config_field_states_its_range():
    """Every numeric field of every config (the shared three and each family's section) says what values it takes."""
    from dataclasses import fields as dataclass_fields

    from search.settings import config_classes

    numeric = [(cls, f) for cls in config_classes() for f in dataclass_fields(cls) if f.type in ("int", "float")]
    assert len(numeric) > 30  # lr, epochs, dropouts, unet_width, ...: the check below is over real fields
    assert [f"{cls.__name__}.{f.name}" for cls, f in numeric if "range" not in f.metadata] == []


@pytest.mark.parametrize("argv, named", [(["--lr", "-1"], "TrainConfig.lr"), (["--weight-decay", "-1"], "weight_decay"),
                                         (["--epochs", "0"], "epochs"), (["--max-tokens", "0"], "max_tokens"),
                                         (["--batch-size", "0"], "batch_size"), (["--dropout-decoder", "1.5"],
                                                                                 "dropout_decoder"),
                                         (["--lr", "1e-3", "0"], "TrainConfig.lr"), (["--cond-dropout", "1"],
                                                                                     "DiffusionConfig.cond_dropout")])
def test_a_config_value_out_of_range_is_a_parser_error(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        grid_cli.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "error: --" in err and named in err and "must be in" in err


def test_the_python_api_and_a_searchers_point_pass_the_same_check():
    from model.config import ModelConfig, TrainConfig
    from search.space import trial_configs

    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got -1"):
        TrainConfig(lr=-1)
    # A point a searcher samples becomes the trial's configs through dataclasses.replace: checked again.
    with pytest.raises(ValueError, match=r"dropout_encoder must be in \[0, 1\), got 1.0"):
        trial_configs({"dropout_encoder": 1.0}, ModelConfig(image_size=32), TrainConfig())
    assert trial_configs({"lr": 3e-4}, ModelConfig(image_size=32), TrainConfig())[1].lr == 3e-4


def test_a_trial_process_asked_to_exit_inside_a_callback_exits_without_a_traceback():
    """Ray's SIGTERM handler raises SystemExit wherever the trial's process is; raised inside a weakref callback,
    Python printed "Exception ignored in ..." and a traceback on the search's console, and the process went on
    (seen once in ten runs of the NaN-trial search). search.trainable's hook makes the request again: the process
    exits, quietly."""
    code = ("import signal, sys, time, weakref\n"
            "from search.trainable import exit_request_kept\n"
            "sys.unraisablehook = exit_request_kept\n"
            "def handler(*_): raise SystemExit(1)\n"  # what Ray's worker does on SIGTERM
            "signal.signal(signal.SIGTERM, handler)\n"
            "class A: pass\n"
            "a = A()\n"
            "def callback(_): handler()\n"  # the signal arriving while a weakref callback runs
            "r = weakref.ref(a, callback)\n"
            "del a\n"
            "time.sleep(10)\n"
            "print('still running')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "still running" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
