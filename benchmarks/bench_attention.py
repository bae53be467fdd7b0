"""End-to-end cost of ``cotviz attention img.jpg --stage 3`` (cotnet50, CPU) against importing its libraries.

Run: ``python benchmarks/bench_attention.py [--rounds 5] [--profile]``

Interleaves, round by round (so load drifts hit all commands alike), fresh processes of

* ``python -c "import torch, matplotlib, captum"``     the floor: the libraries the command stands on
* ``python -c "import torch, matplotlib.figure, ..."``  what drawing really imports (``import matplotlib``
                                                        alone loads only the package, not the figure stack)
* ``python -c "import gc; gc.disable(); ..."``          the console script defers the GC during start-up
                                                        (~0.3 s of collections that free nothing), so this
                                                        is the like-for-like floor
* ``cotviz attention img.jpg --stage 3 --out TMP``      the whole command (untrained cotnet50, 224 px)
* ``cotviz attention img.jpg --stage 3 --gradcam ...``  with Grad-CAM (imports captum, one backward)
* ``cotviz --help``                                      must stay under 0.5 s (no torch import)

and prints medians of wall time and of the children's CPU time (less sensitive to other processes on a
shared machine) with the ratio command / floor. Target: <= 1.5x (aim 1.3x). ``--profile`` adds an
import-time breakdown (``-X importtime``) and a cProfile of one command run, top 15 by cumulative time.
Not a test: nothing is asserted. ``img.jpg`` is examples/coffee.png re-encoded as JPEG (600 x 400).

Folder throughput (``--images 40``, ``--folder-rounds 3``; ``--folder-only`` skips the single-image part): in one
process, the same untrained cotnet50 (stage 3, batches of 8), on ``--images`` variants of examples/coffee.png
(mirrored, rotated, cropped; JPEG), interleaved round by round:

* ``bound, T thread(s)``      decode + forward + capture + maps only (``load_batches`` ->
                              ``Explainer.explain_prepared``): the folder command if drawing and saving were free,
                              at the threads of each run below;
* ``workers 0, T thread(s)``  ``explain_and_save(..., workers=0)``: decode, compute, draw and save one after the
                              other, at the CLI's threads for ``--workers 0`` (min(cores, batch, images));
* ``workers N, T thread(s)``  ``explain_and_save`` with a running ``SavePool(N)`` and one decoding worker, at the
                              CLI's defaults for a folder (N = one per CPU up to 4; threads = cores - N, >= 1);

and prints images/s (medians), the ratio to the bound at the same threads and to the best bound (target
>= 0.70), whether the files are byte-identical, then the same folder through the CLI in fresh processes
(``--workers 0`` vs the default, wall time including start-up). ``--workers`` / ``--threads`` override.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET, AIM = 1.5, 1.3
HELP_LIMIT = 0.5  # seconds
FLOOR_NO_GC = "import torch, matplotlib, captum, GC off"  # cotviz defers the GC during start-up: this is the fair floor for that


def _cotviz() -> list[str]:
    script = Path(sys.executable).parent / "cotviz"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cotviz"]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, children's user+system CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--profile", action="store_true", help="also print an import-time and cProfile breakdown")
    parser.add_argument("--memory", action="store_true",
                        help="also run 8, 32 and 96 images (batches of 8) and print peak RSS and time per image")
    parser.add_argument("--images", type=int, default=40, help="images in the folder benchmark (default 40)")
    parser.add_argument("--folder-rounds", type=int, default=3, help="interleaved folder rounds (default 3)")
    parser.add_argument("--folder-only", action="store_true", help="skip the single-image start-up benchmark")
    parser.add_argument("--no-folder", action="store_true", help="skip the folder throughput benchmark")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the folder runs (default: the CLI's default)")
    parser.add_argument("--no-cli", action="store_true", help="skip the folder runs through the CLI")
    parser.add_argument("--workers", type=int, default=None,
                        help="saving processes of the pipelined run (default: the CLI's default)")
    args = parser.parse_args()
    if not args.folder_only:
        _single(args)
    if not args.no_folder:
        _folder(args)


def _single(args: argparse.Namespace) -> None:
    """The single-image command against the import floor (fresh processes)."""
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="cotviz-bench-"))
    try:
        img = tmp / "img.jpg"
        Image.open(REPO / "examples" / "coffee.png").convert("RGB").save(img, quality=92)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        cv = _cotviz()
        commands = {
            "import torch, matplotlib, captum": [sys.executable, "-c", "import torch, matplotlib, captum"],
            "import torch, matplotlib.figure (+Agg)": [sys.executable, "-c", "import torch, matplotlib.figure, "
                                                       "matplotlib.backends.backend_agg"],
            FLOOR_NO_GC: [sys.executable, "-c", "import gc; gc.disable(); import torch, matplotlib, captum"],
            "cotviz attention img.jpg --stage 3": [*cv, "attention", str(img), "--stage", "3", "--out", str(tmp / "o")],
            "  ... --gradcam": [*cv, "attention", str(img), "--stage", "3", "--gradcam", "--out", str(tmp / "g")],
            "cotviz --help": [*cv, "--help"],
        }
        for cmd in commands.values():  # warm the file cache once
            _run(cmd, env)
        walls: dict[str, list[float]] = {k: [] for k in commands}
        cpus: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                w, c = _run(cmd, env)
                walls[name].append(w)
                cpus[name].append(c)
        base_w = statistics.median(walls["import torch, matplotlib, captum"])
        base_c = statistics.median(cpus["import torch, matplotlib, captum"])
        print(f"cotviz attention benchmark: {args.rounds} interleaved rounds, fresh processes, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"{'command':38s} {'wall (s)':>9s} {'ratio':>7s} {'CPU (s)':>9s} {'ratio':>7s}")
        for name in commands:
            mw, mc = statistics.median(walls[name]), statistics.median(cpus[name])
            print(f"{name:38s} {mw:9.2f} {mw / base_w:6.2f}x {mc:9.2f} {mc / base_c:6.2f}x")
        ratio = statistics.median(walls["cotviz attention img.jpg --stage 3"]) / base_w
        verdict = "meets the aim" if ratio <= AIM else "meets the target" if ratio <= TARGET else "MISSES the target"
        print(f"end-to-end / import floor = {ratio:.2f}x (target <= {TARGET}x, aim {AIM}x): {verdict}")
        strict = statistics.median(walls["cotviz attention img.jpg --stage 3"]) / statistics.median(walls[FLOOR_NO_GC])
        print(f"end-to-end / import floor with the GC also off during its imports = {strict:.2f}x "
              "(the share of the gain that is not start-up GC)")
        help_s = statistics.median(walls["cotviz --help"])
        print(f"cotviz --help = {help_s:.2f} s ({'under' if help_s < HELP_LIMIT else 'OVER'} {HELP_LIMIT} s)")
        if args.memory:
            _memory(cv, img, tmp, env)
        if args.profile:
            _profile(cv, img, tmp, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


FOLDER_TARGET = 0.70


def make_folder(folder: Path, n: int) -> list[Path]:
    """``n`` distinct JPEG variants of examples/coffee.png (mirrored or rotated, cropped differently)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(REPO / "examples" / "coffee.png").convert("RGB")
    paths = []
    for i in range(n):
        v = im.rotate(i * 9) if i % 2 else ImageOps.mirror(im)
        v = v.crop((i % 5 * 10, i % 3 * 10, im.width - i % 4 * 10, im.height - i % 2 * 10))
        paths.append(folder / f"p{i:03d}.jpg")
        v.save(paths[-1], quality=90)
    return paths


