//! The policy engine: Kata's agent-policy contract on regorus, with per-endpoint decisions
//! precompiled at load time.

use std::borrow::Cow;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{LimitError, PolicyLengthConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Ref};

use crate::analysis::{
    chain_fields, redundant_v1_imports, rule_name, rule_names, Analysis, Hoistable, HOISTED_ROOT,
    PACKAGE,
};
use crate::literal_rules::{header_keyword_imports, json_rules};

/// The rule Kata evaluates once after loading a policy: when true, denials and undefined
/// results are logged and allowed (a debugging aid that must never ship in production).
pub const ALLOW_FAILING_RULE: &str = "AllowRequestsFailingPolicy";

/// The part of the data document that policies may read and that ops may patch.
const STATE_ROOT: &str = "pstate";

/// Resource limits applied to a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted policy text, in bytes.
    pub max_policy_bytes: usize,
    /// Wall-clock budget for one evaluation; exceeding it is an evaluation error.
    pub eval_time_budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Kata raised regorus' 1 MiB default to 16 MiB for genpolicy output.
            max_policy_bytes: 16 * 1024 * 1024,
            eval_time_budget: Duration::from_secs(1),
        }
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("policy is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error("endpoint name {0:?} is not a Rego identifier")]
    BadEndpointName(String),
    #[error("endpoint name {0:?} is listed twice")]
    DuplicateEndpoint(String),
}

/// How an endpoint is decided, fixed when the policy loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionClass {
    /// The rule's value cannot depend on the request or on state: always allowed.
    ConstAllow,
    /// The rule's value cannot depend on the request or on state: never allowed (false,
    /// undefined, or a result that is not a decision).
    ConstDeny,
    /// Evaluated per request.
    Evaluate,
}

impl DecisionClass {
    pub fn is_constant(self) -> bool {
        !matches!(self, DecisionClass::Evaluate)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionClass::ConstAllow => "constant-allow",
            DecisionClass::ConstDeny => "constant-deny",
            DecisionClass::Evaluate => "evaluated",
        }
    }
}

/// What the gate does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Run the handler.
    Allowed,
    /// The policy said no: `PERMISSION_DENIED`.
    Denied,
    /// The policy gave no usable answer (undefined rule, bad result, evaluation error,
    /// time budget): fail closed with `INTERNAL`.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allow",
            Outcome::Denied => "deny",
            Outcome::Error => "error",
        }
    }
}

/// One gate decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub outcome: Outcome,
    pub class: DecisionClass,
    /// For the guest log and the audit log; never contains request contents.
    pub reason: Cow<'static, str>,
    /// Output of Rego `print` during this evaluation (guest log only).
    pub prints: Vec<String>,
}

impl Decision {
    fn new(outcome: Outcome, class: DecisionClass, reason: impl Into<Cow<'static, str>>) -> Self {
        Decision {
            allowed: outcome == Outcome::Allowed,
            outcome,
            class,
            reason: reason.into(),
            prints: Vec::new(),
        }
    }
}

/// One row of the per-endpoint table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub name: String,
    pub class: DecisionClass,
    /// Evaluated under the state lock (reads mutable policy data).
    pub stateful: bool,
    pub reason: String,
}

/// The raw answer of the policy for one query, before AllowRequestsFailingPolicy.
#[derive(Debug)]
enum Answer {
    Undefined,
    Bool(bool),
    Object {
        allowed: bool,
        ops: Vec<json_patch::PatchOperation>,
    },
}

#[derive(Debug)]
enum EvalError {
    TimeBudget(Duration),
    Other(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::TimeBudget(limit) => write!(
                f,
                "policy evaluation exceeded its time budget of {} ms",
                limit.as_millis()
            ),
            EvalError::Other(m) => f.write_str(m),
        }
    }
}

/// How an endpoint's rule is read from the engine.
#[derive(Debug, Clone)]
struct RuleQuery {
    /// `data.agent_policy.<Name>`
    path: String,
    /// The path names exactly one rule, so `eval_rule` (no query parsing or scheduling)
    /// gives the same value as Kata's `eval_query`.
    by_rule: bool,
}

struct Endpoint {
    name: String,
    query: RuleQuery,
    class: DecisionClass,
    stateful: bool,
    /// For constant endpoints, the decision every request gets.
    constant: Option<Decision>,
    note: String,
}

/// Mutable policy data and the engine that sees it; one lock orders every state read and
/// update.
struct State {
    engine: regorus::Engine,
    /// `{"pstate": ...}`: the only part of the data document ops may change.
    doc: Value,
    /// Incremented by every committed update; a decision computed on a snapshot may only
    /// commit ops if no update happened since.
    version: u64,
}

/// A loaded policy. `Send + Sync`: share it behind an `Arc` and call [`PolicyEngine::decide`]
/// from any thread.
pub struct PolicyEngine {
    endpoints: Box<[Endpoint]>,
    /// Prepared engine holding the initial data; cloned for each stateless evaluation.
    base: regorus::Engine,
    state: Mutex<State>,
    /// `{"__vigil_hoisted": {...}}`, re-added whenever the data document is rebuilt.
    hoisted: regorus::Value,
    hoisted_names: Vec<String>,
    /// The policy as written, if the load parsed it; only for
    /// [`PolicyEngine::decide_evaluated`], which proves the optimised path equivalent.
    original: Option<regorus::Engine>,
    rego: String,
    /// The state of the reference path, set up on its first use (the gate never needs it,
    /// and compiling the policy as written is a large part of a load), or why the policy as
    /// written does not compile.
    reference: OnceLock<Result<Mutex<State>, String>>,
    allow_failing: bool,
    limits: Limits,
    digest: String,
    version: Option<u64>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("digest", &self.digest)
            .field("version", &self.version)
            .field("allow_failing", &self.allow_failing)
            .finish_non_exhaustive()
    }
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An empty engine configured as Kata configures its own, holding `data`.
fn configured_engine(
    limits: &Limits,
    rego_v0: bool,
    data: regorus::Value,
) -> Result<regorus::Engine, String> {
    let mut engine = regorus::Engine::new();
    // As Kata: builtin errors make an expression undefined instead of aborting evaluation,
    // and print output is gathered for the log.
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_rego_v0(rego_v0);
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: NonZeroU32::new(64 * 1024).expect("non-zero"),
        max_file_bytes: NonZeroUsize::new(limits.max_policy_bytes.max(1)).expect("non-zero"),
        max_lines: NonZeroUsize::new(200_000).expect("non-zero"),
    });
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: limits.eval_time_budget,
        check_interval: NonZeroU32::new(32).expect("non-zero"),
    });
    engine.add_data(data).map_err(|e| e.to_string())?;
    Ok(engine)
}

