"""Adapters from lora_kernels to the LoRA interfaces of serving engines, one module per engine.

Each module imports its engine; none is imported by ``import lora_kernels``. An engine reaches its
module through its own plugin hook (vLLM: the ``vllm.general_plugins`` entry point, see
:mod:`lora_kernels.integrations.vllm`).
"""
