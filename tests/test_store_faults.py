"""The SQLite store recovers by itself from storage faults: a full disk and a read-only
database file, each fixed while the process runs."""

import json
import subprocess
import sys

from tests.servers import ROOT

# A private mount namespace for the tmpfs; file modes that bind root for the read-only file.
CONFINE = {"full": ["unshare", "--mount"],
           "readonly": ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]}


def run_fault(mode, folder):
    result = subprocess.run([*CONFINE[mode], sys.executable, "-m", "tests.sqlite_faults", mode,
                             str(folder)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_sqlite_store_writes_again_as_soon_as_the_full_disk_has_space(tmp_path):
    counts = run_fault("full", tmp_path)
    assert counts["before"] == 0
    assert counts["while_full"] == 20  # the disk really was full
    assert counts["after"] == 0


def test_sqlite_store_writes_again_as_soon_as_the_files_are_writable(tmp_path):
    counts = run_fault("readonly", tmp_path)
    assert counts["while_readonly"] == 3
    assert counts["after"] == 0