fn add_policy(engine: &mut regorus::Engine, rego: &str) -> Result<(), String> {
    engine
        .add_policy(format!("{PACKAGE}.rego"), rego.to_string())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Prepare once (scheduling, rule and function tables) so clones start ready; a trivial
/// query does it without evaluating any rule.
fn prepare(engine: &mut regorus::Engine) -> Result<(), String> {
    engine.set_input(regorus::Value::new_object());
    engine
        .eval_query("true".to_string(), false)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn new_engine(
    rego: &str,
    limits: &Limits,
    rego_v0: bool,
    data: regorus::Value,
) -> Result<regorus::Engine, String> {
    let mut engine = configured_engine(limits, rego_v0, data)?;
    add_policy(&mut engine, rego)?;
    prepare(&mut engine)?;
    Ok(engine)
}

fn initial_doc() -> Value {
    serde_json::json!({ STATE_ROOT: {} })
}

/// Compile the policy as written: Rego v1 (regorus' default, as in Kata), falling back to
/// v0 for policies written for older Kata releases before reporting the v1 error.
fn compile(rego: &str, limits: &Limits) -> Result<(regorus::Engine, bool), LoadError> {
    let data = || regorus::Value::from(initial_doc());
    match new_engine(rego, limits, false, data()) {
        Ok(e) => Ok((e, false)),
        Err(v1_err) => match new_engine(rego, limits, true, data()) {
            Ok(e) => Ok((e, true)),
            Err(_) => Err(LoadError::Compile(v1_err)),
        },
    }
}

/// Parse the policy as written, without preparing it (the costly half of a compile that a
/// rewritten policy does not need): v1, else v0, as [`compile`] chooses.
fn parse(rego: &str, limits: &Limits) -> Result<(regorus::Engine, bool), LoadError> {
    let engine = |rego_v0| {
        let mut e = configured_engine(limits, rego_v0, regorus::Value::from(initial_doc()))?;
        add_policy(&mut e, rego)?;
        Ok::<_, String>(e)
    };
    match engine(false) {
        Ok(e) => Ok((e, false)),
        Err(v1_err) => match engine(true) {
            Ok(e) => Ok((e, true)),
            Err(_) => Err(LoadError::Compile(v1_err)),
        },
    }
}

/// Prepare a parsed policy. If that fails, [`compile`] from scratch decides, so the version
/// chosen and the error reported are exactly those of compiling the text directly.
fn prepare_parsed(
    mut parsed: regorus::Engine,
    rego_v0: bool,
    rego: &str,
    limits: &Limits,
) -> Result<(regorus::Engine, bool), LoadError> {
    match prepare(&mut parsed) {
        Ok(()) => Ok((parsed, rego_v0)),
        Err(_) => compile(rego, limits),
    }
}

/// The value of a constant literal (null, booleans, numbers, strings, and arrays, sets and
/// objects of constant literals), built exactly as regorus' interpreter builds it
/// (`Interpreter::eval_array`/`eval_set`/`eval_object`: the last of two equal object keys
/// wins); `None` for any other expression.
fn literal_value(expr: &Ref<Expr>) -> Option<regorus::Value> {
    match expr.as_ref() {
        Expr::Null { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Number { value, .. }
        | Expr::String { value, .. }
        | Expr::RawString { value, .. } => Some(value.clone()),
        Expr::Array { items, .. } => items
            .iter()
            .map(literal_value)
            .collect::<Option<Vec<_>>>()
            .map(regorus::Value::from),
        Expr::Set { items, .. } => items
            .iter()
            .map(literal_value)
            .collect::<Option<BTreeSet<_>>>()
            .map(regorus::Value::from),
        Expr::Object { fields, .. } => {
            let mut map = BTreeMap::new();
            for (_, key, value) in fields {
                map.insert(literal_value(key)?, literal_value(value)?);
            }
            Some(regorus::Value::from(map))
        }
        _ => None,
    }
}

/// Precompute rules like genpolicy's `policy_data := {...}`: composite values that depend
/// on neither input nor state. Kata rebuilds such a value on every request that reads it;
/// here it is evaluated once, stored in the data document, and the rule's expression is
/// replaced by a reference to it. In Rego v1 the redundant `import future.keywords.<kw>`
/// statements are blanked too (see [`redundant_v1_imports`]). Returns the rewritten engine
/// and the hoisted document, or `None` (keep the policy as written) if there is nothing to
/// rewrite or anything does not check out.
fn hoist(
    original: &mut regorus::Engine,
    rego: &str,
    candidates: &[Hoistable],
    limits: &Limits,
    rego_v0: bool,
) -> Option<(regorus::Engine, regorus::Value)> {
    let redundant_imports = if rego_v0 {
        Vec::new()
    } else {
        redundant_v1_imports(original.get_modules())
    };
    if (candidates.is_empty() && redundant_imports.is_empty()) || rego.contains(HOISTED_ROOT) {
        return None;
    }
    // genpolicy's `policy_data` is a literal: its value comes straight from the parsed
    // text, so the policy as written need not be prepared at all. Anything else is
    // evaluated on the prepared original.
    let values = match candidates
        .iter()
        .map(|c| literal_value(&c.expr))
        .collect::<Option<Vec<_>>>()
    {
        Some(values) => values,
        None => {
            prepare(original).ok()?;
            let mut probe = original.clone();
            let mut values = Vec::with_capacity(candidates.len());
            for c in candidates {
                let v = probe.eval_rule(format!("data.{PACKAGE}.{}", c.name)).ok()?;
                if v == regorus::Value::Undefined {
                    return None;
                }
                values.push(v);
            }
            values
        }
    };
    let mut sorted: Vec<&Hoistable> = candidates.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.start));
    let mut text = rego.to_string();
    for c in sorted {
        if c.start >= c.end
            || c.end > text.len()
            || !text.is_char_boundary(c.start)
            || !text.is_char_boundary(c.end)
        {
            return None;
        }
        if !text[c.start..].starts_with(c.name.as_str()) {
            return None;
        }
        // Keep line numbers of everything after the rule unchanged.
        let newlines = text[c.start..c.end].matches('\n').count();
        let replacement = format!(
            "{name} := data.{HOISTED_ROOT}.{name}{pad}",
            name = c.name,
            pad = "\n".repeat(newlines)
        );
        text.replace_range(c.start..c.end, &replacement);
    }
    // Imports precede every rule, so the offsets above did not move them. Blanked, not
    // removed: every position in the text stays where it was.
    for &(start, end) in &redundant_imports {
        if start >= end
            || end > text.len()
            || !text.is_char_boundary(start)
            || !text.is_char_boundary(end)
            || !text[start..end].starts_with("import")
            || candidates.iter().any(|c| c.start < end)
        {
            return None;
        }
        let blank: String = text[start..end]
            .chars()
            .map(|c| if c == '\n' { c } else { ' ' })
            .collect();
        text.replace_range(start..end, &blank);
    }
    let mut table = regorus::Value::new_object();
    {
        let map = table.as_object_mut().ok()?;
        for (c, v) in candidates.iter().zip(&values) {
            map.insert(regorus::Value::from(c.name.as_str()), v.clone());
        }
    }
    let mut hoisted = regorus::Value::new_object();
    hoisted
        .as_object_mut()
        .ok()?
        .insert(regorus::Value::from(HOISTED_ROOT), table.clone());
    let mut data = regorus::Value::from(initial_doc());
    data.as_object_mut()
        .ok()?
        .insert(regorus::Value::from(HOISTED_ROOT), table);
    let mut engine = new_engine(&text, limits, rego_v0, data).ok()?;
    // Same rules, in the same order: the rewrite replaced rule values, nothing else.
    if rule_names(engine.get_modules()) != rule_names(original.get_modules()) {
        return None;
    }
    let imports = |modules: &[Ref<regorus::unstable::Module>]| -> usize {
        modules.iter().map(|m| m.imports.len()).sum()
    };
    if imports(engine.get_modules()) + redundant_imports.len() != imports(original.get_modules()) {
        return None;
    }
    // The rewritten rules must give exactly the values they replaced.
    for (c, v) in candidates.iter().zip(&values) {
        if engine
            .eval_rule(format!("data.{PACKAGE}.{}", c.name))
            .ok()?
            != *v
        {
            return None;
        }
    }
    Some((engine, hoisted))
}

/// The gate's engine from a single parse, for policies whose precomputable rules are all
/// JSON literals at the top level (genpolicy's `policy_data`): the literals are read with
/// serde_json straight from the text (see [`crate::literal_rules`]), the rewritten text is
/// parsed and prepared once, and the policy as written is not parsed at all (the reference
/// path compiles it on first use). Every guess of the text scan is confirmed on the parsed
/// rewrite: each replaced rule is found exactly where it was put, as the only definition of
/// its name, with the value it was given. Returns `None` (take the general path) if anything
/// does not check out, or if other rules could be precomputed that are more than small
/// literals, which only the general path does.
fn fast_rewrite(rego: &str, limits: &Limits) -> Option<Rewritten> {
    if rego.contains(HOISTED_ROOT) {
        return None;
    }
    let rules = json_rules(rego);
    if rules.is_empty() {
        return None;
    }
    let imports = header_keyword_imports(rego);
    if imports.last().is_some_and(|&(_, end)| end > rules[0].start) {
        return None;
    }
    // Rewrite front to back, recording where each replacement lands.
    let mut text = String::with_capacity(rego.len());
    let mut placed = Vec::with_capacity(rules.len());
    let mut copied = 0;
    for &(start, end) in &imports {
        text.push_str(&rego[copied..start]);
        text.extend(std::iter::repeat_n(' ', end - start));
        copied = end;
    }
    for r in &rules {
        text.push_str(&rego[copied..r.start]);
        let head = format!("{name} := data.{HOISTED_ROOT}.{name}", name = r.name);
        placed.push((text.len(), text.len() + head.len()));
        text.push_str(&head);
        // Keep line numbers of everything after the rule unchanged.
        text.extend(std::iter::repeat_n(
            '\n',
            rego[r.start..r.end].matches('\n').count(),
        ));
        copied = r.end;
    }
    text.push_str(&rego[copied..]);

    let mut table = BTreeMap::new();
    for r in &rules {
        if table
            .insert(regorus::Value::from(r.name.as_str()), r.value.clone())
            .is_some()
        {
            return None;
        }
    }
    let table = regorus::Value::from(table);
    let mut data = regorus::Value::from(initial_doc());
    data.as_object_mut()
        .ok()?
        .insert(regorus::Value::from(HOISTED_ROOT), table.clone());
    let mut engine = configured_engine(limits, false, data).ok()?;
    add_policy(&mut engine, &text).ok()?;
    {
        let modules = engine.get_modules();
        let [module] = modules.as_slice() else {
            return None;
        };
        for (r, &(start, end)) in rules.iter().zip(&placed) {
            let mut defs = module
                .policy
                .iter()
                .filter(|rule| rule_name(rule).as_deref() == Some(r.name.as_str()));
            let (Some(rule), None) = (defs.next(), defs.next()) else {
                return None;
            };
            if !is_hoisted_reference(rule, &r.name, start, end) {
                return None;
            }
        }
    }
    prepare(&mut engine).ok()?;
    let analysis = Analysis::analyse(engine.get_modules());
    // Other precomputable rules: small Rego-only literals (a trailing comma is not JSON)
    // cost little per request and stay as written; anything else is worth the general path.
    let small_literal =
        |c: &Hoistable| c.end - c.start <= SMALL_LITERAL_BYTES && literal_value(&c.expr).is_some();
    if !analysis.hoistable().iter().all(small_literal) {
        return None;
    }
    for r in &rules {
        if engine
            .eval_rule(format!("data.{PACKAGE}.{}", r.name))
            .ok()?
            != r.value
        {
            return None;
        }
    }
    let mut hoisted = regorus::Value::new_object();
    hoisted
        .as_object_mut()
        .ok()?
        .insert(regorus::Value::from(HOISTED_ROOT), table);
    let mut names: Vec<String> = rules.into_iter().map(|r| r.name).collect();
    names.sort();
    Some(Rewritten {
        engine,
        analysis,
        original: None,
        hoisted,
        hoisted_names: names,
    })
}

/// What a load builds the gate from.
struct Rewritten {
    /// The gate's prepared engine.
    engine: regorus::Engine,
    analysis: Analysis,
    /// The policy as written, if it was parsed.
    original: Option<regorus::Engine>,
    /// `{"__vigil_hoisted": {...}}`, or an empty object.
    hoisted: regorus::Value,
    hoisted_names: Vec<String>,
}

/// The general path: parse the policy as written, analyse it, and precompute whatever the
/// analysis allows (evaluating non-literal values on the prepared original).
fn general_rewrite(rego: &str, limits: &Limits) -> Result<Rewritten, LoadError> {
    let (mut original, rego_v0) = parse(rego, limits)?;
    let analysis = Analysis::analyse(original.get_modules());
    let candidates = analysis.hoistable();
    Ok(
        match hoist(&mut original, rego, &candidates, limits, rego_v0) {
            Some((engine, hoisted)) => Rewritten {
                engine,
                analysis,
                original: Some(original),
                hoisted,
                hoisted_names: candidates.into_iter().map(|c| c.name).collect(),
            },
            None => {
                let (prepared, _) = prepare_parsed(original, rego_v0, rego, limits)?;
                Rewritten {
                    engine: prepared.clone(),
                    analysis,
                    original: Some(prepared),
                    hoisted: regorus::Value::new_object(),
                    hoisted_names: Vec::new(),
                }
            }
        },
    )
}

/// Largest literal rule the single-parse path leaves to be evaluated per request.
const SMALL_LITERAL_BYTES: usize = 4096;

/// `rule` is `<name> := data.<HOISTED_ROOT>.<name>` with no body, spanning exactly
/// `start..end` of the rewritten text.
fn is_hoisted_reference(
    rule: &Ref<regorus::unstable::Rule>,
    name: &str,
    start: usize,
    end: usize,
) -> bool {
    use regorus::unstable::{Rule, RuleHead};
    let Rule::Spec { head, bodies, span } = rule.as_ref() else {
        return false;
    };
    let RuleHead::Compr {
        refr,
        assign: Some(assign),
        ..
    } = head
    else {
        return false;
    };
    let value_is_reference = chain_fields(&assign.value).is_some_and(|(root, fields)| {
        root == "data" && fields.len() == 2 && fields[0] == HOISTED_ROOT && fields[1] == name
    });
    bodies.is_empty()
        && matches!(refr.as_ref(), Expr::Var { span, .. } if span.text() == name)
        && value_is_reference
        && span.start as usize == start
        && assign.value.span().end as usize == end
}

/// Ops may only touch `/pstate`: the rest of the data document is what makes constant
/// decisions sound, and no Kata policy writes elsewhere.
fn check_op_paths(ops: &[json_patch::PatchOperation]) -> Result<(), String> {
    let inside = |p: &str| p == "/pstate" || p.starts_with("/pstate/");
    for op in ops {
        let from = match op {
            json_patch::PatchOperation::Move(m) => Some(m.from.as_str()),
            json_patch::PatchOperation::Copy(c) => Some(c.from.as_str()),
            _ => None,
        };
        for p in std::iter::once(op.path().as_str()).chain(from) {
            if !inside(p) {
                return Err(format!(
                    "policy op targets {p:?}, outside /{STATE_ROOT} (refused)"
                ));
            }
        }
    }
    Ok(())
}

/// regorus reports errors as `anyhow::Error`; a timer expiry carries `LimitError`.
fn eval_error(e: anyhow::Error, budget: Duration) -> EvalError {
    let timed_out = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<LimitError>(),
            Some(LimitError::TimeLimitExceeded { .. })
        )
    });
    if timed_out {
        EvalError::TimeBudget(budget)
    } else {
        EvalError::Other(format!("policy evaluation failed: {e}"))
    }
}

