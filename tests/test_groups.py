"""hamopt.param_groups and hamopt.create(name, model): which parameters get weight decay.

The expected names are written out by hand from each model's structure (never computed by
the code under test); the behavioural tests check that decay really reaches only the
decayed group by stepping an optimizer with zero gradients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import hamopt
from hamopt.bench.models import TinyLlama


def _names(groups: list[dict]) -> tuple[list[str], list[str]]:
    decay = [n for g in groups if g.get("weight_decay", None) != 0.0 for n in g["param_names"]]
    free = [n for g in groups if g.get("weight_decay", None) == 0.0 for n in g["param_names"]]
    return decay, free


def test_llama_with_its_own_rmsnorm_class() -> None:
    # bench.models.RMSNorm is a user-style class (not torch.nn.RMSNorm) holding one 1-D weight.
    model = TinyLlama(layers=2)
    groups = hamopt.param_groups(model, weight_decay=0.1)
    decay, free = _names(groups)
    blocks = [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("q", "k", "v", "o", "gate", "up", "down")]
    assert decay == ["embed.weight", *blocks, "head.weight"]
    assert free == ["blocks.0.n1.weight", "blocks.0.n2.weight", "blocks.1.n1.weight", "blocks.1.n2.weight",
                    "norm.weight"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    # the tensors are the model's own, in the same order as the names
    params = dict(model.named_parameters())
    for g in groups:
        assert all(p is params[n] for p, n in zip(g["params"], g["param_names"], strict=True))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm([8, 4])  # a 2-D norm weight: found by its class, not its shape
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def test_cnn_with_batchnorm_groupnorm_and_a_2d_layernorm() -> None:
    decay, free = _names(hamopt.param_groups(ConvNet(), weight_decay=5e-4))
    assert decay == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert free == ["bn1.weight", "bn1.bias", "conv2.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
                    "fc.bias"]


class ViTish(nn.Module):
    """timm-style: no_weight_decay() on the model and on a submodule, a 2-D bias, a frozen
    table, and an output head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.proj = nn.Linear(4, 4)
        self.attn = Attn()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.rel_bias = nn.Parameter(torch.zeros(3, 3))
        self.scale = nn.Parameter(torch.ones(2, 2))

    def no_weight_decay(self) -> list[str]:
        return ["rel_bias"]


def test_model_no_weight_decay_patterns_classes_frozen_and_tied() -> None:
    m = ViTish()
    decay, free = _names(hamopt.param_groups(m))
    # embed.weight once (the head is tied to it), frozen.* left out, pos_embed and
    # attn.rel_bias named by no_weight_decay() (model and submodule level)
    # (named_parameters order: a module's own parameters, then its children's)
    assert decay == ["cls_token", "embed.weight", "proj.weight", "attn.scale", "attn.qkv.weight"]
    assert free == ["pos_embed", "proj.bias", "attn.rel_bias", "attn.qkv.bias"]
    # a glob, a module prefix and a class
    decay, free = _names(hamopt.param_groups(m, no_decay=["*_token", "attn.qkv"], decay_embeddings=False))
    assert decay == ["proj.weight", "attn.scale"]
    assert free == ["pos_embed", "cls_token", "embed.weight", "proj.bias", "attn.rel_bias", "attn.qkv.weight",
                    "attn.qkv.bias"]
    decay, _ = _names(hamopt.param_groups(m, no_decay=[Attn]))
    assert decay == ["cls_token", "embed.weight", "proj.weight"]  # Attn and its child qkv: no decay
    everything = [n for g in hamopt.param_groups(m, include_frozen=True) for n in g["param_names"]]
    assert "frozen.weight" in everything and "frozen.bias" in everything
    # no key: the optimizer's default weight decay applies to the decayed group
    assert "weight_decay" not in hamopt.param_groups(m)[0]
    assert hamopt.param_groups(m, lr=0.5)[1]["lr"] == 0.5


