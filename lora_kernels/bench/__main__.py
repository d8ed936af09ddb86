"""``python -m lora_kernels.bench``: the same as ``python -m lora_kernels bench``."""

import sys

from .cli import main

sys.exit(main())