fn evaluate(
    engine: &mut regorus::Engine,
    query: &RuleQuery,
    input: regorus::Value,
    budget: Duration,
) -> (Result<Answer, EvalError>, Vec<String>) {
    engine.set_input(input);
    let answer = if query.by_rule {
        match engine.eval_rule(query.path.clone()) {
            Ok(v) => interpret_value(&v),
            Err(e) => Err(eval_error(e, budget)),
        }
    } else {
        match engine.eval_query(query.path.clone(), false) {
            Ok(r) => interpret(r),
            Err(e) => Err(eval_error(e, budget)),
        }
    };
    let prints = engine.take_prints().unwrap_or_default();
    (answer, prints)
}

/// Kata's reading of a query result: exactly one result with one expression, whose value is
/// a boolean or an object `{"allowed": bool, "ops": [...]}`; no result is "undefined".
fn interpret(results: regorus::QueryResults) -> Result<Answer, EvalError> {
    if results.result.len() != 1 {
        return Ok(Answer::Undefined);
    }
    let exprs = &results.result[0].expressions;
    if exprs.len() != 1 {
        return Err(EvalError::Other(format!(
            "policy result has {} expressions, expected 1",
            exprs.len()
        )));
    }
    interpret_value(&exprs[0].value)
}

/// The same reading for a rule value (`eval_rule`), where "no result" is `Undefined`.
fn interpret_value(value: &regorus::Value) -> Result<Answer, EvalError> {
    match value {
        regorus::Value::Bool(b) => Ok(Answer::Bool(*b)),
        regorus::Value::Undefined => Ok(Answer::Undefined),
        v @ regorus::Value::Object(_) => {
            #[derive(serde::Deserialize)]
            struct Reply {
                allowed: bool,
                ops: Option<json_patch::Patch>,
            }
            let json = serde_json::to_value(v)
                .map_err(|e| EvalError::Other(format!("policy result not JSON: {e}")))?;
            let reply: Reply = serde_json::from_value(json).map_err(|e| {
                EvalError::Other(format!("policy result object is not {{allowed, ops}}: {e}"))
            })?;
            Ok(Answer::Object {
                allowed: reply.allowed,
                ops: reply.ops.map(|p| p.0).unwrap_or_default(),
            })
        }
        other => Err(EvalError::Other(format!(
            "policy result is neither a boolean nor an object: {}",
            type_name(other)
        ))),
    }
}

