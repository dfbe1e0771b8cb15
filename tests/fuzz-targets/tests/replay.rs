//! Feeds every checked-in corpus input and every minimised crash input to its target, on
//! stable: a regression found by fuzzing stays fixed even where cargo-fuzz cannot run.
//! Inputs live in `fuzz/corpus/<target>/` (minimised with `cargo fuzz cmin`) and
//! `fuzz/regressions/<target>/` (one file per crash, named after what it found).

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {target}: fuzz/corpus/{target}/ is checked in"
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        eprintln!("{target}: {}", file.display());
        run(&data);
    }
}

#[test]
fn ttrpc_server() {
    replay("ttrpc_server", vigil_fuzz_targets::server::ttrpc_server);
}

#[test]
fn request_codec() {
    replay("request_codec", vigil_fuzz_targets::codec::request_codec);
}

#[test]
fn gate_decision() {
    replay("gate_decision", vigil_fuzz_targets::decision::gate_decision);
}

#[test]
fn copy_file() {
    replay("copy_file", vigil_fuzz_targets::copy_file::copy_file);
}

#[test]
fn config_toml() {
    replay("config_toml", vigil_fuzz_targets::config::config_toml);
}

#[test]
fn initdata() {
    replay("initdata", vigil_fuzz_targets::initdata::initdata);
}

#[test]
fn image_manifest() {
    replay(
        "image_manifest",
        vigil_fuzz_targets::image_manifest::image_manifest,
    );
}

#[test]
fn image_layer() {
    replay("image_layer", vigil_fuzz_targets::image_layer::image_layer);
}

#[test]
fn image_policy() {
    replay(
        "image_policy",
        vigil_fuzz_targets::image_policy::image_policy,
    );
}
