"""TEST-ONLY stand-in for `transformer_engine.pytorch`: names resolve (Bridge uses them in isinstance checks and
annotations at import time), but nothing can be built from them."""


class _Unavailable:
    """Any Transformer Engine class or namespace: attribute access works, construction fails loudly."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("Transformer Engine is a test stand-in here (CPU); this code path needs the real one")

    def __class_getitem__(cls, item):
        return cls


class _Namespace:
    """A TE submodule such as `te.ops`: every name in it is unavailable."""

    def __getattr__(self, name):
        return _Unavailable


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Namespace() if name.islower() else _Unavailable
