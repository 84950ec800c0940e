"""Compute sliding windows in forked single-threaded worker processes beside the caller (Linux CPU).

Why processes: an AOT-compiled network (see ``compiled_network``) holds the GIL for its whole forward
pass, so worker threads cannot overlap, and one forward pass split over all cores scales poorly on a few
cores (1.35x on 2 cores for MONAI's UNet). Independent single-threaded passes in separate processes do
scale: on the 2-core test machine two processes ran a window each in 0.28 s, 0.14 s per window in all,
against 0.18-0.22 s for one two-threaded process.

Why fork: the children inherit the loaded network and the (padded) image at no cost, where a spawned
interpreter needs ~3 s to import torch. Work is shared dynamically: every process, the caller included,
claims the next window from a shared counter, runs it, weights it with the importance map and puts it
in a shared-memory slot (window ``w`` in slot ``w % slots``); a child tells the caller through a pipe.
The caller stitches windows strictly in order (MONAI's summation order) and, while the next window is
not ready, computes one itself. A child waits before overwriting a slot the caller has not stitched
yet, so memory stays at ``slots`` window outputs. Children run one torch thread, ignore SIGINT (the
caller's cancel token stops the job) and leave with ``os._exit``.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import select
import signal
import struct
import time
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import numpy as np

_MESSAGE = struct.Struct("<qi")  # (window index or -1 for an error, length of the error text)


def forking_available() -> bool:
    """Fork workers only where fork is the platform's safe default (Linux)."""
    return hasattr(os, "fork") and os.uname().sysname == "Linux"


def _shared_tensor(shape: Sequence[int]) -> Any:
    """A float32 tensor in anonymous shared memory (inherited by forked children)."""
    import torch

    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(4, count * 4))
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.float32, count=count).reshape(tuple(shape)))


def _die_with_parent() -> None:
    """Ask Linux to kill this child when the parent dies (a SIGTERM-cancelled job leaves no orphans)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # the getppid() checks in the loop still end the child at its next window


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return b""
        data += part
    return data


class ForkedWindowWorkers:
    """``children`` forked copies of ``predictor`` plus the calling process share the windows of one image.

    ``image`` is the padded ``[C, D, H, W]`` CPU tensor, ``windows`` the window starts in MONAI's order,
    ``weight`` the importance map. :meth:`run` yields ``(index, weighted output [K, *roi])`` in window
    order; a yielded output lives in shared memory and is valid until the generator is resumed.
    """

    def __init__(
        self,
        predictor: Callable[[Any], Any],
        children: int,
        image: Any,
        windows: Sequence[Tuple[int, ...]],
        roi: Sequence[int],
        weight: Any,
        out_channels: int,
    ) -> None:
        self.predictor = predictor
        self.image = image
        self.windows = list(windows)
        self.roi = tuple(roi)
        self.weight = weight
        self.slots = _shared_tensor((children + 3, out_channels, *self.roi))
        context = multiprocessing.get_context("fork")
        self.next_window = context.RawValue("q", 0)  # guarded by self.lock
        self.stitched = context.RawValue("q", 0)  # windows below this may be overwritten
        self.stop = context.RawValue("b", 0)
        self.lock = context.Lock()
        self.pids: List[int] = []
        self.pipes: List[int] = []
        self.parent = os.getpid()
        try:
            for _ in range(children):
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:
                    status = 1
                    try:
                        os.close(read_end)
                        for fd in self.pipes:
                            os.close(fd)
                        status = self._child(write_end)
                    finally:
                        os._exit(status)
                os.close(write_end)
                self.pids.append(pid)
                self.pipes.append(read_end)
        except BaseException:
            self.close()
            raise

    def _claim(self) -> int:
        """The next unclaimed window index (>= len(windows) when none is left)."""
        with self.lock:
            index = self.next_window.value
            if index < len(self.windows):
                self.next_window.value = index + 1
            return index

    def _compute(self, index: int) -> Any:
        """Run window ``index``, weight it, store it in its slot; returns the slot view."""
        import torch

        z, y, x = self.windows[index]
        rz, ry, rx = self.roi
        with torch.inference_mode():
            out = self.predictor(self.image[None, :, z : z + rz, y : y + ry, x : x + rx].contiguous())[0]
            slot = self.slots[index % len(self.slots)]
            torch.mul(out.float(), self.weight, out=slot)
        return slot

    def _child(self, pipe: int) -> int:
        """Claim, compute and announce windows until none is left (0) or something failed (1)."""
        import torch

        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        try:
            while not self.stop.value and os.getppid() == self.parent:
                index = self._claim()
                if index >= len(self.windows):
                    return 0
                while index - self.stitched.value >= len(self.slots):  # its slot is still to be stitched
                    if self.stop.value or os.getppid() != self.parent:
                        return 0
                    time.sleep(0.001)
                self._compute(index)
                os.write(pipe, _MESSAGE.pack(index, 0))
            return 0
        except BaseException as error:  # noqa: BLE001 - reported to the caller, which raises it
            text = f"{type(error).__name__}: {error}".encode(errors="replace")[:4000]
            try:
                os.write(pipe, _MESSAGE.pack(-1, len(text)) + text)
            except OSError:
                pass
            return 1

    def _drain(self, ready: set, timeout: float) -> None:
        """Collect "window done" messages (waiting up to ``timeout`` s for the first); raise a child's error."""
        if not self.pipes:
            return
        readable, _, _ = select.select(self.pipes, [], [], timeout)
        for fd in readable:
            header = _read_exact(fd, _MESSAGE.size)
            if not header:  # the child finished its windows and exited
                self.pipes.remove(fd)
                os.close(fd)
                continue
            index, size = _MESSAGE.unpack(header)
            if index < 0:
                text = _read_exact(fd, size).decode(errors="replace")
                raise RuntimeError(f"window worker process failed: {text}")
            ready.add(index)

    def _check_children(self) -> None:
        """Raise if a child died without reporting (killed, crashed): its claimed window would never come."""
        for pid in list(self.pids):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done and status != 0:
                self.pids.remove(pid)
                how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {status >> 8}"
                raise RuntimeError(f"window worker process {pid} died ({how})")

    def run(self, cancel: Any = None) -> Iterator[Tuple[int, Any]]:
        """``(index, weighted output)`` for every window, in order; computes windows here while waiting."""
        total = len(self.windows)
        ready: set = set()
        for index in range(total):
            while index not in ready:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                self._drain(ready, 0.0)
                if index in ready:
                    break
                if self.next_window.value < total and self.next_window.value - index < len(self.slots):
                    mine = self._claim()
                    if mine < total:
                        self._compute(mine)
                        ready.add(mine)
                        continue
                if not self.pipes:
                    raise RuntimeError("window worker processes exited before finishing their windows")
                self._drain(ready, 0.05)
                self._check_children()
            ready.discard(index)
            yield index, self.slots[index % len(self.slots)]
            self.stitched.value = index + 1

    def close(self) -> None:
        """Stop and reap the children (also after an error or a cancel)."""
        self.stop.value = 1
        for fd in self.pipes:
            try:
                os.close(fd)
            except OSError:
                pass
        self.pipes = []
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []
