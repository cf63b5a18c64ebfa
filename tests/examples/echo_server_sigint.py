"""examples/echo_server under load, stopped with SIGINT: it must exit with
status 0 promptly (no hang in shutdown with connections in flight), for 1, 2
and 4 workers. Run by CTest (examples/CMakeLists.txt) with the binary's path.
"""
import signal
import socket
import subprocess
import sys
import threading
import time

EXE = sys.argv[1]
TRIALS = 4
CLIENTS = 16


def one_trial(workers: int, load_s: float) -> None:
    p = subprocess.Popen([EXE, "0", str(workers)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()  # "echo server listening on ..."
        port = int(p.stdout.readline().split()[1].rstrip(";"))
        stop = threading.Event()
        echoed = [0]

        def client() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    msg = b"x" * 1024
                    while not stop.is_set():
                        s.sendall(msg)
                        got = 0
                        while got < len(msg):
                            d = s.recv(65536)
                            if not d:
                                return
                            got += len(d)
                        echoed[0] += 1
            except OSError:
                pass  # the server went away mid-request: expected

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(load_s)
        assert echoed[0] > 0, "no round trip completed before the signal"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=10)
        took = time.monotonic() - t0
        stop.set()
        assert rc == 0, f"exit status {rc}: {p.stderr.read()}"
        # The accept loop polls the stop flag every 200 ms.
        assert took < 3.0, f"took {took:.2f} s to stop"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            raise AssertionError(f"{workers} workers: still running 10 s after SIGINT")


def main() -> None:
    for workers in (1, 2, 4):
        for i in range(TRIALS):
            one_trial(workers, 0.15 + 0.05 * i)
    print("ok")


if __name__ == "__main__":
    main()
