#!/usr/bin/env python3
"""Peers of the network policy agent's contract for tests/tests/network_policy.rs, built with grpcio from
tests/npa/rpc.proto (the anchor's contract), never from the project's Rust types.

  serve   --socket S --record F --stubs D [--enforce B] [--delete B]
          The agent's side: serves rpc.NPBackend on the Unix socket S and appends every call, one JSON object a
          line ({"call": ..., <field name>: <value>, ...}), to F. B says how to answer: ok (Success=true),
          refuse (Success=false), error (gRPC INTERNAL), hang (never answer).
  configs --socket S --stubs D
          The agent's startup call: rpc.ConfigServerBackend/GetNetworkPolicyConfigs on ipamd's socket S; prints
          the reply as one JSON object.
  add-del --socket S --stubs D --container C
          The anchor's plugin's calls: rpc.CNIBackend AddNetwork then DelNetwork for container C on ipamd's socket
          S; prints both replies as one JSON object ({"add": ..., "del": ...}).

The stubs are generated into D (grpc_tools.protoc) at start.
"""

import argparse
import json
import os
import sys
import threading
import time
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))


def load_stubs(out_dir):
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_dir, exist_ok=True)
    rc = protoc.main(
        [
            "protoc",
            "-I" + HERE,
            "-I" + well_known,
            "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir,
            os.path.join(HERE, "rpc.proto"),
        ]
    )
    if rc != 0:
        sys.exit("protoc failed with %d" % rc)
    sys.path.insert(0, out_dir)
    import rpc_pb2
    import rpc_pb2_grpc

    return rpc_pb2, rpc_pb2_grpc


def fields(message):
    """Every field of a message by its proto name, defaults included (so a missing field shows as its default)."""
    out = {}
    for f in message.DESCRIPTOR.fields:
        value = getattr(message, f.name)
        # protobuf >= 5.28 has is_repeated; older releases only label.
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
        if f.message_type is not None:
            value = [fields(v) for v in value] if repeated else fields(value)
        elif repeated:
            value = list(value)
        out[f.name] = value
    return out


def channel(socket_path):
    import grpc

    # grpcio sends the socket path as :authority over Unix sockets; name a plain host instead.
    return grpc.insecure_channel(
        "unix:" + socket_path, options=[("grpc.default_authority", "localhost")]
    )


def serve(args):
    import grpc

    pb, pb_grpc = load_stubs(args.stubs)
    lock = threading.Lock()

    def record(call, request):
        entry = {"call": call}
        entry.update(fields(request))
        with lock, open(args.record, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()

    def answer(behaviour, reply_type, context):
        if behaviour == "refuse":
            return reply_type(Success=False)
        if behaviour == "error":
            context.abort(grpc.StatusCode.INTERNAL, "the test double was told to fail")
        if behaviour == "hang":
            while True:
                time.sleep(3600)
        return reply_type(Success=True)

    class Agent(pb_grpc.NPBackendServicer):
        def EnforceNpToPod(self, request, context):
            record("EnforceNpToPod", request)
            return answer(args.enforce, pb.EnforceNpReply, context)

        def DeletePodNp(self, request, context):
            record("DeletePodNp", request)
            return answer(args.delete, pb.DeleteNpReply, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_NPBackendServicer_to_server(Agent(), server)
    server.add_insecure_port("unix:" + args.socket)
    server.start()
    server.wait_for_termination()


def configs(args):
    from google.protobuf import empty_pb2

    _, pb_grpc = load_stubs(args.stubs)
    stub = pb_grpc.ConfigServerBackendStub(channel(args.socket))
    reply = stub.GetNetworkPolicyConfigs(empty_pb2.Empty(), timeout=10)
    print(json.dumps(fields(reply)))


def add_del(args):
    pb, pb_grpc = load_stubs(args.stubs)
    stub = pb_grpc.CNIBackendStub(channel(args.socket))
    common = dict(
        K8S_POD_NAME="wire-check",
        K8S_POD_NAMESPACE="default",
        K8S_POD_INFRA_CONTAINER_ID=args.container,
        ContainerID=args.container,
        IfName="eth0",
        NetworkName="aws-cni",
    )
    add = stub.AddNetwork(pb.AddNetworkRequest(ClientVersion="anchor", **common), timeout=10)
    delete = stub.DelNetwork(
        pb.DelNetworkRequest(ClientVersion="anchor", Reason="PodDeleted", **common), timeout=10
    )
    print(json.dumps({"add": fields(add), "del": fields(delete)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--socket", required=True)
    s.add_argument("--record", required=True)
    s.add_argument("--stubs", required=True)
    behaviours = ["ok", "refuse", "error", "hang"]
    s.add_argument("--enforce", choices=behaviours, default="ok")
    s.add_argument("--delete", choices=behaviours, default="ok")
    s.set_defaults(run=serve)
    c = sub.add_parser("configs")
    c.add_argument("--socket", required=True)
    c.add_argument("--stubs", required=True)
    c.set_defaults(run=configs)
    a = sub.add_parser("add-del")
    a.add_argument("--socket", required=True)
    a.add_argument("--stubs", required=True)
    a.add_argument("--container", required=True)
    a.set_defaults(run=add_del)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
