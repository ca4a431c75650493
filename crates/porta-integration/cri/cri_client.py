#!/usr/bin/python3
"""A minimal command-line client of the Kubernetes CRI API (runtime.v1), for Porta's
integration test tests/cri.rs.

    cri_client.py STUBS SOCKET SERVICE/METHOD [TIMEOUT_SECONDS] < request.json

STUBS is the directory holding runtime_pb2.py, generated from runtime.proto beside this
script by `protoc --python_out=STUBS`. SOCKET is the CRI server's unix socket. The
request is read as protobuf JSON on stdin (field names as in runtime.proto); the
response is printed as JSON on stdout with every field present (default values
included, field names as in runtime.proto, enums by name, bytes fields as UTF-8 text).
Exit status: 0 on success; 3 when the server answered with a gRPC error (its code and
message on stderr); 2 on bad usage.
"""

import json
import sys


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    stubs, socket, call = argv[1], argv[2], argv[3]
    timeout = float(argv[4]) if len(argv) == 5 else 120.0
    sys.path.insert(0, stubs)
    import grpc
    from google.protobuf import json_format
    from google.protobuf import symbol_database
    import runtime_pb2

    service_name, _, method_name = call.partition("/")
    service = runtime_pb2.DESCRIPTOR.services_by_name.get(service_name)
    if service is None:
        print(f"cri_client: no service {service_name!r} in runtime.proto", file=sys.stderr)
        return 2
    method = service.methods_by_name.get(method_name)
    if method is None:
        print(f"cri_client: no method {method_name!r} in service {service_name}", file=sys.stderr)
        return 2
    db = symbol_database.Default()
    request_type = db.GetSymbol(method.input_type.full_name)
    response_type = db.GetSymbol(method.output_type.full_name)

    request = request_type()
    body = sys.stdin.read()
    try:
        json_format.Parse(body or "{}", request)
    except json_format.ParseError as e:
        print(f"cri_client: bad {method.input_type.name} JSON: {e}", file=sys.stderr)
        return 2

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        rpc = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            response = rpc(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            print(f"cri_client: {call}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 3

    out = json_format.MessageToDict(
        response,
        including_default_value_fields=True,
        preserving_proto_field_name=True,
    )
    for field in response.DESCRIPTOR.fields:
        if field.type == field.TYPE_BYTES:
            out[field.name] = getattr(response, field.name).decode("utf-8", "replace")
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
