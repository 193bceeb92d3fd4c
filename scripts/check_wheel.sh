#!/usr/bin/env bash
# Build hamopt's wheel and sdist, install the wheel into a fresh virtual environment with the
# CPU torch, and check that it works as a user would get it: `hamopt list`, the quickstart,
# `hamopt.__version__` equal to the wheel's version, and the py.typed marker.
#
#   bash scripts/check_wheel.sh            # uses the project's environment to build
#   KEEP=1 bash scripts/check_wheel.sh     # keep the temporary folder (printed) for a look
#
# The fresh environment gets torch from HAMOPT_TORCH_SPEC (default torch==2.13.0, the CPU
# build: pip finds it in the configured local wheel folders) before the wheel, and the wheel is
# installed with the torch already there pinned, so nothing pulls a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[check_wheel] %s\n' "$*" >&2; }
py=$(bash scripts/setup.sh)
tmp=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

log "building wheel and sdist into $tmp/dist"
"$py" -m build --no-isolation --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
wheel=$(ls "$tmp"/dist/hamopt-*.whl)
sdist=$(ls "$tmp"/dist/hamopt-*.tar.gz)
log "built $(basename "$wheel") and $(basename "$sdist")"

log "fresh virtual environment"
python3 -m venv "$tmp/venv"
vpy=$tmp/venv/bin/python
"$vpy" -m pip install -q "${HAMOPT_TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
echo "torch==$("$vpy" -c 'import torch; print(torch.__version__)')" > "$tmp/constraint.txt"
"$vpy" -m pip install -q -c "$tmp/constraint.txt" "$wheel" 2>&1 | grep -v "is ignored: it is neither" >&2 || true

cd "$tmp"  # not the source tree: the installed package must be the one imported
log "hamopt list"
"$tmp/venv/bin/hamopt" list >"$tmp/list.txt"
tail -1 "$tmp/list.txt"
grep -q "^hfac " "$tmp/list.txt" || { log "hamopt list does not show hfac"; exit 1; }
"$tmp/venv/bin/hamopt" list --model tinyllama hfac | tail -1

log "quickstart"
"$vpy" - "$wheel" <<'EOF'
import pathlib, sys
import torch, hamopt

wheel_version = pathlib.Path(sys.argv[1]).name.split("-")[1]
assert hamopt.__version__ == wheel_version, (hamopt.__version__, wheel_version)
pkg = pathlib.Path(hamopt.__file__).parent
assert "site-packages" in str(pkg), pkg
assert (pkg / "py.typed").exists(), "py.typed missing"

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 1))
opt = hamopt.create("hfac", model, lr=1e-2, weight_decay=0.1)
x, y = torch.randn(64, 8), torch.randn(64, 1)
first = None
for _ in range(50):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    first = first if first is not None else loss.item()
assert loss.item() < first, (first, loss.item())
print(f"hamopt {hamopt.__version__} from {pkg}: loss {first:.3f} -> {loss.item():.3f}; "
      f"state {hamopt.state_bytes(opt)} bytes")
EOF
log "ok"
