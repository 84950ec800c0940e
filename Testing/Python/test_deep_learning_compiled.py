"""CPU speed paths of deep-learning inference: AOT-compiled networks and forked window worker processes.

Each is checked against MONAI's ``sliding_window_inference`` on the eager network (the reference), not
against itself: the compiled network must reproduce the eager logits to float rounding, and the forked
workers must give the stitched result MONAI gives.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the 'dl' extra")
monai = pytest.importorskip("monai", reason="MONAI is the 'dl' extra")

from MedSegLib.deep_learning import model_package as mp  # noqa: E402
from MedSegLib.deep_learning.compiled_network import (  # noqa: E402
    FixedBatchNetwork,
    compile_for_cpu,
    compiled_cache_dir,
    network_key,
)
from MedSegLib.deep_learning.inference import predict_labels  # noqa: E402
from MedSegLib.deep_learning.sliding_window import channel_argmax, sliding_window_predict  # noqa: E402
from MedSegLib.deep_learning.window_processes import ForkedWindowWorkers, forking_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "Resources" / "Models" / "medseg-ct-phantom"
TINY_UNET = dict(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
needs_fork = pytest.mark.skipif(not forking_available(), reason="forked window workers are Linux-only")
needs_compiler = pytest.mark.skipif(
    not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")),
    reason="AOTInductor needs a C++ compiler (g++ or clang++)",
)


def _tiny_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**TINY_UNET).eval()


def _monai(x, net, roi, batch=1):
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(x, roi, batch, net, overlap=0.25, mode="gaussian")[0]


def test_channel_argmax_equals_torch_argmax_with_ties() -> None:
    block = torch.randint(0, 3, (4, 5, 6, 7)).float()  # many exact ties: the first maximum wins in both
    assert torch.equal(channel_argmax(block), torch.argmax(block, dim=0))


@pytest.fixture(scope="module")
def compiled_tiny(tmp_path_factory):
    """The tiny UNet compiled once for batch 3 of 16x32x16 windows (a real inductor + C++ build)."""
    cache = tmp_path_factory.mktemp("compiled")
    net = _tiny_unet()
    started = time.perf_counter()
    predictor, note = compile_for_cpu(net, (1, 16, 32, 16), 3, cache_dir=cache)
    return net, predictor, note, cache, time.perf_counter() - started


@needs_compiler
def test_compiled_network_reproduces_eager_and_is_cached(compiled_tiny) -> None:
    net, predictor, note, cache, _ = compiled_tiny
    assert note.startswith("AOT-compiled for batch 3 (compiled now"), note
    assert isinstance(predictor, FixedBatchNetwork)
    packages = list(Path(cache).glob("*.pt2"))
    assert len(packages) == 1 and packages[0].stem == network_key(net, (3, 1, 16, 32, 16))
    for count in (1, 3, 5):  # fewer windows than compiled for are padded; more are split
        x = torch.randn(count, 1, 16, 32, 16, generator=torch.Generator().manual_seed(count))
        with torch.inference_mode():
            expected = net(x)
            got = predictor(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))
    started = time.perf_counter()
    again, note = compile_for_cpu(net, (1, 16, 32, 16), 3, cache_dir=cache)
    assert note == "AOT-compiled for batch 3 (cached)" and time.perf_counter() - started < 5


@needs_compiler
def test_compiled_sliding_window_matches_monai(compiled_tiny) -> None:
    net, predictor, _, _, _ = compiled_tiny
    x = torch.randn(1, 1, 40, 52, 36, generator=torch.Generator().manual_seed(2))
    expected = _monai(x, net, (16, 32, 16))
    got = sliding_window_predict(x[0], predictor, (16, 32, 16), overlap=0.25, mode="gaussian", sw_batch_size=3)
    assert float((got - expected).abs().max()) <= 1e-4


def test_compile_key_changes_with_weights_and_shape() -> None:
    net = _tiny_unet()
    key = network_key(net, (3, 1, 16, 32, 16))
    assert network_key(net, (4, 1, 16, 32, 16)) != key
    with torch.no_grad():
        next(net.parameters())[0].flatten()[0] += 1e-3
    assert network_key(net, (3, 1, 16, 32, 16)) != key


def test_compile_falls_back_to_eager_with_a_reason(tmp_path, monkeypatch) -> None:
    net = _tiny_unet()
    scripted = torch.jit.script(net)
    same, note = compile_for_cpu(scripted, (1, 16, 32, 16), 2, cache_dir=tmp_path)
    assert same is scripted and note.startswith("eager (TorchScript")
    # A remembered rejection (the compiled output differed) is not compiled again.
    key = network_key(net, (2, 1, 16, 32, 16))
    (tmp_path / f"{key}.rejected").write_text("compiled network differed from the eager one by 0.5\n")
    same, note = compile_for_cpu(net, (1, 16, 32, 16), 2, cache_dir=tmp_path)
    assert same is net and note == "eager (compiled network differed from the eager one by 0.5)"
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache-root"))
    assert compiled_cache_dir() == tmp_path / "cache-root" / "compiled"


@needs_fork
@pytest.mark.parametrize("children,batch", [(1, 4), (2, 3)])
def test_forked_window_workers_equal_monai(children, batch) -> None:
    """Windows computed in forked processes, stitched in order: MONAI's result, threads restored."""
    from monai.networks.nets import UNet

    from MedSegLib.deep_learning.sliding_window import iter_sliding_window_slabs

    torch.manual_seed(0)
    net = UNet(**TINY_UNET).eval()
    x = torch.randn(1, 1, 40, 52, 36, generator=torch.Generator().manual_seed(2))
    expected = _monai(x, net, (16, 32, 16))
    threads = torch.get_num_threads()
    slabs = iter_sliding_window_slabs(
        x[0], net, (16, 32, 16), overlap=0.25, mode="gaussian", sw_batch_size=batch, processes=children, out_channels=3
    )  # fmt: skip
    got = torch.cat([slab for _, _, slab in slabs], dim=1)
    assert torch.get_num_threads() == threads
    assert float((got - expected).abs().max()) <= 1e-5
    assert torch.equal(channel_argmax(got), torch.argmax(expected, 0))


