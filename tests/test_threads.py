"""Heavy commands pick their torch thread count themselves (the free cores) and all accept --threads."""
import pytest
import torch
from click.testing import CliRunner

from bench import threads
from bench.cli import main

HEAVY = [["demo"], ["ablate"], ["probe-kd"], ["train"], ["dpo"], ["cache"], ["dpo-pairs"], ["probe"], ["sample"],
         ["perf"], ["geneval"], ["geneval-score"], ["fid"], ["distill"], ["testbed", "dataset"]]


@pytest.mark.parametrize("cores, load, expected", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 5.0, 1), (16, 3.4, 13)])
def test_auto_threads_takes_the_free_cores(monkeypatch, cores, load, expected):
    monkeypatch.setattr(threads, "cores", lambda: cores)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert threads.auto_threads()[0] == expected


def test_use_threads_order_flag_env_auto(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "auto_threads", lambda: (3, "stub"))
    try:
        assert threads.use_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.use_threads(None) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.use_threads(None) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().err.count("torch threads:") == 3


@pytest.mark.parametrize("command", HEAVY)
def test_every_heavy_command_accepts_threads(command):
    r = CliRunner().invoke(main, [*command, "--help"])
    assert r.exit_code == 0 and "--threads" in r.output, r.output
    bad = CliRunner().invoke(main, [*command, "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output

