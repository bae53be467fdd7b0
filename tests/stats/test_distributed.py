"""torchrun with 2 gloo ranks on 127.0.0.1 equals one process bit for bit; a SIGKILLed run resumes to the same bits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _stats_data import make_tree, tiny_model

from cotviz.io.outputs import json_text
from cotviz.resources import torch_threads
from cotviz.stats import compute_stats
from cotviz.stats.checkpoint import checkpoint_path, load_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", per_class=5, size=(40, 32))  # 10 images + 1 unreadable: 6 batches of 2
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "--max-restarts", "0", "-m", "cotviz", "stats", str(data),
           "--model", "cotnet_demo", "--weights", "demo", "--stages", "2-4", "--batch-size", "2", "--workers", "1",
           "--threads", "1", "--checkpoint-every", "2", "--out", str(out), "--json", "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 only prints
    assert summary["run"]["world_size"] == 2 and summary["run"]["images"] == 10 and summary["run"]["failed"] == 1
    doc = json.loads((out / "stats.json").read_text())
    with torch_threads(1):
        single = compute_stats("cotnet_demo", data, weights="demo", stages="2-4", batch_size=2, workers=0)
    assert doc["series"] == json.loads(json_text(single.rows()))  # every statistic, bit for bit (repr round trip)
    assert doc["failures"] == single.failures
    for rank in (0, 1):
        assert load_checkpoint(checkpoint_path(out / "checkpoints", rank, 2)).complete


KILLER = """
import os, signal, sys
import torch
sys.path.insert(0, {here!r})
from _stats_data import tiny_model
from cotviz.stats import compute_stats
torch.set_num_threads(2)
seen = []
def kill(progress):
    seen.append(progress)
    if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: only the periodic checkpoints survive
compute_stats(tiny_model(), {data!r}, progress=kill, checkpoint_dir={ckpts!r}, **{opts!r})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_run_resumes_to_the_same_bits(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", per_class=4, bad=False)
    ckpts = tmp_path / "ckpts"
    opts = {"stages": [1, 3], "batch_size": 2, "workers": 0, "checkpoint_every": 2, "preprocess": {"size": 64},
            "maps": ["center_weight", "dynamic_share", "fusion_dynamic_weight"]}
    code = KILLER.format(here=str(HERE), data=str(data), ckpts=str(ckpts), opts=opts)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = load_checkpoint(checkpoint_path(ckpts, 0, 1))
    assert ckpt.next_batch == 3 and ckpt.images == 6 and not ckpt.complete
    net = tiny_model()
    resumed = compute_stats(net, data, checkpoint_dir=ckpts, resume=True, **opts)  # type: ignore[arg-type]
    whole = compute_stats(net, data, **{k: v for k, v in opts.items() if k != "checkpoint_every"})  # type: ignore[arg-type]
    assert resumed.run["resumed"] and resumed.images == whole.images == 8
    assert resumed.accumulator.equal(whole.accumulator)
