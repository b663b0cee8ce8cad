"""The committed protobuf stubs are exactly what scripts/gen-protos makes from protos/."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_protos(tmp_path):
    subprocess.run([str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = sorted(p.name for p in (tmp_path / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "clients/python/imagegw/v1").iterdir()
                       if p.is_file() and not p.name.endswith(".pyc"))
    assert fresh == committed, "stub files differ: run scripts/gen-protos"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "v1", ROOT / "clients/python/imagegw/v1", fresh,
                                           shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch}: run scripts/gen-protos"
