"""Where everything lives: the object-store layout and the Redis key names, in one place.

Object store (the system of record; browse it in the MinIO console or with any S3 client)::

    <data bucket>/                               the default datastore ("workspaceblobstore")
        mnist/train-images-idx3-ubyte.gz         ds.upload(src_dir='./data', target_path='mnist')
    <cluster bucket>/
        snapshots/<sha256>.tar.gz                source directories, content-addressed
        snapshots/<sha256>.json                  manifest: files, sizes, digests
        experiments/<experiment>/runs/<run_id>/
            spec.json                            what to run (written once, at submit)
            run.json                             the run record: status, timestamps, attempt, node, error,
                                                 and ``committed``: the attempt whose files are the result
            attempts/<n>/                        everything attempt n wrote, in its own folder:
                metrics.json                     every logged metric, in order
                logs/driver.log                  stdout+stderr of the entry script, complete
                logs/...                         anything the script wrote to ./logs
                outputs/...                      anything the script wrote to ./outputs
            children/<child_run_id>/...          a sweep's child runs, same shape as a run
        index/runs/<run_id>                      one line: the run's prefix (find a run by id alone)
        index/live/<run_id>                      the same, only while the run is not final: what recovery reads
        index/ui/experiments/<experiment>.json   the dashboard's run summaries (a cache, rebuilt when missing)
        models/<name>/<version>/model.json       a registered model version: sha256, tags, source run
        models/<name>/<version>/files/...        its files
        pools/<name>.json                        a compute target (node pool) definition
        index/sweeps/all/<parent_id>             every sweep (its prefix); index/sweeps/active/<id>: not ended
        a sweep parent's folder also holds       sweep.json (its spec), summary.json, cancel.json,
                                                 intents/<index>.json (a child's parameters, before submit),
                                                 children/<id>/stopped.json (an early-termination decision)

Redis (broker and the live path; losing it never loses a finished run)::

    cluster:run:<id>                  hash: live status, attempt, node, lease token
    cluster:run:<id>:log              stream: stdout/stderr lines while the run runs
    cluster:run:<id>:metrics          stream: metric events while the run runs
    cluster:run:<id>:lease            string with TTL: "<node>/<attempt>", the fencing token
    cluster:node:<name>               hash: pool, state, current run, last heartbeat
    cluster:nodes                     set of known node names
    cluster:models:<name>:version     counter for model versions
    cluster:telemetry:runs            stream: a run's final status or node-lost requeue (read by the metrics)
    cluster:pool:<name>:status        string: what the controller last published for a pool (JSON)
    cluster:pool:<name>:events        list: the pool's recent scaling events (JSON, newest first)
    cluster:controller:leader         string with TTL: the leading controller's identity
    cluster:sweeps:active             set of sweep parents the controller drives; cluster:sweeps:synced: rebuilt
    cluster:sweep:<id>:lock           string with TTL: the controller process driving that sweep
    celery queue per pool             "pool.<name>"
"""

from __future__ import annotations

import re

from cluster.errors import UsageError

DATA_BUCKET = "datastore"
CLUSTER_BUCKET = "cluster"
DEFAULT_DATASTORE = "workspaceblobstore"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, name: str) -> str:
    """Validate a user-chosen name (experiment, model, pool) so it is safe as a path segment."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid {kind} name {name!r}",
            hint="use 1-128 characters from letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


# ---- object store -------------------------------------------------------------------------------

def snapshot_key(digest: str) -> str:
    return f"snapshots/{digest}.tar.gz"


def snapshot_manifest_key(digest: str) -> str:
    return f"snapshots/{digest}.json"


def run_prefix(experiment: str, run_id: str, parent_prefix: str | None = None) -> str:
    """The folder of one run; a sweep's children live under their parent."""
    if parent_prefix:
        return f"{parent_prefix}{CHILDREN_DIR}{run_id}/"
    return f"{experiment_runs_prefix(experiment)}{run_id}/"


def experiment_runs_prefix(experiment: str) -> str:
    return f"{EXPERIMENTS}{experiment}/runs/"


def run_index_key(run_id: str) -> str:
    return f"index/runs/{run_id}"


#: runs that are not final (written at submit, removed by the controller once the run's record is final): after a
#: Redis wipe the controller re-seeds these, not every run ever stored
LIVE_INDEX = "index/live/"
#: written once the controller indexed the runs stored before the live index existed (a one-time full scan)
LIVE_INDEX_COMPLETE = "index/live.complete"


#: Redis set of runs that became final; the controller drops them from the live index (then from this set)
RK_FINISHED = "cluster:runs:finished"


def rk_active(pool: str) -> str:
    """Set of run ids not yet final, per pool (queued + running): what the autoscaler counts."""
    return f"cluster:pool:{pool}:active"


#: absent after a Redis wipe: the controller then recovers queued and running runs from the object store
RK_EPOCH = "cluster:epoch"
EXPERIMENTS = "experiments/"


def live_index_key(run_id: str) -> str:
    return f"{LIVE_INDEX}{run_id}"


