"""The experiment trackers users already run, fed by the search as Ray Tune callbacks.

    tensorboard --logdir results/tune/<experiment>                       # always written (pip install tensorboard)
    python -m search.grid --mlflow-tracking-uri sqlite:///mlflow.db      # pip install -e '.[mlflow]'
    mlflow ui --backend-store-uri sqlite:///mlflow.db                    # (the full `mlflow` package has the UI)

TensorBoard: Ray Tune's default TBXLoggerCallback writes one event file per trial (and one more per
resumed driver) in the trial's folder, every reported number as the scalar `ray/tune/<metric>` at step
training_iteration. Nothing here adds to it.

MLflow: `mlflow_logger` attaches Ray's own MLflowLoggerCallback (ray.air.integrations.mlflow), one
MLflow run per Tune trial in the MLflow experiment named after the search, with four changes:
- `--resume` keeps writing to the same runs. Ray's callback forgets its trial -> run map whenever fit()
  starts, so after Tuner.restore it would open a second run for every unfinished trial; this one first
  looks the trial's run up by its `ray_trial_id` tag.
- metrics are logged at the trial's own epoch (Tune's training_iteration counts a replayed epoch twice),
  in one batch per report (Ray's logs one metric per call: some 200 calls per report of a fused trial).
- a fused trial's member points are params too, `m<k>/<field>`, named as its metrics are (`m<k>/val/l1`).
- the artifact is the trial's last checkpoint (`best_checkpoint/`: it holds each member's best weights),
  not Ray's option of the whole trial folder.
A local `sqlite:///path/mlflow.db` store keeps the artifacts beside the database (`mlartifacts/`), not in
the current directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.analysis import number

TRIAL_TAG = "ray_trial_id"
ARTIFACT = "best_checkpoint"
MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def resolved_uri(uri: str) -> str:
    """A local sqlite URI with its path made absolute, so --resume and a later `mlflow ui` find the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def artifact_location(uri: str) -> str | None:
    """Beside a local sqlite database, else what the tracking server chooses."""
    if uri.startswith("sqlite:////"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def check_mlflow(uri: str) -> None:
    """Before Ray starts: MLflow is installed and the store answers (a bad URI raises ValueError)."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ValueError(f"MLflow is an optional extra, not installed ({e}): pip install -e '.[mlflow]'") from None
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        raise ValueError(f"{uri}: {str(e).splitlines()[0]}") from None


class MLflowLogger(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback, resumable and batched (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_name: str, members: list[dict] | None = None,
                 tags: dict | None = None):
        super().__init__(tracking_uri, experiment_name=experiment_name, tags=tags)
        self.members = members

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def setup(self, *args, **kwargs):
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                      tracking_token=self.tracking_token,
                                      artifact_location=artifact_location(self.tracking_uri))
        self.tags = self.tags or {}
        self._trial_runs = {}

    def params(self, trial) -> dict:
        params = dict(trial.config)
        for k, point in enumerate(self.members or []):
            params.update({f"m{k}/{name}": value for name, value in point.items()})
        return params

    def log_trial_start(self, trial):
        if trial in self._trial_runs:  # a trial retried by this driver (max_failures) goes on in its run
            return
        from mlflow.entities import Param

        client, experiment = self.client(), self.mlflow_util.experiment_id
        found = client.search_runs([experiment], filter_string=f"tags.{TRIAL_TAG} = '{trial.trial_id}'", max_results=1)
        if found:  # a resumed search: the run this trial wrote to before
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {**self.tags, "trial_name": str(trial), TRIAL_TAG: trial.trial_id}
            run_id = client.create_run(experiment, run_name=str(trial), tags=tags).info.run_id
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in self.params(trial).items()])
        self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration, trial, result):
        from mlflow.entities import Metric
        from ray._private.dict import flatten_dict  # what Ray's own callback flattens with (Ray pinned to 2.60)

        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        now = int(time.time() * 1000)
        flat = flatten_dict({k: v for k, v in result.items() if k != "config"}, delimiter="/")
        metrics = [Metric(k, v, now, step) for k, v in ((k, number(v)) for k, v in flat.items()) if v is not None]
        client = self.client()
        for i in range(0, len(metrics), MLFLOW_BATCH):
            client.log_batch(self._trial_runs[trial], metrics=metrics[i:i + MLFLOW_BATCH])

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        client = self.client()
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                client.log_artifacts(run_id, d, artifact_path=ARTIFACT)
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def mlflow_logger(uri: str, plan) -> MLflowLogger:
    """Ray's MLflow callback for a search's Plan (search/store.py): one run per trial, tagged with the experiment."""
    return MLflowLogger(uri, plan.experiment, members=plan.search.fuse.members,
                        tags={"ray_experiment": plan.ray_experiment, "code_version": plan.code_version})
