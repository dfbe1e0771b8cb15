//! Conservative dependency analysis over regorus' parsed AST.
//!
//! For every rule name in package `agent_policy` we compute whether its value can depend on
//! `input`, on mutable policy data (`data.pstate`, or any `data` path that is not a rule of the
//! package), or on a builtin whose result changes between calls (time, randomness, network).
//! The analysis over-approximates: every identifier that names a rule of the package is taken
//! as a dependency even when a local variable shadows it, `with` modifiers and non-trivial
//! imports taint everything they touch, and any `data` reference that is not provably a rule
//! of the package counts as mutable state. An over-approximation only costs speed (the
//! endpoint is evaluated instead of precomputed); it can never make a decision wrong.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead};

/// The package Kata's agent queries (`data.agent_policy.<Request>`).
pub(crate) const PACKAGE: &str = "agent_policy";

/// Where rule values computed at load live in the data document. Ops cannot reach it (they
/// are confined to /pstate) and nothing else writes it after load, so reading it is
/// constant: the precomputed values, or undefined when nothing was precomputed.
pub(crate) const HOISTED_ROOT: &str = "__vigil_hoisted";

/// Builtins whose result is not a function of their arguments.
const NONDETERMINISTIC_BUILTINS: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "trace",
];

/// What a rule's value may depend on, besides other rules of the package.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taint {
    /// Reads `input` (or something only known at request time: a nondeterministic builtin,
    /// a `with` modifier).
    pub input: bool,
    /// Reads data that is not a rule of the package, e.g. `data.pstate`.
    pub state: bool,
}

impl Taint {
    fn merge(&mut self, other: Taint) -> bool {
        let before = *self;
        self.input |= other.input;
        self.state |= other.state;
        *self != before
    }

    /// Both flags set: the value of a rule we cannot reason about.
    const UNKNOWN: Taint = Taint {
        input: true,
        state: true,
    };
}

#[derive(Debug, Default)]
struct Facts {
    taint: Taint,
    /// Bare identifiers used; those naming rules of the package are dependencies.
    names: BTreeSet<String>,
    /// `data.agent_policy.<name>` references: must resolve to a rule, otherwise state.
    qualified: BTreeSet<String>,
}

/// The result: the closure taint of every rule name of package `agent_policy`, plus the
/// sub-packages of `agent_policy` (which make `data.agent_policy.<name>` an object of rules).
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    rules: BTreeMap<String, Taint>,
    subpackages: BTreeSet<String>,
    /// Rule names whose every definition has a bare name as head (no `name.sub` or
    /// `name[key]` heads), so `data.agent_policy.<name>` is exactly that rule's value.
    simple: BTreeSet<String>,
    /// `name := <expr>` rules with no body, the only definition of their name: candidates
    /// for evaluating once at load (with the byte range of the rule in the source, and
    /// `<expr>`).
    assignments: BTreeMap<String, (usize, usize, Ref<Expr>)>,
}

/// A complete rule whose value can be computed once at load.
#[derive(Debug, Clone)]
pub(crate) struct Hoistable {
    pub name: String,
    /// Byte range of the whole rule in the policy text.
    pub start: usize,
    pub end: usize,
    /// The rule's value expression.
    pub expr: Ref<Expr>,
}

impl Analysis {
    /// Taint of `data.agent_policy.<name>`; `None` when the package defines no such rule.
    pub(crate) fn taint_of(&self, name: &str) -> Option<Taint> {
        if self.subpackages.contains(name) {
            return Some(Taint::UNKNOWN);
        }
        self.rules.get(name).copied()
    }

    /// Whether `data.agent_policy.<name>` can be evaluated as a single rule.
    pub(crate) fn is_simple_rule(&self, name: &str) -> bool {
        self.simple.contains(name) && !self.subpackages.contains(name)
    }

    /// Composite-valued `name := <expr>` rules that depend on neither input nor state.
    pub(crate) fn hoistable(&self) -> Vec<Hoistable> {
        self.assignments
            .iter()
            .filter(|(name, _)| {
                self.is_simple_rule(name) && self.taint_of(name) == Some(Taint::default())
            })
            .map(|(name, (start, end, expr))| Hoistable {
                name: name.clone(),
                start: *start,
                end: *end,
                expr: expr.clone(),
            })
            .collect()
    }

