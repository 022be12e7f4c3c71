"""The command line: help, the method listing, the demo, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import vlmzip
from vlmzip.cli import main


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "methods" in out and "demo" in out


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["method", "stage", "paper"]
    listed = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert listed == {info.name: info.stage for info in vlmzip.methods()}  # other tests register their own too
    builtin = {"random": "vision", "uniform": "vision", "vtc-cls": "vision", "fastv": "prefill", "knorm": "decode"}
    assert builtin.items() <= listed.items()


def test_demo_reports_kept_tokens(capsys):
    assert main(["demo", "--family", "llava", "--policy", "uniform:keep=0.25"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens in:   [16, 32]" in out and "kept after vision:  [4, 8]" in out


def test_bad_policy_is_one_line_on_stderr(capsys):
    assert main(["demo", "--family", "llava", "--policy", "fastv:keep=2.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmzip: error: fastv: keep=2.0 is out of range") and "Traceback" not in err


def test_console_script_entry_point():
    done = subprocess.run([sys.executable, "-m", "vlmzip.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: vlmzip" in done.stdout
