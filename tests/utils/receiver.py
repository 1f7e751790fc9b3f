"""A webhook receiver for the tests, run as its own process on loopback:

    python tests/utils/receiver.py PORT MODE LOG

MODE ``ok`` answers 204, ``500`` answers 500 to everything. Each POST is appended to LOG as one JSON line
({"path", "headers", "body"}) before the answer; "ready" is printed once it listens. Stdlib only."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    port, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with open(log, "a") as f:
                f.write(json.dumps({"path": self.path, "headers": dict(self.headers.items()),
                                    "body": body.decode()}) + "\n")
            self.send_response(204 if mode == "ok" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
