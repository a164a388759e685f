"""The pprof `profile.proto` schema (package perftools.profiles), built at import time as a
descriptor and turned into message classes by the protobuf library: no generated code to keep in
step, no hand-written encoder (docs/exports.md says why).

Field numbers are the published ones (github.com/google/pprof, proto/profile.proto). Only the
fields every pprof reader knows are declared; a reader ignores the ones it does not know anyway.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "perftools.profiles"

_F = descriptor_pb2.FieldDescriptorProto
_INT64, _UINT64, _STRING, _BOOL = _F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_STRING, _F.TYPE_BOOL
_MESSAGE = _F.TYPE_MESSAGE
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message -> [(field, number, type, label, message type)]; strings are indices into string_table
SCHEMA: dict[str, list[tuple]] = {
    "Profile": [
        ("sample_type", 1, _MESSAGE, _MANY, "ValueType"),
        ("sample", 2, _MESSAGE, _MANY, "Sample"),
        ("mapping", 3, _MESSAGE, _MANY, "Mapping"),
        ("location", 4, _MESSAGE, _MANY, "Location"),
        ("function", 5, _MESSAGE, _MANY, "Function"),
        ("string_table", 6, _STRING, _MANY, None),
        ("drop_frames", 7, _INT64, _ONE, None),
        ("keep_frames", 8, _INT64, _ONE, None),
        ("time_nanos", 9, _INT64, _ONE, None),
        ("duration_nanos", 10, _INT64, _ONE, None),
        ("period_type", 11, _MESSAGE, _ONE, "ValueType"),
        ("period", 12, _INT64, _ONE, None),
        ("comment", 13, _INT64, _MANY, None),
        ("default_sample_type", 14, _INT64, _ONE, None),
    ],
    "ValueType": [
        ("type", 1, _INT64, _ONE, None),
        ("unit", 2, _INT64, _ONE, None),
    ],
    "Sample": [
        ("location_id", 1, _UINT64, _MANY, None),  # the leaf first
        ("value", 2, _INT64, _MANY, None),
        ("label", 3, _MESSAGE, _MANY, "Label"),
    ],
    "Label": [
        ("key", 1, _INT64, _ONE, None),
        ("str", 2, _INT64, _ONE, None),
        ("num", 3, _INT64, _ONE, None),
        ("num_unit", 4, _INT64, _ONE, None),
    ],
    "Mapping": [
        ("id", 1, _UINT64, _ONE, None),
        ("memory_start", 2, _UINT64, _ONE, None),
        ("memory_limit", 3, _UINT64, _ONE, None),
        ("file_offset", 4, _UINT64, _ONE, None),
        ("filename", 5, _INT64, _ONE, None),
        ("build_id", 6, _INT64, _ONE, None),
        ("has_functions", 7, _BOOL, _ONE, None),
        ("has_filenames", 8, _BOOL, _ONE, None),
        ("has_line_numbers", 9, _BOOL, _ONE, None),
        ("has_inline_frames", 10, _BOOL, _ONE, None),
    ],
    "Location": [
        ("id", 1, _UINT64, _ONE, None),
        ("mapping_id", 2, _UINT64, _ONE, None),
        ("address", 3, _UINT64, _ONE, None),
        ("line", 4, _MESSAGE, _MANY, "Line"),
        ("is_folded", 5, _BOOL, _ONE, None),
    ],
    "Line": [
        ("function_id", 1, _UINT64, _ONE, None),
        ("line", 2, _INT64, _ONE, None),
    ],
    "Function": [
        ("id", 1, _UINT64, _ONE, None),
        ("name", 2, _INT64, _ONE, None),
        ("system_name", 3, _INT64, _ONE, None),
        ("filename", 4, _INT64, _ONE, None),
        ("start_line", 5, _INT64, _ONE, None),
    ],
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="tlsprof/profile.proto", package=PACKAGE, syntax="proto3")
    for name, fields in SCHEMA.items():
        msg = fd.message_type.add(name=name)
        for field, number, ftype, label, type_name in fields:
            f = msg.field.add(name=field, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
    return fd


# A private pool: a program that also imports a generated profile_pb2 keeps its own classes.
_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file_descriptor())


def _message(name):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Profile = _message("Profile")
Label = _message("Label")
