"""Stand-in for the agent, used only by the harness self-tests
(tests/tests/harness.rs): behaves like the agent contract's life cycle
without tracing anything. Logs `tracer ready`, exits 0 on SIGTERM/SIGINT,
rejects an unknown flag with one stderr line and exit status 2.
"""
import signal
import sys
import time

KNOWN_WITH_VALUE = {"--otlp-endpoint", "--otlp-protocol", "--port", "--pid", "--process",
                    "--capture-bytes", "--settle-ms", "--log-level"}
argv = sys.argv[1:]
i = 0
while i < len(argv):
    if argv[i] not in KNOWN_WITH_VALUE:
        print(f"error: unexpected argument '{argv[i]}'", file=sys.stderr)
        sys.exit(2)
    i += 2


def stop(signum, frame):
    print("flushing and exiting", file=sys.stderr)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("INFO tracer ready: 0 tracepoints attached (fake)", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
