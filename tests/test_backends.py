"""How the network runs: the run-time choice of backend, and torch.compile's checked fallback to eager."""

import logging
import pickle

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Activationsd, Compose

from scripts.backends import COMPILE_MIN_WINDOWS, CompiledNetwork, choose_backend, cpu_flags
from scripts.errors import InputError
from scripts.pipeline import SectionPredictor
from scripts.transforms import ScaleSectionIntensityd, SectionContextd

AVX2 = frozenset({"sse2", "avx", "avx2", "fma"})
AMX = AVX2 | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1)).eval()


def tiny_predictor(backend: str) -> SectionPredictor:
    preprocessing = Compose([SectionContextd("image"), ScaleSectionIntensityd("image")])
    window = SlidingWindowInferer(roi_size=(32, 32), overlap=0.25, mode="gaussian")
    return SectionPredictor(tiny_network(), window, preprocessing, Activationsd("pred", sigmoid=True), backend=backend)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("device", "windows", "flags", "expected"),
    [
        ("cpu", 30, AVX2, "eager"),
        ("cpu", COMPILE_MIN_WINDOWS - 1, AVX2, "eager"),
        ("cpu", COMPILE_MIN_WINDOWS, AVX2, "compile"),
        ("cpu", 30, AMX, "bf16"),
        ("cpu", 10 * COMPILE_MIN_WINDOWS, AVX2 | {"avx512_bf16"}, "bf16"),
        ("cuda", 10 * COMPILE_MIN_WINDOWS, AMX, "eager"),
    ],
)
def test_auto_chooses_by_device_cpu_and_windows(device, windows, flags, expected):
    chosen, reason = choose_backend("auto", device, windows, flags)
    assert chosen == expected and reason.startswith("auto: ")


def test_an_asked_for_backend_is_kept_and_a_wrong_one_refused():
    assert choose_backend("compile", "cpu", 1, AVX2) == ("compile", "--backend compile")
    assert choose_backend("eager", "cpu", 10 * COMPILE_MIN_WINDOWS, AMX)[0] == "eager"
    with pytest.raises(InputError, match="--backend 'onnx': must be one of auto, eager, compile, bf16"):
        choose_backend("onnx", "cpu", 1)


@pytest.mark.parametrize("error", [RuntimeError("no C++ compiler found\nmore detail"), AssertionError()])
@pytest.mark.parametrize("when", ["compiling", "first call"])
def test_compile_falls_back_to_eager_where_compiling_fails(monkeypatch, caplog, error, when):
    def broken_call(windows):
        raise error

    def broken_compile(network, **kwargs):
        if when == "compiling":
            raise error
        return broken_call

    monkeypatch.setattr(torch, "compile", broken_compile)
    network = tiny_network()
    compiled = CompiledNetwork(network)
    windows = torch.rand(2, 1, 16, 16)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        assert torch.equal(compiled(windows), network(windows))
        assert torch.equal(compiled(windows), network(windows))
    assert compiled.compiled is network
    expected = "no C++ compiler found" if str(error) else "AssertionError"
    assert f"torch.compile failed, running eager: {expected}" in caplog.text


def test_compile_falls_back_to_eager_where_it_differs(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda network, **kwargs: lambda x: network(x) + 1.0)
    network = tiny_network()
    compiled = CompiledNetwork(network)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        compiled(torch.rand(1, 1, 16, 16))
    assert compiled.compiled is network
    assert "torch.compile differs from eager by" in caplog.text


def test_compile_checks_the_first_window_of_each_shape_then_runs_compiled_only(monkeypatch):
    calls = []

    def counting(network, **kwargs):
        def compiled(windows):
            calls.append(("compiled", tuple(windows.shape)))
            return network.forward(windows) * (1 + 1e-6)  # (no hook) an output told from eager's, within tolerance

        return compiled

    monkeypatch.setattr(torch, "compile", counting)
    network = tiny_network()
    network.register_forward_hook(lambda module, inputs, output: calls.append(("eager", tuple(inputs[0].shape))))
    compiled = CompiledNetwork(network)
    first, second = torch.rand(1, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        outputs = [compiled(first), compiled(first), compiled(second), compiled(second)]
        expected = network(first)
    calls.pop()
    assert [kind for kind, _ in calls].count("eager") == 2  # once per shape
    assert [kind for kind, _ in calls].count("compiled") == 4
    assert not torch.equal(outputs[0], expected)  # the compiled output from the first window on
    torch.testing.assert_close(outputs[0], expected)


def test_compiled_and_bf16_predictors_match_eager():
    """The real torch.compile (it needs a C++ compiler, as the CI has) and bf16 autocast give eager's probability:
    compiled to float rounding, bf16 to its 8-bit mantissa."""
    section = np.random.default_rng(0).integers(20, 230, (70, 50)).astype(np.uint8)
    eager = tiny_predictor("eager")(section)
    compiled = tiny_predictor("compile")
    np.testing.assert_allclose(compiled(section), eager, atol=1e-5)
    assert compiled._forward.compiled is not compiled.network  # compiled, not fallen back
    bf16 = tiny_predictor("bf16")
    rounded = bf16(section)
    np.testing.assert_allclose(rounded, eager, atol=2e-2)
    assert np.abs(rounded - eager).max() > 1e-4  # bf16 did run


def test_a_predictor_plans_its_backend_for_its_windows_and_ships_without_its_compiled_network(monkeypatch):
    monkeypatch.setattr("scripts.backends.cpu_flags", lambda: AVX2)
    predictor = tiny_predictor("auto")
    assert predictor.chosen == "eager"
    predictor.plan(COMPILE_MIN_WINDOWS - 1)
    assert predictor.chosen == "eager"
    assert "1000 windows" in predictor.plan(COMPILE_MIN_WINDOWS) and predictor.chosen == "compile"
    assert isinstance(predictor._network(), CompiledNetwork)
    shipped = pickle.loads(pickle.dumps(predictor)).to("cpu")  # as a Dask worker gets it
    assert shipped.chosen == "compile" and shipped._forward is None and shipped.windows == COMPILE_MIN_WINDOWS
    monkeypatch.setattr("scripts.backends.cpu_flags", lambda: AMX)
    assert shipped.to("cpu").chosen == "bf16"  # a worker chooses for its own CPU
