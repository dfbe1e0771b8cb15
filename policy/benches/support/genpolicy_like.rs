//! The benchmarks' test data: the genpolicy-like policy and its requests in Kata's JSON shape
//! (`testdata/genpolicy-like/`).

use std::path::PathBuf;

use serde_json::Value;

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/genpolicy-like")
        .join(rel)
}

/// The 2,516-line policy text.
pub fn policy() -> String {
    std::fs::read_to_string(path("policy.rego")).unwrap()
}

/// One request from `requests/`.
pub fn request(name: &str) -> Value {
    let text = std::fs::read_to_string(path(&format!("requests/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}
