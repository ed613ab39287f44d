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
    d.upload.value = {name: blob}
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
    assert dashboard.upload.value == {}  # bytes dropped after the answer
    from dsb_widgets.ui.safety import MAX_UPLOAD_BYTES, WEBSOCKET_MAX_BYTES
    from dsb_widgets.ui.upload import CHUNK_BYTES

    assert dashboard.upload.max_file_size == "20MB"  # refused in the browser before any byte is sent
    assert WEBSOCKET_MAX_BYTES > CHUNK_BYTES * 4 / 3 * 1.1 and CHUNK_BYTES < MAX_UPLOAD_BYTES  # chunks fit a message


class _Event:
    """What FilePond's chunked upload sends the server (panel.models.file_dropper.UploadEvent)."""

    event_name = "upload_event"

    def __init__(self, name: str, chunk: int, total: int, data: bytes) -> None:
        self.data = {"name": name, "chunk": chunk, "total_chunks": total, "data": data, "type": ""}


def test_dashboard_renders_into_a_bokeh_document(dashboard):
    """Every widget maps onto a browser model (a server-only param must be renamed away: the
    upload's ``refused`` once broke the served page with an AttributeError)."""
    from bokeh.document import Document

    doc = Document()
    dashboard.template().server_doc(doc)
    assert any(type(m).__name__ == "FileDropper" for m in doc.models)


def test_upload_streamed_past_the_limit_is_dropped_on_the_server(dashboard):
    """A hostile client skips the browser's size check and streams chunks: the server counts them
    and drops the file as soon as its bytes pass the limit (never buffering more than the limit)."""
    from dsb_widgets.ui.safety import MAX_UPLOAD_BYTES
    from dsb_widgets.ui.upload import CHUNK_BYTES

    up, n = dashboard.upload, MAX_UPLOAD_BYTES // CHUNK_BYTES + 3
    chunk = b"CDF\x01" + bytes(CHUNK_BYTES - 4)
    for i in range(1, n + 1):
        up._process_event(_Event("stream.nc", i, n, chunk))
        assert sum(len(b) for b in up._file_buffer.get("stream.nc", [])) <= MAX_UPLOAD_BYTES
    assert "stream.nc passed 24.0 MB while uploading, over the 20 MB upload limit" in dashboard.message.object
    assert up.value == {} and up._file_buffer == {} and up.refused == "" and dashboard.sweep_view is None
    # two files at once are capped together; a file within the limit still arrives whole
    half = MAX_UPLOAD_BYTES // 2 + 1
    up._process_event(_Event("a.nc", 1, 2, bytes(half)))
    up._process_event(_Event("b.nc", 1, 2, bytes(half)))
    assert "b.nc passed" in dashboard.message.object and "b.nc" not in up._file_buffer
    blob = _result_bytes({"lr": [0.1, 0.01]})
    up._process_event(_Event("grid.nc", 1, 2, blob[:100]))
    up._process_event(_Event("grid.nc", 2, 2, blob[100:]))
    assert dashboard.message.object.startswith("Opened sweep grid") and up.value == {}


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
    from hypothesis import given, settings
    from hypothesis import strategies as st

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


