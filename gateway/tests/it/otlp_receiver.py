#!/usr/bin/env python3
"""A tiny OTLP/HTTP (protobuf) trace receiver for tests.

    otlp_receiver.py PORT OUT_FILE [DELAY_SECONDS]

Listens on 127.0.0.1:PORT (0 = any free port; the chosen port is printed alone on the
first line of stdout, then flushed). Accepts POST /v1/traces with Content-Type
application/x-protobuf (Content-Encoding gzip allowed), decodes an
ExportTraceServiceRequest and appends one JSON line per span to OUT_FILE:

  {"trace_id": hex32, "span_id": hex16, "parent_span_id": hex16 or "",
   "trace_state": str, "flags": int, "name": str, "kind": int, "kind_name": str,
   "start_unix_nano": int, "end_unix_nano": int, "attributes": {key: value},
   "status_code": int (0 unset, 1 ok, 2 error), "status_message": str,
   "events": [{"name", "time_unix_nano", "attributes"}], "links": [{"trace_id", "span_id"}],
   "scope": str, "resource": {key: value}}

A request's spans are written together and flushed before the answer is sent, so once the
exporter has its 200 the lines are in the file. DELAY_SECONDS (default 0) holds every
answer that long: a slow collector, for tests that a slow or stopped collector never slows
the gateway. Answers: 200 with an empty ExportTraceServiceResponse; 404 other paths;
405 other methods; 415 other content types; 400 an undecodable body.
Needs the PyPI package `opentelemetry-proto` (and its dependency `protobuf`).
"""
import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KIND_NAMES = {v: k for k, v in Span.SpanKind.items()}
WRITE_LOCK = threading.Lock()


def any_value(v):
    """An OTLP AnyValue as a plain JSON value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)  # string_value, bool_value, int_value, double_value


def flat(attrs):
    return {kv.key: any_value(kv.value) for kv in attrs}


def span_lines(req):
    for rs in req.resource_spans:
        resource = flat(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "flags": s.flags,
                    "name": s.name,
                    "kind": s.kind,
                    "kind_name": KIND_NAMES.get(s.kind, str(s.kind)),
                    "start_unix_nano": s.start_time_unix_nano,
                    "end_unix_nano": s.end_time_unix_nano,
                    "attributes": flat(s.attributes),
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "events": [
                        {"name": e.name, "time_unix_nano": e.time_unix_nano,
                         "attributes": flat(e.attributes)}
                        for e in s.events
                    ],
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                        for l in s.links
                    ],
                    "scope": ss.scope.name,
                    "resource": resource,
                }, sort_keys=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect
    out_path = None
    delay = 0.0

    def log_message(self, fmt, *args):  # quiet; errors go to stderr below
        pass

    def answer(self, status, body=b"", ctype="text/plain"):
        if self.delay:
            time.sleep(self.delay)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def do_POST(self):
        try:
            body = self.read_body()  # read even when refusing, so keep-alive stays in step
        except (ValueError, OSError, EOFError) as e:  # bad chunking or gzip
            self.close_connection = True
            return self.answer(400, f"bad body: {e}".encode())
        if self.path.split("?")[0] != "/v1/traces":
            return self.answer(404, b"not found")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-protobuf":
            return self.answer(415, b"only application/x-protobuf")
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's
            print(f"otlp_receiver: bad body: {e}", file=sys.stderr, flush=True)
            return self.answer(400, b"bad protobuf")
        lines = list(span_lines(req))
        with WRITE_LOCK, open(self.out_path, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
            f.flush()
        self.answer(200, ExportTraceServiceResponse().SerializeToString(),
                    "application/x-protobuf")

    def do_GET(self):
        self.answer(405, b"POST only")

    do_PUT = do_DELETE = do_PATCH = do_GET


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} PORT OUT_FILE [DELAY_SECONDS]")
    Handler.out_path = sys.argv[2]
    Handler.delay = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
    open(Handler.out_path, "a").close()  # the file exists once the port is printed
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
