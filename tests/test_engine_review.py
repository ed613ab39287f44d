"""Engine fixes from review (issue 18, items 15, 16, 19): probes seeded by name, nanoGPT weight
decay groups and per-seed gradient clipping, a public immutable task."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dsb_widgets.engine import RunConfig, build_task, load_results, resolve_config, train
from dsb_widgets.engine.ensemble import ModelStack


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


CFG = RunConfig(steps=6, probe_size=60, probes=("real", "maxent1", "ot"), device="cpu", options={"width": 16})


# --- item 15: probes seeded by name --------------------------------------------------------------------
def _same_probes(a: list[Any], b: list[Any]) -> None:
    by_name = {p.name: p for p in b}
    for p in a:
        q = by_name[p.name]
        assert torch.equal(p.x, q.x) and torch.equal(p.y, q.y), p.name
        assert (p.target is None) == (q.target is None) and (p.target is None or torch.equal(p.target, q.target))


def test_image_probe_data_does_not_depend_on_order_or_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsb_widgets.engine.images as images
    from dsb_widgets.data import load_images

    train_data, test_data = load_images("digits", "train"), load_images("digits", "test")
    names = ("real", "maxent1", "maxent2", "gauss_clone", "ot", "cqn")
    ref = images.build_image_probes(train_data, test_data, names, 40, seed=3)
    _same_probes(images.build_image_probes(train_data, test_data, names[::-1], 40, seed=3), ref)
    _same_probes(images.build_image_probes(train_data, test_data, ("cqn", "maxent2"), 40, seed=3), ref)
    # a probe added to (or reordered in) the experiment's list changes no other probe's data
    monkeypatch.setattr(images, "IMAGE_PROBES", ("new_probe", *reversed(images.IMAGE_PROBES)))
    _same_probes(images.build_image_probes(train_data, test_data, names, 40, seed=3), ref)
    other_seed = images.build_image_probes(train_data, test_data, ("maxent1",), 40, seed=4)
    assert not torch.equal(other_seed[0].x, {p.name: p for p in ref}["maxent1"].x)


def test_text_probe_data_does_not_depend_on_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsb_widgets.engine.text import build_text_probes, setup_text

    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = ["banana", "papaya", "cocoa", "abba", "cab"]
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=8)) for _ in range(300)) + "\n")
    cfg = resolve_config(RunConfig(experiment="text", dataset=str(corpus), probe_size=30, steps=2,
                                   options={"tokenizer": "char", "vocab_size": None, "context": 8, "d_model": 16,
                                            "n_head": 2, "n_layer": 1}))
    setup = setup_text(cfg)
    names = ("real", "unigram", "bigram", "trigram", "shuffled")
    ref = build_text_probes(setup, names, 30, seed=1)
    _same_probes(build_text_probes(setup, names[::-1], 30, seed=1), ref)
    _same_probes(build_text_probes(setup, ("trigram",), 30, seed=1), ref)


def test_sweep_reruns_results_with_probes_seeded_another_way(tmp_path: Path) -> None:
    from dsb_widgets.engine.results import write_atomic
    from dsb_widgets.sweep import is_finished

    out = tmp_path / "r.nc"
    cfg = resolve_config(CFG)
    ds = train(cfg, out=out).dataset
    assert ds.attrs["probe_seeding"] and len(ds.attrs["probe_digest"]) == 16
    assert is_finished(out, cfg)
    old = ds.copy()
    del old.attrs["probe_seeding"]  # a result from before probes were seeded by name
    write_atomic(old, out)
    assert not is_finished(out, cfg)
    train(cfg, out=out, resume=True)  # what a sweep does next: restarts (same config), never mixes
    assert is_finished(out, cfg)


# --- item 16: weight decay groups (nanoGPT) and gradient clipping --------------------------------------
def test_decay_groups_follow_nanogpt() -> None:
    from dsb_widgets.models.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(50, 8, n_layer=1, n_head=2, d_model=16))
    names = {id(p): n for n, p in gpt.named_parameters()}
    for stack in (ModelStack([gpt, GPT(GPTConfig(50, 8, n_layer=1, n_head=2, d_model=16))]),
                  ModelStack([gpt], vectorize=False)):
        decay, rest = stack.decay_groups()
        assert len(decay) + len(rest) == len(list(stack.parameters()))
        if not stack.vectorized:
            dec = {names[id(p)] for p in decay}
            kept = {names[id(p)] for p in rest}
            assert "wte.weight" in dec and "wpe.weight" in dec  # embeddings decay, as in nanoGPT
            assert all(n.endswith("bias") or ".ln" in n or n.startswith("ln") for n in kept), kept
            assert any("ln1.weight" in n for n in kept) and not any("ln" in n for n in dec)


def test_engine_optimizer_decays_weights_not_biases() -> None:
    from dsb_widgets.engine.loop import _Run

    cfg = resolve_config(CFG.replace(optimizer="sgd", lr=0.1, weight_decay=0.5, momentum=0.0))
    run = _Run(cfg, None, resume=False)
    groups = run.opt.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    lead = 1 if run.stack.vectorized else 0  # stacked parameters carry a leading seed dim
    assert all(p.dim() - lead >= 2 for p in groups[0]["params"])
    assert all(p.dim() - lead < 2 for p in groups[1]["params"]) and groups[1]["params"]
    # one step with zero gradients: decayed weights shrink by lr * wd, biases do not move
    before = [p.detach().clone() for g in groups for p in g["params"]]
    for g in groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    run.opt.step()
    after = [p.detach() for g in groups for p in g["params"]]
    n_decay = len(groups[0]["params"])
    for i, (b, a) in enumerate(zip(before, after)):
        torch.testing.assert_close(a, b * (1 - 0.1 * 0.5) if i < n_decay else b)


def test_stacked_gradient_clipping_equals_clipping_each_model() -> None:
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)) for _ in range(3)]
    refs = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)) for _ in range(3)]
    for r, m in zip(refs, models):
        r.load_state_dict(m.state_dict())
    stack = ModelStack(models)
    x = torch.randn(3, 11, 5)
    scale = torch.tensor([1e-3, 1.0, 30.0])  # per-seed loss scales: gradient norms below and above the cap
    (stack(x) * scale[:, None, None]).pow(2).sum().backward()
    norms = stack.clip_grad_norm_(1.0)
    for s, r in enumerate(refs):
        (r(x[s]) * scale[s]).pow(2).sum().backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(r.parameters(), 1.0)
        torch.testing.assert_close(norms[s], ref_norm)
        for (name, p) in r.named_parameters():
            torch.testing.assert_close(stack.params[name.replace(".", "__")].grad[s], p.grad)
    assert norms[0] < 1.0 < norms[2]


def test_grad_clip_is_a_run_option() -> None:
    clipped = train(CFG.replace(grad_clip=1e-3)).dataset
    free = train(CFG).dataset
    assert '"grad_clip": 0.001' in clipped.attrs["config"] and '"grad_clip": null' in free.attrs["config"]
    assert not np.allclose(clipped["train_loss"].values[1:], free["train_loss"].values[1:])


# --- item 19: a public, immutable task -----------------------------------------------------------------
def test_build_task_is_public_and_train_uses_the_given_task() -> None:
    cfg = CFG.replace(probes=("real", "maxent2"), options={"width": 16, "taylor": True})
    task = build_task(cfg)
    assert task.measure is not None and set(task.extra_probes) >= {"taylor0", "taylor2"}
    seconds_before = len(task.measure.seconds)
    res = train(cfg, task=task)
    assert len(task.measure.seconds) - seconds_before == res.dataset.sizes["step"]  # that very object measured
    np.testing.assert_allclose(res.dataset["loss"].values, train(cfg).dataset["loss"].values, rtol=1e-6)


def test_resume_does_not_mutate_the_built_probes(tmp_path: Path) -> None:
    out = tmp_path / "r.nc"
    stop = threading.Event()

    def stop_at_2(ev: dict[str, Any]) -> None:
        if ev["type"] == "checkpoint" and ev["step"] >= 2:
            stop.set()

    train(CFG, out=out, subscribers=[stop_at_2], stop_event=stop)
    task = build_task(CFG)
    saved = torch.load(out.with_name("r.probes.pt"), weights_only=True)
    saved["real"]["x"] = saved["real"]["x"] + 1.0  # make the saved set distinguishable
    torch.save(saved, out.with_name("r.probes.pt"))
    ids = [(id(p), id(p.x)) for p in task.probes]
    xs = [p.x.clone() for p in task.probes]
    train(CFG, out=out, resume=True, task=task)
    assert [(id(p), id(p.x)) for p in task.probes] == ids
    assert all(torch.equal(p.x, x) for p, x in zip(task.probes, xs))  # the caller's probes are untouched
    assert load_results(out).sizes["step"] > 2


def test_sweep_counts_a_checkpoint_suite_finished_at_its_final_step(tmp_path: Path) -> None:
    """`dsb run checkpoints` saves the config as asked and the suite's last step in attrs["final_step"]:
    such a file is finished when it reaches that step, unfinished when it stops short or differs
    elsewhere. (The older form, steps rewritten in the config, is rerun and upgraded by --resume:
    tests/test_checkpoints.py.)"""
    from dsb_widgets.engine.results import write_atomic
    from dsb_widgets.sweep import is_finished

    out = tmp_path / "r.nc"
    ds = train(resolve_config(CFG), out=out).dataset
    last = int(ds.step[-1])
    asked = RunConfig(experiment="checkpoints", dataset="tinystories", model="suite", steps=1, probes=("real",))
    saved = ds.copy()
    saved.attrs.update(config=asked.to_json(), final_step=last)
    write_atomic(saved, out)
    assert is_finished(out, asked)
    saved.attrs["final_step"] = last + 100  # stopped before the suite's end
    write_atomic(saved, out)
    assert not is_finished(out, asked)
    saved.attrs.update(config=asked.replace(model="other").to_json(), final_step=last)
    write_atomic(saved, out)
    assert not is_finished(out, asked)
    write_atomic(ds, out)
    images = RunConfig.from_json(ds.attrs["config"])  # no final_step: the config's own steps
    assert is_finished(out, images) and not is_finished(out, images.replace(steps=last + 1))
