"""A fault-injecting HTTP proxy in front of an S3 server, for tests.

Usage: s3_fault_proxy.py UPSTREAM_PORT LISTEN_PORT SEED LOG_FILE [--fail-put SUBSTRING]

Forwards every request to 127.0.0.1:UPSTREAM_PORT unchanged (Host header included, so
signatures still verify). A request's fate is drawn from (SEED, method, path, how many times
this method and path were seen), so it does not depend on the order concurrent requests
arrive in, and a retried request draws again. About 1 in 7 requests meets a fault:
  500       an InternalError response, nothing forwarded
  503       a SlowDown response, nothing forwarded
  delay     0.2 to 0.8 s before forwarding
  reset     the connection is reset, nothing forwarded (GET and HEAD only: the client then
            cannot tell whether a write happened)
  truncate  the response body is cut in half and the connection closed (GET of an object:
            object_store resumes a cut object body with a range request, not a cut listing)
--fail-put SUBSTRING answers 500 to every PUT or POST whose path contains SUBSTRING (a
permanent fault). Each fault is a JSON line in LOG_FILE.
"""
import hashlib
import http.client
import http.server
import json
import random
import socket
import struct
import sys
import threading
import time

UPSTREAM, LISTEN, SEED, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
FAIL_PUT = sys.argv[sys.argv.index("--fail-put") + 1] if "--fail-put" in sys.argv else None
seen, lock = {}, threading.Lock()
XML = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'


def fate(method, path):
    with lock:
        attempt = seen.get((method, path), 0)
        seen[(method, path)] = attempt + 1
    digest = hashlib.sha256(f"{SEED}|{method}|{path}|{attempt}".encode()).digest()
    rng = random.Random(digest)
    roll = rng.random()
    if roll < 0.03:
        return "500", rng
    if roll < 0.06:
        return "503", rng
    if roll < 0.09:
        return "delay", rng
    if roll < 0.12 and method in ("GET", "HEAD"):
        return "reset", rng
    if roll < 0.15 and method == "GET" and "list-type=" not in path:
        return "truncate", rng
    return None, rng


def log(entry):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def reply(self, status, code, message):
        payload = XML.format(code=code, message=message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def handle_any(self):
        data = self.body()
        method, path = self.command, self.path
        if FAIL_PUT and method in ("PUT", "POST") and FAIL_PUT in path:
            log({"method": method, "path": path, "fault": "permanent 500"})
            return self.reply(500, "InternalError", "injected permanent fault")
        fault, rng = fate(method, path)
        if fault:
            log({"method": method, "path": path, "fault": fault})
        if fault == "500":
            return self.reply(500, "InternalError", "injected fault")
        if fault == "503":
            return self.reply(503, "SlowDown", "injected fault: reduce your request rate")
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "delay":
            time.sleep(0.2 + 0.6 * rng.random())
        upstream = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
        headers["Content-Length"] = str(len(data))
        upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            upstream.putheader(k, v)
        upstream.endheaders(data)
        response = upstream.getresponse()
        payload = response.read()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        # A HEAD answer says the object's length without carrying it.
        self.send_header("Content-Length", response.getheader("Content-Length", "0") if method == "HEAD" else str(len(payload)))
        self.end_headers()
        if fault == "truncate" and len(payload) > 1:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if method != "HEAD":
            self.wfile.write(payload)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), Proxy)
    server.daemon_threads = True
    server.serve_forever()
