//! A text scan that finds what the gate's rewrite of a policy needs without parsing the
//! policy with regorus first: top-level `name := <JSON literal>` rules (genpolicy's
//! `policy_data` is most of a generated policy, and by far its most expensive part to parse)
//! and the redundant future-keyword imports of the header.
//!
//! Everything found here is a guess about the text that the caller must confirm on the
//! parsed rewrite (see `engine::fast_rewrite`): a guess that does not check out only sends
//! the load down the slower path that parses the policy as written.

/// A `name := <value>` line at column 0 whose value is a JSON object or array.
#[derive(Debug)]
pub(crate) struct JsonRule {
    pub name: String,
    /// Byte offset of the rule (its name) and one past the end of the JSON value.
    pub start: usize,
    pub end: usize,
    pub value: regorus::Value,
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Deepest accepted nesting of arrays and objects: well inside what regorus' parser accepts
/// (it limits expression nesting; a test checks this depth parses), so a value taken here
/// never hides a policy that regorus would refuse.
pub(crate) const MAX_JSON_DEPTH: usize = 12;

/// Only what JSON and Rego literals agree on exactly: numbers that are integers fitting an
/// i64 (a JSON `1.0` or `1e3` is a float in serde_json; such a value is not taken), and
/// nesting of at most [`MAX_JSON_DEPTH`].
fn agreed_literal(value: &serde_json::Value, depth: usize) -> bool {
    match value {
        serde_json::Value::Number(n) => n.as_i64().is_some(),
        serde_json::Value::Array(items) => {
            depth < MAX_JSON_DEPTH && items.iter().all(|v| agreed_literal(v, depth + 1))
        }
        serde_json::Value::Object(map) => {
            depth < MAX_JSON_DEPTH && map.values().all(|v| agreed_literal(v, depth + 1))
        }
        _ => true,
    }
}

/// regorus' default longest accepted line (the policy length configuration in
/// `engine::configured_engine` sets the same), in bytes: at least as many as characters.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// The rest of a line holds nothing but blanks and an optional comment.
fn rest_of_line_is_blank(text: &str) -> bool {
    let line = text.split('\n').next().unwrap_or("");
    let line = line.trim_start_matches([' ', '\t', '\r']);
    line.is_empty() || line.starts_with('#')
}

/// The array or object at the start of `text`, up to its closing bracket, with the trailing
/// commas Rego allows (`[1, 2,]`) removed, and its length in `text`. `None` when the text
/// has anything that is neither JSON nor such a comma outside strings: a comment, a raw
/// string, a comma after an opening bracket or another comma, or no closing bracket.
fn without_trailing_commas(text: &str) -> Option<(String, usize)> {
    // Bytes, not chars: every delimiter is ASCII, and ASCII bytes never occur inside a
    // multi-byte UTF-8 sequence, so every index sliced at below is a char boundary.
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut depth = 0usize;
    // Last byte outside strings that is not whitespace.
    let mut previous = b' ';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                previous = b;
            }
            b'[' | b'{' => {
                depth += 1;
                previous = b;
            }
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    out.push_str(&text[copied..=i]);
                    return Some((out, i + 1));
                }
                previous = b;
            }
            b',' => {
                let next = bytes[i + 1..]
                    .iter()
                    .find(|n| !matches!(n, b' ' | b'\t' | b'\n' | b'\r'));
                if matches!(next, Some(b']' | b'}')) {
                    if matches!(previous, b'[' | b'{' | b',') {
                        return None;
                    }
                    out.push_str(&text[copied..i]);
                    copied = i + 1;
                }
                previous = b;
            }
            b'#' | b'`' => return None,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => previous = b,
        }
        i += 1;
    }
    None
}

/// Candidate `name := {...}` / `name := [...]` rules, in text order, non-overlapping.
pub(crate) fn json_rules(rego: &str) -> Vec<JsonRule> {
    let mut out = Vec::new();
    let mut line_start = 0;
    while line_start < rego.len() {
        let line_end = rego[line_start..]
            .find('\n')
            .map_or(rego.len(), |i| line_start + i);
        let mut next = line_end + 1;
        if let Some(rule) = json_rule_at(rego, line_start, line_end) {
            // Continue after the value's line.
            next = rego[rule.end..]
                .find('\n')
                .map_or(rego.len(), |i| rule.end + i + 1);
            out.push(rule);
        }
        line_start = next;
    }
    out
}

fn json_rule_at(rego: &str, start: usize, line_end: usize) -> Option<JsonRule> {
    let line = &rego[start..line_end];
    let (head, rest) = line.split_once(":=")?;
    let name = head.trim_end_matches([' ', '\t']);
    if !is_identifier(name) {
        return None;
    }
    let value_start =
        start + head.len() + 2 + (rest.len() - rest.trim_start_matches([' ', '\t']).len());
    if !matches!(rego.as_bytes().get(value_start), Some(b'{' | b'[')) {
        return None;
    }
    let (json, len) = without_trailing_commas(&rego[value_start..])?;
    let end = value_start + len;
    let value: serde_json::Value = serde_json::from_str(&json).ok()?;
    if !agreed_literal(&value, 0)
        || !rest_of_line_is_blank(&rego[end..])
        || rego[start..end]
            .split('\n')
            .any(|l| l.len() >= MAX_LINE_BYTES)
    {
        return None;
    }
    Some(JsonRule {
        name: name.to_string(),
        start,
        end,
        value: regorus::Value::from(value),
    })
}

