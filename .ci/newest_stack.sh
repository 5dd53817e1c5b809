#!/usr/bin/env bash
# Stack (c): Python 3.12, TRL only (no Axolotl), the newest releases the pyproject ranges admit,
# installed as the README's "Install" says a TRL user installs: torch pinned in the same command, no
# [axolotl]. Runs the TRL path's tests: the SFTTrainer sequence and the callback, the engine's plan,
# the PEFT bridge (LoRA and 4-bit), the trackers and the model card.
#   bash .ci/newest_stack.sh               install, then test
#   bash .ci/newest_stack.sh --install-only
#   bash .ci/newest_stack.sh --tests-only  (in the environment an earlier --install-only made)
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

tests=(
    tests/test_trl_sequence.py tests/test_engine_plan.py tests/test_peft_bridge.py tests/test_trackers.py
    tests/test_model_card.py tests/test_settings_and_driver.py
)

if [[ "${1:-}" != "--tests-only" ]]; then
    SECONDS=0
    if python3.12 --version >/dev/null 2>&1; then
        python312=python3.12
    else  # pyenv's shim answers only for the selected version: take 3.12 from pyenv's folder
        python312="$(ls -d "$(pyenv root)"/versions/3.12*/bin/python3.12 | sort -V | tail -1)"
    fi
    rm -rf .venv-newest
    "$python312" -m venv .venv-newest
    source .venv-newest/bin/activate
    pip install torch==2.14.1 -e ".[test]"
    echo "stack (c) venv + install: ${SECONDS} s"
else
    source .venv-newest/bin/activate
fi
python -c 'import sys, torch, transformers, trl, peft, datasets
print(f"stack (c) Python {sys.version.split()[0]}: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, peft {peft.__version__}, datasets {datasets.__version__}")'
[[ "${1:-}" == "--install-only" ]] && exit 0
python -m pytest "${tests[@]}" -p no:cacheprovider
