//! Gate cost on the genpolicy-like policy (testdata/genpolicy-like, 2,500 lines): vigil's
//! precompiled gate against a Kata-style baseline implemented here (serialise the request,
//! then evaluate it on one regorus engine behind a mutex, applying ops the way Kata does).
//!
//! Run: cargo bench -p vigil-policy --bench gate -- --warm-up-time 1 --measurement-time 3

#[path = "support/genpolicy_like.rs"]
mod genpolicy_like;
#[path = "support/kata_baseline.rs"]
mod kata_baseline;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use genpolicy_like::request;
use kata_baseline::KataBaseline;
use serde_json::Value;
use vigil_policy::{Limits, PolicyEngine};

/// The gated request names, from the agent API's generated endpoint table.
static ENDPOINTS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(vigil_protos::agent_request_names);

struct Fixture {
    rego: String,
    vigil: PolicyEngine,
    kata: KataBaseline,
    start: Value,
    exec: Value,
    create_web: Value,
}

fn fixture() -> Fixture {
    let rego = genpolicy_like::policy();
    let vigil = PolicyEngine::load(&rego, &ENDPOINTS, Limits::default()).unwrap();
    let kata = KataBaseline::load(&rego);
    // Bring both to the steady state of a running pod: the pause container has fixed the
    // sandbox name, so later CreateContainer requests emit no new state.
    let pause = request("create_container_pause.json");
    let cc = vigil.index_of("CreateContainerRequest").unwrap();
    assert!(vigil.decide(cc, || Ok::<_, String>(pause.clone())).allowed);
    assert!(kata.gate("CreateContainerRequest", &pause));
    let f = Fixture {
        vigil,
        kata,
        start: request("start_container.json"),
        exec: request("exec_process_allowed.json"),
        create_web: request("create_container_web.json"),
        rego,
    };
    // Both implementations agree on the benchmarked requests.
    for (ep, req) in [
        ("StartContainerRequest", &f.start),
        ("ExecProcessRequest", &f.exec),
        ("CreateContainerRequest", &f.create_web),
    ] {
        let i = f.vigil.index_of(ep).unwrap();
        let v = f.vigil.decide(i, || Ok::<_, String>(req.clone())).allowed;
        assert!(v && f.kata.gate(ep, req), "{ep}");
    }
    f
}

/// Run `op` exactly `iters` times spread over `threads` threads; returns the wall time.
fn parallel(threads: usize, iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let threads = threads as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let n = iters / threads + u64::from(t < iters % threads);
            s.spawn(move || {
                for _ in 0..n {
                    op();
                }
            });
        }
    });
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let start_i = f.vigil.index_of("StartContainerRequest").unwrap();
    let exec_i = f.vigil.index_of("ExecProcessRequest").unwrap();
    let create_i = f.vigil.index_of("CreateContainerRequest").unwrap();

    let mut g = c.benchmark_group("constant");
    g.bench_function("vigil/StartContainer", |b| {
        b.iter(|| {
            black_box(
                f.vigil
                    .decide(black_box(start_i), || Ok::<_, String>(f.start.clone()))
                    .allowed,
            )
        })
    });
    g.bench_function("vigil_class_bit/StartContainer", |b| {
        b.iter(|| black_box(f.vigil.class(black_box(start_i))))
    });
    g.bench_function("kata_baseline/StartContainer", |b| {
        b.iter(|| black_box(f.kata.gate("StartContainerRequest", black_box(&f.start))))
    });
    g.finish();

    let mut g = c.benchmark_group("evaluated_1_thread");
    g.bench_function("vigil/ExecProcess", |b| {
        b.iter(|| {
            black_box(
                f.vigil
                    .decide(exec_i, || Ok::<_, String>(f.exec.clone()))
                    .allowed,
            )
        })
    });
    g.bench_function("kata_baseline/ExecProcess", |b| {
        b.iter(|| black_box(f.kata.gate("ExecProcessRequest", &f.exec)))
    });
    g.bench_function("vigil/CreateContainer", |b| {
        b.iter(|| {
            black_box(
                f.vigil
                    .decide(create_i, || Ok::<_, String>(f.create_web.clone()))
                    .allowed,
            )
        })
    });
    g.bench_function("kata_baseline/CreateContainer", |b| {
        b.iter(|| black_box(f.kata.gate("CreateContainerRequest", &f.create_web)))
    });
    g.finish();

    // Time per request with 16 client threads (lower is more throughput).
    let mut g = c.benchmark_group("evaluated_16_threads");
    g.bench_function("vigil/ExecProcess", |b| {
        b.iter_custom(|iters| {
            parallel(16, iters, &|| {
                black_box(
                    f.vigil
                        .decide(exec_i, || Ok::<_, String>(f.exec.clone()))
                        .allowed,
                );
            })
        })
    });
    g.bench_function("kata_baseline/ExecProcess", |b| {
        b.iter_custom(|iters| {
            parallel(16, iters, &|| {
                black_box(f.kata.gate("ExecProcessRequest", &f.exec));
            })
        })
    });
    g.bench_function("vigil/CreateContainer", |b| {
        b.iter_custom(|iters| {
            parallel(16, iters, &|| {
                black_box(
                    f.vigil
                        .decide(create_i, || Ok::<_, String>(f.create_web.clone()))
                        .allowed,
                );
            })
        })
    });
    g.bench_function("kata_baseline/CreateContainer", |b| {
        b.iter_custom(|iters| {
            parallel(16, iters, &|| {
                black_box(f.kata.gate("CreateContainerRequest", &f.create_web));
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("vigil/PolicyEngine::load", |b| {
        b.iter(|| black_box(PolicyEngine::load(&f.rego, &ENDPOINTS, Limits::default()).unwrap()))
    });
    g.bench_function("kata_baseline/load", |b| {
        b.iter(|| black_box(KataBaseline::load(&f.rego)))
    });
    g.finish();
}

criterion_group!(gate, benches);
criterion_main!(gate);
