"""How fast the shipped U-Net infers a 512x512 section on this machine's CPU, per backend, against the CPU's own limit.

One run measures, at one torch thread count (``--threads``, default: every core this process may use):

1. the CPU's matmul peak: best of ``--repeats`` ``torch.mm`` of two float32 ``--matmul-size`` square matrices, in
   GFLOP/s (2 n^3 FLOPs each); the same in bfloat16 where /proc/cpuinfo reports AVX512-BF16 or AMX-BF16;
2. the network's FLOPs per 512x512 section, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
   and transposed convolutions, 2 FLOPs per multiply-add; normalisations and activations are not counted): the
   network is ``network_def`` of ``bundle/configs/inference.json`` with the weights of ``bundle/models/model.pt``;
3. for each backend, sections per second on a (``--batch``, 1, 512, 512) input (consecutive sections of the
   shipped ``test-volume.tif`` from ``--section``, each min/max scaled to [0, 1]): ``--warmup`` calls, then the
   best of ``--repeats`` timed calls. The backends: eager fp32; eager fp32 channels_last; ``torch.compile``
   (default mode); ONNX Runtime (CPU execution provider, the network exported by ``torch.onnx.export`` to a
   temporary folder); OpenVINO (f32 precision hint; not a dependency of the bundle: measured only where it is
   installed); bf16 autocast, without and with channels_last (only where the CPU has AVX512-BF16 or AMX-BF16:
   elsewhere bf16 is emulated and says nothing about the hardware). int8 is not measured (see ``INT8``).

Then, unless ``--network-only``, the whole command against Python's start-up and against the network alone
(``bench/pipeline_speed.py``: the default command on the test volume, and a 120 x 1024 x 1024 volume).

For each backend it prints sections/s, ms per section, the GFLOP/s that makes, its fraction of the fp32 matmul peak,
its speed-up over eager fp32 and the largest difference of its membrane probability (sigmoid of the logit) from
eager fp32's on the same input. A backend that cannot run here is listed as skipped, with the reason.

    python bench/inference_speed.py [--threads N] [--batch 1] [--repeats 10] [--warmup 3] [--matmul-size 4096]
                                    [--backends ...] [--output docs/results/inference_speed_<cpu>.json]
    python bench/inference_speed.py --quick    # smoke test (under a minute): 1024x1024 matmuls, 1 warm-up,
                                               # 2 repeats; its numbers mean nothing; nothing stored

Prints a markdown table and stores it (every call's time too), with the machine (CPU model and flags, cores, torch
threads) and the command line, in ``--output`` (default: ``docs/results/inference_speed_<cpu model>.json``).
Run it on an otherwise idle machine: the numbers are only comparable within one run. ``torch.compile`` and the ONNX
export take from seconds to minutes before the first timed call; that time is stored, not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
import pipeline_speed  # noqa: E402

from scripts.checkpoints import load_weights  # noqa: E402
from scripts.stack_io import read_stack  # noqa: E402

SECTION = 512
# /proc/cpuinfo flags, by the feature they name: bf16 matmuls need AVX512-BF16 or AMX-BF16; VNNI speeds up int8
FEATURES = {
    "AVX512-BF16": ("avx512_bf16",),
    "AMX": ("amx_bf16", "amx_tile", "amx_int8"),
    "VNNI": ("avx512_vnni", "avx_vnni"),
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8 = (
    "not measured: torch's dynamic int8 quantization covers Linear and recurrent layers only, and this network is "
    "convolutions; static int8 (PT2E or ONNX Runtime) needs calibration data and its own accuracy check"
)

Run = Callable[[torch.Tensor], torch.Tensor]  # a backend: (B, 1, H, W) float32 input -> (B, 1, H, W) logits


class Skipped(Exception):
    """A backend that cannot run on this machine; the message says why."""


def cpu_features() -> dict[str, list[str]]:
    """The flags of ``FEATURES`` this CPU reports, by feature (empty lists where it has none)."""
    flags = set((machine.cpuinfo("flags") or "").split())
    return {feature: [flag for flag in names if flag in flags] for feature, names in FEATURES.items()}


def has_bf16(features: dict[str, list[str]]) -> bool:
    return any(flag in BF16_FLAGS for names in features.values() for flag in names)


def cpu_tag(cpu: str) -> str:
    """The CPU model as a file name: ``Intel(R) Xeon(R) Gold 6430 CPU @ 2.10GHz`` -> ``intel-xeon-gold-6430``."""
    name = re.sub(r"\(.*?\)|@.*$|\b(CPU|Processor)\b", " ", cpu, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best GFLOP/s of ``repeats`` products of two ``size`` x ``size`` matrices, after one warm-up product."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)
    best = min(seconds(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def load_network() -> torch.nn.Module:
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    config.update({"bundle_root": str(BUNDLE), "device": "cpu"})
    return load_weights(config.get_parsed_content("network_def"), BUNDLE / "models" / "model.pt", "cpu").eval()


def load_sections(first: int, count: int) -> torch.Tensor:
    """``count`` sections of the shipped test volume from ``first``, each min/max scaled to [0, 1]: (count, 1, H, W)."""
    stack = read_stack(BUNDLE / "data" / "isbi2012" / "test-volume.tif")[first : first + count].astype(np.float32)
    if len(stack) < count:
        raise SystemExit(f"test-volume.tif has no {count} sections from section {first}")
    low = stack.min(axis=(1, 2), keepdims=True)
    high = stack.max(axis=(1, 2), keepdims=True)
    return torch.from_numpy((stack - low) / np.maximum(high - low, 1e-6))[:, None]


def network_flops(network: torch.nn.Module) -> int:
    """FLOPs of one forward pass on one 1x1x512x512 section."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(1, 1, SECTION, SECTION))
    return counter.get_total_flops()


