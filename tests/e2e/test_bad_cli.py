"""Bad input given to the `cluster` command, one row per mistake, across every command.

Each row runs `python -m cluster.cli ...` as a real subprocess (against the session's embedded cluster where a
server is needed) and asserts what a user sees: the documented exit code, an error of one line (``error: ...``,
at most followed by a ``  -> hint`` line), the expected fragment in it, and no traceback.

Exit codes (cluster/errors.py): 2 usage or configuration mistake (argparse's own errors too), 3 a server is down
or refused the credentials, 5 conflict, 6 not found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cluster.settings import Settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]  # the mistake; {placeholders} are filled from the `places` fixture
    code: int  # the documented exit code
    fragment: str  # part of the one-line error
    config: str = "cluster"  # the configuration the command sees: cluster, or one of `places`' config-* files
    in_tmp: bool = False  # run in an empty folder (no .cluster here or above) instead of the cluster's


def row(cmd: str, code: int, fragment: str, config: str = "cluster", in_tmp: bool = False) -> Row:
    return Row(tuple(cmd.split("\x1f")) if "\x1f" in cmd else tuple(cmd.split()), code, fragment, config, in_tmp)


ROWS: list[Row] = [
    # ---- the parser itself ----------------------------------------------------------------------------------
    row("bogus", 2, "invalid choice: 'bogus'"),
    row("runs", 2, "the following arguments are required"),
    row("submit --script train.py", 2, "the following arguments are required: --experiment/-e"),
    row("runs list --limit many", 2, "invalid int value: 'many'"),
    # ---- submit ---------------------------------------------------------------------------------------------
    row("submit -e exp -d {src} -s train.py --max-seconds -5", 2, "max_run_duration_seconds must be positive"),
    row("submit -e exp -d {src} -s train.py --max-seconds 0", 2, "max_run_duration_seconds must be positive"),
    row("submit -e exp -d {src} -s train.py --max-seconds abc", 2, "invalid float value: 'abc'"),
    row("submit -e exp -d {src} -s train.py --max-seconds nan", 2, "must be a finite number"),
    row("submit -e exp -d {src} -s missing.py", 2, "entry script 'missing.py' not found"),
    row("submit -e exp -d {file} -s train.py", 2, "is not a directory"),
    row("submit -e exp -d {src} -s ../train.py", 2, "must be a path inside source_directory"),
    row("submit -e bad/name -d {src} -s train.py", 2, "invalid experiment name 'bad/name'"),
    row("submit -e exp -d {weird} -s train.py", 7, "is not valid UTF-8"),
    row("submit -e exp -d {src} -s train.py --pool gpu/1", 2, "invalid pool name 'gpu/1'"),
    row("submit\x1f-e\x1fexp\x1f-d\x1f{src}\x1f-s\x1ftrain.py\x1f--pip\x1f ", 2, "every entry must be a non-empty"),
    # ---- runs -----------------------------------------------------------------------------------------------
    row("runs list --limit 0", 2, "--limit must be at least 1"),
    row("runs list -e bad/name", 2, "invalid experiment name"),
    row("runs show no-such-run_1_abcdef", 6, "no run with id 'no-such-run_1_abcdef'"),
    row("runs logs no-such-run_1_abcdef", 6, "no run with id"),
    row("runs show a/../b", 2, "invalid run id 'a/../b'"),
    row("runs metrics a/../b", 2, "invalid run id"),
    row("runs files x_1_a extra", 2, "unrecognized arguments: extra"),
    row("runs logs {run_id} -f --after garbage", 2, "invalid log entry 'garbage'"),
    row("runs download {run_id} --prefix ../x", 2, "may not contain '..'"),
    row("runs download {run_id} --prefix nothing/ --dest {tmp}/dl", 6, "has no files under 'nothing/'"),
    row("sweep cancel ../x", 2, "invalid run id '../x'"),
    row("runs cancel no-such-run_1_abcdef", 6, "no run with id"),
    row("runs list --where accuracy", 2, "cannot read --where 'accuracy'"),
    row("runs list --where accuracy>>1", 2, "one comparison only"),
    row("runs list --status Done", 2, "unknown status 'Done'"),
    row("runs list --ascending --descending", 2, "not allowed with argument"),
    row("runs resubmit no-such-run_1_abcdef", 6, "no run with id"),
    row("runs resubmit a/../b", 2, "invalid run id"),
    row("worker --pool p --checkpoint-seconds -1", 2, "--checkpoint-seconds must be 0 or more"),
    row("worker --pool p --checkpoint-seconds nan", 2, "must be a finite number"),
    row("runs download no-such-run_1_abcdef --dest {file}", 2, "is an existing file, not a folder"),
    # ---- models ---------------------------------------------------------------------------------------------
    row("models show no-such-model", 6, "no model named 'no-such-model'"),
    row("models show m --version 0", 2, "model version must be at least 1"),
    row("models show bad/name", 2, "invalid model name"),
    row("models list bad/name", 2, "invalid model name"),
    row("models download no-such-model --dest {file}", 2, "is an existing file, not a folder"),
    # ---- pools, nodes, controller, worker -------------------------------------------------------------------
    row("pools create bad/name", 2, "invalid pool name 'bad/name'"),
    row("pools create p1 --min-nodes 5 --max-nodes 2", 2, "provisioning_configuration: need 0 <= min_nodes"),
    row("pools create p1 --max-nodes 0", 2, "max_nodes must be at least 1"),
    row("pools create p1 --vm-size huge", 2, "unknown node size 'huge'"),
    row("pools create p1 --idle-seconds -1", 2, "idle_seconds_before_scaledown must be at least 0, got -1"),
    row("pools show no-such-pool", 6, "no compute target named 'no-such-pool'"),
    row("pools update no-such-pool --max-nodes 3", 6, "no compute target named"),
    row("pools delete no-such-pool", 6, "no compute target named"),
    row("nodes --watch 0", 2, "--watch must be positive"),
    row("controller --node-lost-seconds 0", 2, "--node-lost-seconds must be positive"),
    row("controller --max-infra-attempts 0", 2, "--max-infra-attempts must be at least 1"),
    row("worker --pool bad/pool", 2, "invalid pool name 'bad/pool'"),
    row("worker --pool p1 --size huge", 2, "unknown node size 'huge'"),
    row("worker --pool p1 --work-dir {file}", 2, "--work-dir"),
    # ---- sweeps ---------------------------------------------------------------------------------------------
    row("sweep submit {tmp}/missing.yml", 2, "cannot read sweep spec"),
    row("sweep submit {badyaml}", 2, "is not valid YAML"),
    row("sweep submit {typo}", 2, "did you mean 'max_total_runs'"),
    row("sweep submit {pipstring}", 2, "got the string 'numpy'"),
    row("sweep submit {nanparam}", 2, "NaN or infinite"),
    row("sweep submit {runs_as_text}", 2, "max_total_runs must be a whole number"),
    row("sweep submit {mountnumber}", 2, "the mount path must be a string, got 3"),
    row("sweep submit {missingdata}", 6, "nothing in datastore 'workspaceblobstore' under 'no-such-folder-x'"),
    row("sweep submit {tagslist}", 2, "tags: the value of 'a' must be a string or a number"),
    row("sweep show no-such-run_1_abcdef", 6, "no run with id"),
    row("sweep list --limit -1", 2, "--limit must be at least 1"),
    # ---- data -----------------------------------------------------------------------------------------------
    row("data upload {file}", 2, "is not a directory"),
    row("data upload {weird}", 2, "its name is not valid UTF-8"),
    row("data upload {src} --target-path ../up", 2, "may not contain '..'"),
    row("data ls ../up", 2, "may not contain '..'"),
    row("data mnist --dest {file}", 2, "exists and is not a directory"),
    # ---- the embedded cluster -------------------------------------------------------------------------------
    row("up --state-dir {tmp}/st --redis-port 70000", 2, "--redis-port must be at most 65535"),
    row("up --state-dir {tmp}/st --workers -1", 2, "--workers must be at least 0"),
    row("up --state-dir {file}", 2, "is an existing file, not a folder"),
    row("status --config {tmp}/missing.json", 2, "no cluster configuration at"),
    row("down", 2, "no embedded cluster state", in_tmp=True),
    # ---- configuration files and credentials ----------------------------------------------------------------
    row("runs list", 2, "no cluster configuration at", config="missing"),
    row("runs list", 2, "cannot read configuration", config="notjson"),
    row("runs list", 3, "rejected the password", config="badpass"),
    row("data ls", 3, "rejected our credentials", config="bads3"),
    row("runs list", 3, "is not reachable", config="noredis"),
    row("data ls", 3, "is not reachable", config="nos3"),
]


@pytest.fixture(scope="module")
def places(cluster_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad-cli")
    src = tmp / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    weird = tmp / "weird"  # a source folder with a file whose name is not UTF-8
    weird.mkdir()
    (weird / "train.py").write_text("print('hi')\n")
    (weird / os.fsdecode(b"r\xe9sum\xe9.txt")).write_text("x")
    afile = tmp / "a-file.txt"
    afile.write_text("not a folder\n")
    base = {"source_directory": str(src), "entry_script": "train.py", "search_space": {"--lr": "uniform(0, 1)"},
            "primary_metric_name": "accuracy", "primary_metric_goal": "maximize", "max_total_runs": 2,
            "experiment": "bad-cli"}
    specs = {
        "badyaml": "experiment: [unclosed\n",
        "typo": json.dumps({**base, "max_total_run": 2}),
        "pipstring": json.dumps({**base, "pip_packages": "numpy"}),
        "nanparam": json.dumps({**base, "script_params": {"--x": float("nan")}}),
        "runs_as_text": json.dumps({**base, "max_total_runs": "ten"}),
        "mountnumber": json.dumps({**base, "arguments": ["--data", {"mount": 3}]}),
        "tagslist": json.dumps({**base, "tags": {"a": [1]}}),
        "missingdata": json.dumps({**base, "script_params": {"--data": {"mount": "no-such-folder-x"}}}),
    }
    out = {"src": str(src), "file": str(afile), "tmp": str(tmp), "weird": str(weird),
           "run_id": _queued_run(settings, src)}
    for key, text in specs.items():
        path = tmp / f"{key}.{'yml' if key == 'badyaml' else 'json'}"
        path.write_text(text)
        out[key] = str(path)
    good = json.loads((cluster_dir / "config.json").read_text())
    parts = urlsplit(settings.redis_url)
    configs = {
        "missing": None,
        "notjson": "{not json",
        "badpass": json.dumps({**good, "redis_url": settings.redis_url.replace(f":{parts.password}@", ":wrong@")}),
        "bads3": json.dumps({**good, "s3_secret_key": "wrong-secret"}),
        "noredis": json.dumps({**good, "redis_url": "redis://:x@127.0.0.1:1/0"}),  # port 1: nothing listens
        "nos3": json.dumps({**good, "s3_endpoint": "127.0.0.1:1"}),
    }
    for key, text in configs.items():
        path = tmp / f"config-{key}.json"
        if text is not None:
            path.write_text(text)
        out[f"config-{key}"] = str(path)
    return out


def _queued_run(settings: Settings, src: Path) -> str:
    """A real run that stays queued (its pool has no node), then is canceled: a run id the CLI can find."""
    from cluster import Experiment, ScriptRunConfig, Workspace

    run = Experiment(Workspace(settings), "bad-cli").submit(ScriptRunConfig(src, "train.py",
                                                                             compute_target="bad-cli-no-node"))
    run.cancel()
    return str(run.id)


def run_cli(argv: list[str], cwd: Path, config: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    if config:
        env["CLUSTER_CONFIG"] = config
    return subprocess.run([sys.executable, "-m", "cluster.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=120, stdin=subprocess.DEVNULL)


def test_the_table_covers_every_command() -> None:
    assert len(ROWS) >= 50
    commands = {r.argv[0] for r in ROWS}
    assert commands >= {"up", "down", "status", "data", "worker", "submit", "runs", "models", "controller", "pools",
                        "nodes", "sweep"}


@pytest.mark.parametrize("row", ROWS, ids=[" ".join(r.argv) + (f" [{r.config}]" if r.config != "cluster" else "")
                                            for r in ROWS])
def test_bad_cli_input(row: Row, places: dict[str, str], cluster_dir: Path) -> None:
    argv = [a.format(**places) for a in row.argv]
    config = None if row.config == "cluster" else places[f"config-{row.config}"]
    cwd = Path(places["tmp"]) if row.in_tmp else cluster_dir.parent  # .cluster/config.json is discovered there
    proc = run_cli(argv, cwd, config)
    shown = f"`cluster {' '.join(argv)}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == row.code, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), shown
    assert all(line.startswith("  -> ") for line in lines[1:]), shown  # one line, at most a hint after it
    assert row.fragment in proc.stderr, shown
