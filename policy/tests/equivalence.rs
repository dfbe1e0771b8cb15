//! Soundness of precompiled decisions: for policies of several shapes, the gate's answer
//! (constant fast path where the analysis allows it) equals full evaluation of the rule, on
//! the suite's inputs and on generated ones, with state carried along the same sequence.

mod common;

use common::ENDPOINTS;
use proptest::prelude::*;
use serde_json::{json, Value};
use vigil_policy::{DecisionClass, Limits, PolicyEngine};

/// Each shape names the endpoints it expects to be constant (allow, deny) and evaluated.
struct Shape {
    name: &'static str,
    rego: &'static str,
    const_allow: &'static [&'static str],
    const_deny: &'static [&'static str],
    evaluated: &'static [&'static str],
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "defaults and input rules",
        rego: r#"
package agent_policy
default CreateSandboxRequest := true
default DestroySandboxRequest := false
default ExecProcessRequest := false
ExecProcessRequest if input.process.Args[0] == "/bin/ls"
default SignalProcessRequest := false
SignalProcessRequest if { input.signal == 9 }
"#,
        const_allow: &["CreateSandboxRequest"],
        const_deny: &["DestroySandboxRequest", "ListRoutesRequest"],
        evaluated: &["ExecProcessRequest", "SignalProcessRequest"],
    },
    Shape {
        name: "constants through helpers, functions and data",
        rego: r#"
package agent_policy
import future.keywords.in
import input

policy_data := {"allowed_images": ["pause", "nginx"], "debug": false}

image_allowed(img) if { img in policy_data.allowed_images }

default GetMetricsRequest := false
GetMetricsRequest if { policy_data.debug }

ListInterfacesRequest := count(policy_data.allowed_images) == 2

ListRoutesRequest if {
    every img in ["pause"] { image_allowed(img) }
}

# Depends on input only through a helper two levels down.
UpdateEphemeralMountsRequest if { ok_image }
ok_image if { image_allowed(input.image) }

# A local variable named like a rule: the analysis over-approximates to evaluated.
GetOOMEventRequest if { is_x("x") }
is_x(ok_image) if { ok_image == "x" }

UpdateRoutesRequest if { data.agent_policy.policy_data.debug == false }

# Precomputed at load: a composite built from another precomputed rule.
image_set := {x | some x in policy_data.allowed_images}
# Not precomputable: composite that reads input.
requested := [input.image, input.tag]

AddARPNeighborsRequest if { requested[0] in image_set }
OnlineCPUMemRequest := count(image_set) == 2

# else chain whose second branch reads input.
TtyWinResizeRequest := true if { input.row > 10 } else := false
"#,
        const_allow: &[
            "ListInterfacesRequest",
            "ListRoutesRequest",
            "UpdateRoutesRequest",
        ],
        const_deny: &["GetMetricsRequest"],
        evaluated: &[
            "UpdateEphemeralMountsRequest",
            "GetOOMEventRequest",
            "TtyWinResizeRequest",
            "AddARPNeighborsRequest",
        ],
    },
    Shape {
        name: "objects, state and with",
        rego: r#"
package agent_policy

# Constant object without ops: constant.
StartContainerRequest := {"allowed": true, "ops": []}
RemoveContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/x", "value": 1}]}

# Constant value, but it emits ops every time: must be evaluated.
ResumeContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/resumed", "value": true}]}

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    not data.pstate.sandbox_name
    ops := [{"op": "add", "path": "/pstate/sandbox_name", "value": input.sandbox}]
} else := {"allowed": true, "ops": []} if {
    data.pstate.sandbox_name == input.sandbox
} else := {"allowed": false}

# Reads state only, through a helper.
ExecProcessRequest if { sandbox_known }
sandbox_known if { data.pstate.sandbox_name }

# Reads all of data.
GetIPTablesRequest if { count(data) > 0 }

# `with` rewrites input: never trusted as constant.
SetIPTablesRequest if { is_ls with input as {"process": {"Args": ["/bin/ls"]}} }
is_ls if { input.process.Args[0] == "/bin/ls" }

# Undefined for every input: constant (error).
CloseStdinRequest if { 1 == 2 }
"#,
        const_allow: &["StartContainerRequest"],
        const_deny: &["RemoveContainerRequest", "CloseStdinRequest"],
        evaluated: &[
            "ResumeContainerRequest",
            "CreateContainerRequest",
            "ExecProcessRequest",
            "GetIPTablesRequest",
            "SetIPTablesRequest",
        ],
    },
    Shape {
        name: "AllowRequestsFailingPolicy",
        rego: r#"
package agent_policy
default AllowRequestsFailingPolicy := true
default DestroySandboxRequest := false
ExecProcessRequest if input.ok == true
GetMetricsRequest := "not a decision"
"#,
        const_allow: &["DestroySandboxRequest", "ListRoutesRequest"],
        const_deny: &["GetMetricsRequest"],
        evaluated: &["ExecProcessRequest"],
    },
    Shape {
        name: "aliases and dynamic data",
        rego: r#"
package agent_policy
import future.keywords.in
import input.process as proc

# An import alias into input taints the whole module; these rules would otherwise be
# constant.
default StartContainerRequest := true
ExecProcessRequest if { proc.Args[0] == "/bin/ls" }
"#,
        const_allow: &[],
        const_deny: &["ListRoutesRequest"],
        evaluated: &["StartContainerRequest", "ExecProcessRequest"],
    },
    Shape {
        name: "dynamic data references",
        rego: r#"
package agent_policy
import future.keywords.in

keys := ["pstate"]
default StartContainerRequest := false
# A computed data path may reach state.
StartContainerRequest if { some k in keys; count(data[k]) == 0 }
# The whole package as data: reads every rule, so it is treated as reading state too.
GetMetricsRequest if { count(data.agent_policy) > 0 }
# A rule of the package by its full path: constant.
ListRoutesRequest if { data.agent_policy.keys[0] == "pstate" }
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/n", "value": input.n}]}
"#,
        const_allow: &["ListRoutesRequest"],
        const_deny: &[],
        evaluated: &[
            "StartContainerRequest",
            "GetMetricsRequest",
            "CreateContainerRequest",
        ],
    },
];

