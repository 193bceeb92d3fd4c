"""CONTRIBUTING.md's worked example, done as it says: three files, and the result works.

The three code blocks of "Add an optimizer" are taken from CONTRIBUTING.md itself and put
into a copy of the package exactly where the text says (the transform module of the idea,
the family's optim module, the registry table, each with the imports and ``__all__`` lines
the text asks for). A fresh interpreter then imports that copy and checks that the new
entry steps like an independent NumPy loop of its rule over many steps, resumes from its
``state_dict``, and shows in ``hamopt list``. If the text and the code drift apart (a name
the snippet needs that the file does not import, a registry field that no longer exists),
this fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import hamopt

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(hamopt.__file__).resolve().parent


def _blocks() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Add an optimizer", 1)[1].split("\n## ", 1)[0]
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    assert len(blocks) >= 3, "the worked example has three code blocks"
    return blocks[:3]


def _files_named() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Add an optimizer", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d\. \*\*.*?`src/hamopt/([\w/]+\.py)`", section, flags=re.M)


CHECK = r'''
import numpy as np, torch, hamopt
from hamopt.cli.main import main

info = hamopt.get("signum")
assert info.defaults["lr"] == 1e-4 and info.defaults["beta"] == 0.9  # read from the signature
rng = np.random.default_rng(0)
shapes = [(7, 5), (5,), ()]
x0 = [rng.standard_normal(s) for s in shapes]
grads = [[rng.standard_normal(s) for s in shapes] for _ in range(40)]
lr, beta, wd = 0.01, 0.8, 0.1
ps = [torch.nn.Parameter(torch.tensor(x)) for x in x0]
opt = hamopt.create("signum", ps, lr=lr, beta=beta, weight_decay=wd)
xs, ms = [x.copy() for x in x0], [np.zeros(s) for s in shapes]
for t, gs in enumerate(grads, start=1):
    if t == 20:  # resume from a copy of the state_dict halfway
        saved = opt.state_dict()
        opt = hamopt.create("signum", ps, lr=lr, beta=beta, weight_decay=wd)
        opt.load_state_dict(saved)
    for p, g in zip(ps, gs):
        p.grad = torch.tensor(g)
    opt.step()
    bt = beta * (1 - beta ** (t - 1)) / (1 - beta ** t)  # the bias-corrected decay b_t
    for i, g in enumerate(gs):
        ms[i] = bt * ms[i] + (1 - bt) * g
        xs[i] = xs[i] * (1 - lr * wd) - lr * np.sign(ms[i])
for p, x in zip(ps, xs):
    np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-12, atol=1e-12)
assert main(["list", "signum"]) in (0, None)
print("worked example OK")
'''


def test_the_worked_example_adds_an_optimizer_in_three_files(tmp_path: Path) -> None:
    rule, optimizer, entry = _blocks()
    files = _files_named()
    assert files == ["transforms/adaptive.py", "optim/lecture.py", "registry.py"], files
    pkg = tmp_path / "hamopt"
    shutil.copytree(SRC, pkg, ignore=shutil.ignore_patterns("__pycache__"))

    def put(path: str, code: str, where: str) -> None:
        """``code``'s import lines after ``from __future__``, the rest at ``where`` (the end,
        or just after the line ``where``), as the text asks."""
        f = pkg / path
        text = f.read_text()
        lines = code.strip().splitlines()
        imports = [ln.split("#")[0].rstrip() for ln in lines if ln.startswith(("from ", "import "))]
        body = "\n".join(ln for ln in lines if not ln.startswith(("from ", "import "))).strip("\n")
        future = "from __future__ import annotations\n"
        assert future in text
        text = text.replace(future, future + "\n" + "\n".join(imports) + "\n", 1)
        if where == "end":
            text += "\n\n" + body + "\n"
        else:
            assert where in text
            text = text.replace(where, where + textwrap.indent(body, "    ") + "\n", 1)
        f.write_text(text)

    put("transforms/adaptive.py", rule + '\n__all__ += ["ScaleBySignedMomentum"]', "end")  # 1. the rule
    put("optim/lecture.py", optimizer + '\n__all__ += ["Signum"]', "end")  # 2. the optimizer
    put("registry.py", entry, "_TABLE = [\n")  # 3. the entry, in the table

    changed = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                     if p.read_bytes() != (SRC / p.relative_to(pkg)).read_bytes())
    assert changed == sorted(files)
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worked example OK" in run.stdout and "signum" in run.stdout
