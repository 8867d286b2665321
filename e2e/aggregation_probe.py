#!/usr/bin/env python3
"""A tiny extension API server for e2e/aggregation-check.sh (standard library only).

It serves discovery for probe.acmedns.io/v1alpha1 over HTTPS on 127.0.0.1, requires the
aggregator's front-proxy client certificate, and appends one JSON line per request to
--record (path, X-Remote-User, X-Remote-Group, client cert CN) so the check can prove what
the real kube-apiserver forwarded. It binds port 0 and writes the port it got to
--port-file once it is listening, so there is no race over a "free" port.
"""
import argparse
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GROUP = "probe.acmedns.io"
VERSION = "v1alpha1"
GROUP_VERSION = f"{GROUP}/{VERSION}"

GROUP_OBJ = {
    "name": GROUP,
    "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
    "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION},
}

DOCUMENTS = {
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [GROUP_OBJ]},
    f"/apis/{GROUP}": {"kind": "APIGroup", "apiVersion": "v1", **GROUP_OBJ},
    f"/apis/{GROUP_VERSION}": {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": "probes",
                "singularName": "probe",
                "namespaced": True,
                "kind": "Probe",
                "verbs": ["create"],
            }
        ],
    },
}

NOT_FOUND = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "not found",
    "reason": "NotFound",
    "code": 404,
}

record_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the aggregator's transport expects
    record_path = None

    def setup(self):
        # The handshake runs here, in the request's own thread, so a slow or broken client
        # cannot stall the accept loop.
        self.request.do_handshake()
        super().setup()

    def client_cn(self):
        cert = self.request.getpeercert() or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    def record(self):
        entry = {
            "method": self.command,
            "path": self.path,
            "user": self.headers.get("X-Remote-User"),
            "groups": self.headers.get_all("X-Remote-Group") or [],
            "client_cn": self.client_cn(),
        }
        with record_lock, open(self.record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.record()
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        doc = DOCUMENTS.get(path)
        if doc is None:
            self.send_json(404, NOT_FOUND)
        else:
            self.send_json(200, doc)

    def do_other(self):
        self.record()
        self.send_json(404, NOT_FOUND)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_other

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))
        sys.stderr.flush()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # One line per failed connection (e.g. a client without the front-proxy cert).
        sys.stderr.write(f"connection from {client_address}: {sys.exc_info()[1]}\n")
        sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert", required=True, help="serving certificate (PEM)")
    ap.add_argument("--key", required=True, help="serving key (PEM)")
    ap.add_argument("--client-ca", required=True, help="CA that signs the front-proxy client cert")
    ap.add_argument("--port-file", required=True, help="where to write the port once listening")
    ap.add_argument("--record", required=True, help="JSON-lines file of received requests")
    args = ap.parse_args()

    Handler.record_path = args.record
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    # Like a real extension API server: only the aggregator (front-proxy client) gets in.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.client_ca)

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    # Write the port atomically: the reader never sees a half-written file.
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, args.port_file)

    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
