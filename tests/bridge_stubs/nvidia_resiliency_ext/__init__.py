"""TEST-ONLY stand-in for NVIDIA Resiliency Extension; see tests/bridge_stubs/__init__.py. Only `inprocess`
exists, so Bridge's `safe_import` of its checkpointing / fault-tolerance parts still reports them absent."""
