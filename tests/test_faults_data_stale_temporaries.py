"""Temporary outputs of killed converters (issue 21, poor): a killed tool left its hidden
``.<output>.*.tmp`` folder and file behind for ever. Temporary names now carry ``<host>-<pid>``;
the next run for the same output deletes those of dead processes of this host, keeps those of
live processes and other hosts, and names the ones it cannot attribute."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

from detr_d2.utils.atomic_io import atomic_directory, remove_stale_temporaries
from tests.utils.paths import ROOT
from tests.utils.scripts import detection_to_panoptic_argv, load_script

HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder, base):
    """A temp folder of a dead process, a temp file of a dead process, one of this (live)
    process, one of another host, one without owner; returns their names."""
    dead = _dead_pid()
    names = {
        "dead_dir": f".{base}.{HOST}-{dead}.abc123.tmp",
        "dead_file": f".{base}.{HOST}-{dead}.def456.tmp",
        "live": f".{base}.{HOST}-{os.getpid()}.ghi789.tmp",
        "other_host": f".{base}.elsewhere-{dead}.jkl012.tmp",
        "no_owner": f".{base}.mno345.tmp",
    }
    os.makedirs(os.path.join(folder, names["dead_dir"], "sub"))
    for key in ("dead_file", "live", "other_host", "no_owner"):
        open(os.path.join(folder, names[key]), "w").close()
    return names


def test_only_temporaries_of_dead_local_processes_are_removed(tmp_path, caplog):
    names = _leftovers(tmp_path, "png")
    open(tmp_path / ".pngx.host-1.a.tmp", "w").close()  # another target's: not looked at
    with caplog.at_level(logging.WARNING):
        removed = remove_stale_temporaries(str(tmp_path / "png"))
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead_dir", "dead_file"))
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(
        [names["live"], names["other_host"], names["no_owner"], ".pngx.host-1.a.tmp"]
    )
    assert "killed processes" in caplog.text and names["no_owner"] in caplog.text


def test_temporary_names_carry_host_and_pid(tmp_path):
    with atomic_directory(str(tmp_path / "out")) as tmp:
        assert os.path.basename(tmp).startswith(f".out.{HOST}-{os.getpid()}.")


def test_a_converter_run_clears_what_a_killed_run_left(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    png_left = _leftovers(out, "png")
    json_left = _leftovers(out, "p.json")
    with caplog.at_level(logging.WARNING):
        rc = load_script("convert_detection_to_panoptic").main(
            detection_to_panoptic_argv(str(out / "p.json"), str(out / "png"))
        )
    assert rc == 0
    kept = {
        n for left in (png_left, json_left) for k, n in left.items() if not k.startswith("dead")
    }
    assert set(os.listdir(out)) == {"p.json", "png"} | kept
    assert len(json.loads((out / "p.json").read_text())["annotations"]) == 2


def test_a_really_killed_writer_is_cleaned_up(tmp_path):
    """A child process fills an atomic_directory and is killed with SIGKILL inside it."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from detr_d2.utils.atomic_io import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as tmp:\n"
            "    open(tmp + '/a.png', 'w').close()\n"
            "    print(tmp, flush=True)\n"
            "    time.sleep(600)\n",
            str(tmp_path / "png"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    tmp = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert os.path.isdir(tmp)  # what a kill leaves
    with atomic_directory(str(tmp_path / "png")) as new:
        open(os.path.join(new, "b.png"), "w").close()
    assert os.listdir(tmp_path) == ["png"] and os.listdir(tmp_path / "png") == ["b.png"]
