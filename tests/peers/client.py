"""HTTP client for the end-to-end tests: GETs each URL in order over one
requests.Session (keep-alive), optionally repeating the list.

Usage: client.py [--repeat N] [--header 'Name: value']... [--allow-errors] URL...

Prints nothing on success. Exits 1 on a connection error, or on a 4xx/5xx
response unless --allow-errors is given.
"""
import argparse
import sys

import requests

parser = argparse.ArgumentParser()
parser.add_argument("urls", nargs="+")
parser.add_argument("--repeat", type=int, default=1)
parser.add_argument("--header", action="append", default=[])
parser.add_argument("--allow-errors", action="store_true")
args = parser.parse_args()

headers = {}
for h in args.header:
    name, _, value = h.partition(":")
    headers[name.strip()] = value.strip()

failed = False
with requests.Session() as session:
    for _ in range(args.repeat):
        for url in args.urls:
            try:
                r = session.get(url, headers=headers, timeout=15)
                _ = r.content  # read the whole body
            except requests.RequestException as e:
                print(f"GET {url}: {e}", file=sys.stderr)
                sys.exit(1)
            if r.status_code >= 400 and not args.allow_errors:
                print(f"GET {url}: HTTP {r.status_code}", file=sys.stderr)
                failed = True
sys.exit(1 if failed else 0)
