"""Ahead-of-time compiled CPU networks (AOTInductor), built once per model and machine and cached.

Why: on a few CPU cores an eager 3D U-Net spends much of its time outside the convolutions (instance
norm, PReLU, residual adds each a separate pass over memory) and in the one transposed convolution
PyTorch runs without oneDNN. Inductor with frozen weights runs every convolution, transposed ones
included, in oneDNN on pre-packed weights, fuses norm + activation into one pass and the residual add
into the convolution. On the 2-core test machine a MONAI UNet window went from ~0.28 s to ~0.17-0.21 s
(``Testing/benchmarks/bench_deepseg.py``, variants ``medseg-B-aot``).

The price is a one-time compilation (20-40 s for that UNet) that needs a C++ compiler; the result is a
``.pt2`` package stored under :func:`compiled_cache_dir`, keyed by everything that changes the generated
code (weights, network class, batch/window shape, torch version, CPU capability, thread count), and
later runs load it in milliseconds. The compiled network is used only when it reproduces the eager
output on a random probe within ``tolerance`` (float rounding, as a batched convolution differs from an
unbatched one); anything that fails (export, compiler, mismatch) falls back to the eager network with
the reason in the returned note.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence, Tuple

CACHE_ENV = "MEDSEG_CACHE"


def compiled_cache_dir() -> Path:
    """``$MEDSEG_CACHE/compiled`` or ``~/.medseg/cache/compiled`` (created on first write)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() / "compiled" if root else Path.home() / ".medseg" / "cache" / "compiled"


def network_key(net: Any, input_shape: Sequence[int]) -> str:
    """Hex digest of what determines the compiled code: weights, class, input shape, torch, CPU, threads."""
    import torch

    digest = hashlib.sha256()
    kind = type(net)
    digest.update(f"{kind.__module__}.{kind.__qualname__}|{tuple(int(s) for s in input_shape)}".encode())
    digest.update(f"|torch {torch.__version__}|{torch.backends.cpu.get_cpu_capability()}".encode())
    digest.update(f"|threads {torch.get_num_threads()}|{repr(net)}".encode())
    for name, tensor in sorted({**dict(net.named_parameters()), **dict(net.named_buffers())}.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def reproduces(reference: Any, candidate: Any, tolerance: float) -> Tuple[bool, float]:
    """(ok, max abs difference): does ``candidate`` equal the eager ``reference`` output within
    ``tolerance`` relative to the output's magnitude (at least 1)? A shape mismatch is an infinite one."""
    if candidate.shape != reference.shape:
        return False, float("inf")
    scale = max(1.0, float(reference.abs().max()))
    difference = float((candidate.float() - reference.float()).abs().max())
    return difference <= tolerance * scale, difference


class FixedBatchNetwork:
    """Call a network compiled for ``batch`` windows with fewer: pad with zero windows, drop their output."""

    def __init__(self, compiled: Callable[[Any], Any], batch: int) -> None:
        self.compiled = compiled
        self.batch = batch

    def __call__(self, data: Any) -> Any:
        import torch

        outputs = []
        for part in torch.split(data, self.batch):
            count = part.shape[0]
            if count < self.batch:
                filler = part.new_zeros((self.batch - count, *part.shape[1:]))
                part = torch.cat([part, filler])
            outputs.append(self.compiled(part.contiguous())[:count])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _load_package(path: Path) -> Callable[[Any], Any]:
    """The package's network as ``f(tensor) -> tensor``.

    Through torch's C++ package loader directly: ``torch._inductor.aoti_load_package`` first imports
    inductor (1.8 s on the test machine), only to flatten the one input and output the loader takes as
    lists. A network with several outputs does not fit ``f`` and fails the check against eager.
    """
    import torch

    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):  # another torch: its public loader
        return torch._inductor.aoti_load_package(str(path))

    def run(data: Any) -> Any:
        outputs = loader.run([data])
        if len(outputs) != 1:
            raise ValueError(f"the compiled network returned {len(outputs)} outputs, expected 1")
        return outputs[0]

    return run


def _compile_package(net: Any, example: Any, target: Path) -> None:
    """Export + AOTInductor-compile ``net`` for ``example``'s shape into ``target`` (atomic rename)."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".pt2", dir=target.parent)
    os.close(handle)
    try:
        with torch.no_grad():
            exported = torch.export.export(net, (example,))
            torch._inductor.aoti_compile_and_package(
                exported, package_path=temporary, inductor_configs={"freezing": True}
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def compile_for_cpu(
    net: Any, window_shape: Sequence[int], batch: int, tolerance: float = 1e-4, cache_dir: Any = None
) -> Tuple[Any, str]:
    """(predictor, note): the AOT-compiled network for ``batch`` windows of ``window_shape`` (C, D, H, W).

    The predictor accepts any number of windows (see :class:`FixedBatchNetwork`). The first call per
    model and machine compiles (tens of seconds) and checks the compiled output against the eager one on
    a random batch (``tolerance`` relative to the output's magnitude); a package that fails the check is
    deleted and the failure remembered in ``<key>.rejected``. Later calls load the cached, checked
    package in milliseconds. On any failure returns ``(net, "eager (...)")``.
    """
    import warnings

    import torch

    if isinstance(net, torch.jit.ScriptModule):
        return net, "eager (TorchScript networks cannot be exported for compilation)"
    example = torch.rand((batch, *window_shape), generator=torch.Generator().manual_seed(0))
    folder = Path(cache_dir) if cache_dir is not None else compiled_cache_dir()
    key = network_key(net, example.shape)
    target, rejected = folder / f"{key}.pt2", folder / f"{key}.rejected"
    if rejected.is_file():
        return net, f"eager ({rejected.read_text().strip()})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if target.is_file():
                return FixedBatchNetwork(_load_package(target), batch), (f"AOT-compiled for batch {batch} (cached)")
            _compile_package(net, example, target)
            compiled = _load_package(target)
            with torch.inference_mode():
                reference = net(example)
                candidate = compiled(example)
    except Exception as error:  # noqa: BLE001 - any failure means: keep the eager network
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        return net, f"eager (compilation failed: {type(error).__name__}: {first_line})"
    ok, difference = reproduces(reference, candidate, tolerance)
    if not ok:
        target.unlink(missing_ok=True)
        rejected.write_text(f"compiled network differed from the eager one by {difference:.2g}\n")
        return net, f"eager (compiled network differed by {difference:.2g})"
    return FixedBatchNetwork(
        compiled, batch
    ), f"AOT-compiled for batch {batch} (compiled now, max diff {difference:.1g})"