/// Byte ranges of the `import future.keywords.<in|if|contains|every>` lines of the header:
/// the lines before the first rule, while every line is blank, a comment, the `package`
/// line or an `import` line without quotes before any comment (so no string or raw string
/// can be open, and each such line is a whole statement).
///
/// Nothing is returned when the header has any other `future` or `rego` import, or a keyword
/// twice: such combinations can be errors in Rego v1 that blanking would hide.
pub(crate) fn header_keyword_imports(rego: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut keywords = Vec::new();
    let mut line_start = 0;
    while line_start < rego.len() {
        let line_end = rego[line_start..]
            .find('\n')
            .map_or(rego.len(), |i| line_start + i);
        let line = &rego[line_start..line_end];
        // No string can be open at the start of a header line, so a `#` starts a comment
        // unless a quote precedes it in the line, which ends the header.
        let code = line.split('#').next().unwrap_or("");
        if code.contains(['"', '`']) {
            break;
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["package", _] => {}
            ["import", path] if path.starts_with("future") || path.starts_with("rego") => {
                match path.strip_prefix("future.keywords.") {
                    Some(kw)
                        if ["in", "if", "contains", "every"].contains(&kw)
                            && !keywords.contains(&kw) =>
                    {
                        keywords.push(kw);
                        let indent = line.len() - line.trim_start().len();
                        let len = code.trim_end().len() - indent;
                        out.push((line_start + indent, line_start + indent + len));
                    }
                    _ => return Vec::new(),
                }
            }
            ["import", ..] => {}
            _ => break,
        }
        line_start = line_end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rego: &str) -> Vec<String> {
        json_rules(rego).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn finds_json_literal_rules_and_only_those() {
        let rego = "package agent_policy\n\
            a := {\"x\": [1, -2, 0,], \"y\": {},}\n\
            b := [\n  \"s\",\n  \"t\",\n] # trailing comment\n\
            float := [1.0]\n\
            exponent := [1e3]\n\
            comment := [1, # one\n 2]\n\
            empty_item := [1,, 2]\n\
            leading := [,]\n\
            raw := [`r`]\n\
            set := {1, 2}\n\
            more := [1] + x\n\
            indented := 1\n  c := [1]\n\
            huge := [18446744073709551615]\n\
            d := [\"#not a comment\", \"\\\"quoted\\\"\"]\n\
            e := [\"]\", \"\u{e9},]\", {\"}\": \"[\"},]\n";
        assert_eq!(names(rego), ["a", "b", "d", "e"]);
        let e = json_rules(rego)
            .into_iter()
            .find(|r| r.name == "e")
            .unwrap();
        assert_eq!(
            e.value,
            regorus::Value::from_json_str(r#"["]", "\u00e9,]", {"}": "["}]"#).unwrap()
        );
        let b = json_rules(rego)
            .into_iter()
            .find(|r| r.name == "b")
            .unwrap();
        assert!(rego[b.start..b.end].starts_with("b := ["));
        assert!(rego[b.start..b.end].ends_with(']'));
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| format!("x := {}1{}\n", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(names(&nested(MAX_JSON_DEPTH)), ["x"]);
        assert!(names(&nested(MAX_JSON_DEPTH + 1)).is_empty());
        // regorus accepts the deepest value taken here, as an array and as an object.
        let objects = format!(
            "x := {}1{}\n",
            "{\"k\": ".repeat(MAX_JSON_DEPTH),
            "}".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(names(&objects), ["x"]);
        for text in [nested(MAX_JSON_DEPTH), objects] {
            let mut engine = regorus::Engine::new();
            let policy = format!("package agent_policy\n{text}");
            engine.add_policy("p.rego".into(), policy).unwrap();
            engine.eval_rule("data.agent_policy.x".into()).unwrap();
        }
    }

    #[test]
    fn header_imports_are_taken_only_when_unambiguous() {
        let ranges = |rego: &str| -> Vec<String> {
            header_keyword_imports(rego)
                .into_iter()
                .map(|(s, e)| rego[s..e].to_string())
                .collect()
        };
        let plain = "# \"quoted\" `comment`\npackage p\n\nimport future.keywords.in # why\nimport data.x\nimport future.keywords.if\nallow if true\nimport future.keywords.every\n";
        assert_eq!(
            ranges(plain),
            ["import future.keywords.in", "import future.keywords.if"]
        );
        for refused in [
            "package p\nimport future.keywords.in\nimport future.keywords.in\n",
            "package p\nimport rego.v1\nimport future.keywords.in\n",
            "package p\nimport future.keywords\nimport future.keywords.in\n",
        ] {
            assert!(ranges(refused).is_empty(), "{refused}");
        }
        // A quote before any comment ends the header.
        assert!(ranges("package p\nx := \"a\"\nimport future.keywords.in\n").is_empty());
    }
}
