//! Conformance with Kata's agent API definition.
//!
//! `kata-protos.txt` (beside this crate's Cargo.toml) describes Kata's `.proto` files in a
//! format of our own: every file, message, field (number, name, label, type, oneof), enum
//! value, service and RPC. This test renders the same description from the descriptors
//! compiled into `vigil-protos` and fails on any difference, naming each one. The ttrpc wire
//! and the policy input (proto field names) both depend on these facts, so a proto edit that
//! drifts from Kata cannot land unnoticed.
//!
//! To re-check the description against a Kata checkout (for example after Kata adds a field),
//! point `KATA_PROTOS_DIR` at its `src/libs/protocols/protos` directory:
//!
//! ```sh
//! KATA_PROTOS_DIR=/path/to/kata-containers/src/libs/protocols/protos \
//!     cargo test -p vigil-protos --test kata_protos
//! ```
//!
//! With `KATA_PROTOS_WRITE=1` as well, the description is rewritten from those sources (name
//! the Kata version they came from in [`HEADER`] first).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use protobuf::descriptor::field_descriptor_proto::{Label, Type};
use protobuf::descriptor::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
};

/// The files of the agent API, in the order the description lists them.
const FILES: &[&str] = &[
    "agent.proto",
    "health.proto",
    "oci.proto",
    "types.proto",
    "csi.proto",
];

fn description_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kata-protos.txt")
}

const HEADER: &str = "\
# Kata Containers agent API, as vigil must match it (checked by protos/tests/kata_protos.rs).
# Source: kata-containers 4.1.0, snapshot 7c6ba40c54ea (2026-08-22),
#         src/libs/protocols/protos/{agent,health,oci,types,csi}.proto.
#
# Blocks start at column 0 and list their facts indented below them:
#   file F: SYNTAX, package P         a .proto file, its syntax and its package
#   service S                         then one line per RPC: Method(Request) -> Response
#   message M (F)                     then one line per field: NUMBER NAME: [LABEL] TYPE [oneof O]
#                                     LABEL is `repeated`, `optional` (proto3 explicit presence)
#                                     or `map<K, V>` in place of the type; none for plain fields
#   enum E (F)                        then one line per value: NUMBER NAME
# Type names are fully qualified without the leading dot; nested types are Outer.Inner.
# Order inside a block is by number (declaration order for RPCs); the test compares sets.
";

/// Renders the description of `files` (all parsed files; only [`FILES`] are described).
fn describe(files: &[&FileDescriptorProto]) -> String {
    let mut out = String::from(HEADER);
    for name in FILES {
        let file = files
            .iter()
            .find(|f| f.name() == *name)
            .unwrap_or_else(|| panic!("{name} is not among the parsed files"));
        let package = file.package();
        let _ = writeln!(out, "\nfile {name}: {}, package {package}", syntax(file));
        for service in &file.service {
            let _ = writeln!(out, "\nservice {package}.{}", service.name());
            for m in &service.method {
                let _ = writeln!(
                    out,
                    "  {}({}) -> {}",
                    m.name(),
                    type_name(m.input_type()),
                    type_name(m.output_type())
                );
            }
        }
        for msg in &file.message_type {
            describe_message(&mut out, name, package, msg);
        }
        for e in &file.enum_type {
            describe_enum(&mut out, name, package, e);
        }
    }
    out
}

fn describe_message(out: &mut String, file: &str, scope: &str, msg: &DescriptorProto) {
    let full = format!("{scope}.{}", msg.name());
    let _ = writeln!(out, "\nmessage {full} ({file})");
    let mut fields: Vec<&FieldDescriptorProto> = msg.field.iter().collect();
    fields.sort_by_key(|f| f.number());
    for f in fields {
        let mut line = format!("  {} {}: ", f.number(), f.name());
        match map_entry(msg, f) {
            Some((k, v)) => {
                let _ = write!(line, "map<{}, {}>", field_type(k), field_type(v));
            }
            None => {
                if f.label() == Label::LABEL_REPEATED {
                    line.push_str("repeated ");
                } else if f.proto3_optional() {
                    line.push_str("optional ");
                } else if f.label() == Label::LABEL_REQUIRED {
                    line.push_str("required ");
                }
                line.push_str(&field_type(f));
            }
        }
        if f.has_oneof_index() && !f.proto3_optional() {
            let oneof = &msg.oneof_decl[f.oneof_index() as usize];
            let _ = write!(line, " oneof {}", oneof.name());
        }
        let _ = writeln!(out, "{line}");
    }
    for nested in &msg.nested_type {
        if !nested.options.map_entry() {
            describe_message(out, file, &full, nested);
        }
    }
    for e in &msg.enum_type {
        describe_enum(out, file, &full, e);
    }
}

