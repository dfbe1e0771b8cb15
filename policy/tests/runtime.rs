//! Concurrency, replay and the input log format.

mod common;

use std::io::BufReader;
use std::sync::Arc;

use common::ENDPOINTS;
use serde_json::{json, Value};
use vigil_policy::{replay, Limits, Outcome, PolicyEngine, RotatingLog, INPUT_LOG_SKIPPED};

const CONCURRENT: &str = r#"
package agent_policy

# Stateful: reads the counter and the list, appends this request.
CreateContainerRequest := {"allowed": true, "ops": [
    {"op": "add", "path": "/pstate/count", "value": object.get(data.pstate, "count", 0) + 1},
    {"op": "add", "path": "/pstate/seen", "value": array.concat(object.get(data.pstate, "seen", []), [input.id])},
]} if {
    startswith(input.id, "t")
}

# Stateless with ops: never reads state, records its id.
StartContainerRequest := {"allowed": true, "ops": [
    {"op": "add", "path": concat("", ["/pstate/started_", input.id]), "value": true},
]}

# Stateless, input only.
default ExecProcessRequest := false
ExecProcessRequest if { input.n % 2 == 0 }

# Stateful read without ops.
default WaitProcessRequest := false
WaitProcessRequest if { object.get(data.pstate, "count", 0) >= input.min }

default GuestDetailsRequest := true
"#;

#[test]
fn sixteen_threads_lose_and_reorder_no_state_update() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 25;
    let e = Arc::new(PolicyEngine::load(CONCURRENT, &ENDPOINTS, Limits::default()).unwrap());
    let idx = |n: &str| e.index_of(n).unwrap();
    let (create, start, exec, wait, details) = (
        idx("CreateContainerRequest"),
        idx("StartContainerRequest"),
        idx("ExecProcessRequest"),
        idx("WaitProcessRequest"),
        idx("GuestDetailsRequest"),
    );
    // The shapes this test is about: stateless evaluation (with and without ops) runs
    // beside the serialised stateful endpoints.
    let table = e.table();
    let row = |i: usize| (table[i].class, table[i].stateful);
    use vigil_policy::DecisionClass::{ConstAllow, Evaluate};
    assert_eq!(row(create), (Evaluate, true));
    assert_eq!(row(start), (Evaluate, false));
    assert_eq!(row(exec), (Evaluate, false));
    assert_eq!(row(wait), (Evaluate, true));
    assert_eq!(row(details), (ConstAllow, false));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut last_count_seen = 0;
                for i in 0..PER_THREAD {
                    let id = format!("t{t}-{i}");
                    let d = e.decide(create, || Ok::<_, String>(json!({"id": id})));
                    assert_eq!(d.outcome, Outcome::Allowed, "{d:?}");
                    let d = e.decide(start, || {
                        Ok::<_, String>(json!({"id": format!("s{t}_{i}")}))
                    });
                    assert_eq!(d.outcome, Outcome::Allowed, "{d:?}");
                    let n = t * 1000 + i;
                    let d = e.decide(exec, || Ok::<_, String>(json!({"n": n})));
                    assert_eq!(d.allowed, n % 2 == 0);
                    // This thread has made i + 1 creates, so the counter is at least that,
                    // and it never goes backwards.
                    let d = e.decide(wait, || Ok::<_, String>(json!({"min": i + 1})));
                    assert!(d.allowed, "count below this thread's own updates");
                    let d = e.decide(wait, || Ok::<_, String>(json!({"min": last_count_seen})));
                    assert!(d.allowed, "count went backwards");
                    last_count_seen = i + 1;
                    assert!(e.decide(details, || Ok::<_, String>(Value::Null)).allowed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }

    let state = e.state();
    let total = THREADS * PER_THREAD;
    assert_eq!(state["count"], json!(total), "lost update");
    let seen: Vec<String> = serde_json::from_value(state["seen"].clone()).unwrap();
    assert_eq!(seen.len(), total, "lost append");
    // Each thread's updates appear in the order it made them.
    for t in 0..THREADS {
        let mine: Vec<usize> = seen
            .iter()
            .filter_map(|s| s.strip_prefix(&format!("t{t}-")))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(
            mine,
            (0..PER_THREAD).collect::<Vec<_>>(),
            "thread {t} reordered"
        );
    }
    let started = state
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("started_"))
        .count();
    assert_eq!(started, total, "lost stateless-rule update");
}

