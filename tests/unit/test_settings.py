from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import DataReference, Workspace
from cluster.cli import main
from cluster.errors import ConfigError, PayloadError, UsageError
from cluster.settings import Settings

GOOD = {"redis_url": "redis://:pw@127.0.0.1:1/0", "s3_endpoint": "127.0.0.1:2", "s3_access_key": "ak",
        "s3_secret_key": "supersecret"}


def test_discovers_config_in_parent(tmp_path: Path) -> None:
    (tmp_path / ".cluster").mkdir()
    (tmp_path / ".cluster" / "config.json").write_text(json.dumps(GOOD | {"workspace_name": "w1"}))
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    s = Settings.discover(cwd=deep, environ={})
    assert s.workspace_name == "w1" and s.source.endswith("config.json")


def test_env_vars_and_explicit_path(tmp_path: Path) -> None:
    env = {"CLUSTER_REDIS_URL": GOOD["redis_url"], "CLUSTER_S3_ENDPOINT": "h:9", "CLUSTER_S3_ACCESS_KEY": "a",
           "CLUSTER_S3_SECRET_KEY": "b", "CLUSTER_S3_SECURE": "true"}
    s = Settings.discover(cwd=tmp_path, environ=env)
    assert s.s3_secure is True and s.s3_url == "https://h:9"
    p = tmp_path / "my.json"
    p.write_text(json.dumps(GOOD))
    assert Settings.discover(p, environ=env).s3_endpoint == "127.0.0.1:2"


def test_nothing_found_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cluster up"):
        Settings.discover(cwd=tmp_path, environ={})
    with pytest.raises(ConfigError, match="lacks s3_secret_key"):
        Settings.from_dict({k: v for k, v in GOOD.items() if k != "s3_secret_key"})


def test_azure_config_json_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"subscription_id": "x", "workspace_name": "y"}))
    with pytest.raises(ConfigError):
        Settings.discover(cwd=tmp_path, environ={})


def test_secrets_masked() -> None:
    s = Settings.from_dict(GOOD)
    assert "supersecret" not in repr(s) and ":pw@" not in repr(s)
    assert s.redis_url_masked == "redis://:****@127.0.0.1:1/0"


def test_workspace_from_config_has_no_side_effects(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(GOOD | {"workspace_name": "w"}))
    ws = Workspace.from_config(p)
    assert ws.name == "w"
    assert ws.get_default_datastore().container_name == "datastore"


def test_data_reference_validation() -> None:
    with pytest.raises(UsageError):
        DataReference("ds", "../etc")
    with pytest.raises(UsageError):
        DataReference("ds", "x", mode="stream")
    with pytest.raises(PayloadError):
        DataReference.from_dict({"kind": "other"})
    r = DataReference("ds").path("mnist").path("train")
    assert r.path_on_datastore == "mnist/train"


def test_cli_prints_cause_not_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CLUSTER_CONFIG", "CLUSTER_REDIS_URL", "CLUSTER_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no cluster configuration") and "Traceback" not in err
    assert main(["down"]) == 2
