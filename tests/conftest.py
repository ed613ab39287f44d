"""Shared test settings.

Hypothesis: CI (scripts/test.sh sets HYPOTHESIS_PROFILE=ci) draws the same examples every run,
so a red build is reproducible; locally the default profile explores new examples each run.
Failures found that way are pinned with ``@example`` in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import settings

from dsb_widgets.data import ImageData, load_images

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def fashion_mnist_test() -> ImageData:
    """Fashion-MNIST's test split from ``$DSB_DATA_DIR`` (CI: ../shared/data), else skip."""
    root = os.environ.get("DSB_DATA_DIR")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        pytest.skip("DSB_DATA_DIR with fashion-mnist/ not set (CI sets it to ../shared/data)")
    return load_images("fashion_mnist", split="test", data_dir=root)  # 1,000 images per class


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a whole test module (2 shared cores in CI; DEVELOPERS.md: threads are
    set deliberately). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HOST_READS = ("item", "cpu", "numpy", "tolist", "__bool__", "__int__", "__float__")


@pytest.fixture
def spy_host_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """Call it to start recording every Tensor method that reads a value back to the host (a
    device sync on a GPU); returns the list the names are appended to."""

    import torch

    def start() -> list[str]:
        calls: list[str] = []
        for name in HOST_READS:
            orig = getattr(torch.Tensor, name)

            def spy(self: "torch.Tensor", *args: object, _name: str = name, _orig: object = orig,
                    **kw: object) -> object:
                calls.append(_name)
                return _orig(self, *args, **kw)  # type: ignore[operator]

            monkeypatch.setattr(torch.Tensor, name, spy)
        return calls

    return start
