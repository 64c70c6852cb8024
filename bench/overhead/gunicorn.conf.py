# gunicorn settings for the benchmark's Flask service: 2 workers (the machine has 2 cores) with
# 4 threads each, so keep-alive connections from wrk are served (the gthread worker keeps them).
import os

bind = "127.0.0.1:" + os.environ["BENCH_PORT"]
workers = 2
worker_class = "gthread"
threads = 4
keepalive = 30
# Workers get this long to finish (and to flush the OTel batch) after SIGTERM.
graceful_timeout = 5
backlog = 2048
accesslog = None
loglevel = "warning"