    pub(crate) fn analyse(modules: &[Ref<Module>]) -> Analysis {
        let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
        let mut subpackages = BTreeSet::new();
        let mut not_simple = BTreeSet::new();
        let mut definitions: BTreeMap<String, usize> = BTreeMap::new();
        let mut assignments = BTreeMap::new();

        for module in modules {
            let package = match chain_fields(&module.package.refr) {
                Some((root, fields)) => {
                    let mut path = vec![root];
                    path.extend(fields);
                    path
                }
                None => continue,
            };
            if package.first().map(String::as_str) != Some(PACKAGE) {
                // Another package: only reachable through `data.<other>`, which the walker
                // already treats as state.
                continue;
            }
            if package.len() > 1 {
                subpackages.insert(package[1].clone());
                continue;
            }
            let module_taint = import_taint(module);
            for rule in module.policy.iter() {
                let Some(name) = rule_name(rule) else {
                    continue;
                };
                *definitions.entry(name.clone()).or_default() += 1;
                if !head_is_bare_name(rule) {
                    not_simple.insert(name.clone());
                }
                if let Some(range) = composite_assignment(rule) {
                    assignments.insert(name.clone(), range);
                }
                let entry = facts.entry(name).or_default();
                entry.taint.merge(module_taint);
                walk_rule(rule, entry);
            }
        }

        // Fixpoint over the dependency graph; Rego forbids recursion, but a cycle would
        // merely converge here.
        let mut closure: BTreeMap<String, Taint> = BTreeMap::new();
        for (name, f) in &facts {
            let mut taint = f.taint;
            for q in &f.qualified {
                if !facts.contains_key(q) || subpackages.contains(q) {
                    taint.state = true;
                    taint.input |= subpackages.contains(q);
                }
            }
            closure.insert(name.clone(), taint);
        }
        loop {
            let mut changed = false;
            for (name, f) in &facts {
                let mut acc = closure[name];
                for dep in f.names.iter().chain(f.qualified.iter()) {
                    if let Some(t) = closure.get(dep) {
                        acc.merge(*t);
                    }
                }
                if closure.get_mut(name).expect("present").merge(acc) {
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let simple = closure
            .keys()
            .filter(|n| !not_simple.contains(*n))
            .cloned()
            .collect();
        assignments.retain(|name, _| definitions.get(name) == Some(&1));
        Analysis {
            rules: closure,
            subpackages,
            simple,
            assignments,
        }
    }
}

fn head_is_bare_name(rule: &Ref<Rule>) -> bool {
    let refr = match rule.as_ref() {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. } => refr,
            // Partial set rules and functions: keep them on the query path Kata uses.
            RuleHead::Set { .. } | RuleHead::Func { .. } => return false,
        },
        Rule::Default { args, .. } if !args.is_empty() => return false,
        Rule::Default { refr, .. } => refr,
    };
    matches!(refr.as_ref(), Expr::Var { .. })
}

/// `name := <composite expr>` with no body: the byte range of the whole rule (the span of
/// the expression alone does not always start at its first token) and the expression.
fn composite_assignment(rule: &Ref<Rule>) -> Option<(usize, usize, Ref<Expr>)> {
    let Rule::Spec { head, bodies, span } = rule.as_ref() else {
        return None;
    };
    let RuleHead::Compr {
        refr,
        assign: Some(assign),
        ..
    } = head
    else {
        return None;
    };
    if !bodies.is_empty() || !matches!(refr.as_ref(), Expr::Var { .. }) {
        return None;
    }
    match assign.value.as_ref() {
        Expr::Object { .. }
        | Expr::Array { .. }
        | Expr::Set { .. }
        | Expr::ArrayCompr { .. }
        | Expr::SetCompr { .. }
        | Expr::ObjectCompr { .. } => {
            Some((span.start as usize, span.end as usize, assign.value.clone()))
        }
        _ => None,
    }
}

/// Every rule's name, package-qualified, in source order: a rewrite of the policy text must
/// leave this list unchanged.
pub(crate) fn rule_names(modules: &[Ref<Module>]) -> Vec<String> {
    let mut out = Vec::new();
    for module in modules {
        let package = chain_fields(&module.package.refr)
            .map(|(root, fields)| {
                let mut p = root;
                for f in fields {
                    p.push('.');
                    p.push_str(&f);
                }
                p
            })
            .unwrap_or_default();
        for rule in module.policy.iter() {
            out.push(format!("{package}.{}", rule_name(rule).unwrap_or_default()));
        }
    }
    out
}

/// Byte ranges of the `import future.keywords.<keyword>` statements of the package. In Rego
/// v1 every future keyword is already on, so these imports do nothing, and no identifier
/// can be named like a keyword, so their aliases can never be looked up; regorus still
/// searches the import table on every function call and reference while it is not empty.
pub(crate) fn redundant_v1_imports(modules: &[Ref<Module>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for module in modules {
        for import in &module.imports {
            let Some((root, fields)) = chain_fields(&import.refr) else {
                continue;
            };
            let keyword = matches!(
                fields.as_slice(),
                [k, kw] if k == "keywords" && ["in", "if", "contains", "every"].contains(&kw.as_str())
            );
            if root == "future" && keyword && import.r#as.is_none() {
                out.push((import.span.start as usize, import.span.end as usize));
            }
        }
    }
    out
}

/// `a.b["c"].d` as ("a", ["b", "c", "d"]) when every component is a constant name.
pub(crate) fn chain_fields(expr: &Ref<Expr>) -> Option<(String, Vec<String>)> {
    let (root, comps) = chain(expr);
    let root = match root.as_ref() {
        Expr::Var { span, .. } => span.text().to_string(),
        _ => return None,
    };
    let mut fields = Vec::with_capacity(comps.len());
    for c in comps {
        match c {
            Component::Field(f) => fields.push(f),
            Component::Index(_) => return None,
        }
    }
    Some((root, fields))
}

enum Component {
    Field(String),
    Index(Ref<Expr>),
}

/// Split a reference into its root expression and its components, outermost last.
fn chain(expr: &Ref<Expr>) -> (Ref<Expr>, Vec<Component>) {
    let mut comps = Vec::new();
    let mut cur = expr.clone();
    loop {
        let next = match cur.as_ref() {
            Expr::RefDot { refr, field, .. } => {
                comps.push(Component::Field(field.0.text().to_string()));
                refr.clone()
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        match value.as_string() {
                            Ok(s) => comps.push(Component::Field(s.to_string())),
                            Err(_) => comps.push(Component::Index(index.clone())),
                        }
                    }
                    _ => comps.push(Component::Index(index.clone())),
                }
                refr.clone()
            }
            _ => break,
        };
        cur = next;
    }
    comps.reverse();
    (cur, comps)
}

