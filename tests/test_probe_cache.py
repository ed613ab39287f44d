"""Disk cache of class statistics and probe sets: keys, provenance, hits, corruption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsb_widgets import probe_cache


@pytest.fixture()
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(probe_cache.CACHE_ENV, "1")
    return tmp_path


def test_hit_returns_stored_tensors_and_provenance(cache_root: Path) -> None:
    calls = []

    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3), "y": torch.tensor([0, 1])}

    prov = {"kind": "t", "data": probe_cache.tensor_hash(torch.ones(3)), "seed": 1}
    a = probe_cache.cached("t", prov, build)
    b = probe_cache.cached("t", prov, build)
    assert len(calls) == 1
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    (file,) = (cache_root / "probes").glob("t-*.pt")
    assert probe_cache.read_provenance(file)["seed"] == 1
    probe_cache.cached("t", {**prov, "seed": 2}, build)  # another key: built again
    assert len(calls) == 2


def test_content_hash_sees_values_dtype_and_shape() -> None:
    x = torch.zeros(4, 3)
    h = probe_cache.tensor_hash(x)
    assert h == probe_cache.tensor_hash(x.clone())
    y = x.clone()
    y[2, 1] = 1e-7
    assert h != probe_cache.tensor_hash(y)
    assert h != probe_cache.tensor_hash(x.double())
    assert h != probe_cache.tensor_hash(x.reshape(3, 4))
    assert probe_cache.provenance_key({"a": 1, "b": [1, 2]}) == probe_cache.provenance_key({"b": (1, 2), "a": 1})


def test_corrupt_file_is_rebuilt_with_a_warning(cache_root: Path) -> None:
    prov = {"kind": "c"}
    probe_cache.cached("c", prov, lambda: {"v": torch.ones(2)})
    (file,) = (cache_root / "probes").glob("c-*.pt")
    file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="rebuilding"):
        out = probe_cache.cached("c", prov, lambda: {"v": torch.full((2,), 3.0)})
    assert torch.equal(out["v"], torch.full((2,), 3.0))


def test_cache_off_builds_every_time(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(probe_cache.CACHE_ENV, "0")
    calls = []
    for _ in range(2):
        probe_cache.cached("off", {"k": 1}, lambda: calls.append(1) or {"v": torch.ones(1)})
    assert len(calls) == 2 and not (cache_root / "probes").exists()


def test_image_probes_hit_equals_miss(cache_root: Path) -> None:
    """A second build of the digits probes comes from disk and equals the first exactly."""
    from dsb_widgets.data import load_images
    from dsb_widgets.engine.image_probes import build_image_probes

    tr, te = load_images("digits", "train"), load_images("digits", "test")
    names = ("real", "maxent2", "ot", "cqn", "shift")
    before = dict(probe_cache.STATS.hits)
    a = build_image_probes(tr, te, names, 120, seed=5)
    b = build_image_probes(tr, te, names, 120, seed=5)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y), pa.name
    assert all(probe_cache.STATS.hits.get(f"probe-{n}", 0) > before.get(f"probe-{n}", 0) for n in names)
    c = build_image_probes(tr, te, ("ot",), 120, seed=5, options={"ot_shrinkage": "none"})  # option in key
    assert not torch.equal(c[0].x, a[2].x)
