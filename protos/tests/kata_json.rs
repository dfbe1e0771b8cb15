//! The Kata JSON shape and the protobuf wire format of the generated types.

use protobuf::reflect::{FieldDescriptor, MessageDescriptor, RuntimeFieldType, RuntimeType};
use protobuf::{EnumOrUnknown, Message, MessageField, MessageFull};
use serde_json::{json, Value};
use vigil_protos::{agent, oci, types};

/// JSON key for a proto field: Rust's keyword escaping is part of Kata's shape.
fn json_key(field: &FieldDescriptor) -> String {
    match field.name() {
        "type" => "type_".to_string(),
        other => other.to_string(),
    }
}

/// Checks that `value` has exactly the fields of `desc`, recursing into populated messages.
/// Returns how many message objects it checked.
fn assert_kata_shape(desc: &MessageDescriptor, value: &Value, at: &str) -> usize {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{at}: expected object, got {value}"));
    let mut expected: Vec<String> = Vec::new();
    let mut checked = 1;
    for field in desc.fields() {
        let key = match field.containing_oneof() {
            Some(oneof) if !oneof.is_synthetic() => oneof.name().to_string(),
            _ => json_key(&field),
        };
        if expected.contains(&key) {
            continue;
        }
        expected.push(key.clone());
        let v = obj
            .get(&key)
            .unwrap_or_else(|| panic!("{at}: field {key} missing in {value}"));
        match field.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(m)) if !v.is_null() => {
                checked += assert_kata_shape(&m, v, &format!("{at}.{key}"));
            }
            RuntimeFieldType::Singular(RuntimeType::Enum(_)) => {
                assert!(v.is_i64(), "{at}.{key}: enum must be an integer, got {v}");
            }
            RuntimeFieldType::Repeated(RuntimeType::Message(m)) => {
                for (i, item) in v
                    .as_array()
                    .expect("repeated is an array")
                    .iter()
                    .enumerate()
                {
                    checked += assert_kata_shape(&m, item, &format!("{at}.{key}[{i}]"));
                }
            }
            _ => {}
        }
    }
    let mut actual: Vec<&String> = obj.keys().collect();
    actual.sort();
    expected.sort();
    assert_eq!(
        actual,
        expected.iter().collect::<Vec<_>>(),
        "{at}: keys differ from the proto fields"
    );
    checked
}

