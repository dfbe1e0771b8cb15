//! Replay of an input log (`{"kind":"<RequestMessageName>","request":<input>}` per line, as
//! Kata and [`crate::Recorder`] write it) through the same gate path as live requests, with
//! policy state carried from line to line.

use std::io::BufRead;

use serde_json::{json, Value};

use crate::engine::PolicyEngine;

/// A line that could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ReplayError {
    /// 1-based line number in the log.
    pub line: usize,
    pub message: String,
}

/// Replay `log` on `engine` (state is read and updated: use a freshly loaded engine to
/// reproduce a run from its start). Blank lines are skipped. `complete` turns a logged
/// request into the full policy input (e.g. filling missing fields with their defaults); an
/// error from it makes that line unparsable. Returns one entry per non-blank line: the
/// decision as JSON, or the reason the line could not be used.
pub fn replay<R: BufRead>(
    engine: &PolicyEngine,
    log: R,
    mut complete: impl FnMut(&str, Value) -> Result<Value, String>,
) -> Vec<Result<Value, ReplayError>> {
    let mut out = Vec::new();
    for (i, line) in log.lines().enumerate() {
        let n = i + 1;
        let err = |message: String| ReplayError { line: n, message };
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                out.push(Err(err(format!("unreadable: {e}"))));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let entry: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(err(format!("not JSON: {e}"))));
                continue;
            }
        };
        let Some(kind) = entry.get("kind").and_then(Value::as_str) else {
            out.push(Err(err("no string field \"kind\"".into())));
            continue;
        };
        let Some(request) = entry.get("request") else {
            out.push(Err(err("no field \"request\"".into())));
            continue;
        };
        let Some(index) = engine.index_of(kind) else {
            out.push(Err(err(format!("unknown request kind {kind:?}"))));
            continue;
        };
        let input = match complete(kind, request.clone()) {
            Ok(v) => v,
            Err(m) => {
                out.push(Err(err(format!("bad {kind}: {m}"))));
                continue;
            }
        };
        let d = engine.decide(index, || Ok::<Value, String>(input));
        out.push(Ok(json!({
            "line": n,
            "kind": kind,
            "allowed": d.allowed,
            "decision": d.outcome.as_str(),
            "class": d.class.as_str(),
            "reason": d.reason,
        })));
    }
    out
}