def test_create_with_a_module_decays_only_the_decayed_group() -> None:
    torch.manual_seed(0)
    model = ConvNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = hamopt.create("adamw", model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only decoupled decay moves a weight
    opt.step()
    for n, p in model.named_parameters():
        if n in ("conv1.weight", "conv2.weight", "fc.weight"):
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p.detach(), before[n]), n
    # filter_bias_and_norm=False: every parameter decays
    model2 = ConvNet()
    opt2 = hamopt.create("adamw", model2, lr=0.1, weight_decay=0.5, filter_bias_and_norm=False)
    assert len(opt2.param_groups) == 1 and len(opt2.param_groups[0]["params"]) == 11
    # hamopt's own optimizers too, and a plain list of tensors still works
    hf = hamopt.create("hfac", TinyLlama(layers=1), weight_decay=0.1)
    assert [g["weight_decay"] for g in hf.param_groups] == [0.1, 0.0]
    assert len(hamopt.create("hfac", list(ConvNet().parameters())).param_groups) == 1
    # the model's own rules extended from create(): names and classes kept free of decay
    m3 = TinyLlama(layers=1)
    hf3 = hamopt.create("hfac", m3, weight_decay=0.1, no_decay=["head.weight"], decay_embeddings=False)
    free = {n for g in hf3.param_groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    assert {"head.weight", "embed.weight"} <= free
    assert free == {n for g in hamopt.param_groups(m3, 0.1, no_decay=["head.weight"], decay_embeddings=False)
                    if g["weight_decay"] == 0.0 for n in g["param_names"]}
    with pytest.raises(TypeError, match="need a model"):
        hamopt.create("hfac", list(m3.parameters()), no_decay=["head.weight"])
    with pytest.raises(ValueError, match="filter_bias_and_norm=False"):
        hamopt.create("hfac", m3, no_decay=["head.weight"], filter_bias_and_norm=False)


def test_describe_counts_and_state_bytes() -> None:
    model = ConvNet()
    opt = hamopt.create("adamw", model, lr=1e-3, weight_decay=0.1)
    text = hamopt.describe(opt)
    lines = text.splitlines()
    # conv1 8*3*3*3=216, conv2 8*8*3*3=576, fc 10*8=80 -> 872; the rest: 8+8+8+8+8+32+32+10 = 114
    assert re.match(r"0\s+adamw\s+3\s+872\s+0 B\s+6.8 KiB\s+lr=0.001.*weight_decay=0.1", lines[1]), lines[1]
    assert "shapes: 8x3x3x3, 8x8x3x3, 10x8" in lines[2]
    assert re.match(r"1\s+adamw\s+8\s+114\s+0 B\s+", lines[3]), lines[3]
    x = torch.randn(2, 3, 6, 6)
    model(x).sum().backward()
    opt.step()
    rows = hamopt.groups.group_rows(opt)
    # AdamW: exp_avg + exp_avg_sq (4 bytes each) + a 4-byte step per tensor
    assert rows[0]["state_bytes"] == 872 * 8 + 3 * 4
    # forward() does not use ln: its two tensors got no gradient and hold no state
    assert rows[1]["state_bytes"] == (114 - 64) * 8 + 6 * 4
    assert rows[0]["state_bytes"] + rows[1]["state_bytes"] == hamopt.state_bytes(opt)


def test_clear_errors() -> None:
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="model Linear has no trainable parameter"):
        hamopt.param_groups(frozen)
    with pytest.raises(TypeError, match="no_decay entries must be names, patterns or module classes, got 3"):
        hamopt.param_groups(nn.Linear(2, 2), no_decay=[3])
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got list"):
        hamopt.param_groups([nn.Parameter(torch.zeros(2))])  # type: ignore[arg-type]


DOCS = Path(__file__).resolve().parents[1] / "docs"
_PAGES = ["parameter-groups.md", "precision.md"]
_BLOCKS = [(page, i, code) for page in _PAGES if (DOCS / page).exists()
           for i, code in enumerate(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S))]


@pytest.mark.parametrize("page,i,code", _BLOCKS, ids=[f"{p}:{i}" for p, i, _ in _BLOCKS])
def test_docs_examples_run(page: str, i: int, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page} block {i}", "exec"), {"__name__": "__docs__"})


def test_docs_pages_have_examples() -> None:
    assert len([b for b in _BLOCKS if b[0] == "parameter-groups.md"]) >= 3


# ---------------------------------------------------------------------------- hamopt list --model
def test_cli_list_model_groups_and_params(capsys) -> None:
    import json

    from hamopt.cli import main

    assert main(["list", "--model", "cnn", "--params", "sgd"]) == 0
    out = capsys.readouterr().out
    # SmallCNN(1, 8, 10): c1 16x1x3x3 = 144 (+16 bias), c2 32x16x3x3 = 4608 (+32), out 10x512 = 5120 (+10)
    assert "cnn: SmallCNN, 9,930 parameters" in out
    assert re.search(r"c1\.bias\s+16\s+vectors\s+no \(bias\)", out)
    assert re.search(r"out\.weight\s+10x512\s+head\s+yes", out)
    assert re.search(r"^0\s+sgd\s+3\s+9,872\s", out, re.M) and re.search(r"^1\s+sgd\s+3\s+58\s", out, re.M)
    assert main(["list", "--model", "tinyllama", "--partition", "matrices=hfac,rest=adamw", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    groups = data["optimizers"][0]["groups"]
    assert [g["rule"] for g in groups] == ["matrices: hfac", "rest: adamw", "rest: adamw"]
    # TinyLlama(): 2 blocks x (4 x 64x64 + 3 x 172x64) = 98,816; embed + head 2 x 256x64; 5 norms x 64
    assert [g["numel"] for g in groups] == [98816, 32768, 320]
    # AdamW's predicted state: 2 moments x 4 bytes x numel + a 4-byte step per tensor
    assert groups[1]["expected_state_bytes"] == 32768 * 8 + 2 * 4
    assert main(["list", "--model", "torch.nn:Identity"]) == 2  # no parameter: a one-line error


@pytest.mark.parametrize("argv,message", [
    (["list", "--model", "nope"], "unknown model 'nope'; choose one of tinyllama, charlm, mlp, cnn"),
    (["list", "--model", "no_such_module:f"], "cannot import --model 'no_such_module:f'"),
    (["list", "--model", "mlp", "--partition", "matrices"], "bad --partition item 'matrices'"),
    (["list", "--model", "mlp", "--partition", "matrix=hfac"], "Unknown selector 'matrix'; did you mean 'matrices'"),
    (["list", "--params"], "--partition, --params and --weight-decay need --model"),
])
def test_cli_list_model_errors(argv: list[str], message: str, capsys) -> None:
    from hamopt.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hamopt: error: ") and message in err and err.count("\n") == 1
