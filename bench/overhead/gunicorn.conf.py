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
# A listening socket per worker (SO_REUSEPORT): the kernel spreads wrk's 32 keep-alive
# connections over the workers by hash. With one shared socket the workers race to accept
# them, and a run now and then starts with 30 of 32 on one worker, which moved this
# benchmark's throughput by a fifth between runs of the same variant.
reuse_port = True
accesslog = None
loglevel = "warning"
