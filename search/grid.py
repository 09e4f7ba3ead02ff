"""Run the thesis's 32-trial grid (or an ASHA / Optuna search over it) on Ray Tune.

    python -m search.grid                                  # synthetic data, preset chosen by hardware
    python -m search.grid --data ../shared/datasets/pokedex --preset full --gpus-per-trial 0.25
    python -m search.grid --preset smoke --experiment ci   # seconds per trial, for tests
    python -m search.grid --experiment ci --resume         # continue an interrupted search
    python -m search.grid --scheduler asha                 # early stopping on val/l1
    python -m search.grid --search optuna --num-samples 16 # TPE: the family's selection metric × text faithfulness
    python -m search.grid --address auto                   # on a running cluster (ray up cluster.yaml)
    python -m search.grid --fuse on                        # the grid as 8 fused trials of 4 members each
    python -m search.grid --seeds 3                        # every point with 3 seeds: mean ± std, ties with the best
    python -m search.grid --mlflow-tracking-uri sqlite:///mlflow.db   # one MLflow run per trial (.[mlflow] extra)

The preset (`full`: the thesis's settings when Ray or torch sees a GPU; `laptop` otherwise;
`smoke`) is printed at start and recorded. Any config field can be overridden by its
own flag (`--epochs 50`, `--image-size 32`); a swept field's flag replaces its grid axis
(`--lr 1e-3 1e-4`). Results: results/<experiment>/ (see search/export.py).

Stopping and faults (README, "Faults and exit statuses"): Ctrl-C, SIGTERM and SIGHUP save the partial table and
name --resume; a full disk stops the search at its first failed write; a second search on the same experiment is
refused; the command runs the search in a child process and reports it if Ray or the driver dies under it
(search/supervise.py). Exit status: 0 every trial completed, 1 some or all errored, 2 a mistake in the command,
75 stopped by a fault (fix it, then --resume), 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP.

Fusing (`--fuse auto`, the default, turns it on when trials get GPUs): each Tune trial is one
architecture, training the grid's learning-rate x weight-decay points as members of one batched
model (model/train.py); the table still has one row per grid point. A GPU step of this small model
is bound by kernel launches, so 4 members cost about what 1 does; on CPUs it saves nothing.
"""

from __future__ import annotations

import sys

from search import supervise


def _post_mortem(messages: dict, what: str) -> int:
    from search.grid import post_mortem  # the table's code, imported only when the driver died without writing it

    return post_mortem(messages, what)


if __name__ == "__main__" and not supervise.is_driver():
    # The command's own process only watches the search (search/supervise.py), so it stops here, before the imports
    # below (torch, the families): it stays small. Its child parses the flags (--help; a usage error exits 2 there).
    sys.exit(supervise.supervise(sys.argv[1:], _post_mortem))

import argparse  # noqa: E402 — everything below runs in the search's driver (the child)
import math
import os
import platform
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from model import families
from model.config import DEFAULT_FAMILY, VAL_ALIGN, VAL_ATTR_MEAN, VAL_CLIP
from search.export import SetLayoutError, check_layout, data_changed, export, ray_files_inside, user_error
from search.results import quiet_unstarted_trials, row_key
from data_pipeline.config import field_range
from search.settings import (SEED, PRESETS, Settings, add_config_flags, config_classes, config_overrides, load_data,
                             resolve, retrains_note)
from search.signals import FAULT, Reason, Stop, Stopped
from search.snapshot import DamagedSnapshot, check_snapshot, refuse_empty_restart
from search.space import SEARCHES, distinct_points, fused_space, grid_size, param_space
from search.store import (PROVENANCE, DamagedProvenance, Fuse, LockHeld, Plan, SearchPlan, check_writable,
                          experiment_lock, storage_full)

SCHEDULERS = ("fifo", "asha")
FUSE_MODES = ("auto", "on", "off")
# These flags default to None, so --resume can tell a flag given from a default; filled in after that check.
DEFAULTS = {"search": "grid", "scheduler": "fifo", "fuse": "auto", "seeds": 1}
TUNE_DIR = "tune"  # <results>/tune/<experiment>: Ray's files, beside (never inside) the results set
# Exit statuses (README, "Faults and exit statuses"): 0 every trial completed; TRIALS_ERRORED the search ran to its
# end but some or all trials errored; 2 a mistake in the command, nothing started (search.export.user_error);
# signals.FAULT (75) stopped by a fault (a full disk, Ray dying, the driver killed): fix it, then --resume; 128 + the
# signal's number when stopped by one (search/signals.py: SIGINT 130, SIGTERM 143, SIGHUP 129).
TRIALS_ERRORED = 1
# A row that counts as done: trained to the end, or stopped early by its scheduler (ASHA) as it was asked to.
COMPLETED = ("ok", "stopped early")


