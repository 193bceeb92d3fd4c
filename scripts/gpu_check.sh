#!/usr/bin/env bash
# Everything hamopt measures on a GPU, in one command (CI never has one):
#   the CUDA tests, `hamopt speed` on LLaMA-60M shapes (exact float32, and with TF32 and bf16
#   products for the SVD-rotation optimizers), interleaved step times beside the peers, and AdaDiag's basis
#   refresh (eigh vs SVD), and eager vs hamopt.compile_step steps beside the peers.
#   Reports go to the folder given as $1 (default: gpu-report).
# Uses the environment of scripts/setup.sh, which keeps an installed (CUDA) torch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-report}
mkdir -p "$out"
py=$(bash scripts/setup.sh)
"$py" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("scripts/gpu_check.sh: no CUDA device (torch.cuda.is_available() is False)")
print(torch.__version__, torch.cuda.get_device_name(0))
PY
run() { echo "+ $*" >&2; "$@"; }
run "$py" -m pytest -q -p no:xdist tests/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
fast="lion grams cadamw ams clion hfac adafactor_m signfsgd lionfactor adamw_variant adafactor"
run "$py" -m hamopt speed --model llama60m --device cuda --steps 10 --repeat 3 --optimizers $fast \
    | tee "$out/speed.txt"
# with the peers: issue 5 compares AdaDiag with pytorch_optimizer's SOAP in the same run
run "$py" -m hamopt speed --model llama60m --device cuda --steps 5 --repeat 2 \
    --optimizers adadiag adadiag++ adafacdiag adafacdiag++ | tee "$out/speed_svd.txt"
run "$py" -m hamopt speed --model llama60m --device cuda --steps 5 --repeat 2 --no-peers \
    --matmul-precision high --optimizers adadiag adadiag++ adafacdiag | tee "$out/speed_svd_tf32.txt"
run "$py" -m hamopt speed --model llama60m --device cuda --steps 5 --repeat 2 --no-peers \
    --matmul-precision medium --optimizers adadiag adadiag++ adafacdiag | tee "$out/speed_svd_bf16.txt"
peers=""
for p in peer:pytorch_optimizer.Lion peer:lion_pytorch.Lion peer:pytorch_optimizer.Grams peer:grams.Grams \
         peer:pytorch_optimizer.AdaFactor; do
    mod=${p#peer:}; mod=${mod%%.*}
    if "$py" -c "import $mod" 2>/dev/null; then peers="$peers $p"; fi
done
run "$py" benchmarks/interleaved_step.py --device cuda --rounds 20 \
    hfac adafactor_m adafactor lion grams cadamw fused $peers | tee "$out/interleaved.txt"
run "$py" benchmarks/adadiag_basis.py --device cuda | tee "$out/adadiag_basis.txt"
run "$py" benchmarks/compiled_step.py --device cuda --optimizers lion grams cadamw hfac adafactor_m \
    --peers peer:pytorch_optimizer.Lion peer:lion_pytorch.Lion peer:pytorch_optimizer.Grams peer:grams.Grams \
    | tee "$out/compiled.txt"
echo "reports in $out/" >&2