@dataclass
class FolderRun:
    """Timings of one folder benchmark: seconds per run name, round by round."""

    n: int
    device: str
    workers: int
    threads: dict[str, int]
    times: dict[str, list[float]]
    loads: list[float]
    cpu: dict[str, list[float]]
    pool_start: float
    identical: bool | None

    def rate(self, name: str) -> float:
        return self.n / statistics.median(self.times[name])


def folder_throughput(paths: list[Path], out_root: Path, *, workers: int, rounds: int, device: str = "cpu",
                      batch: int = 8, threads: int | None = None) -> FolderRun:
    """Interleaved rounds of: the bound (decode + forward + capture + maps, no figures) at the threads of each
    run, ``explain_and_save`` with ``workers=0`` (the CLI's threads for it) and with a running ``SavePool(workers)``
    (the CLI's threads for that; ``threads`` overrides both)."""
    import warnings

    from cotviz.explain import Explainer
    from cotviz.explain.loader import load_batches
    from cotviz.explain.pipeline import SavePool, explain_and_save
    from cotviz.explain.runner import default_threads
    from cotviz.resources import torch_threads

    n = len(paths)
    t_seq, t_par = threads or default_threads(batch, n, 0), threads or default_threads(batch, n, workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained-network warning
        with torch_threads(t_seq):
            explainer = Explainer("cotnet50", stage=3, device=device)
        t0 = time.perf_counter()
        with SavePool(workers) as pool:
            saver_pids = pool.wait_ready()
            pool_start = time.perf_counter() - t0

            def bound() -> None:
                for b in load_batches(paths, explainer.preprocess, batch_size=batch):
                    explainer.explain_prepared(b)

            def folder(w: int) -> None:
                for _ in explain_and_save(explainer, paths, out_root / f"out{w}", batch_size=batch, workers=w,
                                          pool=pool if w else None):
                    pass

            runs = {f"bound, {t_seq} thread(s)": (t_seq, bound), f"bound, {t_par} thread(s)": (t_par, bound),
                    f"workers 0, {t_seq} thread(s)": (t_seq, lambda: folder(0)),
                    f"workers {workers}, {t_par} thread(s)": (t_par, lambda: folder(workers))}
            with torch_threads(t_seq):
                for b in load_batches(paths[:batch], explainer.preprocess, batch_size=batch):  # warm-up
                    explainer.explain_prepared(b)
            times: dict[str, list[float]] = {k: [] for k in runs}
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            loads = []
            for _ in range(rounds):
                for name, (t, run) in runs.items():
                    with torch_threads(t):
                        start, cpu0 = time.perf_counter(), _cpu_seconds(saver_pids)
                        run()
                        times[name].append(time.perf_counter() - start)
                        cpu[name].append(_cpu_seconds(saver_pids) - cpu0)
                    loads.append(os.getloadavg()[0])
    seq, par = out_root / "out0", out_root / f"out{workers}"
    same = None if t_seq != t_par else all(  # (other threads: other float rounding in the forward)
        (seq / p.name).read_bytes() == p.read_bytes() for p in par.iterdir() if p.suffix in (".png", ".npz"))
    return FolderRun(n, device, workers, {k: t for k, (t, _) in runs.items()}, times, loads, cpu, pool_start, same)


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by this process (all its threads) and the processes ``pids`` (Linux /proc)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def print_folder(run: FolderRun) -> None:
    names = list(run.times)
    bound_same, pipelined = names[1], names[3]
    print(f"\nfolder throughput: {run.n} images, cotnet50 stage 3 on {run.device}, batch 8, "
          f"{len(run.times[names[0]])} interleaved rounds, {os.cpu_count()} CPUs, load average "
          f"{min(run.loads):.1f}..{max(run.loads):.1f}")
    print(f"  save pool of {run.workers} started in {run.pool_start:.1f} s, not timed below (the CLI starts it "
          "while its first batch is computed)")
    best = max(run.rate(names[0]), run.rate(bound_same))
    print(f"  {'run':30s} {'images/s':>9s} {'/ bound':>8s} {'/ best bound':>13s} {'CPU s/image':>12s}   "
          "(all rounds, s)")
    for name, ts in run.times.items():
        rate = run.rate(name)
        same = run.rate(names[0] if run.threads[name] == run.threads[names[0]] else bound_same)
        print(f"  {name:30s} {rate:9.2f} {rate / same:8.0%} {rate / best:13.0%} "
              f"{statistics.median(run.cpu[name]) / run.n:12.2f}    {' '.join(f'{t:.1f}' for t in ts)}")
    ratio = run.rate(pipelined) / run.rate(bound_same)
    print(f"  {pipelined} / bound at the same threads = {ratio:.0%}, / the best bound = "
          f"{run.rate(pipelined) / best:.0%} (target >= {FOLDER_TARGET:.0%}): "
          f"{'meets' if ratio >= FOLDER_TARGET else 'MISSES'} the target")
    print("  figures and npz byte-identical to workers 0: " + (
        "not compared (other threads, other float rounding)" if run.identical is None else str(run.identical)))
    print("  (CPU s/image: this process and the savers; the decoding worker not counted)")


def _folder(args: argparse.Namespace) -> None:
    """Folder throughput against the decode + forward + capture bound (in process), then through the CLI."""
    from cotviz.explain.pipeline import MIN_POOL_IMAGES, default_save_workers

    tmp = Path(tempfile.mkdtemp(prefix="cotviz-bench-folder-"))
    try:
        paths = make_folder(tmp / "photos", args.images)
        workers = args.workers or default_save_workers(max(len(paths), MIN_POOL_IMAGES))  # the CLI's pool
        print_folder(folder_throughput(paths, tmp, workers=workers, rounds=args.folder_rounds,
                                       threads=args.threads))
        if not args.no_cli:
            print_folder_cli(folder_cli(tmp / "photos", tmp, workers, args.folder_rounds), len(paths))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_cli(photos: Path, out_root: Path, workers: int, rounds: int, device: str = "cpu",
               ) -> dict[int, list[float]]:
    """The folder through ``cotviz attention`` in fresh processes (start-up included), interleaved: wall seconds
    per ``--workers`` value (0 and ``workers``)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmds = {w: [*_cotviz(), "attention", str(photos), "--stage", "3", "--device", device, "--workers", str(w),
                "--out", str(out_root / f"cli{w}")] for w in (0, workers)}
    walls: dict[int, list[float]] = {w: [] for w in cmds}
    for _ in range(rounds):
        for w, cmd in cmds.items():
            walls[w].append(_run(cmd, env)[0])
    return walls


def print_folder_cli(walls: dict[int, list[float]], n: int) -> None:
    print(f"  cotviz attention <{n} images> --stage 3 (fresh processes, start-up included, load average "
          f"{os.getloadavg()[0]:.1f}):")
    for w, ws in walls.items():
        m = statistics.median(ws)
        print(f"    --workers {w}: {m:6.1f} s = {n / m:5.2f} images/s   ({' '.join(f'{t:.1f}' for t in ws)})")


def _memory(cv: list[str], img: Path, tmp: Path, env: dict[str, str]) -> None:
    """Streaming: peak RSS of the whole process should not grow with the number of images."""
    import subprocess as sp

    print("\nbatches of 8, distinct copies of img.jpg: peak RSS and wall time per image")
    for n in (8, 32, 96):
        folder = tmp / f"n{n}"
        folder.mkdir()
        data = img.read_bytes()
        for i in range(n):
            (folder / f"im{i:03d}.jpg").write_bytes(data + i.to_bytes(4, "little"))  # distinct files
        code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                "w = time.perf_counter() - t; "
                "print(p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = sp.run([sys.executable, "-c", code, *cv, "attention", str(folder), "--stage", "3", "--batch-size", "8",
                      "--out", str(tmp / f"out{n}")], env=env, capture_output=True, text=True, check=True).stdout
        rc, wall, peak_kb = out.split()
        if rc != "0":
            raise SystemExit(f"cotviz attention on {n} images failed ({rc})")
        print(f"  {n:3d} images: peak RSS {int(peak_kb) / 1024:6.0f} MiB, {float(wall) / n:5.2f} s per image")


def _profile(cv: list[str], img: Path, tmp: Path, env: dict[str, str]) -> None:
    cmd = ["attention", str(img), "--stage", "3", "--out", str(tmp / "p")]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cotviz", *cmd], env=env,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = line[len("import time:"):].split("|")
            if cum.strip().isdigit() and not name.startswith("  "):  # nested imports are indented further
                rows.append((int(cum), name.strip()))
    print("\ntop-level imports of the command (cumulative, ms):")
    for micros, module in sorted(rows, reverse=True)[:8]:
        print(f"  {micros / 1000:8.0f}  {module}")
    prof = tmp / "prof.out"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "cotviz", *cmd], env=env,
                   capture_output=True, check=True)
    import pstats

    print("\ncProfile of one run, top 15 by cumulative time:")
    pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