fn full_create_container_request() -> agent::CreateContainerRequest {
    let mut spec = oci::Spec::new();
    spec.Version = "1.1.0".into();
    spec.Hostname = "pod".into();
    spec.Annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    let mut process = oci::Process::new();
    process.Terminal = true;
    process.Args = vec!["/bin/sh".into(), "-c".into(), "echo hi".into()];
    process.Env = vec!["PATH=/bin".into()];
    process.Cwd = "/".into();
    process.User = MessageField::some(oci::User {
        UID: 1000,
        GID: 1000,
        AdditionalGids: vec![10, 20],
        Username: "app".into(),
        ..Default::default()
    });
    process.Capabilities = MessageField::some(oci::LinuxCapabilities {
        Bounding: vec!["CAP_CHOWN".into()],
        ..Default::default()
    });
    process.Rlimits = vec![oci::POSIXRlimit {
        Type: "RLIMIT_NOFILE".into(),
        Hard: 1024,
        Soft: 1024,
        ..Default::default()
    }];
    process.ConsoleSize = MessageField::some(oci::Box {
        Height: 24,
        Width: 80,
        ..Default::default()
    });
    process.NoNewPrivileges = true;
    process.OOMScoreAdj = -998;
    spec.Process = MessageField::some(process);
    let hook = |path: &str| oci::Hook {
        Path: path.into(),
        Args: vec![path.into(), "--stage".into()],
        Timeout: 5,
        ..Default::default()
    };
    spec.Hooks = MessageField::some(oci::Hooks {
        Prestart: vec![hook("/usr/bin/prestart")],
        CreateRuntime: vec![hook("/usr/bin/create-runtime")],
        CreateContainer: vec![hook("/usr/bin/create-container")],
        StartContainer: vec![hook("/usr/bin/start-container")],
        ..Default::default()
    });
    spec.Root = MessageField::some(oci::Root {
        Path: "/run/kata-containers/shared/containers/c1/rootfs".into(),
        Readonly: true,
        ..Default::default()
    });
    spec.Mounts = vec![oci::Mount {
        destination: "/proc".into(),
        source: "proc".into(),
        type_: "proc".into(),
        options: vec!["nosuid".into()],
        ..Default::default()
    }];
    let mut linux = oci::Linux::new();
    linux.CgroupsPath = "/kubepods/pod1/c1".into();
    linux.Namespaces = vec![oci::LinuxNamespace {
        Type: "mount".into(),
        ..Default::default()
    }];
    linux.MaskedPaths = vec!["/proc/kcore".into()];
    linux
        .Sysctl
        .insert("net.ipv4.ip_forward".into(), "1".into());
    linux.Resources = MessageField::some(oci::LinuxResources {
        Memory: MessageField::some(oci::LinuxMemory {
            Limit: 1 << 30,
            ..Default::default()
        }),
        CPU: MessageField::some(oci::LinuxCPU {
            Shares: 1024,
            Quota: 100000,
            Period: 100000,
            Cpus: "0-1".into(),
            ..Default::default()
        }),
        Devices: vec![oci::LinuxDeviceCgroup {
            Allow: false,
            Access: "rwm".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    linux.Seccomp = MessageField::some(oci::LinuxSeccomp {
        DefaultAction: "SCMP_ACT_ERRNO".into(),
        Syscalls: vec![oci::LinuxSyscall {
            Names: vec!["read".into()],
            Action: "SCMP_ACT_ALLOW".into(),
            ErrnoRet: Some(oci::linux_syscall::ErrnoRet::Errnoret(1)),
            ..Default::default()
        }],
        ..Default::default()
    });
    spec.Linux = MessageField::some(linux);

    agent::CreateContainerRequest {
        container_id: "c1".into(),
        exec_id: "c1".into(),
        string_user: MessageField::some(agent::StringUser {
            uid: "1000".into(),
            gid: "1000".into(),
            additionalGids: vec!["10".into()],
            ..Default::default()
        }),
        devices: vec![agent::Device {
            id: "0:0:0:1".into(),
            type_: "blk".into(),
            vm_path: "/dev/vdb".into(),
            container_path: "/dev/data".into(),
            options: vec!["ro".into()],
            ..Default::default()
        }],
        storages: vec![agent::Storage {
            driver: "virtio-fs".into(),
            source: "kataShared".into(),
            fstype: "virtiofs".into(),
            mount_point: "/run/kata-containers/shared/containers".into(),
            fs_group: MessageField::some(agent::FSGroup {
                group_id: 2000,
                group_change_policy: EnumOrUnknown::new(types::FSGroupChangePolicy::OnRootMismatch),
                ..Default::default()
            }),
            shared: true,
            ..Default::default()
        }],
        OCI: MessageField::some(spec),
        sandbox_pidns: true,
        shared_mounts: vec![agent::SharedMount {
            name: "m".into(),
            ..Default::default()
        }],
        stdin_port: 1,
        stdout_port: 2,
        stderr_port: 3,
        ..Default::default()
    }
}

#[test]
fn create_container_request_round_trips_through_protobuf_and_json() {
    let req = full_create_container_request();
    let bytes = req.write_to_bytes().unwrap();
    let back = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, req);

    let json = serde_json::to_value(&req).unwrap();
    let from_json: agent::CreateContainerRequest = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(from_json, req);

    let checked = assert_kata_shape(&agent::CreateContainerRequest::descriptor(), &json, "req");
    assert!(checked >= 20, "only {checked} nested messages checked");

    // Kata's names and encodings, spot-checked.
    assert_eq!(json["OCI"]["Process"]["Args"][0], "/bin/sh");
    assert_eq!(json["OCI"]["Mounts"][0]["type_"], "proc");
    assert_eq!(json["devices"][0]["type_"], "blk");
    assert_eq!(json["storages"][0]["fs_group"]["group_change_policy"], 1);
    assert_eq!(json["storages"][0]["shared"], true);
    // All six OCI hook kinds, under Kata's names; the unset ones are empty lists.
    let hooks = &json["OCI"]["Hooks"];
    assert_eq!(hooks["Prestart"][0]["Path"], "/usr/bin/prestart");
    assert_eq!(hooks["CreateRuntime"][0]["Path"], "/usr/bin/create-runtime");
    assert_eq!(hooks["CreateContainer"][0]["Args"][1], "--stage");
    assert_eq!(hooks["StartContainer"][0]["Timeout"], 5);
    assert_eq!(hooks["Poststart"], json!([]));
    assert_eq!(hooks["Poststop"], json!([]));
    assert_eq!(json["OCI"]["Solaris"], Value::Null, "unset message is null");
    assert_eq!(json["OCI"]["Linux"]["IntelRdt"], Value::Null);
    assert_eq!(
        json["OCI"]["Linux"]["Seccomp"]["Syscalls"][0]["ErrnoRet"]["Errnoret"],
        1
    );
    assert_eq!(json["string_user"]["additionalGids"][0], "10");
    assert!(json.get("special_fields").is_none());
}

#[test]
fn every_request_type_has_every_field_in_json() {
    // Empty protobuf bytes decode to the default message: every field at its default.
    let mut seen = std::collections::HashSet::new();
    for e in vigil_protos::ENDPOINTS.iter() {
        if !seen.insert(e.request) {
            continue;
        }
        let json = e.request_json_from_bytes(&[]).unwrap();
        let file = match e.service {
            "grpc.Health" => vigil_protos::health::file_descriptor(),
            _ => agent::file_descriptor(),
        };
        let desc = file.message_by_package_relative_name(e.request).unwrap();
        assert_kata_shape(&desc, &json, e.request);
    }
    assert_eq!(seen.len(), 42, "distinct request types");
}

#[test]
fn interface_uses_kata_names_and_integer_enums() {
    let iface = types::Interface {
        device: "eth0".into(),
        name: "eth0".into(),
        IPAddresses: vec![types::IPAddress {
            family: EnumOrUnknown::new(types::IPFamily::v6),
            address: "fd00::2".into(),
            mask: "64".into(),
            ..Default::default()
        }],
        mtu: 1500,
        hwAddr: "02:00:00:00:00:01".into(),
        type_: "veth".into(),
        ..Default::default()
    };
    let json = serde_json::to_value(&iface).unwrap();
    assert_eq!(json["hwAddr"], "02:00:00:00:00:01");
    assert_eq!(json["IPAddresses"][0]["family"], 1);
    assert_eq!(json["type_"], "veth");
    assert_eq!(json["devicePath"], "");
    assert_eq!(json["raw_flags"], 0);
}

#[test]
fn route_and_diagnostic_data_use_kata_names() {
    let route = types::Route {
        dest: "10.0.0.0/24".into(),
        device: "eth0".into(),
        mtu: 1400,
        ..Default::default()
    };
    let json = serde_json::to_value(&route).unwrap();
    assert_eq!(json["mtu"], 1400);
    assert_eq!(json["flags"], 0);
    // Kata's field 8 of Route on the wire: tag (8 << 3 | varint) = 0x40.
    let bytes = route.write_to_bytes().unwrap();
    assert!(bytes.ends_with(&[0x40, 0xf8, 0x0a]), "{bytes:02x?}");

    let req = agent::GetDiagnosticDataRequest {
        log_type: "agent".into(),
        container_id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"log_type": "agent", "container_id": "c1"})
    );
    // container_id is field 2 (tag 0x12), after log_type (field 1, tag 0x0a).
    assert_eq!(
        req.write_to_bytes().unwrap(),
        b"\x0a\x05agent\x12\x02c1".to_vec()
    );
    let resp = agent::GetDiagnosticDataResponse {
        data: "text".into(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&resp).unwrap(),
        json!({"data": "text"})
    );
}

#[test]
fn partial_json_takes_defaults() {
    let req: agent::CreateContainerRequest = serde_json::from_value(json!({
        "container_id": "c2",
        "OCI": {"Process": {"Args": ["true"]}}
    }))
    .unwrap();
    assert_eq!(req.container_id, "c2");
    assert_eq!(req.OCI.Process.Args, vec!["true".to_string()]);
    assert!(req.OCI.Root.is_none());
    assert!(req.string_user.is_none());
    assert!(!req.sandbox_pidns);

    // An empty object is a valid request for every RPC, and unknown enum values survive.
    for e in vigil_protos::ENDPOINTS.iter() {
        let bytes = e.request_bytes_from_json(&json!({})).unwrap();
        assert!(
            bytes.is_empty(),
            "{}: default request encodes to nothing",
            e.method
        );
    }
    let addr: types::IPAddress = serde_json::from_value(json!({"family": 7})).unwrap();
    assert_eq!(addr.family.value(), 7);

    // Wrong types are errors naming the field.
    let err =
        serde_json::from_value::<agent::CreateContainerRequest>(json!({"sandbox_pidns": "yes"}))
            .unwrap_err()
            .to_string();
    assert!(err.contains("bool"), "{err}");
}

#[test]
fn endpoint_codecs_match_the_typed_messages() {
    let req = full_create_container_request();
    let e = vigil_protos::Endpoint::find("grpc.AgentService", "CreateContainer").unwrap();
    let json = e
        .request_json_from_bytes(&req.write_to_bytes().unwrap())
        .unwrap();
    assert_eq!(json, serde_json::to_value(&req).unwrap());
    let bytes = e.request_bytes_from_json(&json).unwrap();
    assert_eq!(
        agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap(),
        req
    );
    assert!(e.request_json_from_bytes(&[0xff, 0xff]).is_err());
}