def number(kind: type, low: float, high: float | None = None, whole_above: float | None = None):
    """An argparse type: `kind` in [low, high] (finite), and a whole number above `whole_above`, else argparse's
    `error: argument --flag: ...` (exit status 2), before anything is loaded."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bounds = f"at least {low}" + (f" and at most {high}" if high is not None else "")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bounds}")
        if whole_above is not None and value > whole_above and value != int(value):
            raise argparse.ArgumentTypeError(f"{text}: above {whole_above:g} it must be a whole number")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def experiment_name(text: str) -> str:
    if not text or text in (".", "..") or "/" in text or os.sep in text or text.startswith("."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder name: no '/', and not starting with '.' (the "
                                         "hidden names beside the results are the search's own: locks, staging)")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    intro, usage = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m search.grid", description=intro, epilog=usage,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="Pokédex folder or parquet file (default: the embedded synthetic set)")
    p.add_argument("--results", default="results", help="results root; this search writes <results>/<experiment>/ "
                                                        "(checked writable before Ray starts)")
    p.add_argument("--experiment", type=experiment_name, default=None,
                   help="experiment name, a folder name (default: <search>-<preset>); one search at a time holds it")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: full when a GPU is visible to Ray or torch, else laptop")
    # search and scheduler default to None so that --resume can tell a given flag from a default.
    p.add_argument("--search", choices=SEARCHES, default=None,
                   help="every grid point once (default), points drawn at random, or Optuna's TPE")
    p.add_argument("--search-seed", type=number(int, 0), default=None,
                   help="seed of --search random or optuna's draws (default: --seed); the trials train as --seed says")
    p.add_argument("--num-samples", type=number(int, 1), default=None,
                   help="trials for --search random or optuna, at least 1 (default 16; random: different points, "
                        "at most the space's)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help="fifo (default), or asha: stop poor trials early on val/l1")
    p.add_argument("--grace-period", type=number(int, 1), default=None,
                   help="with --scheduler asha: epochs every trial trains before it can be stopped (default a tenth of "
                        "the epochs; a learning-rate axis needs longer: results/BENCHMARKS.md, 'Does the search save "
                        "compute?')")
    p.add_argument("--fuse", choices=FUSE_MODES, default=None,
                   help="train each architecture's learning-rate x weight-decay points as one fused trial "
                        "(default auto: on when trials get GPUs and the search is the FIFO grid)")
    p.add_argument("--gpus-per-trial", type=number(float, 0, whole_above=1), default=None,
                   help="GPUs per trial, >= 0; fractions pack trials onto a GPU (0.25 = 4 per GPU), above 1 whole GPUs; "
                        "default 1 with GPUs, else 0. A value no node can grant is refused before Tune starts")
    p.add_argument("--cpus-per-trial", type=number(float, 0), default=1.0,
                   help="CPUs per trial, >= 0 (default 1); a value no node can grant is refused before Tune starts")
    p.add_argument("--max-concurrent", type=number(int, 1), default=None,
                   help="cap on trials running at once, at least 1 (default: as many as the resources fit)")
    p.add_argument("--max-failures", type=number(int, -1), default=2,
                   help="retries of a failed trial, from its last checkpoint: 0 or more, or -1 to retry without limit "
                        "(Ray Tune's convention) (default 2)")
    p.add_argument("--address", default=None, help="join a running Ray cluster ('auto' or host:port); default local")
    p.add_argument("--storage-path", default=None,
                   help="where Ray stores the experiment: a local or NFS path (checked writable before Ray starts), "
                        f"s3://..., gs://... (default: <results>/{TUNE_DIR}); --resume reads it from provenance.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the stored experiment with its stored settings; finished trials are kept")
    p.add_argument("--seeds", type=number(int, 1), default=None, metavar="N",
                   help="train every grid point with seeds SEED .. SEED+N-1, N at least 1 (a grid axis of the field "
                        "seed; fused trials train them as members); the table then gives mean ± std per configuration "
                        "and which configurations are tied with the best (default 1)")
    p.add_argument("--mlflow-tracking-uri", default=None, metavar="URI",
                   help="also log every trial to MLflow (e.g. sqlite:///mlflow.db): one run per trial, its config as "
                        "params, metrics per epoch, its checkpoint as an artifact; needs pip install -e '.[mlflow]'")
    add_config_flags(p)
    args = p.parse_args(argv)
    if out_of_range := config_range_error(config_overrides(args)):
        p.error(out_of_range)
    if args.num_samples is not None and args.search in (None, "grid") and not args.resume:
        p.error("--num-samples applies to --search random and optuna only (the grid runs every point once)")
    if args.search_seed is not None and args.search in (None, "grid") and not args.resume:
        p.error("--search-seed applies to --search random and optuna only (the grid's order is fixed)")
    if args.grace_period is not None and args.scheduler != "asha" and not args.resume:
        p.error("--grace-period applies to --scheduler asha only (FIFO trains every trial to the end)")
    if (args.seeds or 1) > 1 and (args.search in ("random", "optuna") or args.scheduler == "asha"):
        p.error("--seeds applies to the FIFO grid: Optuna would sample the seed as a hyperparameter, and ASHA would "
                "stop single replicates early, so a configuration's seeds would not be alike")
    if args.experiment == TUNE_DIR:
        p.error(f"--experiment {TUNE_DIR}: that name is the folder of Ray's own files; pick another")
    if args.cpus_per_trial == 0 and args.gpus_per_trial == 0:
        p.error("--cpus-per-trial 0 with --gpus-per-trial 0: a trial that needs nothing has no limit, and Ray would "
                "start every trial at once")
    if not args.results.strip():
        p.error("--results: an empty path")
    return args


def config_range_error(given: dict) -> str | None:
    """The first config flag given a value outside its field's stated range (every value of a grid axis), as the
    parser's error line; None when all are in range. Ranges across fields (d_model and n_heads, a family's image
    sizes) are checked when the settings are resolved."""
    for name, value in given.items():
        for cls in config_classes():
            r = field_range(cls, name)
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                if r is not None and v not in r:
                    return f"--{name.replace('_', '-')} {v}: must be in {r} ({cls.__name__}.{name})"
    return None


@contextmanager
def user_errors(flag: str = ""):
    """Turn what the data pipeline raises for a bad --data (FileNotFoundError, ValueError, incl.
    NoUsableRecords) and a bad flag value into `error: [flag: ]...`; anything else keeps its traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError) as e:
        raise user_error(f"{flag}: {e}" if flag else e) from None