fn load(rego: &str) -> PolicyEngine {
    PolicyEngine::load(rego, &ENDPOINTS, Limits::default()).expect("shape loads")
}

#[test]
fn input_and_state_independent_composites_are_precomputed() {
    let e = load(SHAPES[1].rego);
    assert_eq!(e.precomputed_rules(), ["image_set", "policy_data"]);
    let e = load(SHAPES[0].rego);
    assert!(e.precomputed_rules().is_empty());
}

#[test]
fn classification_of_each_shape() {
    for shape in SHAPES {
        let e = load(shape.rego);
        let class = |n: &str| e.class(e.index_of(n).expect("endpoint"));
        for n in shape.const_allow {
            assert_eq!(class(n), DecisionClass::ConstAllow, "{}: {n}", shape.name);
        }
        for n in shape.const_deny {
            assert_eq!(class(n), DecisionClass::ConstDeny, "{}: {n}", shape.name);
        }
        for n in shape.evaluated {
            assert_eq!(class(n), DecisionClass::Evaluate, "{}: {n}", shape.name);
        }
    }
}

/// Run `inputs` through two fresh engines of the same policy, one with the gate and one with
/// forced full evaluation, and compare every decision and the final state.
fn assert_equivalent(shape: &Shape, inputs: &[(usize, Value)]) {
    let gate = load(shape.rego);
    let full = load(shape.rego);
    for (step, (ep, input)) in inputs.iter().enumerate() {
        let ep = ep % ENDPOINTS.len();
        let g = gate.decide(ep, || Ok::<_, String>(input.clone()));
        let f = full.decide_evaluated(ep, input.clone());
        assert_eq!(
            (g.allowed, g.outcome, &g.reason),
            (f.allowed, f.outcome, &f.reason),
            "{}: step {step}, {} with {input}",
            shape.name,
            ENDPOINTS[ep]
        );
    }
    assert_eq!(
        gate.state(),
        full.reference_state(),
        "{}: final state",
        shape.name
    );
}

fn suite_inputs() -> Vec<Value> {
    vec![
        json!({}),
        json!(null),
        json!({"process": {"Args": ["/bin/ls"]}}),
        json!({"process": {"Args": ["/bin/sh", "-c", "id"]}}),
        json!({"signal": 9}),
        json!({"signal": 15}),
        json!({"image": "nginx"}),
        json!({"image": "evil"}),
        json!({"row": 40}),
        json!({"row": 2}),
        json!({"sandbox": "a"}),
        json!({"sandbox": "b"}),
        json!({"ok": true}),
        json!({"ok": false}),
        json!([1, 2, 3]),
        json!("string input"),
    ]
}

#[test]
fn fast_path_equals_full_evaluation_on_suite_inputs() {
    let inputs = suite_inputs();
    for shape in SHAPES {
        let mut seq = Vec::new();
        for ep in 0..ENDPOINTS.len() {
            for input in &inputs {
                seq.push((ep, input.clone()));
            }
        }
        assert_equivalent(shape, &seq);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-20i64..20).prop_map(|n| json!(n)),
        "[a-z/]{0,8}".prop_map(Value::String),
        prop_oneof![Just("/bin/ls"), Just("a"), Just("b"), Just("nginx")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("process".to_string()),
                    Just("Args".to_string()),
                    Just("sandbox".to_string()),
                    Just("image".to_string()),
                    Just("signal".to_string()),
                    Just("row".to_string()),
                    Just("ok".to_string()),
                    "[a-z]{1,5}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Inputs shaped like what the rules read, so generated cases reach allow paths too.
fn arb_input() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_json(),
        prop::collection::vec("(/bin/ls|/bin/sh|-c|x)", 0..3)
            .prop_map(|args| json!({"process": {"Args": args}})),
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(|s| json!({"sandbox": s})),
        (0i64..3).prop_map(|n| json!({"n": n})),
        (0i64..20).prop_map(|n| json!({"signal": n, "row": n})),
        any::<bool>().prop_map(|b| json!({"ok": b})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_equals_full_evaluation_on_generated_inputs(
        shape in 0..SHAPES.len(),
        seq in prop::collection::vec((0..ENDPOINTS.len(), arb_input()), 1..40),
    ) {
        assert_equivalent(&SHAPES[shape], &seq);
    }
}
