//! Gate decision cost per request, allowed and blocked endpoints (criterion).
//! `cargo bench -p vigil-agent --bench gate`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vigil_agent::config::AllowList;
use vigil_agent::gate::{Gate, Rules};
use vigil_protos::Endpoint;

fn gate_check(c: &mut Criterion) {
    let gate = Gate::new(Rules::from_allow_list(&AllowList::Only(vec![
        "GuestDetailsRequest".into(),
        "CreateContainerRequest".into(),
    ])));
    let allowed = Endpoint::find("grpc.AgentService", "CreateContainer").unwrap();
    let blocked = Endpoint::find("grpc.AgentService", "ExecProcess").unwrap();
    let payload = vec![0u8; 256];
    c.bench_function("gate/allow-list/allowed", |b| {
        b.iter(|| black_box(gate.check(black_box(allowed), black_box(&payload)).is_ok()))
    });
    c.bench_function("gate/allow-list/blocked", |b| {
        b.iter(|| black_box(gate.check(black_box(blocked), black_box(&payload)).is_err()))
    });
}

criterion_group!(benches, gate_check);
criterion_main!(benches);
