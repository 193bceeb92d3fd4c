"""Parameter-shape tables of common models, for ``hamopt memory`` and ``hamopt speed``.

Only the shapes of the trainable parameters are listed (no weights, no buffers such as
BatchNorm running statistics), in ``torch.nn`` conventions (``nn.Linear`` weights are
``out x in``, convolution kernels ``out x in x kh x kw``). Sources: LLaMA-60M/130M as in the
GaLore/AMS papers' LLaMA configurations (untied embedding and LM head, RMSNorm without bias,
SwiGLU MLP), GPT-2 small as in Radford et al. 2019 (tied embedding, so the LM head is not a
separate parameter), ResNet-18 as in torchvision (He et al. 2016, ImageNet head).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

__all__ = ["MODELS", "ModelShapes", "model_shapes", "parse_shapes", "total_params"]

Shape = tuple[int, ...]
ModelShapes = list[tuple[str, Shape]]


def _llama(vocab: int, hidden: int, inter: int, layers: int) -> ModelShapes:
    out: ModelShapes = [("embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    out += [("norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def _gpt2(vocab: int = 50257, ctx: int = 1024, d: int = 768, layers: int = 12) -> ModelShapes:
    out: ModelShapes = [("wte.weight", (vocab, d)), ("wpe.weight", (ctx, d))]
    for i in range(layers):
        p = f"h.{i}."
        out += [
            (p + "ln_1.weight", (d,)), (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (3 * d, d)), (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)), (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)), (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (4 * d, d)), (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (d, 4 * d)), (p + "mlp.c_proj.bias", (d,)),
        ]
    out += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return out


def _resnet18(classes: int = 1000) -> ModelShapes:
    out: ModelShapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    cin = 64
    for li, cout in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{li}.{b}."
            first_in = cin if b == 0 else cout
            out += [
                (p + "conv1.weight", (cout, first_in, 3, 3)), (p + "bn1.weight", (cout,)), (p + "bn1.bias", (cout,)),
                (p + "conv2.weight", (cout, cout, 3, 3)), (p + "bn2.weight", (cout,)), (p + "bn2.bias", (cout,)),
            ]
            if b == 0 and first_in != cout:
                out += [
                    (p + "downsample.0.weight", (cout, first_in, 1, 1)),
                    (p + "downsample.1.weight", (cout,)), (p + "downsample.1.bias", (cout,)),
                ]
        cin = cout
    out += [("fc.weight", (classes, 512)), ("fc.bias", (classes,))]
    return out


def _tiny() -> ModelShapes:
    # A small LLaMA-style set plus a conv kernel, a bias and a scalar: every fallback path.
    return [
        *_llama(vocab=256, hidden=64, inter=172, layers=2),
        ("conv.weight", (16, 3, 3, 3)), ("conv.bias", (16,)), ("logit_scale", ()),
    ]


MODELS: dict[str, tuple[str, Callable[[], ModelShapes]]] = {
    "tiny": ("LLaMA-style, hidden 64, 2 layers, vocab 256, plus a conv kernel, bias and scalar (tests)", _tiny),
    "llama60m": ("LLaMA-60M: hidden 512, intermediate 1376, 8 layers, vocab 32000, untied head",
                 lambda: _llama(32000, 512, 1376, 8)),
    "llama130m": ("LLaMA-130M: hidden 768, intermediate 2048, 12 layers, vocab 32000, untied head",
                  lambda: _llama(32000, 768, 2048, 12)),
    "llama350m": ("LLaMA-350M: hidden 1024, intermediate 2736, 24 layers, vocab 32000, untied head",
                  lambda: _llama(32000, 1024, 2736, 24)),
    "gpt2-small": ("GPT-2 small: d 768, 12 layers, vocab 50257, context 1024, tied head", _gpt2),
    "resnet18-shapes": ("ResNet-18 (torchvision, ImageNet head): conv kernels, BatchNorm, fc", _resnet18),
}
_ALIASES = {"resnet18": "resnet18-shapes", "gpt2": "gpt2-small", "llama-60m": "llama60m",
            "llama-130m": "llama130m", "llama-350m": "llama350m"}

_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")


def parse_shapes(text: str) -> ModelShapes:
    """Parse a user's shape list ``"512x512,1376x512,512"`` (``x``-separated dims, comma-
    separated tensors; ``-`` for a 0-d scalar). Raises ``ValueError`` on bad input."""
    out: ModelShapes = []
    for i, tok in enumerate(t.strip() for t in text.split(",")):
        if tok == "-":
            out.append((f"p{i}", ()))
            continue
        if not _SHAPE_RE.match(tok):
            raise ValueError(f"bad shape {tok!r} in --shapes (expected e.g. 512x512,1376x512,512)")
        out.append((f"p{i}", tuple(int(d) for d in tok.split("x"))))
    return out


def model_shapes(name: str) -> ModelShapes:
    """The parameter shapes of ``name`` (see :data:`MODELS`); ``ValueError`` if unknown."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or --shapes)")
    return MODELS[key][1]()


def total_params(shapes: ModelShapes) -> int:
    return sum(math.prod(s) for _, s in shapes)
