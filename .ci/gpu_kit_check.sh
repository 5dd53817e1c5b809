#!/usr/bin/env bash
# The offline GPU kit, tested on CPU as the GPU machine (../shared/GPU.md; benchmarks/gpu/kit.py):
# a Python 3.12 environment with exactly that machine's preinstalled packages (torch 2.11 from PyPI,
# whose CUDA build runs on the CPU; transformers 5.17, accelerate 1.15, numpy, pandas, pyarrow < 24,
# safetensors, matplotlib, tqdm, pyyaml; typer < 0.26 so that pydantic, which the machine lacks,
# does not come in with it), the kit's parts prepared by stack (a)'s Python (which has the corpora
# packages), installed there with no index, and the validation's --cpu-check run with the kit and
# the checkout as its only additions. Fails when a part is over 60 MiB or any step is not ok.
#   bash .ci/gpu_kit_check.sh PYTHON3.12 [--install-only | --check-only]
set -euo pipefail
cd "$(dirname "$0")/.."
python312="$1"
mode="${2:-all}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
if [[ "$mode" != "--check-only" ]]; then
    rm -rf .venv-gpu-sim
    "$python312" -m venv .venv-gpu-sim
    .venv-gpu-sim/bin/pip install --quiet torch==2.11.0 transformers==5.17.0 'accelerate==1.15.*' numpy pandas \
        'pyarrow<24' safetensors matplotlib tqdm pyyaml 'typer<0.26'
fi
[[ "$mode" == "--install-only" ]] && exit 0
rm -rf outputs/gpu-kit outputs/gpu-sim
python benchmarks/gpu/kit.py prepare --output outputs/gpu-kit
.venv-gpu-sim/bin/python benchmarks/gpu/kit.py install --parts outputs/gpu-kit --target outputs/gpu-sim/site
eval "$(.venv-gpu-sim/bin/python benchmarks/gpu/kit.py env --target outputs/gpu-sim/site)"
if ! .venv-gpu-sim/bin/python benchmarks/gpu_validation.py --cpu-check --output outputs/gpu-sim/validation.json \
    --work-dir outputs/gpu-sim/work; then
    cat outputs/gpu-sim/validation.json 2>/dev/null || true  # which step failed, and its output's tail
    exit 1
fi
env -u PYTHONPATH python benchmarks/gpu/kit.py check --parts outputs/gpu-kit --validation outputs/gpu-sim/validation.json
