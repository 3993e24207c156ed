"""One MLflow run's life, in one place: started with its tags and params, FINISHED when the block ends,
FAILED with the error (tag + traceback artifact) when it raises, KILLED + kdexp.trial_state=PRUNED when an
Optuna trial is pruned, KILLED + kdexp.interrupted when the process is stopped (SIGTERM: a scheduler's
preemption, `kill`; Ctrl-C) so that the same command continues it. A sweep trial's run nests under the
sweep's parent run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

from kdexp.tracking.progress import print_run_start
from kdexp.training.run import RunIdentity, in_trial


def active_trial(conf: Mapping):
    """The running optuna.Trial of a sweep job, or None."""
    if not in_trial(conf):
        return None
    from kdexp.sweep.trial import trial_from_cfg

    return trial_from_cfg(conf)


def trial_callbacks(conf: Mapping) -> list:
    """Lightning callbacks of a sweep trial: report val/acc each epoch, stop when the pruner says so.

    Args:
        conf: the run's config (its `optuna_trial` node).

    Returns:
        [the pruning callback] in a sweep trial, else [].
    """
    trial = active_trial(conf)
    if trial is None:
        return []
    from kdexp.sweep.trial import PruningCallback

    return [PruningCallback(trial, monitor="val/acc")]


INTERRUPTED = "kdexp.interrupted"


def running_run(tracker, tags: Mapping[str, str]) -> str | None:
    """The newest run with these tags that was stopped mid-training: RUNNING (kill -9 leaves it so) or KILLED
    by an interruption (SIGTERM, Ctrl-C); not a failed or pruned one."""
    if tracker.client is None:
        return None
    match = " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = tracker.client.search_runs([tracker.experiment_id], match, max_results=1,
                                      order_by=["attributes.start_time DESC"])
    stopped = runs and (runs[0].info.status == "RUNNING"
                        or (runs[0].info.status == "KILLED" and INTERRUPTED in runs[0].data.tags))
    return runs[0].info.run_id if stopped else None


@contextmanager
def tracked_run(run: RunIdentity, name: str, tags: Mapping[str, str], params: Mapping[str, str] | None = None,
                resume: Mapping[str, str] | None = None, trial: bool = False) -> Iterator[str]:
    """One MLflow run of the experiment `run`, printed with its UI link and its multirun position.

    Args:
        run: the experiment's identity (its tracker, config and multirun position).
        name: the run's name.
        tags, params: the run's tags and params.
        resume: tags of the same training's run, given when a checkpoint of it exists: a RUNNING run with
            them (its process was killed) is continued under its own id, so each trained model has one run,
            its epochs logged once.
        trial: this is the run a sweep trial reports (nested under the sweep's parent run; pruning ends it
            KILLED + PRUNED instead of FAILED).

    Yields:
        The run id.
    """
    tracker, nested = run.tracker, trial and in_trial(run.conf)
    tags = dict(tags)
    if nested:
        from kdexp.sweep.trial import child_run_tags, trial_run_name

        tags.update(child_run_tags(run.conf))
        name = trial_run_name(run.conf, name)  # "trial-007 kd:cnn_tiny": one name per trial in the UI
    run_id = running_run(tracker, resume) if resume else None
    if run_id is not None:
        tracker.set_tags(run_id, {**tags, "kdexp.resumed": "true"})  # a retried sweep trial's number, ...
        tracker.monitor(run_id)
        name = f"{name} (resumed)"
    else:
        run_id = tracker.start(name, tags, dict(params) if params else None)
    if tracker.client is not None:  # rank 0
        print_run_start(run_id, tracker.experiment_id, tracker.uri, name, position=run.position)
        if nested:
            from kdexp.sweep.trial import link_run

            link_run(run.conf, run_id)  # the study's trial -> this run (user attr mlflow_run_id)
    try:
        yield run_id
    except BaseException as exc:
        from kdexp.sweep.trial import end_pruned_run, is_pruned_error

        if nested and is_pruned_error(exc) and tracker.client is not None:
            end_pruned_run(run_id, tracker.client)
        elif isinstance(exc, (SystemExit, KeyboardInterrupt)):  # Lightning turns SIGTERM into SystemExit
            tracker.set_tags(run_id, {INTERRUPTED: type(exc).__name__})
            tracker.finish(run_id, "KILLED")
        else:
            tracker.fail(run_id, exc)
        raise
    tracker.finish(run_id)
