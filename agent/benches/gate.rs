//! Gate decision cost per request (criterion):
//! - allow-list only: allowed and blocked endpoints;
//! - with the 2,500-line genpolicy-like policy of `policy/testdata`: a constant-allow and a
//!   constant-deny endpoint (bit tests), and an evaluated one (ExecProcess: decode the
//!   protobuf request, build the Kata JSON input, evaluate on the engine);
//! - `check` = decision + counters (audit log off), what every request pays.
//!
//! `cargo bench -p vigil-agent --bench gate`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vigil_agent::config::AllowList;
use vigil_agent::gate::{EndpointSet, Gate, Rules};
use vigil_agent::policy::{CompiledPolicy, PolicyOrigin, PolicySource};
use vigil_protos::Endpoint;

const TESTDATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy/testdata/genpolicy-like"
);

fn ep(method: &str) -> &'static Endpoint {
    Endpoint::find("grpc.AgentService", method).unwrap()
}

fn request_bytes(method: &str, file: &str) -> Vec<u8> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{TESTDATA}/requests/{file}")).unwrap(),
    )
    .unwrap();
    ep(method).request_bytes_from_json(&json).unwrap()
}

fn allow_list(c: &mut Criterion) {
    let gate = Gate::new(Rules::from_allow_list(&AllowList::Only(vec![
        "GuestDetailsRequest".into(),
        "CreateContainerRequest".into(),
    ])));
    let allowed = ep("CreateContainer");
    let blocked = ep("ExecProcess");
    let payload = vec![0u8; 256];
    c.bench_function("gate/allow-list/decide/allowed", |b| {
        b.iter(|| {
            black_box(
                gate.decide(black_box(allowed), black_box(&payload))
                    .allowed(),
            )
        })
    });
    c.bench_function("gate/allow-list/decide/blocked", |b| {
        b.iter(|| {
            black_box(
                gate.decide(black_box(blocked), black_box(&payload))
                    .allowed(),
            )
        })
    });
    c.bench_function("gate/allow-list/check/allowed", |b| {
        b.iter(|| black_box(gate.check(black_box(allowed), black_box(&payload)).is_ok()))
    });
}

fn bench_source() -> PolicySource {
    PolicySource::new(PolicyOrigin::File, "bench")
}

fn with_policy(c: &mut Criterion) {
    let rego = std::fs::read_to_string(format!("{TESTDATA}/policy.rego")).unwrap();
    let policy = CompiledPolicy::compile(&rego, None, Default::default(), bench_source()).unwrap();
    let gate = Gate::new(Rules {
        allowed: EndpointSet::all(),
        policy: Some(std::sync::Arc::new(policy)),
        host_error_details: false,
    });
    let exec = request_bytes("ExecProcess", "exec_process_allowed.json");
    assert!(
        gate.decide(ep("ExecProcess"), &exec).allowed(),
        "fixture must be allowed"
    );
    let constant_allow = ep("GetGuestDetails");
    let constant_deny = ep("SetIPTables");
    assert!(gate.decide(constant_allow, &[]).allowed());
    assert!(!gate.decide(constant_deny, &[]).allowed());

    c.bench_function("gate/policy/decide/constant-allow", |b| {
        b.iter(|| {
            black_box(
                gate.decide(black_box(constant_allow), black_box(&[]))
                    .allowed(),
            )
        })
    });
    c.bench_function("gate/policy/decide/constant-deny", |b| {
        b.iter(|| {
            black_box(
                gate.decide(black_box(constant_deny), black_box(&[]))
                    .allowed(),
            )
        })
    });
    c.bench_function("gate/policy/check/constant-allow", |b| {
        b.iter(|| {
            black_box(
                gate.check(black_box(constant_allow), black_box(&[]))
                    .is_ok(),
            )
        })
    });
    let mut group = c.benchmark_group("gate/policy/evaluated");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("ExecProcess", |b| {
        b.iter(|| {
            black_box(
                gate.decide(black_box(ep("ExecProcess")), black_box(&exec))
                    .allowed(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, allow_list, with_policy);
criterion_main!(benches);