fn type_name(v: &regorus::Value) -> &'static str {
    match v {
        regorus::Value::Null => "null",
        regorus::Value::Bool(_) => "boolean",
        regorus::Value::Number(_) => "number",
        regorus::Value::String(_) => "string",
        regorus::Value::Array(_) => "array",
        regorus::Value::Set(_) => "set",
        regorus::Value::Object(_) => "object",
        regorus::Value::Undefined => "undefined",
    }
}

/// Apply AllowRequestsFailingPolicy and turn an answer into a decision (ops are applied by
/// the caller before this, since a failed patch turns the decision into an error).
fn finish(
    answer: Result<&Answer, &EvalError>,
    allow_failing: bool,
    class: DecisionClass,
) -> Decision {
    let (outcome, reason): (Outcome, Cow<'static, str>) = match answer {
        Err(e) => (Outcome::Error, e.to_string().into()),
        Ok(Answer::Undefined) => (Outcome::Error, "rule is undefined (fail closed)".into()),
        Ok(Answer::Bool(true)) => (Outcome::Allowed, "rule is true".into()),
        Ok(Answer::Bool(false)) => (Outcome::Denied, "rule is false".into()),
        Ok(Answer::Object { allowed: true, .. }) => {
            (Outcome::Allowed, "rule object has allowed=true".into())
        }
        Ok(Answer::Object { allowed: false, .. }) => {
            (Outcome::Denied, "rule object has allowed=false".into())
        }
    };
    // Kata lets AllowRequestsFailingPolicy override denials and undefined results, but not
    // evaluation errors.
    let overridable =
        matches!(answer, Ok(Answer::Undefined)) || (outcome == Outcome::Denied && answer.is_ok());
    if allow_failing && overridable {
        return Decision::new(
            Outcome::Allowed,
            class,
            format!("{reason}; allowed by {ALLOW_FAILING_RULE}"),
        );
    }
    Decision::new(outcome, class, reason)
}