# the backends: each takes the eager fp32 network and the example input, and returns its Run or raises Skipped


def eager(network: torch.nn.Module, example: torch.Tensor) -> Run:
    return network


def eager_channels_last(network: torch.nn.Module, example: torch.Tensor) -> Run:
    network = copy.deepcopy(network).to(memory_format=torch.channels_last)
    return lambda x: network(x.contiguous(memory_format=torch.channels_last))


def compiled(network: torch.nn.Module, example: torch.Tensor) -> Run:
    return torch.compile(copy.deepcopy(network))  # compiles at the first call, which run_backend makes untimed


def onnxruntime_cpu(network: torch.nn.Module, example: torch.Tensor) -> Run:
    try:
        import onnxruntime
    except ImportError as error:
        raise Skipped(f"onnxruntime not installed ({error}; pip install -e '.[export]')") from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.onnx"
        try:  # the exporter bioimageio.py uses (torch.export based); its progress lines go to stderr
            with contextlib.redirect_stdout(sys.stderr):
                torch.onnx.export(
                    network, (example,), str(path), input_names=["raw"], output_names=["logit"], opset_version=18,
                    dynamo=True, external_data=False, verbose=False,
                )  # fmt: skip
        except ImportError as error:
            raise Skipped(
                f"the ONNX exporter needs onnx and onnxscript ({error}; pip install -e '.[export]')"
            ) from error
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"raw": x.numpy()})[0])


