"""Peak memory of ``load_image`` + ``preprocess`` on absurd but legal images (issue 11, item 1).

Each case runs in one child process (``python -c``) that resets its peak-RSS counter (``VmHWM``, through
``/proc/self/clear_refs``) before every case and reports the peak afterwards, so the figures include the
interpreter, torch and Pillow, exactly as a user's process would. The parent watches the child's RSS and kills
it above :data:`KILL_AT`, so a regression fails fast instead of loading the machine. PNG files are written
by hand (a stream of zlib-compressed rows), so a 89-megapixel test image costs the test process nothing.

Figures measured when this test was written are in the ``CASES`` comments (peak RSS of the whole process).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

MIB = 1024 * 1024
#: The bound of issue 11: any image Pillow's decompression-bomb limit accepts, at the default size.
PEAK_LIMIT = 1024 * MIB
#: The watchdog kills the child here (a failing case shows up as "killed" instead of eating the machine).
KILL_AT = 1536 * MIB
#: CPU seconds per case (decoding the 89-megapixel files takes 1-5 s on one core). CPU time, not wall time: a
#: case that waited for a loaded machine's cores did not cost more. The watchdog's deadline is wall time.
CASE_SECONDS = 20.0

_PNG_COLOUR = {"L": (0, 1), "RGB": (2, 3), "P": (3, 1), "RGBA": (6, 4)}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of ``a + b`` from ``adler32(a)``, ``adler32(b)`` and ``len(b)`` (zlib's ``adler32_combine``)."""
    base = 65521
    rem = len2 % base
    sum1 = (adler1 & 0xFFFF) + (adler2 & 0xFFFF) + base - 1
    sum2 = rem * (adler1 & 0xFFFF) % base + (adler1 >> 16) + (adler2 >> 16) + base - rem
    return (sum1 % base) | ((sum2 % base) << 16)


