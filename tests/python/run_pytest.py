"""Runs pytest for CTest (tests/python/CMakeLists.txt) and keeps its output.

usage: run_pytest.py LOG [pytest arguments...]

The output goes to the console (CTest shows it on failure) and to LOG, where
scripts/test.sh reads the counts. Exits with pytest's code, or 1 if a
sanitizer report appeared in the output of a run that otherwise passed (an
ASan report in a callback does not always fail the test that triggered it).
"""

import re
import subprocess
import sys

REPORT = re.compile(rb"ERROR: AddressSanitizer|runtime error:|WARNING: ThreadSanitizer")


def main():
    log, args = sys.argv[1], sys.argv[2:]
    reported = False
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            out.write(line)
            reported = reported or bool(REPORT.search(line))
        rc = proc.wait()
    if rc == 0 and reported:
        print(f"[run_pytest] a sanitizer report is in {log}", flush=True)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
