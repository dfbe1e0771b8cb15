//! Round trips over a real unix socket: gated vs ungated service map (median, p99), and
//! throughput with 16 concurrent clients. A bench binary: `cargo bench -p vigil-agent --bench roundtrip`

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_agent::config::AllowList;
use vigil_agent::gate::{self, Gate, Rules};
use vigil_agent::service::AgentApi;

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;
const CLIENTS: usize = 16;
const CALLS_PER_CLIENT: usize = 5_000;

async fn serve(dir: &std::path::Path, name: &str, gated: bool) -> (ttrpc::r#async::Server, String) {
    let addr = format!("unix://{}", dir.join(name).display());
    let gate = Arc::new(Gate::new(Rules::from_allow_list(&AllowList::Only(vec![
        "GuestDetailsRequest".into(),
    ]))));
    let api = Arc::new(AgentApi::with_gate(gate.clone()));
    let map = if gated {
        gate::protect(api.service_map(), gate).unwrap()
    } else {
        api.service_map()
    };
    let server = vigil_agent::server::listen(&addr, map).await.unwrap();
    (server, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(addr: &str, method: &str) -> (Duration, Duration) {
    let t = Duration::from_secs(5);
    let client = vigilctl::connect(addr, t).await.unwrap();
    let rpc = vigilctl::find_rpc(method).unwrap();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        let _ = vigilctl::call_raw(&client, rpc, vec![], t).await;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn throughput(addr: &str, method: &'static str) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Duration::from_secs(5);
            let client = vigilctl::connect(&addr, t).await.unwrap();
            let rpc = vigilctl::find_rpc(method).unwrap();
            for _ in 0..CALLS_PER_CLIENT {
                let _ = vigilctl::call_raw(&client, rpc, vec![], t).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (CLIENTS * CALLS_PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a smoke pass.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (_g, gated) = serve(dir.path(), "gated.sock", true).await;
        let (_u, ungated) = serve(dir.path(), "ungated.sock", false).await;
        if quick {
            let _ = latency(&gated, "GetGuestDetails").await;
            return;
        }
        println!("round trip over a unix socket, {SAMPLES} calls each (median / p99):");
        for (label, addr, method) in [
            ("ungated  GetGuestDetails", &ungated, "GetGuestDetails"),
            (
                "gated    GetGuestDetails (allowed)",
                &gated,
                "GetGuestDetails",
            ),
            (
                "gated    CreateContainer (blocked)",
                &gated,
                "CreateContainer",
            ),
        ] {
            let (p50, p99) = latency(addr, method).await;
            println!(
                "  {label:<38} {:>8.1} us / {:>8.1} us",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6
            );
        }
        println!("throughput, {CLIENTS} clients x {CALLS_PER_CLIENT} calls:");
        for (label, addr, method) in [
            ("ungated  GetGuestDetails", &ungated, "GetGuestDetails"),
            (
                "gated    GetGuestDetails (allowed)",
                &gated,
                "GetGuestDetails",
            ),
            (
                "gated    CreateContainer (blocked)",
                &gated,
                "CreateContainer",
            ),
        ] {
            println!(
                "  {label:<38} {:>10.0} calls/s",
                throughput(addr, method).await
            );
        }
    });
}
