"""A client rides through a server restart: transient errors are retried, real ones are not."""

from __future__ import annotations

import time

import pytest
import redis

from cluster import run as run_module
from cluster.errors import CredentialsError, ServiceError


def test_transient_errors_are_retried_until_the_server_answers() -> None:
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise redis.ConnectionError("Connection refused") if len(calls) == 1 else ServiceError("S3 down")
        return "ok"

    assert run_module._ride_through(flaky, None) == "ok"
    assert len(calls) == 3


def test_credentials_and_other_errors_reach_the_caller_at_once() -> None:
    calls = []

    def wrong_password() -> None:
        calls.append(1)
        raise CredentialsError("rejected")

    with pytest.raises(CredentialsError):
        run_module._ride_through(wrong_password, None)
    with pytest.raises(ValueError):
        run_module._ride_through(lambda: int("x"), None)
    assert calls == [1]


def test_the_callers_deadline_bounds_the_retries() -> None:
    def down() -> None:
        raise redis.ConnectionError("Connection refused")

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        run_module._ride_through(down, time.monotonic() + 0.5)
    assert time.monotonic() - started < run_module.RIDE_THROUGH_SECONDS
