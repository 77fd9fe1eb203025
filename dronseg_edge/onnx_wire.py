"""ONNX files read straight off the protobuf wire format, without the onnx package: the deployable path
(an ``.onnx`` run by ONNX Runtime on a Jetson) stays light, and the weights are never read into memory.

A message is a sequence of fields, each a varint key (field number << 3 | wire type) and a payload whose
size the wire type gives, so any field can be skipped without decoding it
(https://protobuf.dev/programming-guides/encoding/): the weights (often hundreds of MB) cost one seek each.
Field numbers are onnx.proto's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Iterator

_FIXED_SIZES = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit); 0 is a varint, 2 length-prefixed
# The messages that can hold a TensorProto, and in which of their fields (onnx.proto): ModelProto.graph,
# .training_info, .functions; TrainingInfoProto.initialization, .algorithm; FunctionProto.node,
# .attribute_proto; GraphProto.node, .initializer, .sparse_initializer; NodeProto.attribute;
# AttributeProto.t, .g, .tensors, .graphs, .sparse_tensor, .sparse_tensors; SparseTensorProto.values, .indices;
# TensorProto.external_data (StringStringEntryProto).
_HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_DATA_LOCATION, _EXTERNAL = 14, 1  # TensorProto.data_location; DataLocation.EXTERNAL
MAX_DEPTH = 100  # messages within messages: protobuf's own default recursion limit
MAX_ENTRY_BYTES = 64 * 1024  # one external_data entry (a file name and its offsets)
MAX_LOCATIONS = 16  # "location" entries of one tensor kept until its data_location is known (ONNX gives one)


def fields(stream: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, payload size) of each field of the message that runs from ``stream``'s
    position to byte ``end``; for a varint (wire type 0), its value instead of a size. At each step the
    stream stands at the payload, and the next step goes on past it wherever the caller left the stream.

    EOFError for a field that runs past ``end``, ValueError for bytes that are no protobuf message."""
    while stream.tell() < end:
        key = varint(stream)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")  # never valid: e.g. a run of zero bytes
        value = size = 0
        if wire_type == 0:
            value = varint(stream)
        elif wire_type == 2:
            size = varint(stream)
        elif wire_type in _FIXED_SIZES:
            size = _FIXED_SIZES[wire_type]
        else:  # 3/4 (groups) are unused by ONNX; 6/7 do not exist
            raise ValueError(f"wire type {wire_type}")
        start = stream.tell()
        if start + size > end:  # a seek past the end does not fail by itself
            raise EOFError(f"field {number} runs past the end")
        yield number, wire_type, value if wire_type == 0 else size
        stream.seek(start + size)


def strings(stream: BinaryIO, end: int) -> dict[int, bytes]:
    """The length-delimited fields of a small message (the last of each number), e.g. a StringStringEntryProto's
    key (1) and value (2)."""
    return {number: stream.read(size) for number, wire_type, size in fields(stream, end) if wire_type == 2}


def varint(stream: BinaryIO) -> int:
    """One base-128 varint: 7 bits a byte, least significant group first, high bit set on all but the last."""
    value = shift = 0
    while shift < 70:  # at most 10 bytes for 64 bits
        byte = stream.read(1)
        if not byte:
            raise EOFError("varint runs past the end")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def external_data_locations(path: Path) -> Iterator[str]:
    """The ``location`` of every tensor in an ONNX file whose data lies in another file (data_location
    EXTERNAL), in initializers, Constant nodes and the subgraphs of If/Loop/Scan and functions, at any depth.

    EOFError for a cut-short file; ValueError for bytes that are no protobuf message, that nest deeper than
    MAX_DEPTH, or hold an external_data entry over MAX_ENTRY_BYTES or a tensor with over MAX_LOCATIONS locations."""
    with open(path, "rb") as stream:  # buffered: the byte-by-byte varint reads cost no system calls
        end = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        # The messages being read, outermost first (no recursion); a tensor's: [external?, its locations].
        stack: list = [("model", fields(stream, end), None)]
        while stack:
            kind, walk, tensor = stack[-1]
            step = next(walk, None)
            if step is None:
                stack.pop()
                if tensor is not None and tensor[0]:  # data_location may come after the entries
                    yield from tensor[1]
                continue
            number, wire_type, size = step
            if kind == "tensor" and number == _DATA_LOCATION and wire_type == 0:
                tensor[0] = size == _EXTERNAL
            inner = _HOLDS[kind].get(number)
            if wire_type != 2 or inner is None:
                continue
            if inner == "entry":
                if size > MAX_ENTRY_BYTES or len(tensor[1]) >= MAX_LOCATIONS:
                    raise ValueError(f"an external_data entry over {MAX_ENTRY_BYTES} bytes, or over {MAX_LOCATIONS} locations")
                entry = strings(stream, stream.tell() + size)
                if entry.get(1) == b"location":
                    tensor[1].append(entry.get(2, b"").decode("utf-8"))
            elif len(stack) >= MAX_DEPTH:
                raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
            else:
                stack.append((inner, fields(stream, stream.tell() + size), [False, []] if inner == "tensor" else None))
