"""The committed stubs are what tools/gen-proto makes, and our proto states the reference wire contract.

The reference is the compiled descriptor of the upstream CSI v1.12.0 csi.proto, recorded in
tests/csi/data (names, numbers, types, labels, oneofs, options: wire facts only, no prose), so the proof
runs on any clone. Where the upstream file itself is at hand, the recording is checked against it.
Re-record after moving to another CSI release: python -m tests.csi.test_proto PATH/TO/csi.proto
"""

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from csi.pb import csi_pb2

REPO = Path(__file__).resolve().parents[2]
OUR_PROTO = REPO / "csi" / "proto" / "csi.proto"
SPEC_VERSION = "v1.12.0"  # the CSI release recorded
SPEC_MODULE = f"github.com/container-storage-interface/spec@{SPEC_VERSION}"  # its Go module holds csi.proto
RECORDED_REFERENCE = Path(__file__).parent / "data" / f"csi-{SPEC_VERSION}.descriptor.textproto"
GENERATED = (
    "__init__.py",
    *(f"{proto}_pb2{kind}" for proto in ("csi", "peer") for kind in (".py", ".pyi", "_grpc.py", "_grpc.pyi")),
)


def compile_descriptor(proto: Path, workdir: Path) -> descriptor_pb2.FileDescriptorProto:
    """Compiles one proto file (copied as csi.proto) and returns its descriptor."""
    workdir.mkdir()
    (workdir / "csi.proto").write_bytes(proto.read_bytes())
    out = workdir / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{workdir}",
            f"--descriptor_set_out={out}",
            "csi.proto",
        ],
        check=True,
        timeout=120,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = fds.file
    return fd


def options(opts: Message) -> list[tuple[int, object]]:
    """Every option set, as sorted (number, value) pairs.

    The CSI options are extensions: parsed as such once csi_pb2 has registered them (as here), as
    unknown fields otherwise; both forms are read so the comparison never silently sees nothing.
    """
    known = [(field.number, value) for field, value in opts.ListFields()]
    unknown = UnknownFieldSet(opts)
    return sorted(known + [(unknown[i].field_number, unknown[i].data) for i in range(len(unknown))])


def field_facts(
    f: descriptor_pb2.FieldDescriptorProto, msg: descriptor_pb2.DescriptorProto
) -> tuple[object, ...]:
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return (f.name, f.number, f.type, f.label, f.type_name, oneof, f.proto3_optional, options(f.options))


def flatten_messages(
    msgs: list[descriptor_pb2.DescriptorProto], prefix: str = ""
) -> dict[str, descriptor_pb2.DescriptorProto]:
    out: dict[str, descriptor_pb2.DescriptorProto] = {}
    for m in msgs:
        name = prefix + m.name
        out[name] = m
        out.update(flatten_messages(list(m.nested_type), name + "."))
    return out


def flatten_enums(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    out = {e.name: e for e in fd.enum_type}
    for name, m in flatten_messages(list(fd.message_type)).items():
        out.update({f"{name}.{e.name}": e for e in m.enum_type})
    return out


def recorded_reference() -> descriptor_pb2.FileDescriptorProto:
    return text_format.Parse(RECORDED_REFERENCE.read_text(), descriptor_pb2.FileDescriptorProto())


@pytest.fixture(scope="module")
def descriptors(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]:
    ours = compile_descriptor(OUR_PROTO, tmp_path_factory.mktemp("descriptors") / "ours")
    return ours, recorded_reference()


Descriptors = tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]


def test_committed_stubs_are_regenerated_identically(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen-proto"), str(tmp_path)], check=True, timeout=120
    )
    for name in GENERATED:
        assert filecmp.cmp(tmp_path / name, REPO / "csi" / "pb" / name, shallow=False), (
            f"csi/pb/{name} differs from a fresh tools/gen-proto run: regenerate and commit"
        )


def test_runtime_descriptor_is_our_proto(descriptors: Descriptors) -> None:
    ours, _ = descriptors
    runtime = descriptor_pb2.FileDescriptorProto()
    csi_pb2.DESCRIPTOR.CopyToProto(runtime)
    assert runtime.package == ours.package == "csi.v1"
    compiled = descriptor_pb2.FileDescriptorProto()
    compiled.CopyFrom(ours)
    # protoc fills json_name in descriptor sets; the embedded runtime copy leaves it out.
    for msg in flatten_messages(list(compiled.message_type)).values():
        for f in msg.field:
            f.ClearField("json_name")
    for e in compiled.extension:
        e.ClearField("json_name")
    assert runtime.SerializeToString(deterministic=True) == compiled.SerializeToString(deterministic=True)


