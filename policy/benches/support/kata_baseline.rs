//! The Kata-style baseline shared by the benchmarks.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Mutex;

use serde_json::Value;

/// Kata's agent policy, reduced to what a request costs: one engine behind one lock, the
/// request serialised to JSON and parsed into the engine for every call, and any `ops`
/// field (even empty) applied by rebuilding the data document.
pub struct KataBaseline {
    engine: Mutex<regorus::Engine>,
}

impl KataBaseline {
    pub fn load(rego: &str) -> Self {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        engine.set_policy_length_config(regorus::PolicyLengthConfig {
            max_col: NonZeroU32::new(64 * 1024).unwrap(),
            max_file_bytes: NonZeroUsize::new(16 << 20).unwrap(),
            max_lines: NonZeroUsize::new(200_000).unwrap(),
        });
        engine
            .add_data(regorus::Value::from_json_str(r#"{"pstate": {}}"#).unwrap())
            .unwrap();
        engine
            .add_policy("agent_policy".into(), rego.into())
            .unwrap();
        let b = KataBaseline {
            engine: Mutex::new(engine),
        };
        // Kata evaluates AllowRequestsFailingPolicy right after loading.
        let _ = b.allow_request("AllowRequestsFailingPolicy", "{}");
        b
    }

    fn allow_request(&self, ep: &str, input: &str) -> bool {
        let mut engine = self.engine.lock().unwrap();
        engine.set_input_json(input).unwrap();
        let results = engine
            .eval_query(format!("data.agent_policy.{ep}"), false)
            .unwrap();
        let _prints = engine.take_prints().unwrap().join(" ");
        if results.result.len() != 1 {
            return false;
        }
        match &results.result[0].expressions[0].value {
            regorus::Value::Bool(b) => *b,
            regorus::Value::Object(obj) => {
                #[derive(serde::Deserialize)]
                struct Reply {
                    allowed: bool,
                    ops: Option<json_patch::Patch>,
                }
                let reply: Reply =
                    serde_json::from_str(&serde_json::to_string(obj).unwrap()).unwrap();
                if reply.allowed {
                    if let Some(ops) = reply.ops {
                        let mut state = serde_json::to_value(engine.get_data()).unwrap();
                        json_patch::patch(&mut state, &ops).unwrap();
                        engine.clear_data();
                        engine
                            .add_data(regorus::Value::from_json_str(&state.to_string()).unwrap())
                            .unwrap();
                    }
                }
                reply.allowed
            }
            _ => false,
        }
    }

    /// The whole per-request cost in Kata: serialise, then evaluate under the lock.
    pub fn gate(&self, ep: &str, req: &Value) -> bool {
        let input = serde_json::to_string(req).unwrap();
        self.allow_request(ep, &input)
    }
}