fn describe_enum(out: &mut String, file: &str, scope: &str, e: &EnumDescriptorProto) {
    let _ = writeln!(out, "\nenum {scope}.{} ({file})", e.name());
    let mut values: Vec<_> = e.value.iter().collect();
    values.sort_by_key(|v| v.number());
    for v in values {
        let _ = writeln!(out, "  {} {}", v.number(), v.name());
    }
}

/// The key and value fields when `f` is a map field of `msg`.
fn map_entry<'a>(
    msg: &'a DescriptorProto,
    f: &FieldDescriptorProto,
) -> Option<(&'a FieldDescriptorProto, &'a FieldDescriptorProto)> {
    if f.label() != Label::LABEL_REPEATED || f.type_() != Type::TYPE_MESSAGE {
        return None;
    }
    let entry_name = f.type_name().rsplit('.').next()?;
    let entry = msg
        .nested_type
        .iter()
        .find(|n| n.name() == entry_name && n.options.map_entry())?;
    let key = entry.field.iter().find(|x| x.number() == 1)?;
    let value = entry.field.iter().find(|x| x.number() == 2)?;
    Some((key, value))
}

fn field_type(f: &FieldDescriptorProto) -> String {
    let scalar = match f.type_() {
        Type::TYPE_MESSAGE | Type::TYPE_ENUM | Type::TYPE_GROUP => {
            return type_name(f.type_name());
        }
        Type::TYPE_DOUBLE => "double",
        Type::TYPE_FLOAT => "float",
        Type::TYPE_INT64 => "int64",
        Type::TYPE_UINT64 => "uint64",
        Type::TYPE_INT32 => "int32",
        Type::TYPE_FIXED64 => "fixed64",
        Type::TYPE_FIXED32 => "fixed32",
        Type::TYPE_BOOL => "bool",
        Type::TYPE_STRING => "string",
        Type::TYPE_BYTES => "bytes",
        Type::TYPE_UINT32 => "uint32",
        Type::TYPE_SFIXED32 => "sfixed32",
        Type::TYPE_SFIXED64 => "sfixed64",
        Type::TYPE_SINT32 => "sint32",
        Type::TYPE_SINT64 => "sint64",
    };
    scalar.to_string()
}

/// `proto2` or `proto3` (protoc leaves the field empty for proto2).
fn syntax(file: &FileDescriptorProto) -> &str {
    match file.syntax() {
        "" => "proto2",
        s => s,
    }
}

fn type_name(full: &str) -> String {
    full.trim_start_matches('.').to_string()
}

/// A description as blocks (header line -> set of fact lines), ignoring comments and order.
fn blocks(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') {
            let header = current
                .clone()
                .unwrap_or_else(|| panic!("fact line before any block: {line:?}"));
            let fresh = out
                .get_mut(&header)
                .expect("header inserted")
                .insert(line.trim().to_string());
            assert!(fresh, "{header}: {:?} listed twice", line.trim());
        } else {
            let header = line.trim().to_string();
            assert!(
                out.insert(header.clone(), BTreeSet::new()).is_none(),
                "block {header:?} listed twice"
            );
            current = Some(header);
        }
    }
    out
}

/// Every difference between Kata's description and ours, one line each; empty when equal.
fn differences(kata: &str, ours: &str) -> Vec<String> {
    let kata = blocks(kata);
    let ours = blocks(ours);
    let mut diffs = Vec::new();
    for (header, facts) in &kata {
        match ours.get(header) {
            None => diffs.push(format!("vigil lacks {header}")),
            Some(mine) => {
                for f in facts.difference(mine) {
                    diffs.push(format!("{header}: Kata has `{f}`, vigil does not"));
                }
                for f in mine.difference(facts) {
                    diffs.push(format!("{header}: vigil has `{f}`, Kata does not"));
                }
            }
        }
    }
    for header in ours.keys().filter(|h| !kata.contains_key(*h)) {
        diffs.push(format!("vigil has {header}, Kata does not"));
    }
    diffs
}

fn our_description() -> String {
    let files = [
        vigil_protos::agent::file_descriptor(),
        vigil_protos::health::file_descriptor(),
        vigil_protos::oci::file_descriptor(),
        vigil_protos::types::file_descriptor(),
        vigil_protos::csi::file_descriptor(),
    ];
    let protos: Vec<&FileDescriptorProto> = files.iter().map(|f| f.proto()).collect();
    describe(&protos)
}

