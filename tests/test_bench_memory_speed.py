"""`hamopt memory` and `hamopt speed`: formulas vs real state, the JSON output, the errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hamopt.bench.memory import memory_table
from hamopt.bench.shapes import MODELS, model_shapes, parse_shapes, total_params
from hamopt.cli import main
from hamopt.registry import get, list_optimizers


def test_llama60m_shapes_match_the_issue():
    shapes = dict(model_shapes("llama60m"))
    assert shapes["embed_tokens.weight"] == (32000, 512)
    assert shapes["lm_head.weight"] == (32000, 512)
    assert shapes["layers.7.mlp.gate_proj.weight"] == (1376, 512)
    assert shapes["layers.7.mlp.down_proj.weight"] == (512, 1376)
    assert shapes["layers.0.self_attn.q_proj.weight"] == (512, 512)
    assert "layers.8.mlp.up_proj.weight" not in shapes
    # 2 * 32000*512 + 8 * (4*512^2 + 3*1376*512 + 2*512) + 512, by hand
    assert total_params(model_shapes("llama60m")) == 58_073_600
    # published sizes: GPT-2 small 124.44M (tied head), ResNet-18 11.69M
    assert total_params(model_shapes("gpt2-small")) == 124_439_808
    assert total_params(model_shapes("resnet18")) == 11_689_512


def test_parse_shapes():
    assert parse_shapes("3x4, 5,-") == [("p0", (3, 4)), ("p1", (5,)), ("p2", ())]
    with pytest.raises(ValueError, match="bad shape"):
        parse_shapes("3by4")


def test_memory_formula_matches_state_bytes_on_real_instantiation():
    shapes = model_shapes("tiny")
    infos = [get(n) for n in list_optimizers()]
    table = memory_table(shapes, infos, check=True)
    assert table["checked"]
    bad = [(r["name"], r["state_bytes"], r["measured_bytes"], r["error"]) for r in table["rows"] if not r["match"]]
    assert not bad, bad
    rows = {r["name"]: r for r in table["rows"]}
    n, count = total_params(shapes), len(shapes)
    # by hand: AdamW keeps exp_avg and exp_avg_sq (float32) and a float32 step per tensor
    assert rows["adamw"]["state_bytes"] == 8 * n + 4 * count
    assert rows["adamw"]["vs_adamw"] == 1.0
    assert rows["sgd"]["state_bytes"] == 0


def test_memory_cli_json_and_formulas_only():
    out = main(["memory", "--model", "tiny", "--optimizers", "adamw,sgd", "--json"])
    assert out == 0
    assert main(["memory", "--model", "llama60m", "--optimizers", "adamw", "--no-check"]) == 0


def test_memory_cli_json_values(capsys):
    main(["memory", "--model", "llama60m", "--optimizers", "adamw", "adam", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["checked"] is False  # 58M parameters: formulas only unless --check
    row = data["rows"][0]
    assert row["name"] == "adamw"
    assert row["state_bytes"] == 8 * 58_073_600 + 4 * len(model_shapes("llama60m"))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["memory", "--model", "nope"], "unknown model"),
        (["memory", "--optimizers", "adamx"], "Unknown optimizer 'adamx'"),
        (["memory", "--shapes", "3y4"], "bad shape"),
        (["speed", "--model", "tiny", "--device", "tpu"], "--device"),
        (["speed", "--model", "tiny", "--steps", "0"], "--steps"),
    ],
)
def test_errors_are_one_line_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


def test_speed_tiny_json(capsys):
    rc = main(["speed", "--model", "tiny", "--optimizers", "adamw", "sgd", "--steps", "2", "--repeat", "1",
               "--warmup", "1", "--no-peers", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in data["rows"]]
    assert names == ["torch:AdamW(foreach)", "torch:AdamW(fused)", "adamw", "sgd"]
    assert data["bandwidth_gbs"] > 0
    rows = {r["name"]: r for r in data["rows"]}
    n, count = data["params"], len(model_shapes("tiny"))
    for name in ("torch:AdamW(foreach)", "torch:AdamW(fused)", "adamw"):
        r = rows[name]
        assert r["error"] is None and r["finite"]
        assert r["state_bytes"] == 8 * n + 4 * count
        assert r["bytes_touched"] == 12 * n + 2 * r["state_bytes"]
        assert math.isclose(r["gbs"], r["bytes_touched"] / (r["median_ms"] / 1e3) / 1e9)
    assert rows["torch:AdamW(fused)"]["vs_adamw_fused"] == 1.0
    assert rows["sgd"]["state_bytes"] == 0


def test_every_model_table_is_well_formed():
    for name in MODELS:
        shapes = model_shapes(name)
        assert shapes and all(isinstance(s, tuple) and all(d > 0 for d in s) for _, s in shapes)
        assert len({n for n, _ in shapes}) == len(shapes)


def test_count_step_ops_counts_launches_not_views():
    from hamopt.bench.speed import count_step_ops

    ps = [torch.zeros(3, 2, requires_grad=True) for _ in range(5)]
    for p in ps:
        p.grad = torch.ones(3, 2)
    # plain SGD without momentum: one p.add_(g, alpha=-lr) per tensor, or one foreach op
    assert count_step_ops(torch.optim.SGD(ps, lr=0.1, foreach=False)) == {"compute": 5, "foreach": 0}
    assert count_step_ops(torch.optim.SGD(ps, lr=0.1, foreach=True)) == {"compute": 1, "foreach": 1}
    assert float(ps[0][0, 0]) == pytest.approx(-0.2)  # both steps really ran


def test_speed_json_reports_ops(capsys):
    rc = main(["speed", "--model", "tiny", "--optimizers", "lion", "--steps", "1", "--repeat", "1",
               "--warmup", "1", "--no-peers", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["matmul_precision"] == torch.get_float32_matmul_precision()
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["torch:AdamW(foreach)"]["ops"]["foreach"] >= 4
    # fused: one kernel for the update and one foreach op for the step counters
    assert rows["torch:AdamW(fused)"]["ops"] == {"compute": 2, "foreach": 1}
    assert 0 < rows["lion"]["ops"]["foreach"] <= rows["lion"]["ops"]["compute"]
