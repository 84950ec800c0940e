"""Decode DICOM pixel data into a preallocated volume, applying RescaleSlope/Intercept per frame.

Why: loading must be exact (the values a radiologist measures) and fast (a 300-slice CT in well under a
second). Native little-endian pixel data is read straight from the file into the output array (one copy, no
per-slice temporaries); everything else goes through ``pydicom.pixels`` and its decoder plugins (pylibjpeg,
openjpeg, gdcm), frame by frame. Files are decoded in parallel threads (file I/O and the C decoders release
the GIL).

Output type: int16 when every rescaled value is an integer that fits int16 (CT in HU, most MR); float32
otherwise (non-integer slope or intercept, values beyond int16, Philips floating-point scaling). float32 holds
integers exactly up to 2**24.

Philips MR: by default values are the display values ``DV = SV * RescaleSlope + RescaleIntercept`` (what the
scanner console and Slicer show). ``use_philips_scale_slope=True`` returns the floating-point values
``FP = DV / (RescaleSlope * ScaleSlope)`` with the private ScaleSlope (2005,100E), as dcm2niix does by default;
use them for quantitative comparisons across scans.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from ..errors import UserInputError
from .series_split import FileInfo, Frame

ProgressCallback = Callable[[int, int], None]
INT16_MIN, INT16_MAX = -32768, 32767


class _NeedsFloat(Exception):
    """Raised when values turn out not to fit int16 after all (unsigned 16-bit data above 32767)."""


def effective_rescale(frame: Frame, use_philips_scale_slope: bool = False) -> tuple[float, float]:
    """(slope, intercept) that map stored values of this frame to output values."""
    slope, intercept = frame.slope, frame.intercept
    scale = frame.philips_scale_slope
    if use_philips_scale_slope and scale and np.isfinite(scale) and scale != 0:
        # FP = DV / (RS * SS) = SV / SS + RI / (RS * SS)   (dcm2niix Philips/README)
        return 1.0 / scale, intercept / (slope * scale)
    return slope, intercept


def _is_integer(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def _stored_range(file: FileInfo) -> tuple[int, int]:
    bits = min(file.bits_stored, file.bits_allocated)
    if file.pixel_representation:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def choose_dtype(frames: Sequence[Frame], use_philips_scale_slope: bool = False) -> tuple[np.dtype, bool]:
    """Output dtype and whether int16 still has to be confirmed on the actual values.

    int16 needs integral slope and intercept for every frame. If the worst-case stored range (from BitsStored)
    fits after rescaling, int16 is certain; otherwise (e.g. unsigned 16-bit MR) it is tried and the values are
    checked while reading.
    """
    certain = True
    for frame in frames:
        if frame.file.bits_allocated > 16 or frame.file.samples_per_pixel != 1:
            return np.dtype(np.float32), False
        slope, intercept = effective_rescale(frame, use_philips_scale_slope)
        if not (_is_integer(slope) and _is_integer(intercept)):
            return np.dtype(np.float32), False
        low, high = _stored_range(frame.file)
        values = (low * slope + intercept, high * slope + intercept, low * slope, high * slope)
        if min(values) < INT16_MIN or max(values) > INT16_MAX:
            certain = False
    return np.dtype(np.int16), not certain


def _stored_dtype(file: FileInfo) -> np.dtype:
    kind = "i" if file.pixel_representation else "u"
    return np.dtype(f"<{kind}{file.bits_allocated // 8}")


def _fix_unused_bits(raw: np.ndarray, file: FileInfo) -> None:
    """Mask (unsigned) or sign-extend (signed) stored values when BitsStored < BitsAllocated (as pydicom does)."""
    shift = file.bits_allocated - file.bits_stored
    if shift <= 0:
        return
    if file.pixel_representation:
        view = raw.view(f"<i{file.bits_allocated // 8}")
        np.left_shift(view, shift, out=view)
        np.right_shift(view, shift, out=view)
    else:
        view = raw.view(f"<u{file.bits_allocated // 8}")
        np.bitwise_and(view, (1 << file.bits_stored) - 1, out=view)


def _store(target: np.ndarray, raw: np.ndarray, slope: float, intercept: float, check: bool) -> None:
    """target = raw * slope + intercept, in the target dtype, without a float64 temporary."""
    if target.dtype == np.int16:
        if check:
            low, high = int(raw.min()), int(raw.max())
            values = (low * slope + intercept, high * slope + intercept, low * slope, high * slope)
            if min(values) < INT16_MIN or max(values) > INT16_MAX:
                raise _NeedsFloat()
        if raw is not target:
            np.copyto(target, raw, casting="unsafe")
        if slope != 1:
            np.multiply(target, np.int16(round(slope)), out=target)
        if intercept != 0:
            np.add(target, np.int16(round(intercept)), out=target)
        return
    if slope != 1:
        np.multiply(raw, np.float32(slope), out=target, casting="unsafe")
    else:
        np.copyto(target, raw, casting="unsafe")
    if intercept != 0:
        np.add(target, np.float32(intercept), out=target)


def _decode_error(file: FileInfo, error: Exception) -> UserInputError:
    from pydicom.uid import UID

    uid = UID(file.transfer_syntax)
    name = uid.name if uid.is_valid else file.transfer_syntax
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserInputError(
        f"cannot decode pixel data with transfer syntax '{name}' ({file.transfer_syntax}): {first_line}. "
        "Install the matching pydicom decoder plugin (pylibjpeg, pylibjpeg-openjpeg, python-gdcm) or convert "
        "the file with 'gdcmconv -w'",
        file.path,
    )


def _native_frames(file: FileInfo) -> Callable[..., np.ndarray]:
    """Reader of native little-endian frames (returns stored values, unused bits fixed)."""
    frame_bytes = file.rows * file.cols * file.bits_allocated // 8
    dtype = _stored_dtype(file)
    file_size = os.path.getsize(file.path)

    def read(handle, index: int, into: np.ndarray | None = None) -> np.ndarray:
        start = file.pixel_offset + index * frame_bytes
        if start + frame_bytes > file_size:
            raise UserInputError(
                f"file is truncated: pixel data of frame {index + 1} needs {frame_bytes} bytes from offset {start}, "
                f"the file has {file_size} bytes",
                file.path,
            )
        handle.seek(start)
        if into is not None:
            handle.readinto(memoryview(into.reshape(-1).view(np.uint8)))
            raw = into.view(dtype)
        else:
            raw = np.frombuffer(handle.read(frame_bytes), dtype=dtype).reshape(file.rows, file.cols).copy()
        _fix_unused_bits(raw, file)
        return raw

    return read


def _read_file(file: FileInfo, jobs: list[tuple[int, Frame]], out: np.ndarray, use_philips: bool, check: bool) -> None:
    """Decode all frames of one file that the volume needs into ``out[index]``."""
    by_frame: dict[int, list[tuple[int, Frame]]] = {}
    for index, frame in jobs:
        by_frame.setdefault(frame.frame_index or 0, []).append((index, frame))
    native = (
        file.pixel_offset is not None
        and file.samples_per_pixel == 1
        and file.bits_allocated in (8, 16, 32)
        and file.bits_allocated >= file.bits_stored
    )
    if native:
        read = _native_frames(file)
        with open(file.path, "rb") as handle:
            for frame_number, targets in by_frame.items():
                direct = (
                    len(targets) == 1
                    and targets[0][1].tile is None
                    and out.dtype == np.int16
                    and file.bits_allocated == 16
                )
                if direct:
                    index, frame = targets[0]
                    slope, intercept = effective_rescale(frame, use_philips)
                    raw = read(handle, frame_number, into=out[index])
                    # Unsigned data read into the int16 buffer: check it before rescaling in place.
                    if check and not file.pixel_representation and int(raw.max()) > INT16_MAX:
                        raise _NeedsFloat()
                    _store(out[index], out[index], slope, intercept, check)
                    continue
                image = read(handle, frame_number)
                for index, frame in targets:
                    slope, intercept = effective_rescale(frame, use_philips)
                    _store(out[index], _cut(image, frame), slope, intercept, check)
        return
    from pydicom.pixels import iter_pixels, pixel_array

    try:
        if file.number_of_frames > 1:
            wanted = sorted(by_frame)
            for frame_number, image in zip(wanted, iter_pixels(file.path, indices=wanted)):
                for index, frame in by_frame[frame_number]:
                    slope, intercept = effective_rescale(frame, use_philips)
                    _store(out[index], _cut(image, frame), slope, intercept, check)
        else:
            image = pixel_array(file.path)
            for index, frame in by_frame[0]:
                slope, intercept = effective_rescale(frame, use_philips)
                _store(out[index], _cut(image, frame), slope, intercept, check)
    except (UserInputError, _NeedsFloat):
        raise
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError, OSError, EOFError) as error:
        raise _decode_error(file, error) from error


def _cut(image: np.ndarray, frame: Frame) -> np.ndarray:
    if image.ndim != 2:
        raise UserInputError(
            f"unsupported pixel layout {image.shape} (colour images cannot be loaded as scalar volumes)",
            frame.file.path,
        )
    if frame.tile is None:
        return image
    row0, col0, rows, cols = frame.tile
    return image[row0 : row0 + rows, col0 : col0 + cols]


def read_frames(
    frames: Sequence[Frame],
    use_philips_scale_slope: bool = False,
    progress: ProgressCallback | None = None,
    max_workers: int | None = None,
) -> np.ndarray:
    """Decode ``frames`` into one array of shape (len(frames), rows, cols), in the given order."""
    if not frames:
        raise UserInputError("no image frames to read")
    rows, cols = frames[0].rows, frames[0].cols
    for frame in frames:
        if (frame.rows, frame.cols) != (rows, cols):
            raise UserInputError(f"matrix size {frame.rows}x{frame.cols} differs from {rows}x{cols}", frame.file.path)
        if frame.file.samples_per_pixel != 1:
            raise UserInputError(
                f"{frame.file.samples_per_pixel} samples per pixel ({frame.file.photometric}): "
                "colour images cannot be loaded as scalar volumes",
                frame.file.path,
            )
    dtype, check = choose_dtype(frames, use_philips_scale_slope)
    by_file: dict[str, list[tuple[int, Frame]]] = {}
    files: dict[str, FileInfo] = {}
    for index, frame in enumerate(frames):
        by_file.setdefault(frame.file.path, []).append((index, frame))
        files[frame.file.path] = frame.file
    workers = max_workers or min(8, (os.cpu_count() or 2) + 2)

    def run(out: np.ndarray, check_values: bool) -> None:
        done = 0
        total = len(by_file)
        if workers <= 1 or total < 4:
            for path, jobs in by_file.items():
                _read_file(files[path], jobs, out, use_philips_scale_slope, check_values)
                done += 1
                if progress:
                    progress(done, total)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_read_file, files[path], jobs, out, use_philips_scale_slope, check_values)
                for path, jobs in by_file.items()
            ]
            try:
                for future in futures:
                    future.result()
                    done += 1
                    if progress:
                        progress(done, total)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    out = np.empty((len(frames), rows, cols), dtype=dtype)
    try:
        run(out, check)
    except _NeedsFloat:
        del out  # free the int16 attempt before allocating the float32 result
        out = np.empty((len(frames), rows, cols), dtype=np.float32)
        run(out, False)
    return out