def openvino_cpu(network: torch.nn.Module, example: torch.Tensor) -> Run:
    try:
        import openvino
    except ImportError as error:
        raise Skipped(f"openvino not installed ({error}); it is not a dependency of the bundle") from error
    with contextlib.redirect_stdout(sys.stderr):  # stdout stays the table
        model = openvino.convert_model(network, example_input=example)
    # f32: OpenVINO otherwise infers in bf16 on a CPU that has it, which is the bf16 rows' business
    config = {"INFERENCE_NUM_THREADS": str(torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32"}
    model = openvino.Core().compile_model(model, "CPU", config)
    return lambda x: torch.from_numpy(model(x.numpy())[0])


def bf16_autocast(network: torch.nn.Module, example: torch.Tensor, channels_last: bool = False) -> Run:
    if not has_bf16(cpu_features()):
        raise Skipped(f"CPU has no bf16 (none of the flags {', '.join(BF16_FLAGS)})")
    run = eager_channels_last(network, example) if channels_last else network

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(x).float()

    return autocast


def int8(network: torch.nn.Module, example: torch.Tensor) -> Run:
    raise Skipped(INT8)


BACKENDS: dict[str, Callable[[torch.nn.Module, torch.Tensor], Run]] = {
    "eager fp32": eager,
    "eager fp32 channels_last": eager_channels_last,
    "torch.compile fp32": compiled,
    "ONNX Runtime fp32 (CPU EP)": onnxruntime_cpu,
    "OpenVINO fp32": openvino_cpu,
    "eager bf16 autocast": bf16_autocast,
    "eager bf16 autocast channels_last": lambda network, example: bf16_autocast(network, example, channels_last=True),
    "int8": int8,
}
BF16_BACKENDS = ("eager bf16 autocast", "eager bf16 autocast channels_last")
VERSIONS = {"ONNX Runtime fp32 (CPU EP)": "onnxruntime", "OpenVINO fp32": "openvino"}


def run_backend(name: str, network: torch.nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Sets up one backend and times it: ``{"setup_seconds", "first_call_seconds", "call_seconds", "probability"}``.

    Raises:
        Skipped: the backend cannot run here; anything the setup or the first call raises becomes a Skipped
            naming the error, so one failing backend does not end the run.
    """
    try:
        started = time.perf_counter()
        run = BACKENDS[name](network, images)
        setup = time.perf_counter() - started
        with torch.no_grad():
            first = seconds(lambda: run(images))  # torch.compile compiles here
            for _ in range(max(warmup - 1, 0)):
                run(images)
            times = [seconds(lambda: run(images)) for _ in range(repeats)]
            probability = torch.sigmoid(run(images).float())
    except Skipped:
        raise
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise Skipped(f"failed: {type(error).__name__}: {message[:200]}") from error
    return {"setup_seconds": setup, "first_call_seconds": first, "call_seconds": times, "probability": probability}


def version(name: str) -> str | None:
    package = VERSIONS.get(name)
    if package is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=cores, help="torch (and ONNX Runtime, OpenVINO) threads")
    parser.add_argument("--batch", type=int, default=1, help="sections per call (consecutive sections)")
    parser.add_argument("--section", type=int, default=0, help="the first section of test-volume.tif used")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per backend and matmuls; the best counts")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per backend first (at least 1)")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the square matrices of the peak")
    parser.add_argument(
        "--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS), metavar="NAME",
        help=f"the backends measured (default: all; eager fp32, the reference, always runs): {', '.join(BACKENDS)}",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, help="the JSON file (default: docs/results/inference_speed_<cpu>.json)")
    parser.add_argument("--network-only", action="store_true", help="skip the whole command (bench/pipeline_speed.py)")
    parser.add_argument("--pipeline-sections", type=int, default=120, help="sections of the large volume (1024 x 1024)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1024x1024 matmuls, 1 warm-up, 2 repeats; "
                        "stores nothing unless --output is given")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.matmul_size = 2, 1, 1024
    torch.set_num_threads(args.threads)
    description = machine.describe()
    features = cpu_features()
    bf16 = has_bf16(features)

    print(f"CPU: {machine.summary(description)}, {torch.get_num_threads()} torch threads")
    detected = ", ".join(f"{feature}: {' '.join(flags) or 'no'}" for feature, flags in features.items())
    print(f"CPU features: {detected}")
    peaks = {"fp32": matmul_gflops(torch.float32, args.matmul_size, args.repeats)}
    peaks["bf16"] = matmul_gflops(torch.bfloat16, args.matmul_size, args.repeats) if bf16 else None
    bf16_peak = f"{peaks['bf16']:.0f} GFLOP/s" if bf16 else "skipped: CPU has no bf16"
    print(f"matmul peak ({args.matmul_size}x{args.matmul_size}, best of {args.repeats}): "
          f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {bf16_peak}")  # fmt: skip

    network = load_network()
    flops = network_flops(network)
    images = load_sections(args.section, args.batch)
    print(f"network: {flops / 1e9:.1f} GFLOP per {SECTION}x{SECTION} section (FlopCounterMode); input "
          f"{tuple(images.shape)} from test-volume.tif section {args.section}; {args.warmup} untimed warm-up call(s), "
          f"best of {args.repeats}")  # fmt: skip
    print()
    print("| backend | sections/s | ms per section | GFLOP/s | of fp32 peak | speed-up | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    names = list(dict.fromkeys(["eager fp32", *args.backends]))  # eager fp32 first: the reference
    results: dict[str, dict] = {}
    reference = eager_per_second = None  # eager fp32's probability and speed, set by its row
    for name in names:
        try:
            measured = run_backend(name, network, images, args.warmup, args.repeats)
        except Skipped as reason:
            if name == "eager fp32":
                raise
            results[name] = {"skipped": str(reason)}
            print(f"| {name} | skipped: {reason} | | | | | |", flush=True)
            continue
        probability = measured.pop("probability")
        per_second = args.batch / min(measured["call_seconds"])
        if reference is None:
            reference, eager_per_second = probability, per_second
        gflops = flops * per_second / 1e9
        result = {
            "sections_per_second": per_second,
            "ms_per_section": 1000 / per_second,
            "gflops": gflops,
            "fraction_of_fp32_peak": gflops / peaks["fp32"],
            "fraction_of_bf16_peak": gflops / peaks["bf16"] if name in BF16_BACKENDS and peaks["bf16"] else None,
            "speedup_over_eager_fp32": per_second / eager_per_second,
            "max_abs_probability_difference": float((probability - reference).abs().max()),
            "version": version(name),
            **measured,
        }
        results[name] = result
        of_peak = f"{result['fraction_of_fp32_peak']:.1%}"
        if result["fraction_of_bf16_peak"] is not None:
            of_peak += f" ({result['fraction_of_bf16_peak']:.1%} of bf16)"
        print(
            f"| {name} | {per_second:.2f} | {result['ms_per_section']:.0f} | {gflops:.0f} | {of_peak} "
            f"| {result['speedup_over_eager_fp32']:.2f}x | {result['max_abs_probability_difference']:.1e} |",
            flush=True,
        )

    pipeline = None
    if not (args.network_only or args.quick):
        print()
        pipeline = pipeline_speed.measure(args.pipeline_sections, min(args.repeats, 3))

    output = args.output
    if output is None and args.quick:
        print("--quick: nothing stored (give --output to store it)", file=sys.stderr)
        return
    output = output or REPO / "docs" / "results" / f"inference_speed_{cpu_tag(description['cpu'])}.json"
    machine.write_json(
        output,
        {
            "section_shape": [SECTION, SECTION],
            "batch": args.batch,
            "input": f"test-volume.tif sections {args.section} to {args.section + args.batch - 1}, each min/max scaled "
            "to [0, 1]",
            "warmup": args.warmup,
            "repeats": args.repeats,
            "quick": args.quick,
            "cpu_features": features,
            "matmul_size": args.matmul_size,
            "matmul_peak_gflops": peaks,
            "network_flops_per_section": flops,
            "flop_counter": "torch.utils.flop_counter.FlopCounterMode: convolutions and transposed convolutions, "
            "2 FLOPs per multiply-add; normalisations and activations not counted",
            "backends": results,
            "pipeline": pipeline,
            "machine": description,
        },
    )


if __name__ == "__main__":
    main()
