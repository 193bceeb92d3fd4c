"""The registry (create, list_optimizers, get) and memory accounting."""

from __future__ import annotations

import pytest
import torch

import hamopt
from hamopt.registry import OptimizerInfo, register

ISSUE_2_NAMES = ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax",
                 "nadam", "radam", "amsgrad", "adafactor"]


def test_lecture_classics_are_registered() -> None:
    names = hamopt.list_optimizers()
    for n in ISSUE_2_NAMES:
        assert n in names
    assert hamopt.list_optimizers(family="classic") == ISSUE_2_NAMES


def test_create_applies_defaults_and_overrides() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = hamopt.create("adamw", [p], lr=3e-4)
    assert opt.param_groups[0]["lr"] == 3e-4
    assert opt.param_groups[0]["weight_decay"] == hamopt.get("adamw").defaults["weight_decay"]
    assert isinstance(hamopt.create("AdamW ", [torch.nn.Parameter(torch.zeros(2))]), torch.optim.AdamW)


def test_unknown_name_lists_the_closest() -> None:
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamm'; did you mean 'adam'"):
        hamopt.create("adamm", [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="Unknown optimizer 'zzzz' \\(hamopt list shows all"):
        hamopt.get("zzzz")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        hamopt.create("adam", [torch.nn.Parameter(torch.zeros(2))], not_an_option=1)


def test_duplicate_registration_is_rejected() -> None:
    info = hamopt.get("adam")
    with pytest.raises(ValueError, match="already registered"):
        register(OptimizerInfo(**{**info.__dict__}))


def test_state_bytes_counts_real_tensors_by_hand() -> None:
    # AdamW on a 6 x 10 float32 matrix and a 10-vector: exp_avg + exp_avg_sq (2 * 70 floats)
    # and one float32 step counter per parameter, computed by hand.
    w, b = torch.nn.Parameter(torch.zeros(6, 10)), torch.nn.Parameter(torch.zeros(10))
    opt = hamopt.create("adamw", [w, b])
    assert hamopt.state_bytes(opt) == 0
    (w.sum() + b.sum()).backward()
    opt.step()
    assert hamopt.state_bytes(opt) == 2 * 70 * 4 + 2 * 4
    assert hamopt.expected_state_bytes("adamw", [w, b]) == 2 * 70 * 4 + 2 * 4


def test_state_bytes_counts_shared_storage_once() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=0.1)
    buf = torch.zeros(4)
    opt.state[w]["a"] = buf
    opt.state[w]["b"] = buf
    assert hamopt.state_bytes(opt) == 16


def test_state_bytes_follows_wrappers() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    inner = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(4)
    inner.step()

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, base: torch.optim.Optimizer) -> None:
            self.base_optimizer = base
            super().__init__(base.param_groups, {})
            self.state[w]["slow"] = torch.zeros(4)

    assert hamopt.state_bytes(Wrapper(inner)) == 16 + 16
