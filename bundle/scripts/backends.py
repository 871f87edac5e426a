"""How the network runs on the machine it finds: eager, ``torch.compile`` or bf16 autocast (``--backend``).

``auto`` (inference.json's default) chooses at run time, with :func:`choose_backend`:

* on a GPU: ``eager``, with float16 autocast where ``amp`` is on;
* on a CPU with bf16 matrix units (``amx_bf16`` or ``avx512_bf16`` among the CPU flags): ``bf16``, autocast to
  bfloat16. bf16 moves held-out scores by less than 0.001 (``bench/backend_agreement.py``; docs/performance.md);
* on other CPUs, a run of at least :data:`COMPILE_MIN_WINDOWS` sliding windows per process: ``compile``
  (``torch.compile``). It computes the same probabilities to 2.5e-6, 1.4 to 1.6 times as fast (one or two
  threads), after a compile of 4 s (cached) to 22 s (cold), which so many windows repay;
* else ``eager`` fp32.

bf16's speed is not yet measured on bf16 hardware; its scores are (docs/performance.md). ``compile`` falls back
to eager, with a warning, where compiling fails (no C++ compiler, an unsupported platform) or the first window of
each input shape differs from eager's by more than :data:`COMPILE_TOLERANCE`. None of these needs a package beyond
torch; ONNX Runtime and OpenVINO are measured by ``bench/inference_speed.py`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import InputError

__all__ = [
    "BACKENDS",
    "BF16_FLAGS",
    "COMPILE_MIN_WINDOWS",
    "COMPILE_TOLERANCE",
    "cpu_flags",
    "choose_backend",
    "CompiledNetwork",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "bf16")
#: CPU flags (/proc/cpuinfo) of units that multiply bfloat16 natively; elsewhere torch emulates bf16, ~100x slower
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: windows from which ``auto`` compiles on a CPU without bf16: the 33 ms it saves per 512 x 512 window on one thread
#: repay its cold compile (18 s in the command) from about 550 windows on (AMD EPYC, 2 cores; docs/performance.md)
COMPILE_MIN_WINDOWS = 1000
#: largest difference of the compiled network's sigmoid from eager's, on its first window, that it may keep
COMPILE_TOLERANCE = 1e-4


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where the file is missing (other systems)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def choose_backend(
    backend: str, device: torch.device | str, windows: int, flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """The backend to run and why, for ``backend`` (one of :data:`BACKENDS`) on ``device``.

    Args:
        backend: what was asked for; ``"auto"`` chooses (module docstring).
        device: where the network runs.
        windows: how many sliding windows this process computes (0: unknown, counted as few).
        flags: the CPU's flags (default: this machine's, :func:`cpu_flags`).

    Returns:
        ``(name, reason)``: ``name`` one of ``"eager"``, ``"compile"``, ``"bf16"``; ``reason`` one line for the log.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend, "--backend " + backend
    device = torch.device(device)
    if device.type != "cpu":
        return "eager", f"auto: eager on {device.type}"
    units = sorted(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if units:
        return "bf16", f"auto: bf16 autocast, the CPU has {', '.join(units)}"
    if windows >= COMPILE_MIN_WINDOWS:
        return "compile", f"auto: torch.compile, {windows} windows (at least {COMPILE_MIN_WINDOWS}) repay compiling"
    return "eager", f"auto: eager fp32, {windows} windows (compiling pays from {COMPILE_MIN_WINDOWS}, no bf16 units)"


class CompiledNetwork:
    """``torch.compile(network)``, checked against eager on the first window of each input shape (each shape compiles
    anew); eager from then on if compiling fails or the two differ by more than ``tolerance`` (as sigmoid
    probabilities).

    Args:
        network: the network in eval mode; called on (B, C, H, W) windows, giving (B, 1, H, W) logits.
        tolerance: the largest difference kept.
    """

    def __init__(self, network: torch.nn.Module, tolerance: float = COMPILE_TOLERANCE) -> None:
        self.network, self.tolerance = network, tolerance
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.checked: set[tuple[int, ...]] = set()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.compiled is self.network or tuple(windows.shape) in self.checked:
            return self.compiled(windows)
        expected = self.network(windows)
        try:
            self.compiled = self.compiled or torch.compile(self.network, dynamic=False)
            found = self.compiled(windows)
        except Exception as error:  # torch.compile raises many kinds (no compiler, unsupported op or platform)
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
            logger.warning("torch.compile failed, running eager: %s", message)
            self.compiled = self.network
            return expected
        difference = float((torch.sigmoid(found.float()) - torch.sigmoid(expected.float())).abs().max())
        if not difference <= self.tolerance:
            logger.warning("torch.compile differs from eager by %.2g (over %.0e), running eager", difference,
                           self.tolerance)  # fmt: skip
            self.compiled = self.network
            return expected
        logger.info("torch.compile matches eager on %s windows (largest difference %.2g)", tuple(windows.shape),
                    difference)  # fmt: skip
        self.checked.add(tuple(windows.shape))
        return found