fn apply_ops(
    state: &mut State,
    ops: &[json_patch::PatchOperation],
    hoisted: &regorus::Value,
) -> Result<(), String> {
    if ops.is_empty() {
        return Ok(());
    }
    check_op_paths(ops)?;
    let mut doc = state.doc.clone();
    json_patch::patch(&mut doc, ops).map_err(|e| format!("policy state update failed: {e}"))?;
    let mut engine = state.engine.clone();
    engine.clear_data();
    engine
        .add_data(hoisted.clone())
        .and_then(|()| engine.add_data(regorus::Value::from(doc.clone())))
        // New data unprepares the engine; prepare it once here, or every snapshot clone
        // would redo it.
        .and_then(|()| engine.eval_query("true".to_string(), false).map(drop))
        .map_err(|e| format!("policy state update failed: {e}"))?;
    // Commit only once everything succeeded: a failed update leaves the old state.
    state.engine = engine;
    state.doc = doc;
    state.version += 1;
    Ok(())
}

/// Evaluate on a state-holding engine and apply allowed ops under the caller's lock.
fn evaluate_stateful(
    state: &mut State,
    query: &RuleQuery,
    input: regorus::Value,
    budget: Duration,
    hoisted: &regorus::Value,
) -> (Result<Answer, EvalError>, Vec<String>) {
    let (answer, prints) = evaluate(&mut state.engine, query, input, budget);
    let answer = match answer {
        Ok(Answer::Object { allowed: true, ops }) => match apply_ops(state, &ops, hoisted) {
            Ok(()) => Ok(Answer::Object { allowed: true, ops }),
            Err(m) => Err(EvalError::Other(m)),
        },
        other => other,
    };
    (answer, prints)
}

