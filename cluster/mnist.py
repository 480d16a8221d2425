"""MNIST: fetch the four published ``.gz`` files with checksums, and parse them into numpy arrays.

``load_data`` is the Azure ML tutorial's ``utils.load_data`` made strict: a truncated or corrupt
file raises :class:`~cluster.errors.DataError` instead of giving a short array.

    paths = fetch_mnist("data/mnist")                 # mirrors, or fetch_mnist(dest, source=DIR)
    X_train, y_train, X_test, y_test = load_mnist("data")
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from cluster.errors import DataError, ServiceError, UsageError

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

#: The published MNIST files and the sha256 of each ``.gz`` file, in the order ``fetch_mnist`` returns.
FILES: dict[str, str] = {
    TRAIN_IMAGES: "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    TRAIN_LABELS: "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    TEST_IMAGES: "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    TEST_LABELS: "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}

#: Public base URLs holding the files above, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_MAX_SIDE = 4096  # rows/cols above this are not a plausible image
_MAX_ITEMS = 100_000_000
_CHUNK = 1 << 16


# --------------------------------------------------------------------------------------------- fetch


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _say(show: bool, message: str) -> None:
    if show:
        print(message, file=sys.stderr)


def _copy_verified(
    name: str, expected: str, src: IO[bytes], dest: Path, *, total: int | None, show_progress: bool
) -> tuple[str, int]:
    """Stream ``src`` to a temp file in ``dest``; rename it to ``dest/name`` only if its sha256 matches.

    Returns the actual digest and byte count (the temp file is removed on a mismatch or any error).
    """
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=total,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not show_progress,
                leave=False,
            ) as bar,
        ):
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual == expected:
            tmp.chmod(0o644)  # mkstemp makes it 0600; the data set is not secret
            os.replace(tmp, dest / name)
        return actual, size
    finally:
        tmp.unlink(missing_ok=True)


def _download(
    name: str, expected: str, dest: Path, mirrors: Iterable[str], *, timeout: float, show_progress: bool
) -> None:
    """Try each mirror in turn; raise ServiceError listing every failure if none gives a good file."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += name
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                actual, size = _copy_verified(
                    name, expected, resp, dest, total=total, show_progress=show_progress
                )
        except urllib.error.HTTPError as e:
            e.close()
            reason = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            reason = str(e.reason)
        except (OSError, http.client.HTTPException, ValueError) as e:  # timeouts, resets, bad URLs
            reason = f"{type(e).__name__}: {e}"
        else:
            if actual == expected:
                _say(show_progress, f"{name}: downloaded from {mirror}, sha256 verified")
                return
            if total is not None and size != total:
                reason = f"incomplete download, got {size} of {total} bytes"
            else:
                reason = f"sha256 mismatch (expected {expected}, got {actual})"
        failures.append(f"{url}: {reason}")
        _say(show_progress, f"{name}: failed from {url}: {reason}")
    if not failures:
        raise UsageError(f"no mirrors to download {name} from", hint="pass mirrors=... or source=DIR")
    raise ServiceError(
        f"could not download {name} from any mirror:\n    " + "\n    ".join(failures),
        hint="download the four MNIST .gz files elsewhere, copy them into a directory "
        "and pass --source DIR (fetch_mnist(dest, source=DIR))",
    )