# ------------------------------------------------------------------ 3. XSS: names are escaped
def _rendered(pane) -> str:
    """The HTML Panel's own Markdown renderer makes of a pane's text (what the browser gets)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("gfm-like").render(pane.object)


def _assert_escaped(text: str) -> None:
    assert "&lt;img" in text and "<img" not in text, text


def test_esc_escapes_html_and_markdown_and_renders_as_typed():
    from markdown_it import MarkdownIt

    from dsb_widgets.ui.safety import code, esc

    _assert_escaped(esc(XSS))
    tricky = "a_b*c* [x](javascript:alert(1)) `tick` <script> don't & #1 \"q\""  # ' and # once escaped each
    html_out = MarkdownIt("gfm-like").render(esc(tricky))
    assert "<a " not in html_out and "<em>" not in html_out and "<code>" not in html_out and "<script" not in html_out
    import html

    assert html.unescape(html_out.replace("<p>", "").replace("</p>", "").strip()) == tricky
    _assert_escaped(code(XSS))


def test_xss_in_an_uploaded_file_name_is_escaped(dashboard):
    _upload(dashboard, f"{XSS}.nc", b"junk")
    _assert_escaped(dashboard.message.object)
    assert "<img" not in _rendered(dashboard.message)


def test_xss_in_a_sweep_dim_name_and_label_is_escaped(dashboard):
    import xarray as xr

    ds = xr.open_dataset(__import__("io").BytesIO(_result_bytes({"lr": [0.1, 0.01]})), engine="scipy").load()
    ds = ds.rename({"lr": XSS})
    msg = dashboard.open_dataset(ds, XSS)
    dashboard.say(msg, "success")
    _assert_escaped(dashboard.message.object)
    title = dashboard.sweep_view.layout[0]
    _assert_escaped(title.object)
    assert "<img" not in _rendered(title)


def test_xss_typed_into_the_form_is_escaped(dashboard):
    for experiment in ("images", "text"):
        if experiment not in dashboard.experiment.options:
            continue
        dashboard.experiment.value = experiment
        dashboard.dataset.value = XSS
        assert dashboard.start() is None
        _assert_escaped(dashboard.message.object)
        assert "<img" not in _rendered(dashboard.message)


def test_run_status_lines_escape_errors_and_paths():
    from types import SimpleNamespace

    from dsb_widgets.ui.viewer import status_message

    store = SimpleNamespace(status="failed", error=f"FileNotFoundError: {XSS}\ntrace", step=3, total=9, elapsed=1.0)
    run = SimpleNamespace(id="r1", store=store, out=Path(f"/tmp/{XSS}.nc"), config=None)
    _, text = status_message(run)
    _assert_escaped(text)
    store.status = "finished"
    _, text = status_message(run)
    _assert_escaped(text)


# ------------------------------------------------------------------ 4. data roots
@pytest.fixture
def roots(tmp_path):
    from dsb_widgets.ui.safety import DataPolicy

    root = tmp_path / "data"
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "a.txt").write_text("hello\nworld\n")
    (root / "book.txt").write_text("one\ntwo\n")
    return root, DataPolicy.from_settings(tmp_path / "runs", [root])


def test_paths_under_the_roots_are_accepted(roots):
    root, policy = roots
    assert policy.check_path(str(root / "book.txt")) == (root / "book.txt").resolve()
    assert policy.check_path(str(root / "corpus")) == (root / "corpus").resolve()


@pytest.mark.parametrize("target", ["/etc/passwd", "/root", "/dev/zero", "../../../../etc/passwd",
                                    "{root}/../outside.txt", "{root}/link_out.txt", "{root}/link_zero",
                                    "{root}/fifo", "{root}/big.txt", "{root}/evil_dir", "{root}/missing.txt"])
def test_paths_outside_the_roots_or_not_regular_are_refused(roots, tmp_path, target, monkeypatch):
    import dataclasses

    root, policy = roots
    (tmp_path / "outside.txt").write_text("secret\n")
    (root / "link_out.txt").symlink_to("/etc/passwd")
    (root / "link_zero").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    (root / "big.txt").write_bytes(b"x" * 2048)
    (root / "evil_dir").mkdir()
    (root / "evil_dir" / "p.txt").symlink_to("/etc/passwd")
    monkeypatch.chdir(root)
    policy = dataclasses.replace(policy, max_text_bytes=1024)
    with pytest.raises(UnsafeInputError) as err:
        policy.check_path(target.format(root=root), "dataset")
    assert "\n" not in str(err.value)


def test_config_check_lets_names_through_and_refuses_paths_options_and_data_dirs(roots):
    from dsb_widgets.engine.task import RunConfig

    root, policy = roots
    names = ("tinyshakespeare", "tiny_stories")
    policy.check_config(RunConfig(experiment="text", dataset="tiny-stories"), names)  # registered
    policy.check_config(RunConfig(experiment="images", dataset="nosuch"), names)  # the experiment says unknown
    policy.check_config(RunConfig(experiment="text", dataset=str(root / "book.txt")), names)
    for cfg in (RunConfig(experiment="text", dataset="/etc/passwd"),
                RunConfig(experiment="text", dataset=str(root / ".." / ".." / "etc" / "passwd")),
                RunConfig(experiment="images", dataset="digits", data_dir="/root"),
                RunConfig(experiment="clones", dataset="tinyshakespeare", options={"clones": "/etc"}),
                RunConfig(experiment="checkpoints", dataset="tinystories", model="/etc"),
                RunConfig(experiment="checkpoints", dataset="tinystories", model="../../root")):
        with pytest.raises(UnsafeInputError, match="outside the data roots"):
            policy.check_config(cfg, names)
    (root / "suite").mkdir()  # a checkpoint-suite folder under a data root, a hub id, a registered name
    for model in (str(root / "suite"), "EleutherAI/pythia-70m", "mlp"):
        policy.check_config(RunConfig(experiment="checkpoints", dataset="tinystories", model=model), names)


def test_dashboard_model_field_is_free_text_only_for_checkpoint_suites(dashboard):
    if "checkpoints" not in dashboard.experiment.options:
        pytest.skip("no checkpoints experiment")
    dashboard.experiment.value = "checkpoints"
    assert dashboard.model.restrict is False  # a local step<N>/ folder can be typed
    dashboard.experiment.value = "images"
    assert dashboard.model.restrict is True and dashboard.model.value in dashboard.model.options


def test_dashboard_refuses_a_corpus_outside_the_roots_before_loading(dashboard, monkeypatch):
    if "text" not in dashboard.experiment.options:
        pytest.skip("no text experiment")
    import dsb_widgets.data.text as text

    monkeypatch.setattr(text, "_path_corpus", lambda *a, **k: pytest.fail("the corpus was read"))
    dashboard.experiment.value = "text"
    for path in ("/etc/passwd", "/dev/zero", "/root"):
        dashboard.dataset.value = path
        assert dashboard.start() is None
        assert "outside the data roots" in dashboard.message.object
    assert dashboard.registry.runs() == []


# ------------------------------------------------------------------ 5. Dask dashboard on localhost
def test_sweep_local_cluster_binds_localhost_by_default(monkeypatch):
    distributed = pytest.importorskip("distributed")
    import contextlib

    from dsb_widgets import sweep
    from dsb_widgets.cli import build_parser

    seen = {}

    class Fake(contextlib.nullcontext):
        def __init__(self, *args, **kwargs):
            seen.setdefault(type(self).__name__, kwargs)
            super().__init__(self)

    monkeypatch.setattr(distributed, "LocalCluster", type("LocalCluster", (Fake,), {}))
    monkeypatch.setattr(distributed, "Client", type("Client", (Fake,), {}))
    with sweep.open_client(n_workers=1):
        pass
    assert seen["LocalCluster"]["host"] == "127.0.0.1"
    assert seen["LocalCluster"]["dashboard_address"] == "127.0.0.1:8787"
    args = build_parser().parse_args(["sweep", "x.yaml"])
    assert args.dashboard_address == "127.0.0.1:8787"
    args = build_parser().parse_args(["sweep", "x.yaml", "--dashboard-address", "0.0.0.0:9999"])
    seen.clear()
    with sweep.open_client(n_workers=1, dashboard_address=args.dashboard_address):
        pass
    assert seen["LocalCluster"]["dashboard_address"] == "0.0.0.0:9999"


# ------------------------------------------------------------------ 13. missing extras
def test_serve_without_the_ui_extra_prints_the_install_hint(monkeypatch, capsys):
    import sys

    from dsb_widgets.cli import main

    for mod in [m for m in sys.modules if m == "panel" or m.startswith(("panel.", "dsb_widgets.ui"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "panel", None)  # import panel -> ModuleNotFoundError
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'dsb-widgets[ui]'") and "\n" not in err and "Traceback" not in err


def test_sweep_without_the_sweep_extra_prints_the_install_hint(monkeypatch, capsys, tmp_path):
    import sys

    from dsb_widgets.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nbase: {experiment: images, dataset: digits, steps: 2}\ngrid: {seed: [0]}\n")
    for mod in [m for m in sys.modules if m == "distributed" or m.startswith("distributed.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["sweep", str(spec), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'dsb-widgets[sweep]'") and "\n" not in err


# ------------------------------------------------------------------ 14. sweep waits without timed polls
def test_sweep_waits_with_as_completed_and_counts_workers_by_nthreads(monkeypatch, tmp_path):
    distributed = pytest.importorskip("distributed")
    import asyncio

    from dsb_widgets import sweep
    from dsb_widgets.sweep_config import expand, load_sweep

    spec = load_sweep({"name": "t", "base": {"experiment": "images", "dataset": "digits", "steps": 2},
                       "grid": {"seed": [0, 1]}}, tmp_path)
    runs = expand(spec)

    class Fut:
        status = "error"

        def __init__(self, key):
            self.key = key

        def exception(self):
            return RuntimeError("boom")

        def traceback(self):
            return None

    class Client:
        def submit(self, *args, key, **kwargs):
            return Fut(key)

        def nthreads(self):
            return {"tcp://127.0.0.1:1": 1, "tcp://127.0.0.1:2": 1}

        def processing(self):
            return {}

        def cancel(self, futs):
            pass

    def py310_wait(*args, **kwargs):  # what distributed.wait(timeout=...) raised on Python 3.10
        raise asyncio.TimeoutError()

    monkeypatch.setattr(distributed, "wait", py310_wait)
    monkeypatch.setattr(distributed, "as_completed", lambda futs: iter(futs))
    out = sweep._submit_and_wait(Client(), spec, runs, 0, 1, False, 0, progress=False)
    assert set(out) == {r.key for r in runs} and all(v[0] == "RuntimeError: boom" for v in out.values())


# ------------------------------------------------------------------ 6. Host and Origin checks
def test_allowed_origins_are_the_served_address_and_localhost():
    from dsb_widgets.ui.guard import allowed_origins, host_allowed

    assert allowed_origins("localhost", 5006) == ["localhost:5006", "127.0.0.1:5006"]
    assert allowed_origins("0.0.0.0", 80, ["lab.example.org:80"]) == ["localhost:80", "127.0.0.1:80",
                                                                     "lab.example.org:80"]
    allow = allowed_origins("127.0.0.1", 5006)
    assert host_allowed("127.0.0.1:5006", allow) and host_allowed("LOCALHOST:5006", allow)
    assert not host_allowed("evil.example:5006", allow) and not host_allowed("127.0.0.1:5007", allow)


def test_serve_passes_origins_websocket_limit_and_installs_the_guard(monkeypatch):
    pn = pytest.importorskip("panel")
    from tornado.web import Application

    from dsb_widgets.ui import guard
    from dsb_widgets.ui.safety import WEBSOCKET_MAX_BYTES

    seen = {}
    app = Application([])

    class Server:
        _tornado = app
        io_loop = type("Loop", (), {"start": lambda self: None})()

        def start(self):
            seen["started"] = True

    monkeypatch.setattr(pn, "serve", lambda apps, **kw: seen.update(kw) or Server())
    guard.serve_guarded({"/": lambda: None}, port=5006, address="127.0.0.1", allow=["lab.example.org:5006"])
    assert seen["websocket_origin"] == ["127.0.0.1:5006", "localhost:5006", "lab.example.org:5006"]
    assert seen["websocket_max_message_size"] == WEBSOCKET_MAX_BYTES and seen["start"] is False
    assert seen["started"] and type(app.default_router.rules[0].matcher).__name__ == "Refused"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    """A real ``dsb serve`` on 127.0.0.1 (no run), allowing one extra origin."""
    pytest.importorskip("panel")
    from dsb_widgets.ui.served import ServedDashboard

    with ServedDashboard(tmp_path_factory.mktemp("guard"),
                         args=["--allow-websocket-origin", "lab.example.org:80"]) as served:
        yield served.url


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _ws_status(url: str, token: str, origin: str | None) -> int:
    """101 when the websocket opened, else the HTTP status the server answered."""
    import asyncio

    websockets = pytest.importorskip("websockets")
    from websockets.exceptions import InvalidStatus

    async def go() -> int:
        try:
            async with websockets.connect(url.replace("http", "ws") + "/ws", subprotocols=["bokeh", token],
                                          origin=origin, open_timeout=30, ping_interval=None):
                return 101
        except InvalidStatus as err:
            return err.response.status_code

    return asyncio.run(asyncio.wait_for(go(), 60))


def test_served_page_refuses_foreign_hosts_and_origins(guarded_server):
    from dsb_widgets.ui.served import TOKEN_RE

    url = guarded_server
    status, page = _get(url + "/")
    assert status == 200
    token = TOKEN_RE.search(page).group(1)
    status, body = _get(url + "/", host="evil.example:80")  # DNS rebinding: the page's own Host
    assert status == 403 and "not allowed" in body
    assert _get(url + "/dsb_status", host="evil.example")[0] == 403
    assert _get(url + "/dsb_status", host=f"localhost:{url.rsplit(':', 1)[1]}")[0] == 200
    assert _get(url + "/dsb_status", host="lab.example.org")[0] == 200  # --allow-websocket-origin lab.example.org:80
    assert _ws_status(url, token, "http://evil.example") == 403  # Bokeh's Origin check
    assert _ws_status(url, token, None) == 403  # no Origin: Tornado would accept it; the guard refuses
    assert _ws_status(url, token, url) == 101  # the page's own origin
    assert _ws_status(url, token, "http://lab.example.org") == 101  # the allowed extra origin


def test_results_with_too_many_probes_steps_or_seeds_are_refused():
    import xarray as xr

    from dsb_widgets.ui.safety import MAX_PROBES, MAX_STEPS, check_netcdf_header, check_results_layout

    for dim, n in (("probe", MAX_PROBES + 1), ("step", MAX_STEPS + 1)):
        sizes = {"step": 1, "probe": 1, "seed": 1, dim: n}
        ds = xr.Dataset({"loss": (("step", "probe", "seed"), np.ones(tuple(sizes.values()), np.float32))})
        blob = bytes(ds.to_netcdf(engine="scipy"))
        with pytest.raises(UnsafeInputError, match=f"{n:,} {dim}s, over the limit"):
            check_results_layout(check_netcdf_header(blob, "x.nc"), "x.nc")