def _zlib_stream(parts: list[tuple[bytes, int]]) -> bytes:
    """The zlib stream of ``piece * count`` for each ``(piece, count)`` in turn, deflating each piece once.

    Each piece is deflated by a fresh raw compressor ending in a full flush (byte-aligned, no reference to
    earlier data), so its compressed form can be repeated as is; only the Adler-32 runs over every byte.
    Writing the 89-megapixel files this way takes milliseconds instead of seconds of zlib.
    """
    out = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window ((0x78 * 256 + 0x01) % 31 == 0)
    adler = 1
    for piece, count in parts:
        comp = zlib.compressobj(1, zlib.DEFLATED, -15)
        packed = comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)
        out.extend([packed] * count)
        one = zlib.adler32(piece)
        for _ in range(count):
            adler = _adler32_combine(adler, one, len(piece))
    out.append(zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final (empty) block
    out.append(struct.pack(">I", adler))
    return b"".join(out)


def write_png(path: Path, width: int, height: int, mode: str, *, transparent: bool = False,
              block: int = 1 << 22) -> None:
    """An 8-bit PNG of mid-grey rows (palette: a grey ramp, index 0 transparent if asked); the rows are deflated
    in pieces of about ``block`` bytes, each distinct piece once (:func:`_zlib_stream`)."""
    colour_type, channels = _PNG_COLOUR[mode]
    row = b"\x00" + b"\x7f" * (width * channels)  # filter byte 0 + samples
    parts: list[tuple[bytes, int]] = []
    if len(row) >= block:  # huge rows: each in pieces
        samples = width * channels
        for _ in range(height):
            parts += [(b"\x00", 1), (b"\x7f" * block, samples // block)]
            if samples % block:
                parts.append((b"\x7f" * (samples % block), 1))
    else:
        per_block = max(1, block // len(row))
        parts.append((row * per_block, height // per_block))
        if height % per_block:
            parts.append((row * (height % per_block), 1))
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)))
        if mode == "P":
            f.write(_chunk(b"PLTE", bytes(v for i in range(256) for v in (i, i, i))))
        if transparent:
            f.write(_chunk(b"tRNS", b"\x00" if mode == "P" else b"\x00\x00" * channels))
        f.write(_chunk(b"IDAT", _zlib_stream(parts)))
        f.write(_chunk(b"IEND", b""))


@pytest.mark.parametrize(("width", "height", "mode", "transparent"), [
    (5, 7, "L", False), (3, 10, "RGB", False), (40, 1, "P", True), (1, 9, "RGBA", False), (13, 2, "RGB", False)])
def test_write_png_gives_the_grey_image_it_says(tmp_path: Path, width: int, height: int, mode: str,
                                                transparent: bool) -> None:
    """The hand-written PNG files decode to the mid-grey image, whether rows repeat in blocks (some with a
    remainder) or one row is split into pieces (tiny blocks here, so every branch runs)."""
    path = tmp_path / "grey.png"
    write_png(path, width, height, mode, transparent=transparent, block=16)
    with Image.open(path) as im:
        assert im.size == (width, height) and im.mode == mode
        assert ("transparency" in im.info) == transparent
        assert im.tobytes() == b"\x7f" * (width * height * _PNG_COLOUR[mode][1])
    data = path.read_bytes()
    start = data.index(b"IDAT") + 4
    size = struct.unpack(">I", data[start - 8:start - 4])[0]
    filtered = (b"\x00" + b"\x7f" * (width * _PNG_COLOUR[mode][1])) * height
    assert zlib.decompress(data[start:start + size]) == filtered  # zlib checks the Adler-32


_CHILD = r"""
import json, sys, time, traceback

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

from cotviz.errors import ImageError
from cotviz.io import PreprocessConfig, load_image, preprocess
import torch

for path, crop in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start = time.process_time()
    cfg = PreprocessConfig(224, crop=crop)
    try:
        pre = preprocess(load_image(path, max_side=cfg.decode_side()), cfg)
        ok = tuple(pre.tensor.shape) == (3, 224, 224) and bool(torch.isfinite(pre.tensor).all())
        result = "ok" if ok else f"bad tensor {tuple(pre.tensor.shape)}"
    except ImageError as err:
        result = "ImageError: " + str(err)
    except BaseException as err:
        result = "".join(traceback.format_exception_only(type(err), err)).strip()
    pre = None
    print(json.dumps({"path": path, "crop": crop, "result": result, "peak": peak(),
                      "seconds": time.process_time() - start}), flush=True)
"""


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the test process goes away (no runaway orphans)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_cases(cases: list[tuple[str, bool]]) -> dict[tuple[str, bool], dict]:
    """Run ``load_image`` + ``preprocess`` on each ``(path, crop)`` in one child; results by case.

    A case the child did not finish (killed above :data:`KILL_AT`, or out of time) gets
    ``{"result": "killed ...", "peak": <RSS seen>}``.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cases)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 15 + CASE_SECONDS * len(cases)
    seen, why = 0, ""
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            rss = 0
        seen = max(seen, rss)
        if rss > KILL_AT or time.monotonic() > deadline:
            why = f"killed at {rss / MIB:.0f} MiB" if rss > KILL_AT else "out of time"
            child.kill()
            break
        time.sleep(0.01)
    out, err = child.communicate()
    done = {(r["path"], r["crop"]): r for r in map(json.loads, out.splitlines())}
    for case in cases:
        done.setdefault(case, {"result": why or f"child failed: {err.strip()[-300:]}", "peak": seen,
                               "seconds": float("nan")})
    return done


#: name -> (width, height, PNG mode, tRNS, expected outcome). ``B`` is Pillow's decompression-bomb limit
#: (``Image.MAX_IMAGE_PIXELS``), the largest image load_image accepts. Peak RSS of the whole process before the
#: fix (crop / no crop): 100000x1 and 1x100000 passed 3 GiB within 20 s (killed) / 235 MiB, 20000x3 1989 MiB /
#: 234 MiB, the 1 x B RGBA strip passed 3 GiB / 3 GiB (killed), the B x 1 palette strip 1675 MiB and an
#: OverflowError / MemoryError traceback.
FILES: dict[str, tuple[int | str, int | str, str, bool, str]] = {
    "wide_100000x1": (100_000, 1, "L", False, "ok"),
    "tall_1x100000": (1, 100_000, "L", False, "ok"),
    "flat_20000x3": (20_000, 3, "L", False, "ok"),
    # 1 px wide: Pillow keeps an 8-byte pointer per row, so 4-byte pixels cost 12 bytes; refused before decoding
    "bomb_tall_rgba": (1, "B", "RGBA", False, "ImageError"),
    "tall_rgba_near_the_limit": (1, 26_000_000, "RGBA", False, "ok"),  # estimated at 93% of max_decode_bytes
    "bomb_square_rgba": ("S", "S", "RGBA", False, "ok"),  # S = isqrt(B); 1248 MiB before the fix
    "bomb_wide_palette_trns": ("B", 1, "P", True, "ok"),
    "bomb_wide_rgb": ("B", 1, "RGB", False, "ImageError"),  # two 268 MB rows in Pillow's PNG decoder
}
ONE_MODE = {"tall_rgba_near_the_limit", "bomb_square_rgba"}  # slow to decode: crop only
CASES = [(name, crop) for name in FILES for crop in (True, False) if crop or name not in ONE_MODE]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], dict]:
    if not sys.platform.startswith("linux") or not _clear_refs_works():
        pytest.skip("needs Linux /proc/self/status and /proc/self/clear_refs to measure peak RSS per case")
    if not Image.MAX_IMAGE_PIXELS:
        pytest.skip("Pillow's decompression-bomb limit is switched off in this process")
    folder = tmp_path_factory.mktemp("absurd")
    paths: dict[str, str] = {}
    for name, (w, h, mode, trns, _) in FILES.items():
        path = folder / f"{name}.png"
        limit = int(Image.MAX_IMAGE_PIXELS)
        size = [limit if v == "B" else math.isqrt(limit) if v == "S" else v for v in (w, h)]
        write_png(path, int(size[0]), int(size[1]), mode, transparent=trns)
        paths[name] = str(path)
    results = run_cases([(paths[name], crop) for name, crop in CASES])
    return {(name, crop): results[(paths[name], crop)] for name, crop in CASES}


@pytest.mark.parametrize(("name", "crop"), CASES, ids=[f"{n}-{'crop' if c else 'nocrop'}" for n, c in CASES])
def test_absurd_image_stays_within_1_gib(measured: dict[tuple[str, bool], dict], name: str, crop: bool) -> None:
    r = measured[(name, crop)]
    print(f"{name} crop={crop}: peak {r['peak'] / MIB:.0f} MiB, {r['seconds']:.2f} s CPU, {r['result'][:120]}")
    expected = FILES[name][4]
    assert r["result"] == "ok" if expected == "ok" else r["result"].startswith(f"{expected}: "), r["result"]
    assert "\n" not in r["result"]
    assert r["peak"] < PEAK_LIMIT, f"peak RSS {r['peak'] / MIB:.0f} MiB"
    assert r["seconds"] < CASE_SECONDS