impl PolicyEngine {
    /// Compile `rego`, check it against the limits, evaluate AllowRequestsFailingPolicy and
    /// classify every endpoint (`endpoints` are request message names; a decision is asked
    /// for by index into this list).
    pub fn load(rego: &str, endpoints: &[&str], limits: Limits) -> Result<PolicyEngine, LoadError> {
        if rego.len() > limits.max_policy_bytes {
            return Err(LoadError::TooLarge {
                size: rego.len(),
                limit: limits.max_policy_bytes,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in endpoints {
            if !valid_identifier(name) {
                return Err(LoadError::BadEndpointName(name.to_string()));
            }
            if !seen.insert(*name) {
                return Err(LoadError::DuplicateEndpoint(name.to_string()));
            }
        }

        let Rewritten {
            engine: base,
            analysis,
            original,
            hoisted,
            hoisted_names,
        } = match fast_rewrite(rego, &limits) {
            Some(r) => r,
            None => general_rewrite(rego, &limits)?,
        };
        let budget = limits.eval_time_budget;

        let mut state = State {
            engine: base.clone(),
            doc: initial_doc(),
            version: 0,
        };

        // AllowRequestsFailingPolicy: evaluated once as Kata does (a query, so a missing
        // rule is simply undefined), never itself overridden, errors read as false. As in
        // Kata, an allowed object result applies its ops.
        let allow_failing = {
            let query = RuleQuery {
                path: format!("data.{PACKAGE}.{ALLOW_FAILING_RULE}"),
                by_rule: false,
            };
            let input = regorus::Value::new_object();
            match evaluate_stateful(&mut state, &query, input, budget, &hoisted).0 {
                Ok(Answer::Bool(b)) => b,
                Ok(Answer::Object { allowed, .. }) => allowed,
                _ => false,
            }
        };

        let mut table = Vec::with_capacity(endpoints.len());
        for name in endpoints {
            let query = RuleQuery {
                path: format!("data.{PACKAGE}.{name}"),
                by_rule: analysis.is_simple_rule(name),
            };
            let mut ep = Endpoint {
                name: name.to_string(),
                query,
                class: DecisionClass::Evaluate,
                stateful: false,
                constant: None,
                note: String::new(),
            };
            let constant = |answer: Result<&Answer, &EvalError>, ep: &mut Endpoint| {
                let d = finish(answer, allow_failing, DecisionClass::ConstDeny);
                ep.class = if d.allowed {
                    DecisionClass::ConstAllow
                } else {
                    DecisionClass::ConstDeny
                };
                ep.constant = Some(Decision {
                    class: ep.class,
                    ..d
                });
            };
            match analysis.taint_of(name) {
                None => {
                    ep.note = "no such rule".into();
                    constant(Ok(&Answer::Undefined), &mut ep);
                }
                Some(t) if t.input || t.state => {
                    ep.stateful = t.state;
                    ep.note = match (t.input, t.state) {
                        (true, true) => "reads input and state",
                        (true, false) => "reads input",
                        _ => "reads state",
                    }
                    .into();
                }
                Some(_) => {
                    let mut probe = base.clone();
                    let input = regorus::Value::new_object();
                    let (answer, _) = evaluate(&mut probe, &ep.query, input, budget);
                    match &answer {
                        Ok(Answer::Object { allowed: true, ops }) if !ops.is_empty() => {
                            ep.note = "constant value, but emits state ops".into();
                        }
                        Err(e @ EvalError::TimeBudget(_)) => {
                            // Timing is not a property of the policy: decide per request.
                            ep.note = format!("constant candidate failed at load ({e})");
                        }
                        // Any other answer, errors included, is a function of the policy
                        // text alone.
                        a => {
                            ep.note = "independent of input and state".into();
                            constant(a.as_ref(), &mut ep);
                        }
                    }
                }
            }
            table.push(ep);
        }

        let digest = hex::encode(Sha256::digest(rego.as_bytes()));
        Ok(PolicyEngine {
            endpoints: table.into_boxed_slice(),
            base,
            state: Mutex::new(state),
            hoisted,
            hoisted_names,
            original,
            rego: rego.to_string(),
            reference: OnceLock::new(),
            allow_failing,
            limits,
            digest,
            version: None,
        })
    }

    pub fn set_version(&mut self, version: Option<u64>) {
        self.version = version;
    }

    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// SHA-256 of the policy text, lower-case hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the policy's AllowRequestsFailingPolicy rule was true at load.
    pub fn allow_failing(&self) -> bool {
        self.allow_failing
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    pub fn endpoint_name(&self, index: usize) -> Option<&str> {
        self.endpoints.get(index).map(|e| e.name.as_str())
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| e.name == name)
    }

    /// The precompiled class of an endpoint; an unknown index is constant-deny.
    #[inline]
    pub fn class(&self, index: usize) -> DecisionClass {
        self.endpoints
            .get(index)
            .map_or(DecisionClass::ConstDeny, |e| e.class)
    }

    /// Per-endpoint table for `policy check`.
    pub fn table(&self) -> Vec<EndpointInfo> {
        self.endpoints
            .iter()
            .map(|e| EndpointInfo {
                name: e.name.clone(),
                class: e.class,
                stateful: e.stateful,
                reason: e.note.clone(),
            })
            .collect()
    }

    /// Decide one request. `input` builds the policy input (the request in Kata's JSON shape,
    /// or [`crate::copy_file_input`] for CopyFile); it is only called for evaluated endpoints.
    pub fn decide<E: fmt::Display>(
        &self,
        index: usize,
        input: impl FnOnce() -> Result<Value, E>,
    ) -> Decision {
        let Some(ep) = self.endpoints.get(index) else {
            return Decision::new(
                Outcome::Error,
                DecisionClass::ConstDeny,
                "unknown endpoint index",
            );
        };
        if let Some(d) = &ep.constant {
            return d.clone();
        }
        let input = match input() {
            Ok(v) => regorus::Value::from(v),
            Err(e) => {
                return Decision::new(
                    Outcome::Error,
                    DecisionClass::Evaluate,
                    format!("could not build the policy input: {e}"),
                )
            }
        };
        let budget = self.limits.eval_time_budget;
        let (answer, prints) = if ep.stateful {
            self.decide_stateful(&ep.query, input, budget)
        } else {
            let mut engine = self.base.clone();
            let (answer, prints) = evaluate(&mut engine, &ep.query, input, budget);
            // The rule does not read state, so its ops may be applied at any point; the
            // lock makes the update atomic and orders it with the other updates.
            let answer = match answer {
                Ok(Answer::Object { allowed: true, ops }) if !ops.is_empty() => {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    match apply_ops(&mut state, &ops, &self.hoisted) {
                        Ok(()) => Ok(Answer::Object { allowed: true, ops }),
                        Err(m) => Err(EvalError::Other(m)),
                    }
                }
                other => other,
            };
            (answer, prints)
        };
        let mut d = finish(answer.as_ref(), self.allow_failing, DecisionClass::Evaluate);
        d.prints = prints;
        d
    }

    /// A rule that reads state, evaluated optimistically: on a snapshot of the state-holding
    /// engine, outside the lock (state changes are rare: genpolicy's only update is the
    /// first container fixing the sandbox name). A decision without ops is linearised at
    /// its snapshot. One with ops commits only if no update happened since the snapshot;
    /// otherwise it is evaluated again under the lock, so every update is computed from
    /// the state it replaces and none is lost or reordered.
    fn decide_stateful(
        &self,
        query: &RuleQuery,
        input: regorus::Value,
        budget: Duration,
    ) -> (Result<Answer, EvalError>, Vec<String>) {
        let (mut engine, version) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.engine.clone(), state.version)
        };
        let (answer, prints) = evaluate(&mut engine, query, input.clone(), budget);
        let ops = match &answer {
            Ok(Answer::Object { allowed: true, ops }) if !ops.is_empty() => ops,
            _ => return (answer, prints),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.version != version {
            return evaluate_stateful(&mut state, query, input, budget, &self.hoisted);
        }
        match apply_ops(&mut state, ops, &self.hoisted) {
            Ok(()) => (answer, prints),
            Err(m) => (Err(EvalError::Other(m)), prints),
        }
    }

    /// Rules whose value was computed once at load (input- and state-independent composite
    /// values such as genpolicy's `policy_data`).
    pub fn precomputed_rules(&self) -> &[String] {
        &self.hoisted_names
    }

    /// A copy of the current policy state (`data.pstate`).
    pub fn state(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.doc[STATE_ROOT].clone()
    }

    /// Kata's evaluation of one request, on the policy as written and with its own state:
    /// every request is queried (`eval_query`) on one serialised engine, with no
    /// precompiled decision, no precomputed rule values and no `eval_rule`. Tests use it to
    /// prove the gate equals it; its state starts at load like the gate's and is updated
    /// only by calls to this method.
    #[doc(hidden)]
    pub fn decide_evaluated(&self, index: usize, input: Value) -> Decision {
        let Some(ep) = self.endpoints.get(index) else {
            return Decision::new(
                Outcome::Error,
                DecisionClass::ConstDeny,
                "unknown endpoint index",
            );
        };
        let query = RuleQuery {
            path: ep.query.path.clone(),
            by_rule: false,
        };
        let reference = match self.reference() {
            Ok(r) => r,
            Err(e) => return Decision::new(Outcome::Error, DecisionClass::Evaluate, e.to_string()),
        };
        let mut state = reference.lock().unwrap_or_else(|p| p.into_inner());
        let empty = regorus::Value::new_object();
        let (answer, prints) = evaluate_stateful(
            &mut state,
            &query,
            regorus::Value::from(input),
            self.limits.eval_time_budget,
            &empty,
        );
        let mut d = finish(answer.as_ref(), self.allow_failing, DecisionClass::Evaluate);
        d.prints = prints;
        d
    }

    /// The state of the [`PolicyEngine::decide_evaluated`] path.
    #[doc(hidden)]
    /// `null` if the policy as written does not compile.
    pub fn reference_state(&self) -> Value {
        match self.reference() {
            Ok(r) => {
                let state = r.lock().unwrap_or_else(|p| p.into_inner());
                state.doc[STATE_ROOT].clone()
            }
            Err(_) => Value::Null,
        }
    }

    /// The reference path's state, set up on first use from the policy as written. It
    /// starts from the same state as the gate, including any ops of
    /// AllowRequestsFailingPolicy, which is evaluated here as the gate did at load (same
    /// rule, same empty input, same initial data).
    fn reference(&self) -> Result<&Mutex<State>, &str> {
        let reference = self.reference.get_or_init(|| {
            let engine = match &self.original {
                Some(e) => e.clone(),
                None => {
                    compile(&self.rego, &self.limits)
                        .map_err(|e| format!("the policy as written: {e}"))?
                        .0
                }
            };
            let mut reference = State {
                engine,
                doc: initial_doc(),
                version: 0,
            };
            let query = RuleQuery {
                path: format!("data.{PACKAGE}.{ALLOW_FAILING_RULE}"),
                by_rule: false,
            };
            let empty = regorus::Value::new_object();
            let budget = self.limits.eval_time_budget;
            let _ = evaluate_stateful(&mut reference, &query, empty.clone(), budget, &empty);
            Ok(Mutex::new(reference))
        });
        reference.as_ref().map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `literal_value` must give exactly what regorus computes for the rule as written.
    #[test]
    fn literal_values_equal_regorus_evaluation() {
        let rego = r#"package agent_policy

nested := {"a": [1, 2.5, 1e3, 0.1, 18446744073709551615, 123456789012345678901234567890], "b": {"c": null, "d": true}}
strings := ["tab\there", "\u00e9\ud83d\ude00", `raw\n`, "quote\"", ""]
duplicate_keys := {"k": 1, "k": 2, "j": [], "i": {}}
sets := {{1, 2, 2}, {"x"}, {[1], {"y": 1}}}
non_string_keys := {1: "one", [1]: "list", {"s"}: "set", null: false}
empty_array := []
negative := [-1, -2.5]
refers := [nested]
computed := [x | some x in [1, 2]]
"#;
        let limits = Limits::default();
        let (mut parsed, _) = parse(rego, &limits).unwrap();
        let analysis = Analysis::analyse(parsed.get_modules());
        let candidates = analysis.hoistable();
        let (mut compiled, _) = compile(rego, &limits).unwrap();
        let mut literal = Vec::new();
        for c in &candidates {
            let expected = compiled
                .eval_rule(format!("data.{PACKAGE}.{}", c.name))
                .unwrap();
            match literal_value(&c.expr) {
                Some(v) => {
                    assert_eq!(v, expected, "{}", c.name);
                    literal.push(c.name.as_str());
                }
                None => assert!(
                    ["refers", "computed"].contains(&c.name.as_str()),
                    "{}",
                    c.name
                ),
            }
        }
        assert_eq!(
            literal,
            [
                "duplicate_keys",
                "empty_array",
                "negative",
                "nested",
                "non_string_keys",
                "sets",
                "strings"
            ]
        );
    }

    /// Only `import future.keywords.<keyword>` is dropped from the gate's text; the gate
    /// still answers as the policy as written.
    #[test]
    fn only_keyword_imports_are_redundant() {
        let rego = "package agent_policy\n\nimport future.keywords.in\nimport future.keywords.every\nimport future.keywords\nimport data.other as o\n\nallowed(x) if { x in [1, 2] }\nExecProcessRequest if { every a in input.args { allowed(a) } }\n";
        let (mut parsed, _) = parse(rego, &Limits::default()).unwrap();
        let ranges = redundant_v1_imports(parsed.get_modules());
        let texts: Vec<&str> = ranges.iter().map(|&(s, e)| &rego[s..e]).collect();
        assert_eq!(
            texts,
            ["import future.keywords.in", "import future.keywords.every"]
        );
        let e = PolicyEngine::load(rego, &["ExecProcessRequest"], Limits::default()).unwrap();
        for (args, allowed) in [
            (serde_json::json!([1, 2]), true),
            (serde_json::json!([3]), false),
        ] {
            let input = serde_json::json!({ "args": args });
            let gate = e.decide(0, || Ok::<_, String>(input.clone()));
            assert_eq!(gate.allowed, allowed);
            assert_eq!(gate, e.decide_evaluated(0, input));
        }
    }

    fn genpolicy_like() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/genpolicy-like/policy.rego"
        ))
        .unwrap()
    }

