//! vigil's agent-policy engine: Kata's Rego agent-policy contract on regorus.
//!
//! * Contract (as Kata): package `agent_policy`; a request is decided by querying
//!   `data.agent_policy.<RequestMessageName>` with the request as `input`. The result is a
//!   boolean or `{"allowed": bool, "ops": [JSON patch]}`; allowed ops update `data.pstate`
//!   for later requests. Undefined rule: error (fail closed). `AllowRequestsFailingPolicy`
//!   is evaluated once after load and turns denials and undefined results into allows.
//! * Precompiled decisions: at load every endpoint is classified constant-allow,
//!   constant-deny or evaluated by a conservative dependency analysis of the parsed policy;
//!   constant endpoints never touch the engine (see [`PolicyEngine::decide`]).
//! * Concurrency: every evaluation runs on a clone of a prepared engine, in parallel.
//!   Endpoints that read state evaluate on a snapshot of it; all state updates are
//!   serialised on one lock, and an update computed on a snapshot commits only if no other
//!   update happened since (otherwise it is evaluated again under the lock), so updates are
//!   atomic, never lost and applied in a single order.
//! * Limits: a policy size cap and an evaluation time budget (regorus' execution timer).
//! * Records: the size-rotated log files the agent's audit and Kata-format input logs are
//!   written to ([`RotatingLog`]), and [`replay`] of an input log. The agent records
//!   decisions itself (it also counts allow-list decisions, which never reach this crate).

mod analysis;
mod copy_file;
mod engine;
mod literal_rules;

pub use copy_file::{copy_file_input, file_type, normalize_path, CopyFileInputError};
pub use engine::{
    Decision, DecisionClass, EndpointInfo, Limits, LoadError, Outcome, PolicyEngine,
    ALLOW_FAILING_RULE,
};

mod logs;
mod replay;

pub use logs::{rfc3339_now, RotatingLog, INPUT_LOG_SKIPPED};
pub use replay::{replay, ReplayError};