def test_same_package_and_imports(descriptors: Descriptors) -> None:
    ours, ref = descriptors
    assert ours.package == ref.package
    assert ours.syntax == ref.syntax == "proto3"
    assert sorted(ours.dependency) == sorted(ref.dependency)


def test_same_messages_field_by_field(descriptors: Descriptors) -> None:
    ours, ref = descriptors
    our_msgs, ref_msgs = flatten_messages(list(ours.message_type)), flatten_messages(list(ref.message_type))
    assert sorted(our_msgs) == sorted(ref_msgs)
    for name, ref_msg in ref_msgs.items():
        our_msg = our_msgs[name]
        assert [o.name for o in our_msg.oneof_decl] == [o.name for o in ref_msg.oneof_decl], name
        assert our_msg.options.map_entry == ref_msg.options.map_entry, name
        assert options(our_msg.options) == options(ref_msg.options), name
        ours_f = {f.number: field_facts(f, our_msg) for f in our_msg.field}
        ref_f = {f.number: field_facts(f, ref_msg) for f in ref_msg.field}
        assert ours_f == ref_f, name


def test_same_enums_value_by_value(descriptors: Descriptors) -> None:
    ours, ref = descriptors
    our_enums, ref_enums = flatten_enums(ours), flatten_enums(ref)
    assert sorted(our_enums) == sorted(ref_enums)
    for name, ref_enum in ref_enums.items():
        facts = [(v.name, v.number, options(v.options)) for v in ref_enum.value]
        assert [(v.name, v.number, options(v.options)) for v in our_enums[name].value] == facts, name
        assert options(our_enums[name].options) == options(ref_enum.options), name


def test_same_services_and_methods(descriptors: Descriptors) -> None:
    ours, ref = descriptors

    def services(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
        return {
            s.name: (
                options(s.options),
                [
                    (
                        m.name,
                        m.input_type,
                        m.output_type,
                        m.client_streaming,
                        m.server_streaming,
                        options(m.options),
                    )
                    for m in s.method
                ],
            )
            for s in fd.service
        }

    assert services(ours) == services(ref)


def test_same_option_extensions(descriptors: Descriptors) -> None:
    ours, ref = descriptors

    def ext(fd: descriptor_pb2.FileDescriptorProto) -> set[tuple[str, str, int, int]]:
        return {(e.name, e.extendee, e.number, e.type) for e in fd.extension}

    assert ext(ours) == ext(ref)
    assert (
        "csi_secret",
        ".google.protobuf.FieldOptions",
        1059,
        descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    ) in ext(ours)


def test_our_proto_carries_no_reference_prose() -> None:
    ours = OUR_PROTO.read_text()
    # A few distinctive sentences of the upstream comments: none may appear in our file.
    for phrase in ("This field is REQUIRED", "Intentionally empty", "The Plugin is responsible", "MUST"):
        assert phrase not in ours


@pytest.fixture
def upstream_proto() -> Path:
    """The upstream csi.proto of the recorded release, from its Go module as `go mod download` gets it
    (Go's module cache, else the Go module proxy); skipped where that cannot be had."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to fetch the upstream module; the recording stands in for it")
    fetched = subprocess.run(
        [go, "mod", "download", "-json", SPEC_MODULE], capture_output=True, text=True, timeout=300
    )
    if fetched.returncode != 0:
        pytest.skip(f"{SPEC_MODULE} not fetched ({fetched.stdout[-300:]}); the recording stands in for it")
    return Path(json.loads(fetched.stdout)["Dir"]) / "csi.proto"


def test_recording_is_the_upstream_reference(upstream_proto: Path, tmp_path: Path) -> None:
    assert compile_descriptor(upstream_proto, tmp_path / "ref") == recorded_reference()


def test_the_comparison_sees_the_custom_options(descriptors: Descriptors) -> None:
    ours, _ = descriptors
    messages = flatten_messages(list(ours.message_type))
    secrets = next(f for f in messages["CreateVolumeRequest"].field if f.name == "secrets")
    assert options(secrets.options) == [(1059, True)]
    assert options(messages["VolumeCondition"].options) == [(1060, True)]
    node = next(s for s in ours.service if s.name == "SnapshotMetadata")
    assert options(node.options) == [(1060, True)]


def record(upstream: Path) -> None:
    """Writes the recording from an upstream csi.proto (run as a module, see the docstring)."""
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        descriptor = compile_descriptor(upstream, Path(workdir) / "ref")
    RECORDED_REFERENCE.parent.mkdir(exist_ok=True)
    RECORDED_REFERENCE.write_text(text_format.MessageToString(descriptor))


if __name__ == "__main__":
    record(Path(sys.argv[1]))