pub(crate) fn rule_name(rule: &Ref<Rule>) -> Option<String> {
    let refr = match rule.as_ref() {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    };
    match chain(refr).0.as_ref() {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        _ => None,
    }
}

/// `import input`, `import data`, `import future.keywords...` and `import rego.v1` add no
/// name that could hide a dependency; any other import (an alias into `input` or `data`)
/// taints the whole module.
fn import_taint(module: &Module) -> Taint {
    let mut taint = Taint::default();
    for import in &module.imports {
        let Some((root, fields)) = chain_fields(&import.refr) else {
            return Taint::UNKNOWN;
        };
        let trivial = match root.as_str() {
            "future" | "rego" => true,
            "input" | "data" => fields.is_empty() && import.r#as.is_none(),
            _ => false,
        };
        if !trivial {
            taint = Taint::UNKNOWN;
        }
    }
    taint
}

fn walk_rule(rule: &Ref<Rule>, facts: &mut Facts) {
    match rule.as_ref() {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    walk_head_ref(refr, facts);
                    if let Some(a) = assign {
                        walk_expr(&a.value, facts);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    walk_head_ref(refr, facts);
                    if let Some(k) = key {
                        walk_expr(k, facts);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    walk_head_ref(refr, facts);
                    for a in args {
                        walk_expr(a, facts);
                    }
                    if let Some(a) = assign {
                        walk_expr(&a.value, facts);
                    }
                }
            }
            for body in bodies {
                if let Some(a) = &body.assign {
                    walk_expr(&a.value, facts);
                }
                walk_query(&body.query, facts);
            }
        }
        Rule::Default { args, value, .. } => {
            for a in args {
                walk_expr(a, facts);
            }
            walk_expr(value, facts);
        }
    }
}

