//! The fork helper on its own, for this crate's tests (the agent binary is its own helper):
//! tests point `SandboxConfig::fork_helper` here. Started any other way it does nothing.

fn main() {
    // The runtime's tests read no log of the helper's.
    vigil_runtime::fork_helper::run_if_helper(|_| {});
    eprintln!(
        "vigil-fork-helper: started by vigil-runtime only (argv[0] {:?} and the socket as fd 3)",
        vigil_runtime::fork_helper::HELPER_ARG0
    );
    std::process::exit(2);
}
