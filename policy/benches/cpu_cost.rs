//! CPU time per request (thread CPU clock), vigil's gate vs the Kata-style baseline, on the
//! genpolicy-like policy; and vigil's CPU time per request with 1, 2 and 4 client threads.
//!
//! Wall-clock throughput on a shared machine depends on what else runs there; CPU time per
//! request does not (much). With CPU per request flat across threads (no contention in the
//! gate), throughput with N client threads on C idle cores is min(N, C) / cpu_per_request
//! for vigil, and 1 / cpu_per_request for the baseline, whose single engine sits behind one
//! mutex.
//!
//! Run: cargo bench -p vigil-policy --bench cpu_cost

#[path = "support/genpolicy_like.rs"]
mod genpolicy_like;
#[path = "support/kata_baseline.rs"]
mod kata_baseline;

use genpolicy_like::request;
use kata_baseline::KataBaseline;
use vigil_policy::{Limits, PolicyEngine};

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID unavailable");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; there is nothing to configure.
    let rego = genpolicy_like::policy();
    let endpoints = [
        "CreateContainerRequest",
        "ExecProcessRequest",
        "StartContainerRequest",
    ];
    let vigil = PolicyEngine::load(&rego, &endpoints, Limits::default()).unwrap();
    let kata = KataBaseline::load(&rego);
    let pause = request("create_container_pause.json");
    assert!(vigil.decide(0, || Ok::<_, String>(pause.clone())).allowed);
    assert!(kata.gate("CreateContainerRequest", &pause));

    println!("cpu time per request (single thread)");
    for (i, ep, file, n) in [
        (
            2usize,
            "StartContainerRequest",
            "start_container.json",
            2000u32,
        ),
        (1, "ExecProcessRequest", "exec_process_allowed.json", 400),
        (0, "CreateContainerRequest", "create_container_web.json", 30),
    ] {
        let r = request(file);
        let start = thread_cpu_seconds();
        for _ in 0..n {
            assert!(vigil.decide(i, || Ok::<_, String>(r.clone())).allowed);
        }
        let v = (thread_cpu_seconds() - start) / f64::from(n);
        let start = thread_cpu_seconds();
        for _ in 0..n {
            assert!(kata.gate(ep, &r));
        }
        let k = (thread_cpu_seconds() - start) / f64::from(n);
        println!(
            "  {ep:<24} vigil {:>10.3} us   kata-baseline {:>10.1} us   baseline/vigil {:>8.1}x",
            v * 1e6,
            k * 1e6,
            k / v
        );
    }

    println!("vigil cpu time per ExecProcessRequest by client threads (flat = no contention)");
    let r = request("exec_process_allowed.json");
    for threads in [1usize, 2, 4] {
        let per_thread = 240 / threads;
        let cpu: f64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let start = thread_cpu_seconds();
                        for _ in 0..per_thread {
                            assert!(vigil.decide(1, || Ok::<_, String>(r.clone())).allowed);
                        }
                        thread_cpu_seconds() - start
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        println!(
            "  {threads} threads: {:.1} us",
            cpu / (per_thread * threads) as f64 * 1e6
        );
    }
}
