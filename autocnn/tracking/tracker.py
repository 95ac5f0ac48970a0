"""MLflow: one parent run per study, one nested run per Optuna trial, through MlflowClient.

The client API is explicit about which run it writes to, so nothing depends on MLflow's
thread-local "active run" stack, and a resumed study finds its parent run again by tag.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autocnn.sqlite import enable_wal, folder_lock, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autocnn.data.cache import DatasetRecord

# The study is the unit a user browses: its parent run is found again on resume by these tags.
ROLE_TAG = "autocnn.role"
STUDY_TAG = "autocnn.study"
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.trial_state"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"  # what mlflow.set_tracking_uri writes for child processes
REASON_TAG = "autocnn.reason"  # why a trial was pruned, failed or interrupted

# Optuna trial state -> MLflow run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}
METRICS_EVERY_S = 2.0  # metrics reach MLflow at most this late (and at every trial's end)
LOG_BATCH_LIMIT = 1000  # MLflow's cap on metrics per log_batch


def default_tracking_uri(root: Path | None = None) -> str:
    """An embedded SQLite store inside ./mlruns (MLflow 3 refuses the plain file store)."""
    folder = (root or Path.cwd() / "mlruns").resolve()
    return f"sqlite:///{folder / 'mlflow.db'}"


class Tracker:
    """Writes a study and its trials to one MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        import mlflow

        db = sqlite_path(tracking_uri)
        self.tracking_uri = tracking_uri
        # MLflow makes and migrates an SQLite store's tables when the client opens it.
        with folder_lock(db.parent) if db is not None else contextlib.nullcontext():
            if db is not None:
                enable_wal(db)
            self._client: MlflowClient = mlflow.MlflowClient(tracking_uri)  # used by this class alone
            self.experiment_id = self._experiment_id(experiment, db)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []
        self._unsent: dict[str, list[Any]] = {}  # run id -> metrics not yet queued
        self._last_sent = -float("inf")

    def _experiment_id(self, name: str, db: Path | None) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self._client.restore_experiment(found.experiment_id)
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        location = (db.parent / "artifacts").as_uri() if db is not None else None
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except MlflowException:
            found = self._client.get_experiment_by_name(name)  # another worker created it just now
            if found is None:
                raise
            return found.experiment_id

    # ---------------------------------------------------------------- the study's parent run

    def find_study_run(self, study: str) -> Any | None:
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def final_runs(self, study: str, *, limit: int = 10) -> list[Any]:
        """The study's finished `final` runs (what `autocnn finalize` shipped), newest first."""
        return self._client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{ROLE_TAG}` = 'final' and tags.`{STUDY_TAG}` = '{study}' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=limit,
        )

    def open_study_run(self, study: str, *, spec_text: str, storage: str) -> str:
        """Reuse the study's parent run (resume) or create it; the spec is its artifact."""
        run = self.find_study_run(study)
        if run is not None and self.reopen_study_run(run.info.run_id, spec_text=spec_text):
            return run.info.run_id
        tags = {ROLE_TAG: "study", STUDY_TAG: study, "mlflow.runName": study, "optuna.storage": storage}
        run_id = self._client.create_run(self.experiment_id, run_name=study, tags=tags).info.run_id
        self._client.log_text(run_id, spec_text, "spec.yaml")
        return run_id

    def reopen_study_run(self, run_id: str, *, spec_text: str) -> bool:
        """Mark the study's parent run RUNNING again; False when this tracking server does not hold
        it in the study's experiment (deleted, or the study moved to another server)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return False
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        self._client.log_text(run_id, spec_text, "spec.yaml")
        return True

    def close_study_run(self, run_id: str, summary: dict[str, Any], *, status: str = "FINISHED") -> None:
        from mlflow.entities import Metric

        self.flush()
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if isinstance(v, (int, float))]
        self._client.log_batch(run_id, metrics=metrics)
        for key, value in summary.items():
            if not isinstance(value, (int, float)):
                self._client.set_tag(run_id, f"autocnn.{key}", str(value))
        self._client.set_terminated(run_id, status=status)

    # ---------------------------------------------------------------- trial runs

    def start_trial(self, parent_id: str, number: int, params: dict[str, Any], config: dict[str, Any]) -> str:
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": parent_id,
            "mlflow.runName": f"trial-{number}",
            TRIAL_TAG: str(number),
            STATE_TAG: "RUNNING",
            ROLE_TAG: "trial",
            "autocnn.model": str(params.get("model", "")),
        }
        run_id = self._client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags).info.run_id
        self._client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        return run_id

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Gathered, then sent every METRICS_EVERY_S seconds at most by a writer thread.

        A log_batch is 10-20 ms of CPU whatever its size: 2-4% of a short epoch waited on, and
        still 5% of a 0.3 s epoch when a writer thread sent one per epoch on 2 cores. `flush`
        (called by `end_trial` and `close_study_run`) sends the rest and waits, so a closed run
        holds all its metrics.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._unsent.setdefault(run_id, []).extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_sent >= METRICS_EVERY_S:
            self._send_unsent()

    def _send_unsent(self) -> None:
        self._last_sent = time.monotonic()
        unsent, self._unsent = self._unsent, {}
        if not unsent:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autocnn-mlflow")
        for run_id, metrics in unsent.items():
            for start in range(0, len(metrics), LOG_BATCH_LIMIT):
                chunk = metrics[start : start + LOG_BATCH_LIMIT]
                self._pending.append(self._writer.submit(self._client.log_batch, run_id, metrics=chunk))

    def flush(self) -> None:
        """Send what is gathered and wait until every metric is stored; a failed write raises here."""
        self._send_unsent()
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def log_dataset(self, run_id: str, record: DatasetRecord, *, context: str = "training") -> None:
        """The dataset as the run's input; logging the same one again (a resume) adds nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        meta = _meta_dataset(record)
        entity = Dataset(**meta.to_dict(), profile=json.dumps(record.profile))
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        self._client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])

    def dataset_inputs(self, run_id: str) -> list[dict[str, Any]]:
        """A run's dataset inputs as MLflow stores them: name, digest, source, profile, context."""
        inputs = self._client.get_run(run_id).inputs
        return [
            {
                "name": i.dataset.name,
                "digest": i.dataset.digest,
                "source_type": i.dataset.source_type,
                "source": json.loads(i.dataset.source),
                "profile": json.loads(i.dataset.profile) if i.dataset.profile else None,
                "tags": {t.key: t.value for t in i.tags},
            }
            for i in (inputs.dataset_inputs if inputs is not None else [])
        ]

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(run_id, key, str(value))

    def log_facts(self, run_id: str, facts: dict[str, Any]) -> None:
        """One-off numbers about a trial (parameter counts, sizes), as step-0 metrics."""
        self.log_epoch(run_id, {k: float(v) for k, v in facts.items()}, step=0)

    def end_trial(self, run_id: str, state: str, *, reason: str | None = None) -> None:
        """Close a trial run with the tag and status matching its Optuna state."""
        self.flush()
        self._client.set_tag(run_id, STATE_TAG, "FAIL" if state == "INTERRUPTED" else state)
        if reason:
            self._client.set_tag(run_id, REASON_TAG, reason[:5000])
            self._client.log_text(run_id, reason, "reason.txt")
        self._client.set_terminated(run_id, status=RUN_STATUS[state])

    def close_orphan(self, run_id: str, reason: str) -> bool:
        """End a run whose trial ended without it; False when another worker closed it first.

        Every worker closes orphans after each trial, so two may close the same run at once: the
        second's tag insert then collides with the first's (a duplicate key on a database-backed
        server). The run is read again: closed means done, still open means one more try.
        """
        from mlflow.exceptions import MlflowException

        try:
            self.end_trial(run_id, "INTERRUPTED", reason=reason)
        except MlflowException:
            if self._client.get_run(run_id).info.status != "RUNNING":
                return False
            self.end_trial(run_id, "INTERRUPTED", reason=reason)
        return True

    def log_figure(self, run_id: str, figure: Any, path: str) -> None:
        self._client.log_figure(run_id, figure, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self._client.log_text(run_id, text, path)

    def log_dict(self, run_id: str, data: dict[str, Any], path: str) -> None:
        self._client.log_dict(run_id, data, path)

    def log_state_dict(self, run_id: str, state: dict[str, Any], path: str = "weights") -> None:
        """Weights as a plain state_dict artifact: milliseconds, loadable with weights_only=True."""
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "state_dict.pt"
            torch.save(state, file)
            self._client.log_artifact(run_id, str(file), path)

    def load_state_dict(self, run_id: str, path: str = "weights/state_dict.pt") -> dict[str, Any]:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, path, tmp)
            return torch.load(local, map_location="cpu", weights_only=True)

    def log_array(self, run_id: str, array: Any, path: str) -> None:
        """A numpy array as a `.npy` artifact (no pickle: it loads with allow_pickle=False)."""
        import numpy as np

        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / name
            np.save(file, np.asarray(array), allow_pickle=False)
            self._client.log_artifact(run_id, str(file), folder or None)

    def load_array(self, run_id: str, path: str) -> Any:
        import numpy as np

        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, path, tmp)
            return np.load(local, allow_pickle=False)

    def log_model(self, run_id: str, model: Any, *, name: str = "model") -> str:
        """The study's best weights as an MLflow model (pickle keeps the class; no pip inference)."""
        import warnings

        import mlflow
        import mlflow.pytorch

        pickle_notice = logging.getLogger("mlflow.pytorch")
        level = pickle_notice.level
        pickle_notice.setLevel(logging.ERROR)  # the model is ours; the pickle caution is noise here
        with warnings.catch_warnings(), self._fluent_api(), mlflow.start_run(run_id=run_id):
            warnings.simplefilter("ignore")
            try:
                info = mlflow.pytorch.log_model(
                    model.cpu().eval(),
                    name=name,
                    serialization_format="pickle",
                    pip_requirements=["torch", "timm", "autocnn"],
                )
            finally:
                pickle_notice.setLevel(level)
        return info.model_uri

    @contextlib.contextmanager
    def _fluent_api(self) -> Iterator[None]:
        """MLflow's model logging and registry calls read the process-wide tracking URI: point it at
        this tracker's store for the call only, and put the caller's back afterwards.

        `set_tracking_uri` also writes MLFLOW_TRACKING_URI into the environment, which child
        processes inherit: setting back the URI `get_tracking_uri` resolves would pin an unset one to
        this directory's default store for every later subprocess. MLflow's own helper restores
        the unset state; the variable is then put back as the caller had it.
        """
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        variable = os.environ.get(TRACKING_URI_VARIABLE)
        try:
            with _use_tracking_uri(self.tracking_uri):
                yield
        finally:
            if variable is None:
                os.environ.pop(TRACKING_URI_VARIABLE, None)
            else:
                os.environ[TRACKING_URI_VARIABLE] = variable

    def start_final_run(self, parent_id: str | None, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The run of a finalized model, nested under the study's run when there is one."""
        from mlflow.entities import Param

        tags = tags | ({"mlflow.parentRunId": parent_id} if parent_id is not None else {})
        run_id = self._client.create_run(self.experiment_id, run_name="final", tags=tags).info.run_id
        self._client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id

    def end_run(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status=status)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self._client.get_run(run_id).data.tags)

    def log_artifact(self, run_id: str, path: Path, folder: str) -> None:
        """A file, or a whole folder's contents, under `folder` in the run's artifacts."""
        if path.is_dir():
            self._client.log_artifacts(run_id, str(path), folder)
        else:
            self._client.log_artifact(run_id, str(path), folder)

    def download_artifact(self, run_id: str, path: str, into: Path) -> Path:
        return Path(self._client.download_artifacts(run_id, path, str(into)))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in step order."""
        return sorted((int(m.step), float(m.value)) for m in self._client.get_metric_history(run_id, key))

    def trial_runs(self, parent_id: str) -> list[Any]:
        return self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=50000,
        )

    def register_model(self, model_uri: str, name: str, *, tags: dict[str, str] | None = None) -> str:
        """Register a logged model in the Model Registry; returns its new version number."""
        import io

        import mlflow

        with contextlib.redirect_stderr(io.StringIO()), self._fluent_api():  # no 'Created version' lines
            version = mlflow.register_model(model_uri, name, tags=tags)
        return str(version.version)


def _meta_dataset(record: DatasetRecord) -> Any:
    """MLflow's description of data it does not hold: a local folder, or code for a bundled set."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    if record.local:  # by type: resolving a path finds two local sources (file: and none) and warns
        source = get_dataset_source_from_json(json.dumps({"uri": record.source}), source_type="local")
    else:
        source = CodeDatasetSource({"loader": record.source})
    return MetaDataset(source, name=record.name, digest=record.digest)
