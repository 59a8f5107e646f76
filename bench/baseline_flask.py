"""The comparison baseline: the public demo's shape, a Flask app answering from a Python list.

``GET /enclave/passenger?name=NAME`` answers with the same text as noflylist, deciding with
the demo's ``name.replace(" ", "").lower() in names``, where ``names`` is a ``list`` of the
listed names normalised the same way. Nothing else: no validation, no metrics, no access
log beyond what the server itself writes, no constant-time table. This is what noflylist is
measured against, not something to deploy.

Flask's development server (threaded, as ``flask run``)::

    python3 bench/baseline_flask.py --names NAMES_FILE --port 8101

gunicorn, 2 worker processes of 4 threads::

    BASELINE_NAMES=NAMES_FILE gunicorn -w 2 --threads 4 -k gthread -b 127.0.0.1:8102 \\
        --chdir bench 'baseline_flask:create_app()'

Needs the ``bench`` extra (Flask, gunicorn); the service itself never imports this.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flask import Flask, request


def load_names(path: str) -> list[str]:
    """One name a line, normalised as the demo does (its own list was stored that way)."""
    with open(path, encoding="utf-8") as lines:
        return [line.replace(" ", "").lower().strip() for line in lines if line.strip()]


def create_app(names_file: str | None = None) -> Flask:
    """The demo's app over the names in ``names_file`` (default: $BASELINE_NAMES)."""
    names = load_names(names_file or os.environ["BASELINE_NAMES"])
    app = Flask(__name__)

    @app.route("/enclave/passenger")
    def passenger() -> str:
        name = request.args.get("name", "")
        if name.replace(" ", "").lower() in names:
            return f"{name} is on the no-fly list and CAN NOT BOARD!\n"
        return f"{name} is cleared to fly. Enjoy your flight!\n"

    @app.route("/readyz")
    def ready() -> str:
        return "ready\n"

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="the demo-shaped Flask baseline")
    parser.add_argument("--names", required=True, help="file of names, one a line")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    create_app(str(Path(args.names))).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
