"""Let Megatron-Core's CUDA-only code paths run on a CPU-only machine (tests, demos, laptops).

Megatron-Core allocates on `torch.cuda.current_device()`, calls `.cuda()`, keeps its dropout RNG states with the
CUDA RNG functions and checks gradient types by their CUDA names. When (and only when) no CUDA device exists,
`activate()` makes those calls land on the CPU:

- a TorchFunctionMode maps `device="cuda"` / `torch.device("cuda")` / integer devices to `"cpu"`, makes
  `Tensor.cuda()` a no-op and answers `Tensor.type()` with the `torch.cuda.` name (grad clipping asserts it);
- `torch.cuda.current_device`, `synchronize` and `current_stream` are stubbed;
- the CUDA RNG state functions (torch.cuda and `megatron.core.tensor_parallel.random`) use the CPU generator, so
  the RNG tracker's dropout states live in the one CPU generator;
- the tracker's "CPU RNG state changed within GPU RNG context" warning, which is then expected, is silenced.

On a machine with a GPU `activate()` does nothing and returns False.
"""

import logging

import torch
from torch.overrides import TorchFunctionMode

_MODE: "CpuDeviceMode | None" = None


def _to_cpu(device):
    """'cuda', 'cuda:1', torch.device('cuda') or an integer index -> 'cpu'; anything else unchanged."""
    if isinstance(device, bool):
        return device
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return "cpu"
    return device


class CpuDeviceMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if func is torch.device and args and _to_cpu(args[0]) != args[0]:
            args = ("cpu",)  # torch.device("cuda", 1) / torch.device(0); torch.device("cpu", 0) stays as it is
        if func in (torch.Tensor.to, torch.Tensor.new_empty, torch.Tensor.new_zeros):
            args = tuple(_to_cpu(a) if i > 0 else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _patch_cuda_functions() -> None:
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: None
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly, no recursion.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = lambda seed: None


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    logging.getLogger(mcore_random.__name__).setLevel(logging.ERROR)


def activate() -> bool:
    """Install the shim for the rest of the process when no CUDA device exists; True when it is active."""
    global _MODE
    if torch.cuda.is_available():
        return False
    if _MODE is None:
        _patch_cuda_functions()
        _patch_megatron_rng()
        _MODE = CpuDeviceMode()
        _MODE.__enter__()
    return True