fn checked_in_description() -> String {
    let path = description_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_no_differences(kata: &str, ours: &str, what: &str) {
    let diffs = differences(kata, ours);
    assert!(
        diffs.is_empty(),
        "{what} differs from Kata's agent API ({} differences):\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

#[test]
fn compiled_protos_match_kata_s_description() {
    assert_no_differences(
        &checked_in_description(),
        &our_description(),
        "vigil's compiled protos",
    );
}

#[test]
fn description_covers_the_whole_api() {
    let kata = blocks(&checked_in_description());
    let count = |kind: &str| kata.keys().filter(|h| h.starts_with(kind)).count();
    assert_eq!(count("file "), FILES.len());
    assert_eq!(count("service "), 2);
    let rpcs: usize = kata
        .iter()
        .filter(|(h, _)| h.starts_with("service "))
        .map(|(_, facts)| facts.len())
        .sum();
    assert_eq!(rpcs, vigil_protos::ENDPOINTS.len());
    assert!(count("message ") > 100, "{} messages", count("message "));
}

/// The RPCs of the description are the shared RPC list's (`../shared/rpcs.txt`), which the
/// agent's endpoint table is checked against: the three never disagree.
#[test]
fn description_rpcs_are_the_shared_rpc_list() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rpcs.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (the shared RPC list): {e}", path.display()));
    let qualify = |service: &str, t: &str| {
        let package = service.split('.').next().expect("package");
        if t.contains('.') {
            t.to_string()
        } else {
            format!("{package}.{t}")
        }
    };
    let mut listed = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "bad line in rpcs.txt: {line}");
        let (service, method) = cols[0][1..].split_once('/').expect("/service/method");
        listed.insert(format!(
            "service {service}: {method}({}) -> {}",
            qualify(service, cols[1]),
            qualify(service, cols[2])
        ));
    }
    let described: BTreeSet<String> = blocks(&checked_in_description())
        .into_iter()
        .filter(|(h, _)| h.starts_with("service "))
        .flat_map(|(h, facts)| facts.into_iter().map(move |f| format!("{h}: {f}")))
        .collect();
    assert_eq!(described, listed);
}

/// The comparison itself notices each kind of difference (so the test above can fail).
#[test]
fn differences_are_found_and_named() {
    let kata = checked_in_description();
    assert!(differences(&kata, &kata).is_empty());
    let cases = [
        // (edit of our side, expected difference text)
        (
            ("  8 shared: bool\n", ""),
            "message grpc.Storage (agent.proto): Kata has `8 shared: bool`, vigil does not",
        ),
        (
            ("  8 mtu: uint32\n", "  9 mtu: uint32\n"),
            "message types.Route (types.proto): vigil has `9 mtu: uint32`, Kata does not",
        ),
        (
            ("  1 log_type: string\n", "  1 log_type: bytes\n"),
            "vigil has `1 log_type: bytes`",
        ),
        (
            ("  6 StartContainer: repeated grpc.Hook\n", "  6 StartContainer: grpc.Hook\n"),
            "vigil has `6 StartContainer: grpc.Hook`",
        ),
        (
            ("  3 errnoret: uint32 oneof ErrnoRet\n", "  3 errnoret: uint32\n"),
            "Kata has `3 errnoret: uint32 oneof ErrnoRet`",
        ),
        (
            (
                "  SetPolicy(grpc.SetPolicyRequest) -> google.protobuf.Empty\n",
                "  SetPolicy(grpc.SetPolicyRequest) -> grpc.Metrics\n",
            ),
            "service grpc.AgentService: vigil has `SetPolicy(grpc.SetPolicyRequest) -> grpc.Metrics`",
        ),
        (
            ("message grpc.Metrics (agent.proto)\n", "message grpc.Metric (agent.proto)\n"),
            "vigil lacks message grpc.Metrics (agent.proto)",
        ),
        (("  1 v6\n", "  2 v6\n"), "enum types.IPFamily (types.proto): vigil has `2 v6`"),
    ];
    for ((from, to), expected) in cases {
        assert!(kata.contains(from), "description lacks {from:?}");
        let edited = kata.replacen(from, to, 1);
        let diffs = differences(&kata, &edited);
        assert!(
            diffs.iter().any(|d| d.contains(expected)),
            "editing {from:?} gave {diffs:?}"
        );
    }
}

/// With `KATA_PROTOS_DIR` set: Kata's own `.proto` files against the description (and, with
/// `KATA_PROTOS_WRITE=1`, the description rewritten from them).
#[test]
fn kata_sources_match_the_description() {
    let Some(dir) = std::env::var_os("KATA_PROTOS_DIR") else {
        eprintln!("skipped: set KATA_PROTOS_DIR to Kata's src/libs/protocols/protos to run");
        return;
    };
    let dir = PathBuf::from(dir);
    let inputs: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(&dir)
        .inputs(&inputs)
        .parse_and_typecheck()
        .unwrap_or_else(|e| panic!("parsing Kata's protos in {}: {e}", dir.display()));
    let files: Vec<&FileDescriptorProto> = parsed.file_descriptors.iter().collect();
    let kata = describe(&files);
    if std::env::var_os("KATA_PROTOS_WRITE").is_some() {
        write(&description_path(), &kata);
        return;
    }
    assert_no_differences(&kata, &checked_in_description(), "kata-protos.txt");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
