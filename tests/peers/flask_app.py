"""Flask app traced by the end-to-end tests (Werkzeug dev server, threaded, one request
per connection; or waitress with keep-alive).

Usage: flask_app.py --port P [--host H] [--downstream URL] [--keep-alive] [--pause-ms MS]

--keep-alive serves with waitress (HTTP/1.1 keep-alive) instead of Werkzeug's dev server,
which closes every connection.

Routes:
  /                 JSON hello
  /items/<id>       JSON echoing the id
  /api/<path:rest>  JSON echoing the path
  /error            500 with a JSON body
  /bytes/<n>        a text body of exactly n bytes
  /chain            GETs <downstream>/items/7 with requests and returns its JSON
  /twice            GETs <downstream>/items/7, waits --pause-ms, GETs <downstream>/items/8
  anything else     Flask's own 404
"""
import argparse
import logging
import time

import requests
from flask import Flask, Response, jsonify

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--downstream", default=None)
parser.add_argument("--keep-alive", action="store_true")
parser.add_argument("--pause-ms", type=int, default=0)
args = parser.parse_args()

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@app.get("/")
def index():
    return jsonify(hello="world")


@app.get("/items/<item_id>")
def item(item_id):
    return jsonify(id=item_id)


@app.get("/api/<path:rest>")
def api(rest):
    return jsonify(path=rest)


@app.get("/error")
def error():
    return jsonify(error="boom"), 500


@app.get("/bytes/<int:n>")
def sized(n):
    return Response(b"x" * n, mimetype="text/plain")


@app.get("/chain")
def chain():
    if not args.downstream:
        return jsonify(error="no downstream configured"), 500
    r = requests.get(args.downstream.rstrip("/") + "/items/7", timeout=10)
    return jsonify(downstream_status=r.status_code, downstream=r.json()), (200 if r.ok else 502)


@app.get("/twice")
def twice():
    if not args.downstream:
        return jsonify(error="no downstream configured"), 500
    base = args.downstream.rstrip("/")
    first = requests.get(base + "/items/7", timeout=10)
    time.sleep(args.pause_ms / 1000)
    second = requests.get(base + "/items/8", timeout=10)
    ok = first.ok and second.ok
    return jsonify(first=first.status_code, second=second.status_code), (200 if ok else 502)


if __name__ == "__main__":
    if args.keep_alive:
        # Werkzeug's dev server closes every connection; waitress keeps them alive.
        import waitress

        waitress.serve(app, host=args.host, port=args.port, threads=4)
    else:
        app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
