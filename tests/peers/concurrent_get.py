"""Sends one GET per URL, all at once from separate threads, each on its own connection.
Exits 1 if any fails. Usage: concurrent_get.py URL..."""
import sys
import threading
import urllib.request

failed = []


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            r.read()
    except Exception as e:  # noqa: BLE001 - any failure fails the run
        failed.append(f"{url}: {e}")


threads = [threading.Thread(target=get, args=(u,)) for u in sys.argv[1:]]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failed:
    sys.exit("\n".join(failed))