    /// The genpolicy-like policy takes the single-parse path, with the literals it has.
    #[test]
    fn genpolicy_like_policy_loads_from_one_parse() {
        let rego = genpolicy_like();
        let r = fast_rewrite(&rego, &Limits::default()).expect("single-parse path");
        assert!(r.original.is_none());
        assert!(r.hoisted_names.contains(&"policy_data".to_string()));
        // The values equal those of the policy as written.
        let (mut compiled, _) = compile(&rego, &Limits::default()).unwrap();
        for name in &r.hoisted_names {
            let expected = compiled
                .eval_rule(format!("data.{PACKAGE}.{name}"))
                .unwrap();
            assert_eq!(r.hoisted[HOISTED_ROOT][name.as_str()], expected, "{name}");
        }
    }

    /// JSON-literal values equal regorus' values for the policy as written.
    #[test]
    fn json_literal_values_equal_regorus_evaluation() {
        let rego = "package agent_policy\n\nimport future.keywords.in\n\n\
            a := {\"n\": [0, 7, -9223372036854775808, 9223372036854775807], \"dup\": 1, \"dup\": 2,}\n\
            b := [\"tab\\t\", \"\\u00e9\\ud83d\\ude00\", \"\\/slash\", \"\", null, true, false, {}, [],]\n\
            allowed if { some x in a.n; x == 7 }\n";
        let r = fast_rewrite(rego, &Limits::default()).expect("single-parse path");
        assert_eq!(r.hoisted_names, ["a", "b"]);
        let (mut compiled, _) = compile(rego, &Limits::default()).unwrap();
        for name in ["a", "b"] {
            let expected = compiled
                .eval_rule(format!("data.{PACKAGE}.{name}"))
                .unwrap();
            assert_eq!(r.hoisted[HOISTED_ROOT][name], expected, "{name}");
        }
    }

