//! Target `gate_decision`: the gate's precompiled decision equals full evaluation.
//!
//! A sequence of requests goes to [`vigil_agent::gate::Gate::decide`] (allow-list bit,
//! constant-allow/deny bits, or the prepared engine on the decoded request) and to the
//! policy engine's reference path (the policy as written, queried as Kata does, with no
//! precompiled decision). They must agree on every request that has a policy input; a request
//! without one (it does not decode) must not be allowed unless its rule is constant-allow
//! (which never reads the request; the handler's own decoding then refuses it).
//!
//! Input: repeated `[selector][u16 length][payload]`.

use std::cell::RefCell;

use vigil_agent::gate::DecidedBy;
use vigil_policy::Outcome;

use crate::policy::{agent_endpoints, TestGate};
use crate::Input;

thread_local! {
    static GATE: RefCell<Option<(TestGate, Vec<&'static vigil_protos::Endpoint>)>> =
        const { RefCell::new(None) };
}

pub fn gate_decision(data: &[u8]) {
    GATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (gate, endpoints) = slot.get_or_insert_with(|| (TestGate::new(), agent_endpoints()));
        let mut input = Input::new(data);
        while !input.is_empty() {
            let endpoint = endpoints[input.u8() as usize % endpoints.len()];
            let payload = input.chunk();
            let verdict = gate.gate.decide(endpoint, payload);
            if !gate.allowed.contains(endpoint.id) {
                assert_eq!(verdict.by, DecidedBy::AllowList, "{}", endpoint.request);
                assert_eq!(verdict.outcome, Outcome::Denied, "{}", endpoint.request);
                continue;
            }
            match gate.reference(endpoint, payload) {
                Some(reference) => assert_eq!(
                    verdict.outcome, reference,
                    "{}: gate {:?} ({:?}) but full evaluation {:?}",
                    endpoint.request, verdict.outcome, verdict.by, reference
                ),
                None => {
                    if gate.constant(endpoint) != Some(true) {
                        assert!(
                            !verdict.allowed(),
                            "{}: allowed a request that has no policy input",
                            endpoint.request
                        );
                    }
                }
            }
        }
    });
}
