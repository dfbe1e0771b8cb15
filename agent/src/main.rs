//! vigil-agent: see `vigil-agent --help`.

use std::io::Write;

use clap::Parser;
use vigil_agent::pid1;
use vigil_agent::startup::{self, Options};

/// vigil guest agent: serves the Kata agent API (ttrpc) inside a confidential VM, and lets
/// through only the requests that the endpoint allow-list and the policy allow.
///
/// Configuration: initdata (kernel parameter agent.initdata=PATH, or --initdata FILE), whose
/// [data] entry "vigil.toml" is the config; else --config FILE, else the kernel parameter
/// agent.config_file=PATH, else none (every endpoint allowed, as Kata). The config is TOML with
/// [agent] (server_addr, log_level, log_format) and [endpoints] allowed =
/// ["CreateContainerRequest", ...] (request message names; a file without [endpoints] allows
/// nothing; ["*"] allows everything), plus optional [policy] (Rego agent policy, signer, logs),
/// [attestation] (TEE mode, KBS), [sandbox] (kata_root: Kata's guest directories, default
/// /run/kata-containers; or run_root for the same under <run_root>/<sandbox id>; allow_hooks,
/// output_limit_bytes,
/// cgroup_parent, and what containers may ask of the guest: capabilities (bounding set,
/// default containerd's), allow_privileged, devices (guest device paths), allow_setuid_copy),
/// [image] (guest image pull: policy, signature_keys, insecure_registries, registry_ca_roots;
/// without it every image_guest_pull is refused), and in attested configs [workload_api]
/// (CoCo's guest REST API for the pod's containers: listen, allowed_resources, endpoints) and
/// [sealed_secrets] (signers for sealed.<JWS> values unsealed at CreateContainer).
///
/// The mode follows the hardware: with a TEE guest interface present (/dev/sev-guest,
/// /dev/tdx_guest, configfs-tsm), initdata is mandatory, its digest must be in the launch
/// field, and tee = "none" / "mock" or a config file are start-up errors (unless the image's
/// /etc/vigil/image.toml sets allow_unattested = true and the launch field is all zeros). As
/// PID 1 and on TEE hardware only --log-level and --log-format are accepted. See the README
/// and SECURITY.md.
#[derive(Parser, Debug)]
#[command(name = "vigil-agent", version)]
struct Cli {
    #[command(flatten)]
    opts: Options,
}

fn main() {
    // Started by our own container runtime as its single-threaded fork helper? Then serve it
    // and exit here. Only a parent holding the other end of fd 3 can select this (see
    // vigil_runtime::fork_helper); as PID 1 it is never true.
    vigil_runtime::fork_helper::run_if_helper(startup::init_fork_helper_logging);
    // regorus creates (and discards) an anyhow error for many internal lookups; with
    // RUST_BACKTRACE set, each would capture a backtrace, making policy load and evaluation
    // several times slower. RUST_LIB_BACKTRACE governs only those captures: panics keep theirs.
    // Set before any thread exists, so changing the environment races with nothing.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // As the guest's init (see pid1): mounts, modules and network come first, and no error
    // may end the process (the kernel would panic): it powers the VM off instead.
    let init = pid1::is_init();
    if init {
        if let Err(e) = pid1::setup() {
            pid1::fatal(&format!("init: {e}"));
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if init => pid1::fatal(&format!("command line: {e}")),
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => pid1::fatal(&format!("starting the async runtime: {e}")),
    };
    let code = runtime.block_on(async {
        // As init, orphans are ours to reap; the container runtime claims the children it
        // waits on itself, through this same reaper.
        let reaper = init.then(pid1::Reaper::new);
        if let Some(r) = &reaper {
            tokio::spawn(r.clone().run());
        }
        // Installed before the API opens, so a SIGTERM sent right after the readiness line
        // (or during start-up) is seen rather than killing the process.
        let signals = TerminationSignals::install();
        let claims = reaper
            .map(|r| std::sync::Arc::new(r) as std::sync::Arc<dyn vigil_runtime::ChildClaims>);
        let running = match startup::start(&cli.opts, claims).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vigil-agent: error: {e}");
                return 1;
            }
        };
        // Readiness line on stdout for scripts and tests to wait on (the workload API's
        // address first: readers stop at the readiness line).
        if let Some(api) = &running.workload_api {
            println!("vigil-agent: workload API on http://{}", api.addr());
        }
        println!("vigil-agent: listening on {}", running.addr);
        let _ = std::io::stdout().flush();
        signals.wait().await;
        tracing::info!("terminating: closing the API");
        running.shutdown().await;
        0
    });
    if init {
        pid1::power_off();
    }
    std::process::exit(code);
}

/// SIGTERM and SIGINT, caught from installation on.
struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    fn install() -> TerminationSignals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => TerminationSignals { term, int },
            _ => {
                eprintln!("vigil-agent: error: cannot install signal handlers");
                std::process::exit(1);
            }
        }
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
