"""benchmarks/speed.py's child-process rows: per-child peak memory, start-up rows and the --only groups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ALLOC = "import numpy as np; a = np.ones({n}, np.uint8); print(int(a.sum()))"


def test_run_child_reads_each_childs_own_peak_rss():
    import numpy as np
    import speed

    ballast = np.ones(500_000_000, np.uint8)  # this process is big: its children must not read as big
    rc, _, big, out, _ = speed.run_child([sys.executable, "-c", ALLOC.format(n=300_000_000)], timeout=120)
    assert rc == 0 and out.strip() == "300000000" and 0.3 < big < 0.45
    # a later, smaller child reports its own peak, not the largest so far (as RUSAGE_CHILDREN would)
    rc, _, small, _, _ = speed.run_child([sys.executable, "-c", ALLOC.format(n=1000)], timeout=120)
    assert rc == 0 and small < 0.1
    del ballast


def test_run_child_returns_the_exit_code_and_stderr():
    import speed

    rc, sec, _, _, err = speed.run_child([sys.executable, "-c", "import sys; sys.exit('no such volume')"], timeout=60)
    assert rc == 1 and "no such volume" in err and sec > 0


def test_run_child_kills_a_child_past_its_timeout():
    import speed

    rc, sec, _, _, _ = speed.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert rc == -9 and sec < 20


@pytest.mark.parametrize("only", ["nope", "cpu,nope", ","])
def test_only_refuses_unknown_groups(only, capsys):
    import speed

    with pytest.raises(SystemExit) as e:
        speed.main(["--only", only])
    assert e.value.code == 2
    assert "--only takes groups from" in capsys.readouterr().err


@pytest.mark.slow
def test_only_cli_startup_times_help_and_a_refusal(tmp_path, capsys):
    import speed

    out = tmp_path / "s.md"
    assert speed.main(["--quick", "--only", "cli-startup", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "start-up: medvae --help" in text and "does not exist (refusal)" in text
    assert "wrong outcome" not in text  # --help exits 0, the refusal exits 2 with "medvae: error"
    assert "1 mm brain" not in text  # only the asked-for group ran