def check_data(data: str | None) -> None:
    """Fail before Ray starts on a --data path that cannot be a dataset (load_data would, seconds later)."""
    if data is None or data == "synthetic" or data.startswith("synthetic:"):
        return
    from data_pipeline.sources import detect_layout

    with user_errors("--data"):
        detect_layout(data)


def check_clip(settings: Settings, loader, device: str = "cpu"):
    """(scorer, status) for the baselines; --clip-mode required (or a CLIP loss) without weights is a user error."""
    from model.eval import clip

    clip_loss = next(filter(None, (families.get(name).clip_loss(settings.trial({"family": name})[2])
                                   for name in settings.grid["family"])), None)
    try:
        return clip.resolve_clip(settings.train, device, loader, clip_loss)
    except clip.ClipUnavailable as e:
        raise user_error(f"{str(e).splitlines()[0]} {clip.FIX_SUMMARY}") from None


def data_arg(data: str | None) -> str | None:
    """--data as stored: a path absolute, so --resume and search.export find it from any directory."""
    return str(Path(data).resolve()) if data and Path(data).exists() else data


def mlflow_store(args) -> str | None:
    """--mlflow-tracking-uri as stored (a local path made absolute), or None. search.trackers imports Ray's MLflow
    callback, which imports mlflow (most of a second): only a search that asked for it imports it here, after
    init_ray. (Tuner.fit imports it anyway where mlflow is installed: Ray's usage telemetry counts the callbacks
    a search passes by comparing them with its integrations' classes, ray.air._internal.usage.tag_callbacks.)"""
    if not args.mlflow_tracking_uri:
        return None
    from search.trackers import resolved_uri

    return resolved_uri(args.mlflow_tracking_uri)


def resume_conflicts(args: argparse.Namespace, plan: Plan, ray_experiment: str | None) -> list[str]:
    """Flags given with --resume whose value differs from the stored search. Equal values are fine:
    rerunning the same command with --resume is what the interrupted search tells the user to do."""
    stored = plan.settings
    # The seed axis (--seeds) is compared as --seeds; --seed is the first seed, train.seed.
    stored_values = {**vars(stored.train), **vars(stored.data), **vars(stored.model),
                     **{k: v for k, v in stored.grid.items() if k != SEED}}
    given = {name: (tuple(v) if isinstance(v, list) else v) for name, v in config_overrides(args).items()}
    search = plan.search
    mlflow_uri = mlflow_store(args)
    given.update({k: v for k, v in (("preset", args.preset), ("search", args.search),
                                    ("scheduler", args.scheduler), ("num_samples", args.num_samples),
                                    ("fuse", args.fuse), ("seeds", args.seeds), ("mlflow_tracking_uri", mlflow_uri),
                                    ("storage_path", ray_experiment), ("data", data_arg(args.data)))
                  if v is not None})
    stored_values.update(preset=stored.preset, search=search.search, scheduler=search.scheduler,
                         fuse=search.fuse.mode, seeds=stored.seeds, mlflow_tracking_uri=search.mlflow_tracking_uri,
                         num_samples=search.trials if search.search != "grid" else None,
                         storage_path=plan.ray_experiment, data=plan.data_arg)
    return [f"--{name.replace('_', '-')} (stored {stored_values[name]!r}, given {value!r})"
            for name, value in given.items() if value != stored_values[name]]


def family_of(settings: Settings, what: str) -> str:
    """The one model family of a search whose `what` compares trials on one metric; ValueError for a mixed
    search (each family has its own selection metric: val/l1 and val/x0_mse cannot be compared)."""
    families = settings.grid["family"]
    if len(families) > 1:
        raise ValueError(f"{what} compares trials on one selection metric, and the families {' and '.join(families)} "
                         "select on different ones; search each family on its own (--family NAME)")
    return families[0]


