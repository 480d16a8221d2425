"""Every error a user can cause, under one base class.

Each message says what went wrong and what to do about it. Client errors (redis, minio,
OS errors) are wrapped with ``raise ... from e`` so the cause stays visible in a traceback
while the CLI prints only the message.
"""

from __future__ import annotations


class ClusterError(Exception):
    """Base class of every error this project raises on purpose.

    ``exit_code`` is what the CLI exits with when this error reaches it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  -> {hint}")


class ConfigError(ClusterError):
    """No usable configuration: missing, unreadable or incomplete config file / environment."""

    exit_code = 2


class UsageError(ClusterError):
    """Bad input from the user: a wrong argument, a value out of range, a bad path."""

    exit_code = 2


class ServiceError(ClusterError):
    """A server (Redis, the object store) is down, unreachable or refused us."""

    exit_code = 3


class BrokerFullError(ServiceError):
    """Redis reached its memory limit and refuses new runs (it never evicts live state)."""


class CredentialsError(ServiceError):
    """A server answered but rejected our credentials."""


class TLSError(ServiceError):
    """A server's certificate is not trusted (this host lacks the cluster's CA), or TLS is misconfigured."""


class PortInUseError(ServiceError):
    """A port the embedded cluster wants is taken by another process."""


class MissingBinaryError(ServiceError):
    """A server binary (redis-server, weed, minio) could not be found."""


class DataError(ClusterError):
    """Data is corrupt, truncated or fails its checksum."""

    exit_code = 4


class ConflictError(ClusterError):
    """The operation would overwrite something that differs (use overwrite=True / --overwrite)."""

    exit_code = 5


class NotFoundError(ClusterError):
    """A named thing (run, experiment, model, pool, file) does not exist."""

    exit_code = 6


class SnapshotError(ClusterError):
    """A source directory could not be packaged, or a snapshot is unsafe to extract."""

    exit_code = 7


class RunFailedError(ClusterError):
    """A run ended Failed while the caller waited for it with ``raise_on_error=True``."""

    exit_code = 8


class PayloadError(ClusterError):
    """A stored record or message does not have the shape we expect (corrupt or from another version)."""

    exit_code = 9


class TransitionError(ClusterError):
    """A status change the run state machine (``records.TRANSITIONS``) does not allow: a bug, or a stale writer."""

    exit_code = 9


class WaitTimeoutError(ClusterError):
    """Waiting for something took longer than the caller allowed."""

    exit_code = 10


class ComputeTargetException(NotFoundError):
    """No compute target (node pool) by that name: ``ComputeTarget(workspace=ws, name=...)`` or a pool command.

    Named as in Azure ML, so ``try: ComputeTarget(workspace=ws, name=n) except ComputeTargetException:`` works.
    """


class IgnoredArgumentWarning(UserWarning):
    """An Azure ML argument with no meaning on this cluster (``use_gpu``, ``vm_priority``, ...) was given and is
    ignored: one warning per argument. The list per call is in docs/porting.md."""