/// The rule's own name is not a dependency, but computed keys in its head are.
fn walk_head_ref(refr: &Ref<Expr>, facts: &mut Facts) {
    let (_, comps) = chain(refr);
    for c in comps {
        if let Component::Index(e) = c {
            walk_expr(&e, facts);
        }
    }
}

fn walk_query(query: &Ref<Query>, facts: &mut Facts) {
    for stmt in &query.stmts {
        walk_stmt(stmt, facts);
    }
}

fn walk_stmt(stmt: &LiteralStmt, facts: &mut Facts) {
    if !stmt.with_mods.is_empty() {
        // `with` can replace input, data or functions: do not try to be clever.
        facts.taint.merge(Taint::UNKNOWN);
        for w in &stmt.with_mods {
            walk_expr(&w.refr, facts);
            walk_expr(&w.r#as, facts);
        }
    }
    match &stmt.literal {
        Literal::SomeVars { .. } => {}
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                walk_expr(k, facts);
            }
            walk_expr(value, facts);
            walk_expr(collection, facts);
        }
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => walk_expr(expr, facts),
        Literal::Every { domain, query, .. } => {
            walk_expr(domain, facts);
            walk_query(query, facts);
        }
    }
}

fn walk_var(name: &str, facts: &mut Facts) {
    match name {
        "input" => facts.taint.input = true,
        // Bare `data` reads everything, including the mutable part.
        "data" => facts.taint.state = true,
        _ => {
            facts.names.insert(name.to_string());
        }
    }
}

fn walk_ref(expr: &Ref<Expr>, facts: &mut Facts) {
    let (root, comps) = chain(expr);
    match root.as_ref() {
        Expr::Var { span, .. } if span.text() == "data" => {
            let mut fields = comps.iter().map(|c| match c {
                Component::Field(f) => Some(f.as_str()),
                Component::Index(_) => None,
            });
            match (fields.next(), fields.next()) {
                (Some(Some(PACKAGE)), Some(Some(name))) => {
                    facts.qualified.insert(name.to_string());
                }
                (Some(Some(HOISTED_ROOT)), _) => {}
                _ => facts.taint.state = true,
            }
        }
        Expr::Var { span, .. } => walk_var(span.text(), facts),
        _ => walk_expr(&root, facts),
    }
    for c in comps {
        if let Component::Index(e) = c {
            walk_expr(&e, facts);
        }
    }
}

fn walk_expr(expr: &Ref<Expr>, facts: &mut Facts) {
    match expr.as_ref() {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. } => {}
        Expr::Var { span, .. } => walk_var(span.text(), facts),
        Expr::RefDot { .. } | Expr::RefBrack { .. } => walk_ref(expr, facts),
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                walk_expr(i, facts);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                walk_expr(k, facts);
                walk_expr(v, facts);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            walk_expr(term, facts);
            walk_query(query, facts);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            walk_expr(key, facts);
            walk_expr(value, facts);
            walk_query(query, facts);
        }
        Expr::Call { fcn, params, .. } => {
            match chain_fields(fcn) {
                Some((root, fields)) => {
                    let mut dotted = root.clone();
                    for f in &fields {
                        dotted.push('.');
                        dotted.push_str(f);
                    }
                    if NONDETERMINISTIC_BUILTINS.contains(&dotted.as_str()) {
                        facts.taint.input = true;
                    }
                    // `data.agent_policy.f(x)` or a package function `f(x)`; a builtin such
                    // as `regex.match` adds the harmless name `regex`.
                    walk_ref(fcn, facts);
                }
                None => walk_expr(fcn, facts),
            }
            for p in params {
                walk_expr(p, facts);
            }
        }
        Expr::UnaryExpr { expr, .. } => walk_expr(expr, facts),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            walk_expr(lhs, facts);
            walk_expr(rhs, facts);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                walk_expr(k, facts);
            }
            walk_expr(value, facts);
            walk_expr(collection, facts);
        }
        // Variants behind regorus features we do not enable land here; unknown means
        // "could depend on anything".
        #[allow(unreachable_patterns)]
        _ => {
            facts.taint.merge(Taint::UNKNOWN);
        }
    }
}
