"""A real gRPC server and client (grpcio) for it::grpc, with no generated code: methods are
registered as generic handlers on raw bytes.

    grpc_peer.py server PORT [CERT KEY]   serve demo.{Greeter,Secure,Admin,Limited,Down}
                                          (h2c, or TLS with CERT and KEY); prints READY
    grpc_peer.py client CALLS_JSON        make the calls; prints one JSON list of results

The server's unary `Hello` answers a JSON object of the request and the metadata it
received, with initial metadata `x-initial: hi` and trailing metadata `x-trailing: bye`;
the server-streaming `Count` answers three messages and the same metadata.
"""

import json
import sys
from concurrent import futures

import grpc

SERVICES = ["demo.Greeter", "demo.Secure", "demo.Admin", "demo.Limited", "demo.Down"]


def hello(request, context):
    context.send_initial_metadata((("x-initial", "hi"),))
    context.set_trailing_metadata((("x-trailing", "bye"),))
    seen = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    return json.dumps({"request": request.decode(), "metadata": seen}).encode()


def count(request, context):
    context.send_initial_metadata((("x-initial", "hi"),))
    context.set_trailing_metadata((("x-trailing", "bye"),))
    for i in range(3):
        yield f"{request.decode()}-{i}".encode()


def serve(port, cert=None, key=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    for service in SERVICES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),)
        )
    address = f"127.0.0.1:{port}"
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def channel_for(call):
    if call.get("ca"):
        with open(call["ca"], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(
            call["target"], creds, options=(("grpc.ssl_target_name_override", "localhost"),)
        )
    return grpc.insecure_channel(call["target"])


def one(call):
    metadata = tuple((k, v) for k, v in call.get("metadata", []))
    out = {}
    with channel_for(call) as channel:
        try:
            if call.get("stream"):
                rpc = channel.unary_stream(call["method"])
                it = rpc(call.get("request", "x").encode(), metadata=metadata, timeout=10)
                out["messages"] = [m.decode() for m in it]
                out["initial"] = dict(it.initial_metadata())
                out["trailing"] = dict(it.trailing_metadata())
                out["code"] = it.code().name
            else:
                rpc = channel.unary_unary(call["method"])
                body, info = rpc.with_call(
                    call.get("request", "x").encode(), metadata=metadata, timeout=10
                )
                out["response"] = json.loads(body)
                out["initial"] = dict(info.initial_metadata())
                out["trailing"] = dict(info.trailing_metadata())
                out["code"] = info.code().name
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["trailing"] = {
                k: v for k, v in (e.trailing_metadata() or ()) if isinstance(v, str)
            }
    return out


def main():
    if sys.argv[1] == "server":
        serve(sys.argv[2], *sys.argv[3:5])
    else:
        calls = json.loads(sys.argv[2])
        print(json.dumps([one(c) for c in calls]))


if __name__ == "__main__":
    main()
