"""The Flask service of `cargo xtask bench`, untraced (also what our eBPF agent traces).

Served by gunicorn: `gunicorn -c gunicorn.conf.py flask_app:app`. One route, a small JSON body,
a little work so the response is not a constant.
"""
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(ok=True, n=sum(range(100)))
