"""Shared piece of the test_reliability_* files: a child process's report computed once per
pytest session, even when pytest-xdist spreads the tests that read it over several workers."""

import fcntl
import json


def shared_report(tmp_path_factory, key, compute):
    """compute() -> a JSON-able report, run by the first worker that asks for `key`; the
    others wait for it (a file lock in the session's shared temp directory) and read it back.
    Without xdist the directory is the session's own and the lock is uncontended."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: its parent is shared by all
        root = root.parent
    path = root / f"reliability-{key}.json"
    with open(root / f"reliability-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return json.loads(path.read_text())
        report = compute()
        path.write_text(json.dumps(report))
        return report