    /// A guess of the text scan that the parsed rewrite does not confirm takes the general
    /// path, and the gate still answers as the policy as written.
    #[test]
    fn unconfirmed_guesses_take_the_general_path() {
        // The "rule" is inside a raw string; the real rule reads it.
        let rego = "package agent_policy\n\ntext := `\nfake := {\"a\": 1}\n`\n\n\
            ExecProcessRequest if { contains(text, input.s) }\n";
        assert!(json_rules(rego).iter().any(|r| r.name == "fake"));
        assert!(fast_rewrite(rego, &Limits::default()).is_none());
        let e = PolicyEngine::load(rego, &["ExecProcessRequest"], Limits::default()).unwrap();
        for s in ["fake := {", "nothing"] {
            let input = serde_json::json!({ "s": s });
            let gate = e.decide(0, || Ok::<_, String>(input.clone()));
            assert_eq!(gate.allowed, s != "nothing");
            assert_eq!(gate, e.decide_evaluated(0, input));
        }
        // A second definition of the name.
        let twice = "package agent_policy\n\nd := {\"a\": 1}\nd := {\"a\": 1}\n";
        assert!(fast_rewrite(twice, &Limits::default()).is_none());
        // The policy mentions the hoisted root itself.
        let clash =
            format!("package agent_policy\n\nd := {{\"a\": 1}}\nx := data.{HOISTED_ROOT}\n");
        assert!(fast_rewrite(&clash, &Limits::default()).is_none());
    }
}