def scheduler(name: str, epochs: int, family: str = DEFAULT_FAMILY, grace_period: int | None = None):
    if name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # Every trial gets a tenth of its epochs (or grace_period) before it can be stopped; a third survive each rung.
    # Counted in the trial's own epochs: after a crash a restored trial may report an epoch again, and Tune's
    # training_iteration then counts it twice.
    return ASHAScheduler(time_attr="epoch", metric=families.get(family).selection, mode="min", max_t=epochs,
                         grace_period=min(grace_period or max(1, epochs // 10), epochs), reduction_factor=3)


def searcher(name: str, objectives: list[tuple[str, str]], seed: int, space: dict[str, tuple], trials: int):
    if name == "grid":
        return None
    if name == "random":  # `trials` different points, each trained once (space.distinct_points)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=distinct_points(space, trials, seed), random_state=seed)
    from optuna.samplers import TPESampler

    from search.tpe import TPESearch  # Ray's OptunaSearch, told of ASHA's stopped trials, not retraining a point

    metrics, modes = [m for m, _ in objectives], [mode for _, mode in objectives]
    one = len(objectives) == 1  # a dataset too small for the evaluator networks: the selection metric alone
    return TPESearch(metric=metrics[0] if one else metrics, mode=modes[0] if one else modes,
                     sampler=TPESampler(seed=seed, multivariate=True))


def stored_search(args: argparse.Namespace, results_dir: Path) -> tuple[Plan | None, str, bool]:
    """(the stored Plan or None, the Ray experiment's path, whether Tune can restore it) for this command.

    A new search refuses a folder that already holds one. --resume takes the experiment's path
    from provenance.json (an s3:// --storage-path need not be repeated) and refuses flags that
    differ from the stored search.
    """
    from ray import tune

    experiment = results_dir.name
    given_storage = args.storage_path and (args.storage_path if "://" in args.storage_path
                                           else str(Path(args.storage_path).resolve()))
    storage = given_storage or str(results_dir.parent / TUNE_DIR)
    ray_experiment = f"{storage.rstrip('/')}/{experiment}"
    if ray_files_inside(results_dir, ray_experiment):
        raise user_error(f"--storage-path {args.storage_path} would put Ray's files in or above the results "
                         f"folder {results_dir}, which search.export replaces as a whole; pick another folder")
    try:
        prov = Plan.load(results_dir) if (results_dir / PROVENANCE).is_file() else None
    except DamagedProvenance as e:
        raise user_error(e) from None
    if not args.resume:
        if prov is not None or tune.Tuner.can_restore(ray_experiment):
            raise user_error(f"{results_dir} already holds a search: add --resume to continue it, "
                             "or pass --experiment NAME for a new one")
        return None, ray_experiment, False
    if prov is None:
        raise user_error(f"--resume: {results_dir} holds no search ({PROVENANCE} not found); "
                         "check --results and --experiment (or --search/--preset, which name it)")
    conflicts = resume_conflicts(args, prov, given_storage and ray_experiment)
    if conflicts:
        raise user_error(f"--resume continues {experiment} with its stored settings, but {', '.join(conflicts)}; "
                         "drop those flags, or start a new search with --experiment NAME")
    try:  # before training: the export at the end would refuse the folder
        check_layout(results_dir, prov.ray_experiment)
    except SetLayoutError as e:
        raise user_error(e) from None
    return prov, prov.ray_experiment, restorable(prov.ray_experiment)


def restorable(ray_experiment: str) -> bool:
    """Tune wrote its tuner.pkl and at least one experiment snapshot. tuner.pkl alone (the driver
    stopped before the first snapshot) is not enough for Tuner.restore to continue from."""
    from ray import tune
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint  # Ray pinned to 2.60

    return tune.Tuner.can_restore(ray_experiment) and _find_newest_experiment_checkpoint(ray_experiment) is not None


def trial_settings(settings: Settings, driver_clip_status: str) -> Settings:
    """What trials train with: when the driver loaded CLIP (the baselines beside the table use it),
    a trial on a node without the weights fails loudly instead of leaving an "unavailable" cell."""
    if driver_clip_status != "ok" or settings.train.clip_mode == "off":
        return settings
    return replace(settings, train=replace(settings.train, clip_mode="required"))


def fuse_decision(mode: str, search: str, scheduler: str, gpus_per_trial: float,
                  settings: Settings) -> tuple[list[dict] | None, str]:
    """(the member points, or None to run unfused; the one-line reason printed and recorded)."""
    _, members = fused_space(settings.grid)
    reasons = [  # why not to fuse, the first that applies
        *(families.get(f).fuses for f in settings.grid["family"]),
        search != "grid" and f"--search {search} chooses grid points one at a time",
        scheduler != "fifo" and f"--scheduler {scheduler} stops single grid points early, and fused members train "
                                "in lockstep",
        not settings.model.freeze_text_encoder and "a fine-tuned text encoder (--no-freeze-text-encoder) cannot be "
                                                   "shared by members",
        settings.train.finetune_epochs and "staged training (--finetune-epochs) fine-tunes the text encoder, which "
                                           "members cannot share",
        len(members) < 2 and "each architecture has a single learning-rate x weight-decay point: nothing to fuse"]
    why_not = next((r for r in reasons if r), None)
    if mode == "on" and why_not:
        raise ValueError(f"--fuse on: {why_not}; use --fuse auto or off")
    if mode == "off":
        return None, "off (--fuse off)"
    if why_not:
        return None, f"off: {why_not}"
    if mode == "auto" and gpus_per_trial <= 0:
        return None, "off: trials run on CPUs, whose steps are compute-bound (fusing saves launches, not arithmetic)"
    axes = ", ".join(members[0])
    return members, f"on: each architecture is one trial of {len(members)} members ({axes})"


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _versions() -> dict:
    import ray
    import torch

    return {"ray_version": ray.__version__, "torch_version": torch.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class Where:
    """Where a new search runs: its results folder, its Ray experiment, the cluster, each trial's resources."""
    results_dir: Path
    ray_experiment: str
    cluster: dict
    per_trial: dict


def plan_search(args, argv, where: Where, settings: Settings, data, clip: tuple) -> Plan:
    """The Plan of a new search: the command's flags, resolved settings and data, the cluster, CLIP's scorer (the
    weights check_clip loaded, for the baselines) and status."""
    from model.eval.evaluator import EvalNets, Evaluator, split_images
    from model.text import frozen_texts

    scorer, clip_status = clip
    points = grid_size(settings.grid) if args.search == "grid" else (args.num_samples or 16)
    if args.search == "random":  # different points: at most the space's (16 by default, or all of a smaller one)
        points = args.num_samples or min(points, grid_size(settings.grid))
        distinct_points(settings.grid, points, 0)  # refuses more than the space holds, before anything is fitted
    for name in settings.grid["family"]:
        # What a family fits once per dataset (latent diffusion's first stage), and the frozen text encoder's states
        # of its texts, made here with all of the driver's cores (and cached beside the prepared data), so that no
        # trial fits its own or even loads the encoder.
        model_cfg, _, section = settings.trial({"family": name})
        families.get(name).fit_once(data, model_cfg, section)
        if model_cfg.freeze_text_encoder:
            frozen_texts(data, model_cfg, families.get(name).extra_texts)
    # The evaluator networks likewise: fitted here once (every trial then loads them; two trials starting together
    # on a fresh cache would each fit them), and the baselines beside the table need them (ceilings, floors, chance).
    nets = EvalNets.load_or_fit(data, settings.train.eval_fit)
    members, fuse_reason = fuse_decision(args.fuse, args.search, args.scheduler, where.per_trial["gpu"], settings)
    for what, used in (("--scheduler asha", args.scheduler != "fifo"), (f"--search {args.search}", args.search != "grid")):
        if used:
            family_of(settings, what)
    objectives = [(families.get(settings.grid["family"][0]).best, "min"), *faithfulness_objective(data, scorer)]
    search = SearchPlan(
        search=args.search, scheduler=args.scheduler, trials=points // len(members) if members else points,
        points=points, fuse=Fuse(args.fuse, members is not None, fuse_reason, members),
        objectives=objectives, resources_per_trial=where.per_trial,
        mlflow_tracking_uri=mlflow_store(args),
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        search_seed=settings.train.seed if args.search_seed is None else args.search_seed,
        grace_period=args.grace_period)
    return Plan(
        experiment=where.results_dir.name, ray_experiment=where.ray_experiment,
        command=[sys.executable, "-m", "search.grid", *(sys.argv[1:] if argv is None else argv)],
        settings=settings, preset_about=settings.about(), search=search,
        dataset={"data_arg": data_arg(args.data), **{k: v for k, v in data.info.items() if k != "splits"},
                 "counts": {s: len(data.split(s)) for s in ("train", "val", "test")},
                 "split_ids": data.info.get("splits")},
        clip={"model": settings.train.clip_model, "pretrained": settings.train.clip_pretrained,
              "mode": settings.train.clip_mode, "status": clip_status},
        baselines=Evaluator(data, split_images(data, "cpu"), scorer, clip_status, nets).baselines(),
        cluster=where.cluster,
        **_versions())


def faithfulness_objective(data, scorer) -> list[tuple[str, str]]:
    """The searcher's second objective, on validation (the search never selects on the test set it reports), a
    metric with power (model/eval/evaluator.py): the CLIP score where real weights exist; else the mean attribute
    accuracy on data whose texts state attributes (the synthetic set: graded, where every-attribute-right is 0 for
    every trial of a short search and so cannot rank them); else the in-domain alignment; none for a dataset too
    small for the evaluator networks."""
    from model.eval.evaluator import MIN_RECORDS

    if scorer is not None:
        return [(VAL_CLIP, "max")]
    if data.info.get("attributes"):
        return [(VAL_ATTR_MEAN, "max")]
    if len(set(data.train.ids.tolist())) >= MIN_RECORDS:
        return [(VAL_ALIGN, "max")]
    return []


def new_tuner(trainable, settings: Settings, plan: Plan, storage: str):
    from ray import tune

    from search.progress import Progress

    search = plan.search
    space = fused_space(settings.grid)[0] if search.fuse.on else settings.grid
    callbacks = [Progress(search.trials, every_s=10.0 if settings.preset == "smoke" else 30.0)]
    if search.mlflow_tracking_uri:  # TensorBoard's event files are Tune's default (search/trackers.py)
        from search.trackers import mlflow_logger

        callbacks.append(mlflow_logger(search.mlflow_tracking_uri, plan))
    return tune.Tuner(
        trainable,
        param_space=param_space(space, search.search),
        tune_config=tune.TuneConfig(
            scheduler=scheduler(search.scheduler, settings.train.total_epochs, settings.grid["family"][0],
                                search.grace_period),
            search_alg=searcher(search.search, [tuple(o) for o in search.objectives], search.search_seed, space,
                                search.trials),
            num_samples=1 if search.search == "grid" else search.trials,
            max_concurrent_trials=search.max_concurrent, trial_dirname_creator=trial_dirname,
            # A finished trial's process runs the next one: torch, transformers and the text
            # encoder are loaded once per worker, not once per trial (seconds each on a laptop).
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=plan.experiment, storage_path=storage, verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # The latest state per trial holds everything (the best-validation weights too). Tune snapshots
            # the experiment every num_to_keep checkpoints of a trial (and every 10 s): 2 halves those syncs
            # against 1. A snapshot that names a checkpoint deleted after it is handled when the trial is
            # restored (search.restore.RestoreFromSuccessor).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


def start_ray(args) -> dict:
    """Check what can be checked before Ray starts, start or join it; the cluster's {"CPU", "GPU", "nodes"}."""
    check_data(None if args.resume else args.data)
    from data_pipeline.ray_env import init_ray

    init_ray(address=args.address)
    if args.mlflow_tracking_uri:  # before the data and the first trial
        from search.trackers import check_mlflow

        with user_errors("--mlflow-tracking-uri"):
            check_mlflow(mlflow_store(args))
    import ray

    resources = ray.cluster_resources()
    return {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0), "nodes": len(ray.nodes())}


def cluster_shape() -> tuple[list[dict], list[dict]]:
    """(each live node's resources, the node types the cluster's autoscaler may start: name, resources, max_count
    (-1: no limit)). A local Ray, or a cluster started by hand (`ray start`), has no autoscaler: no node types."""
    import ray
    from ray._private.state import state  # the autoscaler's cluster config, as Ray Train reads it (Ray pinned to 2.60)

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    try:
        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 — a cluster whose GCS has no autoscaler state: nothing can be added
        config = None
    groups = [{"name": g.name, "resources": dict(g.resources), "max_count": g.max_count}
              for g in (config.node_group_configs if config is not None else [])]
    return nodes, groups


def check_resources(per_trial: dict, nodes: list[dict], node_types: list[dict]) -> str | None:
    """None when some node can run a trial (`per_trial`: {"cpu", "gpu"}); a warning when none can now but the
    autoscaler may start one that can; ValueError (a usage error) when no node ever could: Tune would wait forever.

    A trial's resources must sit on one node (Tune's trial is one placement bundle). Whether such a node can appear is
    decided by the autoscaler's node types (cluster.yaml's available_node_types, as the cluster reports them):
    without an autoscaler (a local Ray, a cluster started by hand) the nodes there now are all there will be."""
    need = {"CPU": per_trial["cpu"], "GPU": per_trial["gpu"]}

    def fits(resources: dict) -> bool:
        return all(resources.get(k, 0) >= v for k, v in need.items() if v)

    if any(fits(n) for n in nodes):
        return None
    flags = " and ".join(f"--{k.lower()}s-per-trial {v:g}" for k, v in need.items()
                         if v and not any(n.get(k, 0) >= v for n in nodes)) or "the per-trial resources"
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in need}
    have = f"its largest node has {largest['CPU']:g} CPU and {largest['GPU']:g} GPU"
    growing = [g for g in node_types if g["max_count"] != 0 and fits(g["resources"])]
    if growing:
        names = ", ".join(f"{g['name']} (up to {'any number' if g['max_count'] < 0 else g['max_count']})"
                          for g in growing)
        return (f"[search] warning: no node of the cluster can run a trial with {flags} now ({have}); its autoscaler "
                f"can start nodes that can: {names}. Trials wait for one with no time limit (Tune's, and ours): "
                "minutes on a cloud; if none comes, stop with Ctrl-C and --resume later")
    scaler = ("and its autoscaler's node types cannot add one" if node_types else
              "and the cluster has no autoscaler to add one (a local Ray, or one started by hand)")
    raise ValueError(f"{flags}: no node of this cluster can run such a trial ({have}) {scaler}: every trial would "
                     "wait forever; ask for what a node has")


def fit(plan: Plan, settings: Settings, data, restore: bool, per_trial: dict, stop: Stop) -> float:
    """Run (or continue) the stored search on Ray Tune with `per_trial` resources (this command's: a resumed
    search may run on other machines), until every trial ends or `stop` (a signal, a full disk, Ray dying)."""
    from ray import tune

    from search.progress import TuneLogs
    from search.trainable import train_trial

    search = plan.search
    # Every report carries a checkpoint and only the latest two are kept, so Tune snapshots the experiment
    # state after each report (that is what makes --resume exact); its warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if search.search == "optuna":
        # The second objective (val/clip_score, val/attr_all or val/indomain_align) comes only with a trial's last
        # report; Tune's strict check would reject every earlier report for lacking it.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    settings = trial_settings(settings, plan.clip_status)
    # The dataset enters the object store once; each trial gets a reference, not a copy of its own.
    # The families' classes travel with the trials: a family registered by the user's own script (a class of its
    # __main__, which Ray pickles by value) trains on workers that never imported that script.
    used = {name: families.get(name) for name in settings.grid["family"]}
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, settings=settings,
                                                         members=search.fuse.members, used=used), per_trial)
    if restore:
        try:  # a snapshot file cut short by the crash: repaired where that is safe, else a clear error
            check_snapshot(plan.ray_experiment, search.trials)
        except DamagedSnapshot as e:
            raise user_error(f"--resume: {e}") from None
        # resume_errored: a trial that failed for a passing reason gets another go from its checkpoint.
        # The stored RunConfig comes back with it, including its Progress callback.
        tuner = tune.Tuner.restore(plan.ray_experiment, trainable, resume_errored=True)
    else:
        tuner = new_tuner(trainable, settings, plan, plan.ray_experiment.rsplit("/", 1)[0])
    print(f"[search] {search.trials} trials for {search.points} points ({search.search}, {search.scheduler}), "
          f"per trial {per_trial}, cluster {plan.cluster}", flush=True)
    quiet_unstarted_trials()  # a Ctrl-C's closing analysis would log one error per trial not started
    t_fit = time.time()
    try:
        # Tune's failed-trial tracebacks become one line each, and a full disk stops the search (search/progress.py).
        with TuneLogs(stop, plan.ray_experiment).attached(), stop.during_fit(), refuse_empty_restart():
            tuner.fit()  # a signal: Tune stops the trials, snapshots the experiment and returns
    except DamagedSnapshot as e:
        raise user_error(f"--resume: {e}") from None
    except Exception as e:  # noqa: BLE001
        if stop.reason is None:
            raise
        # Stopping for a fault, Tune's closing summary can fail on what the fault left (an error file a full disk
        # left empty); the trials' results are on storage all the same, and the export reads them from there.
        print(f"[search] Tune's closing summary failed ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
              "the table is read from storage", flush=True)
    return time.time() - t_fit


def summary_line(rows: list[dict], wall_s: float | None = None, planned: int = 0) -> str:
    """How many trials completed, errored (and why, for the first), or did not finish, of the `planned` rows (grid
    points or Optuna's samples: a stopped search's table lacks the trials Tune had not created yet)."""
    errored = [r for r in rows if r["status"].startswith("error")]
    ok = sum(r["status"] == "ok" for r in rows)
    early = sum(r["status"].startswith("stopped early") for r in rows)
    total = max(len(rows), planned)
    unfinished = total - ok - early - len(errored)
    first = min(errored, key=lambda r: (r["trial_id"], r["member"] or 0), default=None)
    parts = [f"{total} trials", f"{ok} completed", *([f"{early} stopped early"] if early else []),
             f"{len(errored)} errored" + (f" (the first, {row_key(first['trial_id'], first['member'])}: "
                                          f"{first['status'].removeprefix('error: ')})" if first else ""),
             *([f"{unfinished} not finished"] if unfinished else [])]
    return "[search] " + ", ".join(parts) + (f"; wall time {wall_s:.0f} s" if wall_s is not None else "")


def stopped_line(reason: Reason, results_dir: Path | None, table: str) -> str:
    """The one line that says what stopped the search, what is kept and how to continue. `table`: what became of
    the results table ("partial results saved", or why it was not written)."""
    how = f"stopped by {reason.what}" if reason.signal else f"stopped: {reason.what}"
    fix = "free some space there, then " if "space" in reason.what or "quota" in reason.what else ""
    if results_dir is None or not (results_dir / PROVENANCE).is_file():
        return f"[search] {how}, before the search was saved: {fix}rerun the same command"
    return f"[search] {how} before every trial finished ({table}): {fix}rerun the same command with --resume"


def outcome(rows: list[dict], reason: Reason | None, results_dir: Path, planned: int = 0) -> tuple[int, str | None]:
    """The exit status of a search whose table is `rows` of `planned`, stopped for `reason` (or not), and its closing
    line: 0 only when every trial completed; a stop before every trial finished gives its status; TRIALS_ERRORED when
    the search ran to its end but some trial errored (the summary line says how many and why)."""
    unfinished = [r for r in rows if not r["status"].startswith((*COMPLETED, "error"))]
    if unfinished or len(rows) < planned:
        reason = reason or Reason(FAULT, "Tune ended before every trial finished", False)
        return reason.status, stopped_line(reason, results_dir, "partial results saved")
    if any(r["status"].startswith("error") for r in rows):
        return TRIALS_ERRORED, None
    return 0, None


def experiment_dir(args, preset: str | None) -> Path:
    return Path(args.results).resolve() / (args.experiment or f"{args.search or DEFAULTS['search']}-{preset}")


@contextmanager
def locked(results_dir: Path):
    """One search per experiment (search/store.py), taken before any work: a second one is a one-line error."""
    try:
        with experiment_lock(results_dir.parent, results_dir.name) as stale:
            yield stale
    except LockHeld as e:
        raise user_error(e) from None


def main(argv=None) -> list[dict]:
    """The search, in this process (`python -m search.grid` runs it in a child process that another watches:
    search/supervise.py). Returns the table's rows when every trial completed; otherwise raises SystemExit with the
    exit status, after saying why."""
    args = parse_args(argv)
    stop = Stop(ray_died=lambda: supervise.dead_daemons(supervise.ray_daemons()) or
                "one of Ray's daemons died under the search")
    stop.install()
    supervise.report(ready=True)  # signals can be passed on now
    where = SimpleNamespace(results_dir=None)  # filled in as soon as it is known: the lines below name it
    try:
        with ExitStack() as held:
            with user_errors():  # before Ray starts: a folder that cannot be written fails now, not at the first save
                check_writable(args.results, "--results")
                if args.storage_path:
                    check_writable(args.storage_path, "--storage-path")
            if args.experiment or args.preset:  # the experiment is named without Ray: locked before it starts
                where.results_dir = experiment_dir(args, args.preset)
                held.enter_context(locked(where.results_dir))
            return search(args, argv, stop, held, where)
    except Stopped as e:  # outside Tune's loop (data preparation, the export): nothing half written
        print(stopped_line(e.reason, where.results_dir, "the results table was not rewritten"), file=sys.stderr,
              flush=True)
        raise SystemExit(e.reason.status) from None
    except OSError as e:  # our own writes (provenance, the table) on a full disk
        if not (why := storage_full(e)):
            raise
        reason = Reason(FAULT, f"{why} ({e.filename or 'writing the results'})", False)
        print(stopped_line(reason, where.results_dir, "the results table could not be written"), file=sys.stderr,
              flush=True)
        raise SystemExit(FAULT) from None


def search(args, argv, stop: Stop, held: ExitStack, where: SimpleNamespace) -> list[dict]:
    """main's search, from starting Ray to the table, holding the experiment's lock (`held`)."""
    t_start = time.time()
    plan, settings, data, restore, per_trial = prepare(args, argv, stop, held, where)
    results_dir = where.results_dir
    fit_s = fit(plan, settings, data, restore, per_trial, stop)
    # Tune's own wall time per driver run (a resumed search has several): bench/bench_tune_overhead.py reads it.
    plan = Plan.load(results_dir)
    plan.measured(fit_s=(*plan.fit_s, round(fit_s, 2))).save(results_dir)
    if stop.skip_table:
        print(stopped_line(stop.reason, results_dir, f"the results table was skipped at the second signal; "
                                                     f"python -m search.export {results_dir} writes it"),
              file=sys.stderr, flush=True)
        raise SystemExit(stop.reason.status)
    rows = export(results_dir, data=data)  # the layout was checked before training (stored_search)
    planned = plan.search.points
    print(summary_line(rows, time.time() - t_start, planned))
    for best in (r for r in rows if r["best"]):  # one per family: each is ranked by its own selection metric
        metric = families.get(best.get("family") or DEFAULT_FAMILY).best
        print(f"[search] best: {({k: best[k] for k in settings.grid})} {metric} {best[metric]:.4f}")
    print(f"[search] results: {results_dir}/best_config.md", flush=True)
    status, line = outcome(rows, stop.reason, results_dir, planned)
    if line:
        print(line, file=sys.stderr, flush=True)
    if status:
        raise SystemExit(status)
    return rows


def prepare(args, argv, stop: Stop, held: ExitStack, where: SimpleNamespace) -> tuple:
    """Everything before Tune: Ray started, the experiment locked, the stored or new settings, the resources
    checked, CLIP decided, the data prepared, the plan saved. (plan, settings, data, restore, per-trial resources)"""
    cluster = start_ray(args)
    stop.install()  # ray.init put Ray's own SIGTERM handler (a C++ stack dump, exit 134) in place of ours
    supervise.report(daemons=supervise.ray_daemons(), address=args.address)
    import torch

    has_gpu = cluster["GPU"] > 0 or torch.cuda.is_available()
    preset = args.preset or ("full" if has_gpu else "laptop")
    if where.results_dir is None:
        where.results_dir = experiment_dir(args, preset)
        held.enter_context(locked(where.results_dir))
    results_dir = where.results_dir
    supervise.report(results_dir=str(results_dir))
    plan, ray_experiment, restore = stored_search(args, results_dir)  # compares only the flags given
    for name, value in DEFAULTS.items():
        setattr(args, name, getattr(args, name) or value)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if cluster["GPU"] > 0 else 0.0)
    per_trial = {"cpu": args.cpus_per_trial, "gpu": gpus}
    with user_errors():  # before the data: a trial no node can run would wait forever
        if warning := check_resources(per_trial, *cluster_shape()):
            print(warning, flush=True)
    if plan is not None:
        settings = plan.settings
        # Without a Tune snapshot the driver stopped after writing provenance.json but before any trial ran:
        # the stored search starts from its beginning.
        print(f"[search] resuming {ray_experiment} with its stored settings" if restore else
              f"[search] no Tune snapshot at {ray_experiment} (stopped before any trial ran): starting the stored "
              "search from the beginning", flush=True)
    else:
        with user_errors():
            settings = resolve(preset, config_overrides(args), seeds=args.seeds)
    auto = "" if args.preset or args.resume else f" (auto: {'a' if has_gpu else 'no'} GPU visible to Ray/torch)"
    flags = config_overrides(args) if plan is None else None  # a resumed search runs its stored settings
    print(f"[search] preset {settings.preset}{auto}: {settings.about(flags)}", flush=True)
    if note := retrains_note(settings):
        print(note, flush=True)
    # Before the data: --clip-mode required without weights stops here, not after preprocessing. The driver's
    # loader keeps the weights for the baselines.
    from model.eval.clip import ClipLoader

    clip = check_clip(settings, ClipLoader()) if plan is None else None
    # Prepared once per search, before any trial: the data pipeline never competes with trials for CPUs.
    with user_errors("--data"):
        data = load_data(plan.data_arg if plan is not None else args.data, settings)
    if plan is not None and (why := data_changed(plan, data)):
        raise user_error(f"--resume: {why}")
    print(f"[search] data: {'SYNTHETIC ' if data.info.get('synthetic') else ''}{data.info.get('source')}, "
          f"train/val/test rows {len(data.train)}/{len(data.val)}/{len(data.test)}", flush=True)
    if plan is None:
        with user_errors():
            plan = plan_search(args, argv, Where(results_dir, ray_experiment, cluster, per_trial), settings, data, clip)
        plan.save(results_dir)
    print(f"[search] fused: {plan.search.fuse.reason}", flush=True)
    return plan, settings, data, restore, per_trial


def post_mortem(messages: dict, what: str) -> int:
    """What the supervising process does when the search's driver ended without an exit status of its own
    (search/supervise.py): the table of what the trials saved, and the line saying what happened."""
    results_dir = Path(messages["results_dir"]) if messages.get("results_dir") else None
    reason = Reason(FAULT, what, False)
    if results_dir is None or not (results_dir / PROVENANCE).is_file():
        print(stopped_line(reason, results_dir, ""), file=sys.stderr, flush=True)
        return FAULT
    try:
        with experiment_lock(results_dir.parent, results_dir.name, say=lambda line: None):
            rows = export(results_dir)
    except LockHeld:
        table = f"another search holds the experiment now; python -m search.export {results_dir} writes the table"
    except Exception as e:  # noqa: BLE001 — whatever stops the table, the line below must still be said
        table = (f"the results table could not be written ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                 f"python -m search.export {results_dir} writes it")
    else:
        planned = Plan.load(results_dir).search.points
        print(summary_line(rows, planned=planned))
        print(f"[search] results: {results_dir}/best_config.md", flush=True)
        status, line = outcome(rows, reason, results_dir, planned)
        if line is None:  # it ended after the last trial: nothing was lost
            print(f"[search] {what}, after every trial had finished: the table above is complete", file=sys.stderr,
                  flush=True)
            return status
        table = "partial results saved"
    print(stopped_line(reason, results_dir, table), file=sys.stderr, flush=True)
    return FAULT


if __name__ == "__main__":  # the child the command's own process runs and watches (the top of this file)
    sys.exit(supervise.drive(main))
