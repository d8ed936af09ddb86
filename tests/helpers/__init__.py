"""Shared test helpers: random cases and float64 checks for the ops (lora_cases, op_checks,
slice_cases), hand-written PEFT adapters (peft_helpers) and tiny Hugging Face models (hf_fixtures).

Imported as `helpers.<module>`: tests/conftest.py puts tests/ on sys.path.
"""
