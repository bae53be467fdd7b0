"""``cotviz.explain.pipeline``: saving in worker processes writes the same bytes as saving in process, keeps the
input order and a bad file's place, and a Ctrl-C leaves complete files only and no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from cotviz.explain import Explainer
from cotviz.explain.pipeline import explain_and_save
from explain.test_loader import workers

REPO = Path(__file__).resolve().parents[2]


def test_saving_in_workers_writes_the_same_files_in_the_same_order(tiny: nn.Module, images: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    explainer = Explainer(tiny, stage=2, preprocess={"size": 64})
    items = [images["a"], images["broken"], images["b"], images["c"]]
    before = workers()
    seq = list(explain_and_save(explainer, items, tmp_path / "seq", batch_size=2, workers=0))
    par = list(explain_and_save(explainer, items, tmp_path / "par", batch_size=2, workers=2))
    assert workers() <= before  # the pool and the decoding worker are gone
    assert [d.source for d in par] == [str(i) for i in items]
    assert par[1].files is None and par[1].explanation.error == seq[1].explanation.error is not None
    assert [d.files is None for d in par] == [False, True, False, False]
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "par").iterdir()) and len(names) == 9
    for name in names:
        a, b = (tmp_path / "seq" / name).read_bytes(), (tmp_path / "par" / name).read_bytes()
        if name.endswith(".json"):  # the same up to the output folder it names
            a = a.replace(str(tmp_path / "seq").encode(), str(tmp_path / "par").encode())
        assert a == b, name


SCRIPT = textwrap.dedent("""
    import signal
    import sys
    from pathlib import Path

    # Ctrl-C raises KeyboardInterrupt, as in a terminal: an ignored SIGINT is inherited through exec (a test run
    # started as a background job, or by a runner that ignores it), and this run would then never be interrupted
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from cotviz.explain import Explainer
    from cotviz.explain.pipeline import explain_and_save
    from cotviz.models import create_model

    if __name__ == "__main__":  # (the workers start from a forkserver, which imports this file as __mp_main__)
        model = create_model("cotnet50", seed=0, layers=[1, 1, 1, 1], base_width=16, num_classes=10)
        explainer = Explainer(model, stage=2, preprocess={"size": 64})
        paths = sorted(Path(sys.argv[1]).iterdir())
        for done in explain_and_save(explainer, paths, sys.argv[2], batch_size=2, workers=2):
            print(done.source, flush=True)
""")


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def test_ctrl_c_leaves_complete_files_only_and_no_process(images: dict[str, Path], tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    small = Image.open(images["a"]).resize((48, 32))
    for i in range(40):
        small.rotate(i).save(photos / f"p{i:02d}.png")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(photos), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first image is saved: the run is under way
        assert first.strip().endswith("p00.png"), proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert len(rest.split()) < 39, "the run finished before the interrupt"
    files = sorted(out.iterdir())
    assert not [f.name for f in files if f.name.startswith(".") or f.suffix not in (".png", ".npz", ".json")]
    bases = {f.stem for f in files}
    assert bases and all((out / f"{b}{ext}").exists() for b in bases for ext in (".png", ".npz", ".json"))
    for b in bases:  # every file is whole
        Image.open(out / f"{b}.png").verify()
        assert len(np.load(out / f"{b}.npz").files) > 0
        assert json.loads((out / f"{b}.json").read_text())["outputs"]["npz"].endswith(f"{b}.npz")
    deadline = time.monotonic() + 20
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session(proc.pid), "processes of the interrupted run are still alive"


def test_saving_in_process_collects_only_what_the_run_allocates(tiny: nn.Module, images: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """The heap alive before the run is frozen while it runs (the collection after each figure then skips it) and
    given back afterwards, also when the caller stops early; a heap frozen by the caller is left as it is."""
    import gc

    explainer = Explainer(tiny, stage=2, preprocess={"size": 64})
    assert gc.get_freeze_count() == 0
    seen = [gc.get_freeze_count() for _ in explain_and_save(explainer, [images["a"], images["b"]], tmp_path / "o",
                                                              batch_size=1)]
    assert min(seen) > 0 and gc.get_freeze_count() == 0
    run = explain_and_save(explainer, [images["a"], images["b"]], tmp_path / "p", batch_size=1)
    next(run)
    run.close()  # stopped early
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen = [gc.get_freeze_count() for _ in explain_and_save(explainer, [images["a"]], tmp_path / "q")]
        # not frozen again (the count would grow) nor unfrozen (0); frozen objects that die leave the count
        assert all(0 < n <= frozen for n in seen) and 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_small_folders_are_saved_in_process_by_default() -> None:
    from cotviz.explain.pipeline import MIN_POOL_IMAGES, default_save_workers
    from cotviz.resources import usable_cpus

    assert default_save_workers(1) == default_save_workers(MIN_POOL_IMAGES - 1) == 0
    assert default_save_workers(MIN_POOL_IMAGES) == default_save_workers(10_000) == max(1, min(usable_cpus(), 4))