@needs_fork
def test_forked_worker_error_is_reported_and_children_are_reaped() -> None:
    def failing(data):
        if os.getpid() != parent:
            raise ValueError("window too small")
        time.sleep(0.3)  # the parent is slow: the child claims windows too
        return torch.zeros((data.shape[0], 2, *data.shape[2:]))

    parent = os.getpid()
    image = torch.zeros(1, 8, 8, 8)
    windows = [(z, y, 0) for z in (0, 4) for y in (0, 4)]
    pool = ForkedWindowWorkers(failing, 1, image, windows, (4, 4, 8), torch.ones(4, 4, 8), 2)
    pids = list(pool.pids)
    with pytest.raises(RuntimeError, match=r"window worker process failed: ValueError: window too small"):
        list(pool.run())
    pool.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@needs_fork
def test_forked_workers_share_windows_dynamically() -> None:
    """Every window is computed once, by whichever process is free, and yielded in order, weighted."""
    parent = os.getpid()

    def who(data):
        return torch.full((data.shape[0], 1, *data.shape[2:]), float(os.getpid() != parent))

    image = torch.zeros(1, 6, 4, 4)
    windows = [(z, 0, 0) for z in range(0, 6, 2)] * 4
    weight = torch.full((2, 4, 4), 2.0)
    pool = ForkedWindowWorkers(who, 2, image, windows, (2, 4, 4), weight, 1)
    try:
        outputs = [(index, float(out[0, 0, 0, 0])) for index, out in pool.run()]
    finally:
        pool.close()
    assert [index for index, _ in outputs] == list(range(len(windows)))
    assert {value for _, value in outputs} <= {0.0, 2.0}


@needs_fork
@needs_compiler
def test_cli_infer_compile_equals_eager(runtime, tmp_path, monkeypatch, capsys) -> None:
    """``medseg deepseg infer --compile`` (compiled + forked) labels the phantom as the eager network does."""
    import json

    import SimpleITK as sitk

    from MedSegLib.cli.main import main
    from MedSegLib.sample_data import make_ct_phantom
    from MedSegLib.volume_nodes import RAS_FROM_LPS, ijk_to_ras_from_geometry

    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache"))
    package = mp.load_model_package(DEMO_MODEL)
    phantom = make_ct_phantom(shape=(40, 96, 96), spacing_mm=(5.0, 3.5, 3.5), seed=11)
    ijk_to_ras = RAS_FROM_LPS @ ijk_to_ras_from_geometry(
        tuple(reversed(phantom.spacing)), np.eye(3), phantom.origin_lps
    )
    eager = predict_labels([phantom.hu], ijk_to_ras, package, device="cpu")
    image = sitk.GetImageFromArray(phantom.hu)
    image.SetSpacing(tuple(reversed(phantom.spacing)))
    image.SetOrigin(phantom.origin_lps)
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "labels.nii.gz"
    arguments = ["deepseg", "infer", str(tmp_path / "ct.nii.gz"), "--model", str(DEMO_MODEL), "-o", str(out)]
    capsys.readouterr()
    assert main([*arguments, "--device", "cpu", "--compile", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["network"].startswith("AOT-compiled for batch "), summary["network"]
    assert "compiled now" in summary["network"]
    assert list((tmp_path / "cache" / "compiled").glob("*.pt2")), "the package is cached under $MEDSEG_CACHE"
    compiled = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    differ = int(np.count_nonzero(compiled != eager.labels))
    assert differ <= compiled.size * 1e-5, f"{differ} voxels differ"
    runtime.scene.Clear(0)
    assert main([*arguments, "--device", "cpu", "--compile", "--quiet", "--json"]) == 0
    assert "(cached)" in json.loads(capsys.readouterr().out)["network"]


@needs_fork
def test_forked_workers_die_with_a_killed_parent(tmp_path) -> None:
    """A cancelled background job is SIGTERMed: its window workers must not outlive it."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'MedSegExtension')!r})\n"
        "from MedSegLib.deep_learning.window_processes import ForkedWindowWorkers\n"
        "def slow(data):\n"
        "    time.sleep(0.5)\n"
        "    return torch.zeros((data.shape[0], 1, *data.shape[2:]))\n"
        "pool = ForkedWindowWorkers(slow, 2, torch.zeros(1, 4, 4, 4), [(0, 0, 0)] * 100, (4, 4, 4), "
        "torch.ones(4, 4, 4), 1)\n"
        "print(' '.join(map(str, pool.pids)), flush=True)\n"
        "for _ in pool.run():\n"
        "    pass\n"
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in job.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(1.0)
    job.send_signal(signal.SIGTERM)
    job.wait(10)
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
        time.sleep(0.1)
    assert not alive, f"window workers {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
