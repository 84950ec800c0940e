"""Run window batches in forked single-threaded worker processes beside the calling process (Linux CPU).

Why processes: an AOT-compiled network (see ``compiled_network``) holds the GIL for its whole forward
pass, so worker threads cannot overlap, and one forward pass split over all cores scales poorly on a few
cores (1.35x on 2 cores for MONAI's UNet). Independent single-threaded forward passes in separate
processes do scale (two processes on the 2-core test machine: 0.156 s per window against 0.18-0.22 s
for one two-threaded process).

Why fork: the children inherit the loaded network and the shared buffers at no cost, where a spawned
interpreter needs ~3 s to import torch. Each child gets its own shared anonymous memory for one batch of
input and two batches of output (double buffering: the parent stitches one result while the child
computes the next), and a pipe pair for "run n windows" / "done". Children run with one torch thread,
ignore SIGINT (the parent's cancel token stops the job) and leave with ``os._exit``; a closed pipe (the
parent died) ends them too.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import numpy as np

_RUN = struct.Struct("<ii")  # (windows in the batch, output slot); windows 0 = exit
_DONE_OK = b"\x00"


def forking_available() -> bool:
    """Fork workers only where fork is the platform's safe default (Linux)."""
    return hasattr(os, "fork") and os.uname().sysname == "Linux"


def _shared_tensor(shape: Sequence[int]) -> Any:
    """A float32 tensor in anonymous shared memory (inherited by forked children)."""
    import torch

    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(4, count * 4))
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.float32, count=count).reshape(tuple(shape)))


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return b""
        data += part
    return data


@dataclass
class _Child:
    pid: int
    to_child: int
    from_child: int
    inputs: Any  # [B, C, *roi]
    outputs: Tuple[Any, Any]  # two [B, K, *roi] slots


def _child_loop(predictor: Callable[[Any], Any], child: _Child) -> None:
    """Serve "run n windows into slot s" requests until told to stop or the parent goes away."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        request = _read_exact(child.to_child, _RUN.size)
        if not request:
            return
        count, slot = _RUN.unpack(request)
        if count == 0:
            return
        try:
            with torch.inference_mode():
                result = predictor(child.inputs[:count])
                child.outputs[slot][:count].copy_(result)
            os.write(child.from_child, _DONE_OK)
        except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
            message = f"{type(error).__name__}: {error}".encode()[:4000]
            os.write(child.from_child, b"\x01" + struct.pack("<i", len(message)) + message)


class ForkedWindowWorkers:
    """``children`` forked copies of ``predictor`` (one torch thread each) plus the calling process.

    :meth:`run` takes the window batches in order and yields their outputs in the same order; every
    ``children + 1``-th batch runs in the calling process, the others in the children, concurrently.
    An output yielded from shared memory stays valid until the generator has moved on by one more round.
    """

    def __init__(
        self, predictor: Callable[[Any], Any], children: int, batch: int, in_shape: Sequence[int], out_channels: int
    ) -> None:
        self.predictor = predictor
        self.batch = batch
        self.children: List[_Child] = []
        window = tuple(in_shape[1:])
        try:
            for _ in range(children):
                inputs = _shared_tensor((batch, *in_shape))
                outputs = (
                    _shared_tensor((batch, out_channels, *window)),
                    _shared_tensor((batch, out_channels, *window)),
                )
                down_read, down_write = os.pipe()
                up_read, up_write = os.pipe()
                pid = os.fork()
                if pid == 0:  # child
                    status = 0
                    try:
                        os.close(down_write)
                        os.close(up_read)
                        for other in self.children:
                            os.close(other.to_child)
                            os.close(other.from_child)
                        _child_loop(predictor, _Child(0, down_read, up_write, inputs, outputs))
                    except BaseException:  # noqa: BLE001 - a child never returns into the parent's code
                        status = 1
                    finally:
                        os._exit(status)
                os.close(down_read)
                os.close(up_write)
                self.children.append(_Child(pid, down_write, up_read, inputs, outputs))
        except BaseException:
            self.close()
            raise

    def _send(self, child: _Child, data: Any, slot: int) -> None:
        count = data.shape[0]
        child.inputs[:count].copy_(data)
        os.write(child.to_child, _RUN.pack(count, slot))

    def _receive(self, child: _Child, slot: int, count: int) -> Any:
        status = _read_exact(child.from_child, 1)
        if status == _DONE_OK:
            return child.outputs[slot][:count]
        if not status:
            raise RuntimeError(f"window worker process {child.pid} exited unexpectedly")
        size = struct.unpack("<i", _read_exact(child.from_child, 4))[0]
        message = _read_exact(child.from_child, size).decode(errors="replace")
        raise RuntimeError(f"window worker process {child.pid} failed: {message}")

    def run(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Outputs of ``batches`` (each ``[n <= batch, C, *roi]``), in order.

        Batches go round by round: in a round of ``children + 1`` batches child j takes the j-th and the
        calling process the last. A child's next batch is sent (into its other output slot) before the
        results of the current round are yielded, so the children compute while the caller stitches.
        """
        import torch

        lanes = len(self.children) + 1
        batches = iter(batches)

        def take_round() -> List[Any]:
            batch_round = []
            for _ in range(lanes):
                data = next(batches, None)
                if data is None:
                    break
                batch_round.append(data)
            return batch_round

        def send_round(batch_round: List[Any], slot: int) -> None:
            for child, data in zip(self.children, batch_round):
                self._send(child, data, slot)

        slot = 0
        current = take_round()
        send_round(current, slot)
        while current:
            own = None
            if len(current) == lanes:
                with torch.inference_mode():
                    own = self.predictor(current[-1])
            outputs = [self._receive(child, slot, data.shape[0]) for child, data in zip(self.children, current)]
            following = take_round()
            send_round(following, slot ^ 1)
            yield from outputs
            if own is not None:
                yield own
            current, slot = following, slot ^ 1

    def close(self) -> None:
        for child in self.children:
            try:
                os.write(child.to_child, _RUN.pack(0, 0))
            except OSError:
                pass
            for fd in (child.to_child, child.from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for child in self.children:
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
        self.children = []
