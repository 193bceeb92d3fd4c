"""hamopt inside Hugging Face's Trainer and PyTorch Lightning (the real libraries, offline).

Installed by the ``integrations`` extra (part of ``dev``). A tiny ``LlamaForCausalLM`` is built
from a config (no download); each library trains it with a hamopt optimizer, saves a
checkpoint, and a second run resumed from that checkpoint must end bit-for-bit where the
uninterrupted run ended (the optimizer state went through the library's own checkpoint).
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import hamopt

transformers = pytest.importorskip("transformers", reason="pip install 'hamopt[integrations]'")
pl = pytest.importorskip("lightning.pytorch", reason="pip install 'hamopt[integrations]'")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ---------------------------------------------------------------------------- Hugging Face
def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, 16, (n, 1), generator=g)
        self.x = (base + torch.arange(length)) % 64  # learnable: counting up from a random start

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _args(out: Path, steps: int = 6, save: int = 3, **kw: object) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, save_steps=save, **kw,
        save_strategy="steps", logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )


def _opt_and_sched(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = hamopt.partition(model, {"matrices": ("hfac", {"lr": 1e-2, "weight_decay": 0.1}),
                                   "rest": ("lion", {"lr": 1e-3, "weight_decay": 0.1})})
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))


def test_param_groups_of_a_hugging_face_llama() -> None:
    model = _llama()
    decay, free = [], []
    for g in hamopt.param_groups(model, weight_decay=0.1):
        (decay if g["weight_decay"] else free).extend(g["param_names"])
    layers = [f"model.layers.{i}.{n}.weight" for i in range(2)
              for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert decay == ["model.embed_tokens.weight", *layers, "lm_head.weight"]
    # LlamaRMSNorm is Hugging Face's own class: found because its only parameter is 1-D
    assert free == [f"model.layers.{i}.{n}.weight" for i in range(2)
                    for n in ("input_layernorm", "post_attention_layernorm")] + ["model.norm.weight"]
    opt = hamopt.partition(model, {"matrices": "hfac", "embeddings": "adamw", "head": "lion", "vectors": "lion"})
    assert [g["param_names"] for g in opt.param_groups] == [
        layers, ["model.embed_tokens.weight"], ["lm_head.weight"], free]


def test_trainer_with_optimizers_tuple_saves_and_resumes_bit_for_bit(tmp_path) -> None:
    from transformers import Trainer

    model = _llama()
    opt, sched = _opt_and_sched(model)
    trainer = Trainer(model=model, args=_args(tmp_path / "a"), train_dataset=_Tokens(), optimizers=(opt, sched))
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    ckpt = tmp_path / "a" / "checkpoint-3"
    assert (ckpt / "optimizer.pt").exists() and (ckpt / "scheduler.pt").exists()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert set(saved) == {"state", "param_groups"} and len(saved["param_groups"]) == 3

    resumed = _llama()
    opt2, sched2 = _opt_and_sched(resumed)
    trainer2 = Trainer(model=resumed, args=_args(tmp_path / "b"), train_dataset=_Tokens(), optimizers=(opt2, sched2))
    out2 = trainer2.train(resume_from_checkpoint=str(ckpt))
    assert out2.global_step == out.global_step == 6
    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    step_counts = {float(s["step"]) for s in opt2.optimizers[0].state.values()}
    assert step_counts == {6.0}


@pytest.mark.skipif("optimizer_cls_and_kwargs" not in inspect.signature(transformers.Trainer.__init__).parameters,
                    reason="this transformers has no optimizer_cls_and_kwargs")
def test_trainer_with_optimizer_cls_and_kwargs(tmp_path) -> None:
    from transformers import Trainer

    model = _llama()
    # The Trainer builds the groups itself and sets each group's weight_decay from
    # TrainingArguments.weight_decay (a weight_decay in the kwargs would be overridden).
    trainer = Trainer(model=model, args=_args(tmp_path, steps=4, save=2, weight_decay=0.1), train_dataset=_Tokens(),
                      optimizer_cls_and_kwargs=(hamopt.HFac, {"lr": 1e-2}))
    trainer.train()
    opt = trainer.optimizer
    inner = getattr(opt, "optimizer", opt)  # accelerate wraps it
    assert isinstance(inner, hamopt.HFac)
    assert sum(len(g["params"]) for g in inner.param_groups) == len(list(model.parameters()))
    assert {float(s["step"]) for s in inner.state.values()} == {4.0}
    # the Trainer's own decay split (no decay on its norm layers and biases) reached the groups
    assert sorted(g["weight_decay"] for g in inner.param_groups) == [0.0, 0.1]
    resumed = _llama()
    t2 = Trainer(model=resumed, args=_args(tmp_path / "r", steps=4, save=2, weight_decay=0.1), train_dataset=_Tokens(),
                 optimizer_cls_and_kwargs=(hamopt.HFac, {"lr": 1e-2}))
    t2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- Lightning
class _LitLM(pl.LightningModule):
    def __init__(self, partitioned: bool = False) -> None:
        super().__init__()
        self.partitioned = partitioned
        from hamopt.bench.models import TinyLlama

        torch.manual_seed(0)
        self.model = TinyLlama(vocab=64, d=32, layers=2, heads=2, ffn=48, ctx=16)

    def training_step(self, batch: tuple[torch.Tensor], _: int) -> torch.Tensor:
        (x,) = batch
        logits = self.model(x[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        if self.partitioned:
            opt = hamopt.partition(self.model, {"matrices": ("hfac", {"lr": 1e-2, "weight_decay": 0.1}),
                                                "rest": ("lion", {"lr": 1e-2, "weight_decay": 0.1})})
        else:
            opt = hamopt.create("hfac", self.model, lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 16, (12, 1), generator=g) + torch.arange(17)) % 64
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4, shuffle=False)


def _pl_trainer(root: Path, epochs: int) -> pl.Trainer:
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(root), every_n_epochs=1, save_top_k=-1,
                                        filename="{epoch}")
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[ckpt],
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                      default_root_dir=str(root))


@pytest.mark.parametrize("partitioned", [False, True], ids=["create", "partition"])
def test_lightning_checkpoint_resumes_bit_for_bit(tmp_path, partitioned: bool) -> None:
    full = _LitLM(partitioned)
    _pl_trainer(tmp_path / "a", epochs=2).fit(full, _loader())  # 2 epochs of 3 steps
    ckpt = tmp_path / "a" / "epoch=0.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    first = "blocks.0.q.weight" if partitioned else "embed.weight"
    assert saved["optimizer_states"][0]["param_groups"][0]["param_names"][0] == first
    resumed = _LitLM(partitioned)
    trainer = _pl_trainer(tmp_path / "b", epochs=2)
    trainer.fit(resumed, _loader(), ckpt_path=str(ckpt))
    assert trainer.global_step == 6
    opt = trainer.optimizers[0]
    assert isinstance(opt, hamopt.PartitionedOptimizer if partitioned else hamopt.HFac)
    assert {float(s["step"]) for s in opt.state.values()} == {6.0}
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    for (n, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------------------- docs/integrations.md
_DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
_DOC_BLOCKS = re.findall(r"```python\n(.*?)```", _DOC.read_text(), re.S)


def test_docs_integrations_examples_run(tmp_path, monkeypatch) -> None:
    assert len(_DOC_BLOCKS) == 3
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(_DOC_BLOCKS):
        exec(compile(code, f"integrations.md block {i}", "exec"), {"__name__": "__docs__"})
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").exists()
    assert (tmp_path / "lightning" / "checkpoints" / "epoch=0-step=2.ckpt").exists()
