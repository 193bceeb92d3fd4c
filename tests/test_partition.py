"""hamopt.partition: several rules in one torch.optim.Optimizer.

The reference for every behaviour is the same rules run as separate optimizers on hand-split
parameter lists: the composite must give bit-identical parameters, follow per-group LR
schedules, round-trip its state_dict, and work with state_bytes, compile_step and FSDP2.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

import hamopt
from hamopt.bench.models import TinyLlama

BLOCK_MATRICES = [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("q", "k", "v", "o", "gate", "up", "down")]
NORMS = ["blocks.0.n1.weight", "blocks.0.n2.weight", "blocks.1.n1.weight", "blocks.1.n2.weight", "norm.weight"]


def _llama() -> nn.Module:
    torch.manual_seed(0)
    return TinyLlama(d=32, layers=2, heads=2, ffn=48, ctx=16)


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(step))


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x = _tokens(step)
    logits = model(x[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def _names(opt: torch.optim.Optimizer) -> list[list[str]]:
    return [g["param_names"] for g in opt.param_groups]


def test_builtin_selectors_split_a_llama() -> None:
    opt = hamopt.partition(_llama(), {"matrices": "hfac", "embeddings": "adamw", "head": "lion", "vectors": "sgd"})
    assert [type(o).__name__ for o in opt.optimizers] == ["HFac", "AdamW", "Lion", "SGD"]
    # each rule's parameters split into decayed / not decayed when the rule has weight decay
    assert _names(opt) == [BLOCK_MATRICES, ["embed.weight"], ["head.weight"], NORMS]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.01, 0.0, 0.0]
    assert opt.labels == ["matrices: hfac", "embeddings: adamw", "head: lion", "vectors: sgd"]
    # the composite's groups are the children's own dicts, in rule order
    assert all(a is b for a, b in zip(opt.param_groups, [g for o in opt.optimizers for g in o.param_groups]))


def test_rest_patterns_predicates_classes_and_kwargs() -> None:
    model = _llama()
    opt = hamopt.partition(model, [
        ("blocks.0.*", ("adamw", {"lr": 1e-3, "weight_decay": 0.1})),          # a name pattern
        (hamopt.select.module(nn.Embedding), (torch.optim.SGD, {"lr": 0.1})),  # a class, an Optimizer class
        (lambda name, p: name.startswith("blocks.1.") and p.dim() == 2, (hamopt.Lion, {"lr": 1e-4})),
        ("rest", (lambda params, lr: torch.optim.Adam(params, lr=lr), {"lr": 0.5})),  # a factory
    ])
    b0 = [n for n in BLOCK_MATRICES if n.startswith("blocks.0")]
    b1 = [n for n in BLOCK_MATRICES if n.startswith("blocks.1")]
    assert _names(opt) == [b0, ["blocks.0.n1.weight", "blocks.0.n2.weight"], ["embed.weight"], b1,
                           ["blocks.1.n1.weight", "blocks.1.n2.weight", "norm.weight", "head.weight"]]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 0.1, 1e-4, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups[:2]] == [0.1, 0.0]


def test_every_parameter_exactly_once_or_a_clear_error() -> None:
    model = _llama()
    with pytest.raises(ValueError, match=r"parameter 'embed.weight' \(256, 32\) is selected by two rules, "
                                         r"embeddings and name\('\*.weight'\)"):
        hamopt.partition(model, {"embeddings": "adamw", hamopt.select.name("*.weight"): "sgd"})
    with pytest.raises(ValueError, match=r"parameters 'embed.weight', 'blocks.0.n1.weight', 'blocks.0.n2.weight', "
                                         r"'blocks.1.n1.weight', 'blocks.1.n2.weight' and 2 more selected by no rule"):
        hamopt.partition(model, {"matrices": "hfac"})
    with pytest.raises(ValueError, match=r"parameter 'head.weight' selected by no rule; add a rule for it"):
        hamopt.partition(model, {"matrices": "hfac", "embeddings": "sgd", "vectors": "sgd"})
    with pytest.raises(ValueError, match="rule embeddings selects no parameter of Sequential"):
        hamopt.partition(nn.Sequential(nn.Linear(2, 2)), {"embeddings": "adamw", "rest": "sgd"})
    with pytest.raises(ValueError, match="Unknown selector 'matrix'; did you mean 'matrices'"):
        hamopt.partition(model, {"matrix": "hfac", "rest": "sgd"})
    with pytest.raises(ValueError, match="Unknown optimizer 'hfax'"):
        hamopt.partition(model, {"matrices": "hfax", "rest": "sgd"})
    with pytest.raises(TypeError, match="A partition rule must be a registry name, an Optimizer class or a factory"):
        hamopt.partition(model, {"rest": 3})
    with pytest.raises(NotImplementedError, match="add it to one of its children"):
        hamopt.partition(model, {"rest": "sgd"}).add_param_group({"params": []})


def _composite_and_reference() -> tuple[nn.Module, torch.optim.Optimizer, nn.Module, list[torch.optim.Optimizer]]:
    """The same split twice: hamopt.partition, and three optimizers built by hand."""
    a, b = _llama(), _llama()
    comp = hamopt.partition(a, {"matrices": ("hfac", {"lr": 3e-3, "weight_decay": 0.1}),
                                "embeddings": ("lion", {"lr": 1e-4, "weight_decay": 0.5}),
                                "rest": ("adamw", {"lr": 1e-2})})
    pb = dict(b.named_parameters())
    refs = [
        hamopt.HFac([pb[n] for n in BLOCK_MATRICES], lr=3e-3, weight_decay=0.1),
        hamopt.Lion([pb["embed.weight"]], lr=1e-4, weight_decay=0.5),
        torch.optim.AdamW([{"params": [pb["head.weight"]]},
                           {"params": [pb[n] for n in NORMS], "weight_decay": 0.0}], lr=1e-2, fused=True),
    ]
    return a, comp, b, refs


def _step_both(a: nn.Module, comp: torch.optim.Optimizer, sched: Any, b: nn.Module,
               refs: list[torch.optim.Optimizer], ref_scheds: list[Any], step: int) -> None:
    """One step of the composite on ``a`` and of the separate optimizers on ``b``, each
    followed by its scheduler."""
    comp.zero_grad()
    _loss(a, step).backward()
    comp.step()
    sched.step()
    for o in refs:
        o.zero_grad()
    _loss(b, step).backward()
    for o, s in zip(refs, ref_scheds):
        o.step()
        s.step()


def test_equals_separate_optimizers_with_per_group_schedules() -> None:
    a, comp, b, refs = _composite_and_reference()
    lam = lambda s: 1.0 / (1 + s)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(comp, lam)
    ref_scheds = [torch.optim.lr_scheduler.LambdaLR(o, lam) for o in refs]
    for step in range(5):
        _step_both(a, comp, sched, b, refs, ref_scheds, step)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert [g["lr"] for g in comp.param_groups] == pytest.approx([3e-3 / 6, 1e-4 / 6, 1e-2 / 6, 1e-2 / 6])
    assert hamopt.state_bytes(comp) == sum(hamopt.state_bytes(o) for o in refs) > 0


@pytest.mark.parametrize("kind", ["onecycle", "cyclic"])
def test_momentum_cycling_schedulers_equal_separate_optimizers(kind: str) -> None:
    # OneCycleLR and CyclicLR cycle beta1 when the optimizer's defaults have "betas": every
    # rule here has them, so the composite must follow the same lrs and betas as its children.
    a, comp, b, refs = _composite_and_reference()

    def make(o: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        n = len(o.param_groups)
        if kind == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[1e-2] * n, total_steps=8)
        return torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-4, max_lr=1e-2, step_size_up=3)

    sched, ref_scheds = make(comp), [make(o) for o in refs]
    assert "betas" in comp.defaults and "lr" in comp.defaults
    for step in range(6):
        _step_both(a, comp, sched, b, refs, ref_scheds, step)
        ref_groups = [g for o in refs for g in o.param_groups]
        assert [g["lr"] for g in comp.param_groups] == [g["lr"] for g in ref_groups]
        assert [g["betas"] for g in comp.param_groups] == [g["betas"] for g in ref_groups]
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_defaults_are_what_every_child_has() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    comp = hamopt.partition(m, {"matrices": "hfac", "rest": ("sgd", {"lr": 0.1, "momentum": 0.9})})
    assert "lr" in comp.defaults and "betas" not in comp.defaults and "momentum" not in comp.defaults
    with pytest.raises(ValueError, match="cycle_momentum"):  # torch's own message, not a KeyError
        torch.optim.lr_scheduler.OneCycleLR(comp, max_lr=0.1, total_steps=4)
    torch.optim.lr_scheduler.OneCycleLR(comp, max_lr=0.1, total_steps=4, cycle_momentum=False)


def test_state_dict_is_torch_format_and_resumes_bit_for_bit(tmp_path) -> None:
    a, comp, _, _ = _composite_and_reference()
    for step in range(3):
        comp.zero_grad()
        _loss(a, step).backward()
        comp.step()
    sd = comp.state_dict()
    assert set(sd) == {"state", "param_groups"}
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    assert ids == list(range(len(list(a.parameters())))) == sorted(sd["state"])
    torch.save({"model": a.state_dict(), "opt": sd}, tmp_path / "ckpt.pt")
    # continue the original and a fresh copy loaded from the checkpoint: identical
    c, fresh, _, _ = _composite_and_reference()
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    c.load_state_dict(ck["model"])
    fresh.load_state_dict(ck["opt"])
    for model, opt in ((a, comp), (c, fresh)):
        for step in range(3, 6):
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="loaded state dict has 3 parameter groups; this optimizer has 4"):
        fresh.load_state_dict({"state": {}, "param_groups": sd["param_groups"][:3]})
    # deepcopy / pickle keep the children
    twin = copy.deepcopy(comp).optimizers[0]
    assert [float(s["step"]) for s in twin.state.values()] == [6.0] * len(BLOCK_MATRICES)


def test_a_wrapper_child_with_a_state_dict_format_of_its_own() -> None:
    # Lookahead's state_dict holds its base's inside: the composite keeps it whole
    def run(resume: bool) -> list[torch.Tensor]:
        model = _mlp()
        opt = hamopt.partition(model, {"matrices": "hfac", "rest": ("lookahead", {"k": 2})})
        _train(model, opt, range(3))
        if resume:
            sd = copy.deepcopy(opt.state_dict())
            model2 = copy.deepcopy(model)
            opt = hamopt.partition(model2, {"matrices": "hfac", "rest": ("lookahead", {"k": 2})})
            opt.load_state_dict(sd)
            model = model2
        _train(model, opt, range(3, 6))
        assert hamopt.state_bytes(opt) == sum(r["state_bytes"] for r in hamopt.groups.group_rows(opt)) > 0
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run(False), run(True)):
        assert torch.equal(a, b)


def test_hooks_fire_once_zero_grad_and_closure() -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    a, comp, _, _ = _composite_and_reference()
    calls = {"pre": 0, "post": 0, "global": 0, "closure": 0}
    comp.register_step_pre_hook(lambda *_: calls.__setitem__("pre", calls["pre"] + 1))
    comp.register_step_post_hook(lambda *_: calls.__setitem__("post", calls["post"] + 1))
    handle = register_optimizer_step_post_hook(lambda *_: calls.__setitem__("global", calls["global"] + 1))
    try:
        def closure() -> torch.Tensor:
            calls["closure"] += 1
            comp.zero_grad()
            loss = _loss(a, 0)
            loss.backward()
            return loss

        loss = comp.step(closure)
    finally:
        handle.remove()
    assert calls == {"pre": 1, "post": 1, "global": 1, "closure": 1}
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert all(p.grad is not None for p in a.parameters())
    comp.zero_grad()
    assert all(p.grad is None for p in a.parameters())


def test_compile_step_equals_eager() -> None:
    torch._dynamo.reset()
    eager_model, comp_model = _mlp().float(), _mlp().float()
    rules = {"matrices": ("hfac", {"lr": 3e-3}), "rest": ("lion", {"lr": 1e-3})}
    eager = hamopt.partition(eager_model, rules)
    comp = hamopt.compile_step(hamopt.partition(comp_model, rules), backend="aot_eager")
    assert all(isinstance(g["lr"], torch.Tensor) for g in comp.param_groups)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in (eager, comp)]
    x, y = (t.float() for t in _batch())
    for _ in range(3):
        for model, opt, sch in ((eager_model, eager, scheds[0]), (comp_model, comp, scheds[1])):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sch.step()
    for p, q in zip(eager_model.parameters(), comp_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager_model[0].weight, _mlp().float()[0].weight)


# ---------------------------------------------------------------------------- FSDP2 (gloo, 2 processes)
try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # pragma: no cover
    fully_shard = None  # type: ignore[assignment]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4)).double()


def _rules() -> dict:
    return {"matrices": ("hfac", {"lr": 0.01, "weight_decay": 0.1}), "rest": ("adamw", {"lr": 0.01})}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 4, generator=g, dtype=torch.float64)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    x, y = _batch()
    for _ in steps:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _fsdp_worker(rank: int, out: str) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model = fully_shard(_mlp())
    opt = hamopt.partition(model, _rules())
    _train(model, opt, range(3))
    # torch's DCP view of the composite's state_dict (it holds the live tensors: copy it)
    osd = copy.deepcopy(get_optimizer_state_dict(model, opt))
    fqns = sorted(osd["state"])
    _train(model, opt, range(3, 5))
    # resume: a fresh sharded model and optimizer, loaded through DCP, then the same 2 steps
    model2 = fully_shard(_mlp())
    opt2 = hamopt.partition(model2, _rules())
    _train(model2, opt2, range(3))  # same weights as model at step 3
    opt2b = hamopt.partition(model2, _rules())
    set_optimizer_state_dict(model2, opt2b, osd)
    _train(model2, opt2b, range(3, 5))
    full = [p.full_tensor().detach().clone() for p in model.parameters()]
    resumed = [p.full_tensor().detach().clone() for p in model2.parameters()]
    return {"full": full, "resumed": resumed, "fqns": fqns}


@pytest.mark.dist
@pytest.mark.skipif(fully_shard is None or not dist.is_available() or sys.platform == "win32",
                    reason="needs torch.distributed with FSDP2")
def test_fsdp2_equals_single_process_and_resumes_through_dcp(tmp_path) -> None:
    from test_distributed import _spawn

    ranks = _spawn(_fsdp_worker, str(tmp_path / "fsdp"))
    model = _mlp()
    _train(model, hamopt.partition(model, _rules()), range(5))
    assert ranks[0]["fqns"] == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]
    for r in ranks:
        for a, b, p in zip(r["full"], r["resumed"], model.parameters()):
            torch.testing.assert_close(a, p.detach(), rtol=1e-10, atol=1e-12)
            assert torch.equal(a, b)
