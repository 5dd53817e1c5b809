"""Put on PYTHONPATH by tests/test_axolotl_processes.py for Axolotl's training processes only.

Axolotl 0.21 asks CUDA whether GPU `LOCAL_RANK` can reach a peer GPU whenever more than one
process trains (`axolotl/utils/environment.py`, `check_cuda_p2p_support`), which raises "Found no
NVIDIA driver" on a machine without one. The answer only decides `NCCL_P2P_DISABLE`, which gloo
ignores; this says "no peer access", as a machine without NVLink would.
"""

import torch.cuda

torch.cuda.can_device_access_peer = lambda device, peer: False
