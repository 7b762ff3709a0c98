"""Reading back what trackers wrote: W&B offline run files, TensorBoard event files, an MLflow file store."""

from pathlib import Path

from wandb_reader import read_records, run_file


def _records(run):
    """Records of a W&B run file, given the file or a run's output folder (its newest offline run)."""
    run = Path(run)
    return read_records(run if run.suffix == ".wandb" else run_file(run))


def wandb_steps(run, key: str) -> list[int]:
    """History steps at which `key` (a scalar, or a histogram/image whose fields nest under it) was logged."""
    steps = []
    for record in _records(run):
        if record.WhichOneof("record_type") != "history":
            continue
        keys = {item.key or "/".join(item.nested_key) for item in record.history.item}
        if key in keys or f"{key}/_type" in keys:
            steps.append(record.history.step.num)
    return steps


def wandb_value_type(run, key: str) -> str:
    """The `_type` W&B recorded for a media/histogram key ("histogram", "images/separated", ...)."""
    for record in _records(run):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                if (item.key or "/".join(item.nested_key)) == f"{key}/_type":
                    return item.value_json.strip('"')
    return ""


def wandb_artifacts(run) -> list:
    return [r.artifact for r in _records(run) if r.WhichOneof("record_type") == "artifact"]


def wandb_summary_keys(run) -> set[str]:
    keys = set()
    for record in _records(run):
        if record.WhichOneof("record_type") == "summary":
            keys |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
    return keys


def tensorboard_events(logdir):
    """An EventAccumulator over every event file under `logdir` (nothing sampled away)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}, key=lambda p: len(p.parts))
    accumulator = EventAccumulator(
        str(folders[0]), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def mlflow_run(store: Path):
    """(client, the one run) of an MLflow file store."""
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1, runs
    return client, runs[0]


def mlflow_artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, recursively."""
    found = set()
    for info in client.list_artifacts(run_id, path):
        found |= mlflow_artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found
