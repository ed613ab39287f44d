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


# ------------------------------------------------------------------ 2. uploads checked before decoding
def _result_bytes(extra: dict | None = None, unlimited: tuple[str, ...] = ()) -> bytes:
    import xarray as xr

    extra = extra or {}
    shape = (4, 3, 2, *[len(v) for v in extra.values()])
    ds = xr.Dataset({"loss": (("step", "probe", "seed", *extra), np.ones(shape))},
                    coords={"step": [0, 1, 3, 7], "probe": ["real", "maxent1", "maxent2"], "seed": [0, 1],
                            "probe_order": ("probe", [np.inf, 1.0, 2.0]), **extra})
    return bytes(ds.to_netcdf(engine="scipy", unlimited_dims=list(unlimited)))


def _declare_huge_step(blob: bytes, length: int) -> bytes:
    """The same file with dim ``step`` declared ``length`` long (its data stay 4 steps)."""
    import struct

    i = blob.index(struct.pack(">i", 4) + b"step" + struct.pack(">i", 4))
    return blob[:i + 8] + struct.pack(">i", length) + blob[i + 12:]


def _zero_record_grid(n: int) -> bytes:
    """0 records of loss (step unlimited) over an n x n grid: 2.9 KB at n=300 (90,000 facet cells)."""
    import xarray as xr

    ds = xr.Dataset({"loss": (("step", "probe", "seed", "a", "b"), np.ones((0, 3, 2, n, n)))},
                    coords={"step": np.zeros(0, int), "probe": ["real", "maxent1", "maxent2"], "seed": [0, 1],
                            "a": np.arange(n), "b": np.arange(n)})
    return bytes(ds.to_netcdf(engine="scipy", unlimited_dims=["step"]))


@pytest.fixture
def dashboard(tmp_path):
    pytest.importorskip("panel")
    from dsb_widgets.runs import RunRegistry
    from dsb_widgets.ui.app import Dashboard

    runs = tmp_path / "runs"
    runs.mkdir()
    d = Dashboard(runs, registry=RunRegistry())
    d.viewer.stop_polling()
    return d


def _upload(d, name: str, blob: bytes) -> str:
    d.upload.filename = name
    d.upload.value = blob
    return d.message.object


def test_header_check_accepts_real_results_and_reads_declared_sizes():
    from dsb_widgets.ui.safety import check_netcdf_header, check_results_layout

    for unlimited in ((), ("step",)):
        header = check_netcdf_header(_result_bytes({"lr": [0.1, 0.01]}, unlimited), "ok.nc")
        assert header.dims["probe"] == 3 and header.dims["lr"] == 2
        loss = next(v for v in header.variables if v.name == "loss")
        assert loss.dims == ("step", "probe", "seed", "lr") and loss.elements == 4 * 3 * 2 * 2
        check_results_layout(header, "ok.nc")


def test_upload_messages_for_empty_oversize_and_foreign_files(dashboard):
    assert "is empty (0 bytes)" in _upload(dashboard, "empty.nc", b"")
    big = b"CDF\x01" + bytes(21 * 2**20)
    assert "21.0 MB, over the 20 MB upload limit" in _upload(dashboard, "big.nc", big)
    assert "netCDF4/HDF5" in _upload(dashboard, "h5.nc", b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert "not a netCDF3 file" in _upload(dashboard, "x.nc", b"hello world")
    assert dashboard.message.alert_type == "danger" and dashboard.sweep_view is None
    assert dashboard.upload.value is None  # bytes dropped after the answer
    from dsb_widgets.ui.safety import MAX_UPLOAD_BYTES, WEBSOCKET_MAX_BYTES

    assert WEBSOCKET_MAX_BYTES > MAX_UPLOAD_BYTES * 4 / 3 * 1.1  # a 21 MB file (base64) reaches our message


def test_valid_upload_still_opens_as_a_sweep(dashboard):
    text = _upload(dashboard, "grid.nc", _result_bytes({"lr": [0.1, 0.01]}))
    assert text.startswith("Opened sweep grid") and dashboard.sweep_view is not None


def test_crafted_huge_declared_upload_is_refused_without_allocating(dashboard, capsys):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    cases = {"huge_dim.nc": _declare_huge_step(_result_bytes(), 10**9),  # 6e9 values in 1 KB
             "grid_bomb.nc": _zero_record_grid(300)}  # before the fix: 90,000 facets, ~45 s of server CPU
    messages = {}
    rss0 = proc.memory_info().rss
    for name, blob in cases.items():
        messages[name] = _upload(dashboard, name, blob)
    rss1 = proc.memory_info().rss
    with capsys.disabled():
        print(f"\n[security] crafted uploads {[len(b) for b in cases.values()]} bytes: server RSS "
              f"{rss0 / 2**20:.0f} MB -> {rss1 / 2**20:.0f} MB")
    assert "declares dims" in messages["huge_dim.nc"] and "over the limit" in messages["huge_dim.nc"]
    assert "grid of 90,000 sweep cells" in messages["grid_bomb.nc"]
    assert rss1 - rss0 < 50 * 2**20 and dashboard.sweep_view is None


def test_declared_data_past_the_end_of_the_file_is_refused():
    from dsb_widgets.ui.safety import check_netcdf_header

    blob = _result_bytes()
    with pytest.raises(UnsafeInputError, match="past the end"):
        check_netcdf_header(_declare_huge_step(blob, 1000), "short.nc")
    with pytest.raises(UnsafeInputError, match="past the end"):  # records declared, not present
        import struct

        rec = _result_bytes(unlimited=("step",))
        check_netcdf_header(rec[:4] + struct.pack(">i", 10**6) + rec[8:], "rec.nc")


def test_header_check_never_raises_anything_but_our_errors_on_mangled_files():
    from hypothesis import given, settings, strategies as st

    from dsb_widgets.ui.safety import check_netcdf_header

    blob = _result_bytes({"lr": [0.1, 0.01]})

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, len(blob) - 1), st.integers(0, 255), st.integers(8, len(blob)))
    def mangle(i, byte, cut):
        bad = (blob[:i] + bytes([byte]) + blob[i + 1:])[:cut]
        try:
            check_netcdf_header(bad, "m.nc")
        except (MalformedDataError, UnsafeInputError):
            pass

    mangle()


def test_results_file_on_disk_is_checked_before_it_is_opened(dashboard):
    path = dashboard.runs_dir / "bomb.nc"
    path.write_bytes(_zero_record_grid(300))
    dashboard.open_file(str(path))
    assert "sweep cells, over the limit" in dashboard.message.object and dashboard.sweep_view is None