def attempt_dir(attempt: int) -> str:
    """An attempt's own folder inside its run's folder. Only the committed attempt's folder is visible through
    the SDK; a stale attempt (fenced out) may leave a partial folder that nothing reads."""
    return f"attempts/{int(attempt)}/"


RUN_SPEC = "spec.json"
RUN_RECORD = "run.json"
RUN_METRICS = "metrics.json"
RUN_DRIVER_LOG = "logs/driver.log"
OUTPUTS_DIR = "outputs"
LOGS_DIR = "logs"


MODELS_PREFIX = "models/"
MODEL_RECORD = "model.json"
MODEL_FILES_DIR = "files/"


def model_prefix(name: str, version: int | None = None) -> str:
    return f"{MODELS_PREFIX}{name}/" if version is None else f"{MODELS_PREFIX}{name}/{version}/"


POOLS_PREFIX = "pools/"


def pool_key(name: str) -> str:
    return f"{POOLS_PREFIX}{name}.json"


# a sweep: files in its parent run's folder, and two indexes
SWEEP_SPEC = "sweep.json"
SWEEP_SUMMARY = "summary.json"
SWEEP_CANCEL = "cancel.json"
SWEEP_STOPPED = "stopped.json"  # in a child's folder
SWEEP_INTENTS_DIR = "intents/"
CHILDREN_DIR = "children/"
ALL_SWEEPS_PREFIX = "index/sweeps/all/"
ACTIVE_SWEEPS_PREFIX = "index/sweeps/active/"


def ui_index_key(experiment: str) -> str:
    """The dashboard's summary of an experiment's runs (rebuilt from the run records when missing)."""
    return f"index/ui/experiments/{experiment}.json"


def sweep_intent_key(parent_prefix: str, index: int) -> str:
    return f"{parent_prefix}{SWEEP_INTENTS_DIR}{index:06d}.json"


# ---- redis --------------------------------------------------------------------------------------

def rk_run(run_id: str) -> str:
    return f"cluster:run:{run_id}"


def rk_run_log(run_id: str) -> str:
    return f"cluster:run:{run_id}:log"


def rk_run_metrics(run_id: str) -> str:
    return f"cluster:run:{run_id}:metrics"


def rk_run_lease(run_id: str) -> str:
    return f"cluster:run:{run_id}:lease"


def rk_node(name: str) -> str:
    return f"cluster:node:{name}"


RK_NODES = "cluster:nodes"
#: a list the submitter pushes to (trimmed to one entry): the controller's wait for its next tick ends at once
RK_CONTROLLER_WAKE = "cluster:controller:wake"


def finished_ttl_seconds() -> int:
    """How long Redis keeps a finished run's keys (hash, log and metrics streams) after its archive is written:
    readers then use the object store. ``CLUSTER_FINISHED_TTL_SECONDS`` (read by the node) changes it; the
    500-run soak (bench/soak.py) sets it short to show Redis memory levelling off."""
    import os

    raw = os.environ.get("CLUSTER_FINISHED_TTL_SECONDS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 3600


def rk_model_version(name: str) -> str:
    return f"cluster:models:{name}:version"


def queue_name(pool: str) -> str:
    return f"pool.{pool}"


#: Stream of run transitions the metrics count (a final status, a requeue after node loss), capped.
RK_RUN_EVENTS = "cluster:telemetry:runs"
RUN_EVENTS_MAXLEN = 10_000

RK_CONTROLLER_LEADER = "cluster:controller:leader"


def rk_pool_status(pool: str) -> str:
    return f"cluster:pool:{pool}:status"


def rk_pool_events(pool: str) -> str:
    return f"cluster:pool:{pool}:events"


RK_SWEEPS_ACTIVE = "cluster:sweeps:active"
RK_SWEEPS_SYNCED = "cluster:sweeps:synced"


def rk_sweep_lock(parent_id: str) -> str:
    return f"cluster:sweep:{parent_id}:lock"

# ---- environments, run checkpoints, run tags and properties (issue 13) -------------------------------

def environment_key(name: str, version: int | None = None) -> str:
    """``environments/<name>/<version>.json``: a registered Environment (``environments/<name>/`` lists them)."""
    return f"environments/{name}/" if version is None else f"environments/{name}/{version}.json"


def checkpoint_prefix(run_prefix: str) -> str:
    """``<run prefix>checkpoints/``: the last uploaded ./outputs/checkpoints of a run, shared by its attempts (a
    retried attempt starts from it), plus ``checkpoints.json`` beside it: which attempt uploaded what, when."""
    return f"{run_prefix}checkpoints/"


def checkpoint_manifest_key(run_prefix: str) -> str:
    return f"{run_prefix}checkpoints.json"


#: tags and properties set after submit (``run.tag``, ``run.add_properties``): objects of their own beside
#: run.json, so they never race the node's fenced record writes
RUN_TAGS = "tags.json"
RUN_PROPERTIES = "properties.json"
#: what the node recorded about the run's environment: ``pip freeze`` of the Python it ran with
RUN_ENVIRONMENT = "environment.json"


def rk_environment_version(name: str) -> str:
    """Counter for environment versions (reconciled with the object store, like models')."""
    return f"cluster:environments:{name}:version"