def fetch_mnist(
    dest: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    mirrors: Iterable[str] = MIRRORS,
    show_progress: bool = True,
    timeout: float = 60.0,
) -> list[Path]:
    """Put the four MNIST ``.gz`` files into ``dest``, verified against :data:`FILES`; return their paths.

    A file already in ``dest`` with the right sha256 is kept. Otherwise it is copied from the
    directory ``source`` if given, else downloaded from each of ``mirrors`` in turn. Every file is
    written to a temp file in ``dest`` and renamed into place only after its sha256 matches, so a
    partial or bad file never sits under the final name. ``show_progress`` prints progress bars and
    one status line per file to stderr.

    Raises UsageError (bad ``dest``/``source``), DataError (``source`` lacks a file or has a bad
    copy), ServiceError (no mirror gave a good copy).
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory", hint="pass a directory to download into")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {dest}: {e.strerror}", hint="pass a writable directory") from e
    src_dir = Path(source) if source is not None else None
    if src_dir is not None and not src_dir.is_dir():
        raise UsageError(
            f"source {src_dir} is not a directory", hint="pass the directory holding the four MNIST .gz files"
        )
    mirrors = tuple(mirrors)

    paths: list[Path] = []
    for name, expected in FILES.items():
        final = dest / name
        paths.append(final)
        if final.is_file():
            if _sha256(final) == expected:
                _say(show_progress, f"{name}: already present in {dest}, sha256 verified")
                continue
            _say(show_progress, f"{name}: present in {dest} but its sha256 is wrong; fetching it again")
        if src_dir is None:
            _download(name, expected, dest, mirrors, timeout=timeout, show_progress=show_progress)
            continue
        src = src_dir / name
        if not src.is_file():
            raise DataError(
                f"{name} is missing from source {src_dir}",
                hint=f"put the published {name} (sha256 {expected}) there",
            )
        with open(src, "rb") as f:
            actual, _ = _copy_verified(
                name, expected, f, dest, total=src.stat().st_size, show_progress=show_progress
            )
        if actual != expected:
            raise DataError(
                f"{src} fails its checksum: expected sha256 {expected}, got {actual}",
                hint="the copy is corrupt or not the published MNIST file; replace it",
            )
        _say(show_progress, f"{name}: copied from {src_dir}, sha256 verified")
    return paths


# ---------------------------------------------------------------------------------------------- load


def load_data(filename: str | os.PathLike[str], label: bool = False) -> np.ndarray:
    """Parse a gzipped IDX file: images -> uint8 ``(n, rows*cols)``; ``label=True``: labels -> ``(n, 1)``.

    Checks the magic number against ``label``, that the dimensions are plausible and that the
    payload is exactly the declared size. Raises DataError for a corrupt or truncated file (bad
    gzip, short payload, trailing bytes) and UsageError when ``filename`` is not a file.
    """
    path = Path(filename)
    if not path.is_file():
        raise UsageError(f"no such file: {path}", hint="check the path, or run fetch_mnist(DIR) first")
    kind = "labels" if label else "images"
    try:
        with gzip.open(path, "rb") as gz:
            header = gz.read(8)
            if len(header) < 8:
                raise DataError(f"{path}: file ends inside the IDX header ({len(header)} of 8 bytes)")
            magic, n = struct.unpack(">II", header)
            if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
                raise DataError(
                    f"{path}: not an MNIST IDX file (magic 0x{magic:08x}, expected "
                    f"0x{IMAGES_MAGIC:08x} for images or 0x{LABELS_MAGIC:08x} for labels)",
                    hint="the file is corrupt or not MNIST; fetch it again",
                )
            if (magic == LABELS_MAGIC) != label:
                actual_kind = "labels" if magic == LABELS_MAGIC else "images"
                raise DataError(
                    f"{path} is an IDX {actual_kind} file (magic 0x{magic:08x}) but was loaded as {kind}",
                    hint=f"call load_data(..., label={not label})",
                )
            rows = cols = 1
            if not label:
                dims = gz.read(8)
                if len(dims) < 8:
                    raise DataError(f"{path}: file ends inside the IDX header")
                rows, cols = struct.unpack(">II", dims)
                if not (1 <= rows <= _MAX_SIDE and 1 <= cols <= _MAX_SIDE):
                    raise DataError(f"{path}: implausible image size {rows}x{cols}; the header is corrupt")
            if not 1 <= n <= _MAX_ITEMS:
                raise DataError(f"{path}: implausible item count {n}; the header is corrupt")
            size = n * rows * cols
            # one byte more than declared: reaches the end of the stream, so the CRC and trailer get checked
            payload = gz.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a valid gzip file ({type(e).__name__}: {e})",
            hint="the file is truncated or corrupt; fetch it again",
        ) from e
    if len(payload) < size:
        raise DataError(
            f"{path}: payload is truncated: the header declares {n} {kind} ({size} bytes), "
            f"the file holds {len(payload)}",
            hint="fetch the file again",
        )
    if len(payload) > size:
        raise DataError(
            f"{path}: trailing data after the {size} bytes the header declares",
            hint="the file is corrupt; fetch it again",
        )
    return np.frombuffer(bytearray(payload), dtype=np.uint8).reshape(n, rows * cols)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / "mnist" / name):
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"{name} not found in {folder} or {folder / 'mnist'}",
        hint=f"run fetch_mnist({str(folder)!r}) first",
    )


def load_mnist(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load ``(X_train, y_train, X_test, y_test)`` from ``folder`` or ``folder/mnist``, as the tutorial does.

    Images are float64 scaled to [0, 1] (``/ 255.0``), shape ``(n, 784)``; labels are uint8, shape ``(n,)``.
    """
    folder = Path(folder)
    x_train = load_data(_find(folder, TRAIN_IMAGES), label=False) / 255.0
    y_train = load_data(_find(folder, TRAIN_LABELS), label=True).reshape(-1)
    x_test = load_data(_find(folder, TEST_IMAGES), label=False) / 255.0
    y_test = load_data(_find(folder, TEST_LABELS), label=True).reshape(-1)
    return x_train, y_train, x_test, y_test


__all__ = ["FILES", "MIRRORS", "fetch_mnist", "load_data", "load_mnist"]
