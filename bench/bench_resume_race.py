"""How often a driver killed mid-search leaves a search that `--resume` cannot continue, with and without
the fix (search.restore.RestoreFromSuccessor and its replay, search.snapshot's check and guard).

    python bench/bench_resume_race.py --runs 12        # about 30 s per run and variant on 2 cores
    python bench/bench_resume_race.py --quick --variants mixin   # 1 run, 1 trial of 30 epochs: checks the script

Each run starts a Tune search of fast toy trials (each epoch: a few ms of sleep, a report with a
checkpoint, num_to_keep=2 as in search.grid), SIGKILLs the driver's process group at a random moment,
then resumes it in a new driver (as `--resume` does) to the end. With the fix, the driver checks the
snapshot and guards the restore as search.grid does, and a restored toy trial first reports the epochs
its result.json lacks, as train_trial does. Counted per variant: trials that ended in ERROR ("Could not
recover from checkpoint": Tune's snapshot named a checkpoint it had deleted), trials whose result.json
misses an epoch (repeats are expected: a restore from an older checkpoint re-runs epochs; the results
keep the latest), resumes refused (a damaged snapshot file the fix cannot repair, said in one line) and
resumes Tune restarted as a new, empty experiment (a damaged snapshot file, Tune alone). The races are
Tune's (it deletes checkpoints and copies its snapshot to storage in the background); fast reports make
them frequent here, long epochs make them rare in real searches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

TRIALS, EPOCHS = 4, 300  # toy trials per search, epochs per trial (--quick: 1 and 30)
REFUSED = 3  # the driver's exit status when search.snapshot refuses a damaged snapshot


def counting_trainable(epochs: int, mixin: bool, stop_after: int | None = None, pause_s: float = 0.0):
    """A toy Tune trial that counts epochs, a checkpoint per report, with train_trial's rule: restored, it
    first reports the epochs its result.json lacks. `mixin`: with RestoreFromSuccessor, as train_trial;
    `stop_after`: a first (never restored) run raises after that epoch. Also used by tests/test_tune_restore.py."""
    def count(config):
        from ray import tune

        from search.restore import last_reported_epoch  # torch-free: a toy trial starts in a second

        def report(epoch, with_checkpoint=True):
            if not with_checkpoint:
                return tune.report({"epoch": epoch})
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))

        start = 0
        if (ckpt := tune.get_checkpoint()) is not None:
            with ckpt.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
            for epoch in range(last_reported_epoch() + 1, start + 1):
                report(epoch, with_checkpoint=epoch == start)
        for epoch in range(start + 1, epochs + 1):
            if ckpt is None and stop_after is not None and epoch > stop_after:
                raise RuntimeError(f"stopped after epoch {stop_after}")
            time.sleep(pause_s)
            report(epoch)

    if mixin:
        from search.restore import RestoreFromSuccessor

        count.__mixins__ = (RestoreFromSuccessor,)
    return count


def driver(storage: str, mixin: bool, resume: bool, trials: int, epochs: int) -> None:
    import ray
    from ray import tune

    from data_pipeline.ray_env import init_ray
    from search.snapshot import DamagedSnapshot, check_snapshot, refuse_empty_restart

    init_ray(num_cpus=2)
    # with the mixin: the fix, as search.grid applies it
    trainable = tune.with_resources(counting_trainable(epochs, mixin, pause_s=0.005), {"cpu": 0.5})
    guard = refuse_empty_restart() if mixin else nullcontext()
    try:
        if resume:
            if mixin:
                check_snapshot(f"{storage}/race", trials)
            tuner = tune.Tuner.restore(f"{storage}/race", trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(trials)))},
                               run_config=tune.RunConfig(name="race", storage_path=storage, verbose=0,
                                                         checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
        with guard:
            tuner.fit()
    except DamagedSnapshot as e:
        print(f"refused: {e}", flush=True)
        sys.exit(REFUSED)
    ray.shutdown()


def one_run(mixin: bool, seed: int, keep: Path | None = None, trials: int = TRIALS, epochs: int = EPOCHS) -> dict:
    with tempfile.TemporaryDirectory() as storage:
        cmd = [sys.executable, __file__, "--driver", storage, "--trials", str(trials), "--epochs", str(epochs)]
        cmd += ["--mixin"] if mixin else []
        log = open(Path(storage) / "driver.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not list(Path(storage).glob("race/*/result.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the search did not start"
            time.sleep(0.1)
        time.sleep(random.Random(seed).uniform(0.5, 3.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = subprocess.run(cmd + ["--resume"], stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode
        if rc == REFUSED:  # a damaged snapshot the fix cannot repair: said, not resumed
            return {"errored": 0, "gaps": 0, "trials": trials, "refused": 1, "empty": 0}
        assert rc == 0, (Path(storage) / "driver.log").read_text()[-3000:]
        from ray.tune import ExperimentAnalysis

        found = ExperimentAnalysis(f"{storage}/race").trials
        errored = sum(t.status == "ERROR" for t in found)
        gaps = 0
        for t in found:
            if t.status != "ERROR":
                reported = [json.loads(line)["epoch"] for line in
                            (Path(t.path) / "result.json").read_text().splitlines() if line.strip()]
                gaps += sorted(set(reported)) != list(range(1, epochs + 1))
        # Tune restarting an empty experiment (its snapshot damaged) leaves one trial of config {}.
        empty = any(not t.config for t in found)
        if keep is not None and (errored or gaps or empty):
            shutil.copytree(storage, keep / f"{'mixin' if mixin else 'tune'}-{seed}")
        return {"errored": errored, "gaps": gaps, "trials": len(found), "refused": 0, "empty": int(empty)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--trials", type=int, default=TRIALS, help="toy trials per search")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per toy trial")
    p.add_argument("--keep", type=Path, help="copy the storage of runs with an errored trial or a gap here")
    p.add_argument("--variants", nargs="+", choices=["tune", "mixin"], default=["tune", "mixin"])
    p.add_argument("--quick", action="store_true", help="1 run, 1 trial of 30 epochs: checks the script, measures nothing")
    p.add_argument("--driver", help=argparse.SUPPRESS)
    p.add_argument("--mixin", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.driver:
        return driver(args.driver, args.mixin, args.resume, args.trials, args.epochs)
    if args.quick:
        args.runs, args.trials, args.epochs = 1, 1, 30
    print(f"# bench_resume_race on {machine()}: {args.runs} killed-and-resumed searches per variant, "
          f"{args.trials} toy trials x {args.epochs} epochs each")
    print("| variant | runs with an errored trial | errored trials | trials missing an epoch in result.json "
          "| resumes refused (damaged snapshot) | resumes restarted empty |")
    print("|---|---|---|---|---|---|")
    out = []
    for mixin in [v == "mixin" for v in args.variants]:
        runs = [one_run(mixin, seed, args.keep, args.trials, args.epochs) for seed in range(args.runs)]
        name = "the fix (search.restore + search.snapshot)" if mixin else "Tune alone"
        out.append({"variant": name, **{k: sum(r[k] for r in runs) for k in runs[0]},
                    "runs": len(runs), "runs_errored": sum(r["errored"] > 0 for r in runs)})
        print(f"| {name} | {out[-1]['runs_errored']}/{len(runs)} | {out[-1]['errored']}/{out[-1]['trials']} | "
              f"{out[-1]['gaps']} | {out[-1]['refused']} | {out[-1]['empty']} |", flush=True)
    return out


if __name__ == "__main__":
    main()
