"""cluster.mnist against the real MNIST files, a real local HTTP server and real corrupted copies.

The files come from ``$MNIST_DIR`` (default ``/work/shared/data/mnist``). Without them the module is
skipped, except under ``CI=true``, where a missing data set is a failure.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cluster.errors import DataError, ServiceError, UsageError
from cluster.mnist import FILES, fetch_mnist, load_data, load_mnist

MNIST_DIR = Path(os.environ.get("MNIST_DIR", "/work/shared/data/mnist"))

if not all((MNIST_DIR / name).is_file() for name in FILES):
    _why = f"the MNIST .gz files are not in {MNIST_DIR} (set MNIST_DIR to the directory holding them)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(_why, pytrace=False)
    pytest.skip(_why, allow_module_level=True)

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = FILES


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raw(name: str) -> bytes:
    return gzip.decompress((MNIST_DIR / name).read_bytes())


def _write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))
    return path


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name not in FILES)


# ------------------------------------------------------------------------------------------ load_data


@pytest.mark.parametrize(
    ("name", "label", "shape"),
    [
        (TRAIN_IMAGES, False, (60000, 784)),
        (TRAIN_LABELS, True, (60000, 1)),
        (TEST_IMAGES, False, (10000, 784)),
        (TEST_LABELS, True, (10000, 1)),
    ],
)
def test_real_files_shapes_and_dtypes(name: str, label: bool, shape: tuple[int, int]) -> None:
    arr = load_data(MNIST_DIR / name, label=label)
    assert arr.shape == shape
    assert arr.dtype == np.uint8
    header = 8 if label else 16
    assert arr.tobytes() == _raw(name)[header:]
    if not label:
        assert arr.min() == 0 and arr.max() == 255


def test_real_labels_known_values() -> None:
    y_train = load_data(MNIST_DIR / TRAIN_LABELS, label=True).reshape(-1)
    y_test = load_data(MNIST_DIR / TEST_LABELS, label=True).reshape(-1)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_mnist_tutorial_shapes_and_mnist_subfolder(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for name in FILES:
        (tmp_path / "mnist" / name).symlink_to(MNIST_DIR / name)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)  # found under tmp_path/mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float64 and x_train.min() >= 0.0 and x_train.max() == 1.0
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]


def test_load_mnist_scales_images_from_files_in_the_folder(tmp_path: Path) -> None:
    pixels = np.arange(2 * 4 * 3, dtype=np.uint8) * 11
    for name, n in ((TRAIN_IMAGES, 2), (TEST_IMAGES, 1)):
        _write_gz(tmp_path / name, struct.pack(">IIII", 0x803, n, 4, 3) + pixels[: n * 12].tobytes())
    for name, labels in ((TRAIN_LABELS, b"\x03\x09"), (TEST_LABELS, b"\x07")):
        _write_gz(tmp_path / name, struct.pack(">II", 0x801, len(labels)) + labels)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)
    assert x_train.dtype == np.float64
    np.testing.assert_array_equal(x_train, pixels.reshape(2, 12) / 255.0)
    np.testing.assert_array_equal(x_test, pixels[:12].reshape(1, 12) / 255.0)
    assert y_train.tolist() == [3, 9] and y_test.tolist() == [7]


def test_load_mnist_missing_files_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found in"):
        load_mnist(tmp_path)


def test_missing_file_and_directory_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.gz"):
        load_data(tmp_path / "nope.gz")
    with pytest.raises(UsageError):
        load_data(tmp_path)


def test_truncated_gzip_is_data_error(tmp_path: Path) -> None:
    blob = (MNIST_DIR / TEST_IMAGES).read_bytes()
    bad = tmp_path / "cut.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.gz.*gzip"):
        load_data(bad)


def test_not_gzip_and_corrupt_deflate_are_data_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.gz"
    plain.write_bytes(_raw(TEST_LABELS))
    with pytest.raises(DataError, match=r"plain\.gz"):
        load_data(plain, label=True)
    blob = bytearray((MNIST_DIR / TEST_LABELS).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.gz"
    flipped.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"flipped\.gz"):
        load_data(flipped, label=True)


@pytest.mark.parametrize(("name", "label"), [(TEST_LABELS, True), (TEST_IMAGES, False)])
def test_truncated_payload_is_data_error(tmp_path: Path, name: str, label: bool) -> None:
    bad = _write_gz(tmp_path / "short.gz", _raw(name)[:-100])
    with pytest.raises(DataError, match=r"short\.gz.*truncated"):
        load_data(bad, label=label)


def test_truncated_header_is_data_error(tmp_path: Path) -> None:
    bad = _write_gz(tmp_path / "hdr.gz", _raw(TEST_IMAGES)[:12])
    with pytest.raises(DataError, match="header"):
        load_data(bad)


def test_trailing_garbage_is_data_error(tmp_path: Path) -> None:
    in_payload = _write_gz(tmp_path / "extra.gz", _raw(TEST_LABELS) + b"\x07")
    with pytest.raises(DataError, match=r"extra\.gz.*trailing"):
        load_data(in_payload, label=True)
    after_stream = tmp_path / "appended.gz"
    after_stream.write_bytes((MNIST_DIR / TEST_LABELS).read_bytes() + b"garbage")
    with pytest.raises(DataError, match=r"appended\.gz"):
        load_data(after_stream, label=True)


def test_wrong_magic_is_data_error(tmp_path: Path) -> None:
    bad = _write_gz(tmp_path / "magic.gz", struct.pack(">I", 0x00000802) + _raw(TEST_LABELS)[4:])
    with pytest.raises(DataError, match=r"magic\.gz.*0x00000802"):
        load_data(bad, label=True)


def test_label_flag_mismatch_is_data_error() -> None:
    with pytest.raises(DataError, match=r"(?s)labels file.*label=True"):
        load_data(MNIST_DIR / TEST_LABELS, label=False)
    with pytest.raises(DataError, match=r"(?s)images file.*label=False"):
        load_data(MNIST_DIR / TEST_IMAGES, label=True)


def test_implausible_dimensions_are_data_error(tmp_path: Path) -> None:
    zero_rows = _write_gz(tmp_path / "rows.gz", struct.pack(">IIII", 0x803, 1, 0, 28))
    with pytest.raises(DataError, match="implausible image size"):
        load_data(zero_rows)
    no_items = _write_gz(tmp_path / "empty.gz", struct.pack(">II", 0x801, 0))
    with pytest.raises(DataError, match="implausible item count"):
        load_data(no_items, label=True)


# -------------------------------------------------------------------------------- fetch from source=


def test_fetch_from_source_copies_and_verifies(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b"
    paths = fetch_mnist(dest, source=MNIST_DIR, show_progress=False)
    assert paths == [dest / name for name in FILES]
    assert [_sha(p) for p in paths] == list(FILES.values())
    assert _leftovers(dest) == []


def test_fetch_from_source_with_corrupted_copy_is_data_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(MNIST_DIR, src)
    target = src / TRAIN_LABELS
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0x01
    target.chmod(0o644)
    target.write_bytes(bytes(blob))
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as info:
        fetch_mnist(dest, source=src, show_progress=False)
    message = str(info.value)
    assert TRAIN_LABELS in message and FILES[TRAIN_LABELS] in message and _sha(target) in message
    assert not (dest / TRAIN_LABELS).exists() and _leftovers(dest) == []


def test_fetch_from_source_missing_file_is_data_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / TRAIN_IMAGES).symlink_to(MNIST_DIR / TRAIN_IMAGES)
    with pytest.raises(DataError, match=f"{TRAIN_LABELS} is missing"):
        fetch_mnist(tmp_path / "dest", source=src, show_progress=False)


def test_fetch_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        fetch_mnist(tmp_path / "file", source=MNIST_DIR, show_progress=False)
    with pytest.raises(UsageError, match="source"):
        fetch_mnist(tmp_path / "dest", source=tmp_path / "absent", show_progress=False)


# ----------------------------------------------------------------------------------- fetch over HTTP


class Mirrors:
    """A real HTTP server on 127.0.0.1 with one route per mirror kind; it records every request path.

    ``/good/<f>`` serves the real file, ``/corrupt/<f>`` a copy with one byte flipped, ``/short/<f>``
    announces the full length but closes after half, ``/hang/<f>`` answers only after ``release``;
    anything else is a 404.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = threading.Event()
        mirrors = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirrors.requests.append(self.path)
                kind, _, name = self.path.strip("/").partition("/")
                if name not in FILES or kind not in ("good", "corrupt", "short", "hang"):
                    self.send_error(404)
                    return
                body = (MNIST_DIR / name).read_bytes()
                if kind == "hang":
                    mirrors.release.wait(10)
                if kind == "corrupt":
                    body = body[:50] + bytes([body[50] ^ 0xFF]) + body[51:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "short":
                    body = body[: len(body) // 2]
                    self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have given up (timeout test)
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{kind}/"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirrors() -> Iterator[Mirrors]:
    server = Mirrors()
    try:
        yield server
    finally:
        server.close()


def test_fetch_falls_back_past_404_and_corrupt_mirrors(tmp_path: Path, mirrors: Mirrors) -> None:
    urls = (mirrors.url("missing"), mirrors.url("corrupt"), mirrors.url("good"))
    paths = fetch_mnist(tmp_path, mirrors=urls, show_progress=False, timeout=10)
    assert paths == [tmp_path / name for name in FILES]
    assert [_sha(p) for p in paths] == list(FILES.values())
    assert _leftovers(tmp_path) == []
    expected = [f"/{kind}/{name}" for name in FILES for kind in ("missing", "corrupt", "good")]
    assert mirrors.requests == expected


def test_fetch_shows_progress_on_stderr(
    tmp_path: Path, mirrors: Mirrors, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch_mnist(tmp_path, mirrors=(mirrors.url("good"),), show_progress=True, timeout=10)
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{TRAIN_IMAGES}: downloaded from {mirrors.url('good')}" in err
    fetch_mnist(tmp_path, mirrors=(mirrors.url("good"),), show_progress=True)
    assert f"{TRAIN_IMAGES}: already present" in capsys.readouterr().err


def test_fetch_all_mirrors_bad_is_service_error(tmp_path: Path, mirrors: Mirrors) -> None:
    urls = (mirrors.url("missing"), mirrors.url("corrupt"), mirrors.url("short"), mirrors.url("hang"))
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        fetch_mnist(tmp_path, mirrors=urls, show_progress=False, timeout=0.3)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert TRAIN_IMAGES in message and "--source DIR" in message
    assert "HTTP 404" in message and "sha256 mismatch" in message
    assert "incomplete download" in message and "timed out" in message
    assert all(url in message for url in urls)
    assert list(tmp_path.iterdir()) == []  # nothing partial or bad left behind


def test_fetch_skips_files_already_present(tmp_path: Path, mirrors: Mirrors) -> None:
    for name in FILES:
        shutil.copyfile(MNIST_DIR / name, tmp_path / name)
    (tmp_path / TEST_LABELS).write_bytes(b"stale")  # a bad copy is fetched again
    urls = (mirrors.url("good"),)
    fetch_mnist(tmp_path, mirrors=urls, show_progress=False, timeout=10)
    assert mirrors.requests == [f"/good/{TEST_LABELS}"]
    assert _sha(tmp_path / TEST_LABELS) == FILES[TEST_LABELS]
    fetch_mnist(tmp_path, mirrors=urls, show_progress=False, timeout=10)
    assert len(mirrors.requests) == 1
