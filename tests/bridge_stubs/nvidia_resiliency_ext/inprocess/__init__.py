"""TEST-ONLY stand-in for `nvidia_resiliency_ext.inprocess`: Bridge's pretrain.py imports `CallWrapper` for a type
annotation; in-process restart (its only user) stays off in these tests."""


class CallWrapper:
    """Never constructed: in-process restart is disabled (cfg.inprocess_restart is None)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("nvidia_resiliency_ext is a test stand-in here; in-process restart needs the real one")
