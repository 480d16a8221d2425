"""The object store (MinIO or any S3 server), through the ``minio`` client, with our errors."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import urllib3
from minio import Minio
from minio.error import S3Error

from cluster.errors import ConfigError, CredentialsError, NotFoundError, PayloadError, ServiceError, TLSError
from cluster.settings import Settings

SHA256_META = "sha256"
_AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    sha256: str | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ObjectStore:
    """One bucket of the object store. Keys are the layout's paths (see :mod:`cluster.layout`)."""

    def __init__(self, settings: Settings, bucket: str, *, client: Minio | None = None) -> None:
        self.settings = settings
        self.bucket = bucket
        self.client = client or make_client(settings)

    # -- errors -----------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except S3Error as e:
            if e.code in _AUTH_CODES:
                raise CredentialsError(
                    f"the object store at {self.settings.s3_endpoint} rejected our credentials ({e.code}) "
                    f"while trying to {what}",
                    hint=f"check the access/secret key in {self.settings.source or 'the configuration'}; "
                    "for the embedded cluster run `cluster status`",
                ) from e
            if e.code in _MISSING_CODES:
                raise NotFoundError(f"{what}: {self.bucket}/{e.object_name or ''} does not exist ({e.code})") from e
            raise ServiceError(f"the object store failed to {what}: {e.code}: {e.message}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
                raise
            from cluster.tls import is_certificate_error

            if is_certificate_error(e):
                from cluster.redisclient import TLS_HINT

                raise TLSError(f"the object store at {self.settings.s3_url} presented a certificate this host "
                               f"does not trust (while trying to {what})", hint=TLS_HINT) from e
            raise ServiceError(
                f"the object store at {self.settings.s3_url} is not reachable (while trying to {what}): "
                f"{type(e).__name__}",
                hint="start the cluster with `cluster up`, or check CLUSTER_S3_ENDPOINT / the config file",
            ) from e

    # -- buckets ----------------------------------------------------------------------------------
    def ensure_bucket(self) -> bool:
        with self._errors(f"create bucket {self.bucket}"):
            if self.client.bucket_exists(self.bucket):
                return False
            self.client.make_bucket(self.bucket)
            return True

    def ping(self) -> None:
        with self._errors("check that the bucket exists"):
            if not self.client.bucket_exists(self.bucket):
                raise NotFoundError(
                    f"bucket {self.bucket!r} does not exist on {self.settings.s3_endpoint}",
                    hint="`cluster up` creates it",
                )

    # -- objects ----------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        meta: dict[str, str | list[str] | tuple[str]] = {SHA256_META: hashlib.sha256(data).hexdigest()}
        with self._errors(f"write {key}"):
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type,
                                   metadata=meta)

    def put_many(self, items: Iterable[tuple[str, bytes, str]]) -> None:
        """Write several small objects ``(key, data, content type)`` concurrently; raises the first error
        after all writes ended (none is left running)."""
        todo = list(items)
        if len(todo) <= 1:
            for key, data, ctype in todo:
                self.put_bytes(key, data, content_type=ctype)
            return
        with ThreadPoolExecutor(max_workers=min(4, len(todo)), thread_name_prefix="s3-put") as pool:
            futures = [pool.submit(self.put_bytes, key, data, content_type=ctype) for key, data, ctype in todo]
        for f in futures:
            f.result()

    def put_json(self, key: str, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode()
        self.put_bytes(key, data, content_type="application/json")

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None:
        meta: dict[str, str | list[str] | tuple[str]] = {SHA256_META: sha256 or file_sha256(path)}
        with self._errors(f"upload {path} to {key}"):
            self.client.fput_object(self.bucket, key, str(path), metadata=meta)

    def put_stream(self, key: str, fh: BinaryIO, size: int) -> None:
        """Upload ``size`` bytes of an open, seekable file (hashed first, then sent from the start)."""
        h = hashlib.sha256()
        left = size
        while left > 0 and (chunk := fh.read(min(left, 1024 * 1024))):
            h.update(chunk)
            left -= len(chunk)
        fh.seek(0)
        meta: dict[str, str | list[str] | tuple[str]] = {SHA256_META: h.hexdigest()}
        with self._errors(f"upload {key}"):
            self.client.put_object(self.bucket, key, fh, size - left, metadata=meta)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(f"read {key}"):
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise PayloadError(f"{self.bucket}/{key} is not valid JSON: {e}") from e

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with self._errors(f"download {key}"):
            self.client.fget_object(self.bucket, key, str(tmp))
        tmp.replace(path)

    def stat(self, key: str) -> ObjectInfo | None:
        """Size, etag and stored sha256 of one object, or None if absent."""
        try:
            with self._errors(f"look up {key}"):
                st = self.client.stat_object(self.bucket, key)
        except NotFoundError:
            return None
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{SHA256_META}")
        return ObjectInfo(key=key, size=st.size or 0, etag=(st.etag or "").strip('"'), sha256=sha)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[ObjectInfo]:
        with self._errors(f"list {prefix or '/'}"):
            return [
                ObjectInfo(key=o.object_name or "", size=o.size or 0, etag=(o.etag or "").strip('"'))
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
                if o.object_name and not o.is_dir
            ]

    def has_prefix(self, prefix: str) -> bool:
        """Is there at least one object under ``prefix``? (One small request, whatever the folder's size.)"""
        with self._errors(f"list {prefix or '/'}"):
            return any(o.object_name and not o.is_dir
                       for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """Immediate 'sub-folders' under a prefix (names only)."""
        with self._errors(f"list {prefix}"):
            names = [o.object_name or "" for o in self.client.list_objects(self.bucket, prefix=prefix)
                     if o.is_dir]
        return [n[len(prefix):].rstrip("/") for n in names]

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key}"):
            self.client.remove_object(self.bucket, key)

    def copy(self, source: str, key: str) -> None:
        """Copy an object inside the bucket, server side (its stored sha256 goes with it)."""
        from minio.commonconfig import CopySource

        with self._errors(f"copy {source} to {key}"):
            self.client.copy_object(self.bucket, key, CopySource(self.bucket, source))


def make_client(settings: Settings) -> Minio:
    """A minio client that fails fast when the server is down (few retries, short timeouts)."""
    tls: dict[str, Any] = {}
    if settings.s3_secure:  # HTTPS: certificates checked, against the cluster's CA when the config has one
        tls = {"cert_reqs": "CERT_REQUIRED"} | ({"ca_cert_data": settings.tls_ca} if settings.tls_ca else {})
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=120.0),
        maxsize=16,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        **tls,
    )
    try:
        return Minio(settings.s3_endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                     secure=settings.s3_secure, region=settings.s3_region, http_client=http)
    except ValueError as e:
        raise ConfigError(f"bad object store endpoint {settings.s3_endpoint!r}: {e}",
                           hint="use host:port, without http://") from e


@runtime_checkable
class Storage(Protocol):
    """What the SDK and the nodes need of one bucket: :class:`ObjectStore` (S3) implements it, and so does the
    in-memory :class:`cluster.testing.MemoryObjectStore` of the unit tests. Missing keys raise
    :class:`~cluster.errors.NotFoundError`; ``stat`` returns None instead."""

    bucket: str

    def ensure_bucket(self) -> bool: ...
    def ping(self) -> None: ...
    def put_bytes(self, key: str, data: bytes, *, content_type: str = ...) -> None: ...
    def put_many(self, items: Iterable[tuple[str, bytes, str]]) -> None: ...
    def put_json(self, key: str, obj: Any) -> None: ...
    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None: ...
    def put_stream(self, key: str, fh: BinaryIO, size: int) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_json(self, key: str) -> Any: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "", *, recursive: bool = True) -> builtins.list[ObjectInfo]: ...
    def has_prefix(self, prefix: str) -> bool: ...
    def list_dirs(self, prefix: str) -> builtins.list[str]: ...
    def delete(self, key: str) -> None: ...
    def copy(self, source: str, key: str) -> None: ...
