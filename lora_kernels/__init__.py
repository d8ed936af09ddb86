"""lora_kernels: multi-LoRA batched matmul (SGMV / BGMV) whose outputs equal PEFT's.

See DESIGN.md §2 for the public API; every name here is part of it.
"""

from ._build import __version__, build_info  # loads the compiled ops; clear error on mismatch
from . import reference
from .scaling import lora_scaling
from .ops import (
    add_lora,
    add_lora_embedding,
    add_lora_slices,
    bgmv_expand,
    bgmv_shrink,
    sgmv_expand,
    sgmv_shrink,
)
from .pool import LoRAPool
from .metadata import BatchMetadata
from .peft import load_peft_adapter
from .model import MultiLoRAModel

__all__ = [
    "__version__",
    "build_info",
    "reference",
    "lora_scaling",
    "bgmv_shrink",
    "bgmv_expand",
    "sgmv_shrink",
    "sgmv_expand",
    "add_lora",
    "add_lora_embedding",
    "add_lora_slices",
    "LoRAPool",
    "BatchMetadata",
    "load_peft_adapter",
    "MultiLoRAModel",
]
