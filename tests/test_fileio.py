"""Atomic writes: a killed writer's temporaries are cleared, and errors name the real file."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from scratchnet import checkpoint
from scratchnet.fileio import atomic_write, remove_stale_temps

HANGING_WRITER = """
import sys, time
from scratchnet.fileio import atomic_write
def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
atomic_write(sys.argv[1], write)
"""


def killed_mid_write(path):
    """Start a process writing ``path`` atomically, kill -9 it mid-write; its temporary stays."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", HANGING_WRITER, str(path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    return [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def test_a_write_killed_with_sigkill_leaves_a_temporary_the_next_save_removes(tmp_path):
    path = tmp_path / "checkpoint.npz"
    left = killed_mid_write(path)
    assert len(left) == 1 and left[0].startswith(".checkpoint.npz.")
    assert not path.exists()
    checkpoint.save_checkpoint(path, {"model": "mlp"}, {"w": np.zeros(3)})
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_remove_stale_temps_clears_every_target_and_nothing_else(tmp_path):
    killed_mid_write(tmp_path / "checkpoint.npz")
    killed_mid_write(tmp_path / "metrics.json")
    (tmp_path / ".notes.tmp").write_text("not ours: no random part")
    (tmp_path / "data.tmp").write_text("not hidden")
    (tmp_path / "metrics.json").write_text("{}")
    removed = remove_stale_temps(tmp_path)
    assert [os.path.basename(p)[:14] for p in removed] == [".checkpoint.np", ".metrics.json."]
    assert sorted(os.listdir(tmp_path)) == [".notes.tmp", "data.tmp", "metrics.json"]
    assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path / "absent") == []


def test_another_targets_temporary_survives_a_save(tmp_path):
    killed_mid_write(tmp_path / "metrics.json")
    atomic_write(tmp_path / "checkpoint.npz", lambda f: f.write(b"x"))
    assert len([n for n in os.listdir(tmp_path) if n.startswith(".metrics.json.")]) == 1


def test_errors_name_the_target_not_the_temporary(tmp_path):
    missing = tmp_path / "no" / "such" / "folder" / "c.npz"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(missing, lambda f: f.write(b"x"))
    assert str(missing) in str(info.value) and ".tmp" not in str(info.value)
    folder = tmp_path / "a-folder.npz"
    folder.mkdir()
    with pytest.raises(OSError) as info:  # os.replace cannot put a file over a folder
        atomic_write(folder, lambda f: f.write(b"x"))
    assert str(folder) in str(info.value) and ".tmp" not in str(info.value)
    assert os.listdir(tmp_path) == ["a-folder.npz"] and not os.listdir(folder)
