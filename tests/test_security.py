"""Security tests (issue 18, items 1-6, 13, 14): crafted pickles, uploads, XSS payloads, paths
outside the data roots, listening addresses, Host/Origin checks, missing extras, Dask polling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dsb_widgets.errors import MalformedDataError, UnsafeInputError

XSS = "<img src=x onerror=alert(1)>"


# ------------------------------------------------------------------ 1. CIFAR pickles run no code
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a crafted data_batch_1 does
        return (os.system, (f"touch {self.marker}",))


def _cifar_batch(n: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_genuine_cifar_batches(tmp_path, protocol):
    from dsb_widgets.data.formats import read_cifar_pickles

    batch = _cifar_batch()
    blob = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # as the real Python 2 / numpy 1 files name the reconstructor
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "data_batch_1").write_bytes(blob)
    raw = read_cifar_pickles([tmp_path / "data_batch_1"], [str(k) for k in range(10)])
    assert raw.x.shape == (3, 3, 32, 32) and raw.x.dtype == np.uint8
    np.testing.assert_array_equal(raw.x.reshape(3, -1), batch[b"data"])
    assert raw.y.tolist() == batch[b"labels"]


@pytest.mark.parametrize("where", ["top", "inside_dict"])
def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path, where):
    from dsb_widgets.data.formats import read_cifar_pickles

    marker = tmp_path / "pwned"
    evil = _Evil(marker)
    payload = evil if where == "top" else {**_cifar_batch(), b"labels": evil}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeInputError, match="posix.system|os.system|refusing"):
        read_cifar_pickles([tmp_path / "data_batch_1"], [str(k) for k in range(10)])
    assert not marker.exists()
    # control: plain pickle.load would have run it (the hole this closes)
    with open(tmp_path / "data_batch_1", "rb") as fh:
        pickle.load(fh, encoding="bytes")
    assert marker.exists()


def test_cifar_pickle_with_other_globals_or_garbage_is_refused(tmp_path):
    from dsb_widgets.data.formats import read_cifar_pickles

    classes = [str(k) for k in range(10)]
    (tmp_path / "a").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [Path("x")]}))
    with pytest.raises(UnsafeInputError, match="pathlib"):
        read_cifar_pickles([tmp_path / "a"], classes)
    (tmp_path / "b").write_bytes(b"\x80\x02garbage")
    with pytest.raises(MalformedDataError, match="not a CIFAR-10 python batch"):
        read_cifar_pickles([tmp_path / "b"], classes)
    (tmp_path / "c").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MalformedDataError, match="not a dict"):
        read_cifar_pickles([tmp_path / "c"], classes)


def test_package_has_no_unrestricted_pickle_or_torch_load():
    import re

    root = Path(__file__).resolve().parents[1] / "dsb_widgets"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"pickle\.loads?\(", text), f"{path}: plain pickle.load"
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            call = text[m.start():end]
            assert "weights_only=True" in call or "``" in text[m.start() - 2:m.start()], f"{path}: {call}"
        assert "allow_pickle=True" not in text, path