#[test]
fn replay_of_the_input_log_equals_live_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("inputs.jsonl");
    let e = PolicyEngine::load(CONCURRENT, &ENDPOINTS, Limits::default()).unwrap();
    // The input log as the agent writes it: Kata's `{"kind","request"}` line for every
    // request except the kinds Kata skips.
    let log = RotatingLog::open(&log_path, 1 << 20, 1).unwrap();
    let requests = [
        ("WaitProcessRequest", json!({"min": 1})),
        ("CreateContainerRequest", json!({"id": "t-a"})),
        ("WaitProcessRequest", json!({"min": 1})),
        ("CreateContainerRequest", json!({"id": "x-not-allowed"})),
        ("ExecProcessRequest", json!({"n": 3})),
        ("ExecProcessRequest", json!({"n": 4})),
        ("StartContainerRequest", json!({"id": "c1"})),
        ("GuestDetailsRequest", json!({})),
        ("ListRoutesRequest", json!({})),
        ("CreateContainerRequest", json!({"id": "t-b"})),
        ("WaitProcessRequest", json!({"min": 2})),
        ("WaitProcessRequest", json!({"min": 3})),
        // Not logged, as in Kata.
        ("ReadStreamRequest", json!({"container_id": "c1"})),
    ];
    let mut live = Vec::new();
    for (kind, input) in &requests {
        let i = e.index_of(kind).unwrap();
        if !INPUT_LOG_SKIPPED.contains(kind) {
            log.write_line(&json!({"kind": kind, "request": input}).to_string())
                .unwrap();
        }
        let d = e.decide(i, || Ok::<_, String>(input.clone()));
        if *kind != "ReadStreamRequest" {
            live.push((kind.to_string(), d.allowed, d.outcome.as_str(), d.reason));
        }
    }
    // The log holds every request but the skipped kind, in Kata's format.
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(text.lines().count(), requests.len() - 1);
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"kind": "WaitProcessRequest", "request": {"min": 1}})
    );
    assert!(text.starts_with(r#"{"kind":"WaitProcessRequest","request":"#));

    let fresh = PolicyEngine::load(CONCURRENT, &ENDPOINTS, Limits::default()).unwrap();
    let file = std::fs::File::open(&log_path).unwrap();
    let replayed = replay(&fresh, BufReader::new(file), |_, v| Ok(v));
    assert_eq!(replayed.len(), live.len());
    for (n, (r, l)) in replayed.iter().zip(&live).enumerate() {
        let r = r.as_ref().expect("line parses");
        assert_eq!(r["line"], json!(n + 1));
        assert_eq!(r["kind"], json!(l.0));
        assert_eq!(r["allowed"], json!(l.1), "line {}", n + 1);
        assert_eq!(r["decision"], json!(l.2));
        assert_eq!(r["reason"], json!(l.3));
    }
    assert_eq!(fresh.state(), e.state());
}

#[test]
fn replay_names_unparsable_lines_and_fills_partial_requests() {
    let e = PolicyEngine::load(CONCURRENT, &ENDPOINTS, Limits::default()).unwrap();
    let log = concat!(
        "{\"kind\":\"ExecProcessRequest\",\"request\":{}}\n",
        "\n",
        "not json\n",
        "{\"kind\":\"NoSuchRequest\",\"request\":{}}\n",
        "{\"request\":{}}\n",
        "{\"kind\":\"ExecProcessRequest\",\"request\":{\"n\":\"bad\"}}\n",
        "{\"kind\":\"ExecProcessRequest\"}\n",
    );
    // The completion hook supplies defaults (here n = 0) and can reject a request.
    let out = replay(&e, log.as_bytes(), |kind, mut v| {
        assert_eq!(kind, "ExecProcessRequest");
        let obj = v.as_object_mut().ok_or("not an object")?;
        match obj.get("n") {
            None => {
                obj.insert("n".into(), json!(0));
            }
            Some(n) if !n.is_i64() => return Err("field n is not an integer".into()),
            _ => {}
        }
        Ok(v)
    });
    assert_eq!(out.len(), 6);
    assert_eq!(out[0].as_ref().unwrap()["allowed"], json!(true));
    let errs: Vec<(usize, String)> = out
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| (e.line, e.message.clone()))
        .collect();
    let lines: Vec<usize> = errs.iter().map(|e| e.0).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7]);
    assert!(errs[0].1.contains("not JSON"));
    assert!(errs[1].1.contains("NoSuchRequest"));
    assert!(errs[2].1.contains("kind"));
    assert!(errs[3].1.contains("field n is not an integer"));
    assert!(errs[4].1.contains("request"));
    let shown = out[2].as_ref().unwrap_err().to_string();
    assert!(shown.starts_with("line 4:"), "{shown}");
}

#[test]
fn logs_rotate_at_the_size_bound_keeping_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let log = RotatingLog::open(&path, 100, 2).unwrap();
    // 40-byte lines: two fit in 100 bytes, the third rotates.
    for i in 0..9 {
        log.write_line(&format!("{i:039}")).unwrap();
    }
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let rot = |n: usize| dir.path().join(format!("a.log.{n}"));
    assert_eq!(read(&path), format!("{:039}\n", 8));
    assert_eq!(read(&rot(1)), format!("{:039}\n{:039}\n", 6, 7));
    assert_eq!(read(&rot(2)), format!("{:039}\n{:039}\n", 4, 5));
    assert!(!rot(3).exists(), "only 2 rotated files are kept");
    for f in [path.clone(), rot(1), rot(2)] {
        assert!(std::fs::metadata(&f).unwrap().len() <= 100);
    }

    // Reopening appends and respects the bound counted from the existing size.
    drop(log);
    let log = RotatingLog::open(&path, 100, 2).unwrap();
    log.write_line(&format!("{:039}", 9)).unwrap();
    assert_eq!(read(&path), format!("{:039}\n{:039}\n", 8, 9));
    log.write_line(&format!("{:039}", 10)).unwrap();
    assert_eq!(read(&path), format!("{:039}\n", 10));
    assert_eq!(read(&rot(1)), format!("{:039}\n{:039}\n", 8, 9));
}
