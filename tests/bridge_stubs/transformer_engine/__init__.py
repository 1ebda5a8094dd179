"""TEST-ONLY stand-in for NVIDIA Transformer Engine (CUDA-only); see tests/bridge_stubs/__init__.py.

It has no version and no submodules besides `pytorch`, so Megatron-Core's `from transformer_engine.pytorch.X
import ...` probes still fail and it keeps its local (non-TE) layers.
"""
