//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! The KBS binds the TEE key and nonce into the evidence through a hash of the
//! canonical JSON of the runtime data, so client and server must produce the
//! same bytes regardless of key order or number spelling. Rules implemented:
//! object members sorted by the UTF-16 code units of their names, no
//! insignificant whitespace, strings escaped as ECMAScript `JSON.stringify`
//! does, numbers printed as ECMAScript `Number.prototype.toString`.

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// Why a value could not be canonicalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON canonicalization failed: {0}")]
pub struct JcsError(String);

/// Canonical JSON text of `value` per RFC 8785.
pub fn canonicalize(value: &Value) -> Result<String, JcsError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String) -> Result<(), JcsError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // RFC 8785 3.2.3: sort by UTF-16 code units, not by UTF-8 bytes
            // (they differ for characters above U+FFFF vs U+E000..U+FFFF).
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(n: &Number, out: &mut String) -> Result<(), JcsError> {
    // JSON numbers are IEEE 754 doubles in JCS; integers that a double holds
    // exactly print the same either way, so only convert when needed.
    const EXACT: u64 = 1 << 53;
    if let Some(u) = n.as_u64() {
        if u <= EXACT {
            let _ = write!(out, "{u}");
            return Ok(());
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= EXACT {
            let _ = write!(out, "{i}");
            return Ok(());
        }
    }
    let f = n
        .as_f64()
        .ok_or_else(|| JcsError(format!("number {n} is not representable")))?;
    write_f64(f, out)
}

/// ECMAScript Number::toString for a finite double.
fn write_f64(f: f64, out: &mut String) -> Result<(), JcsError> {
    if !f.is_finite() {
        return Err(JcsError(format!("{f} is not a finite number")));
    }
    if f == 0.0 {
        out.push('0');
        return Ok(());
    }
    if f < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest digit string that round-trips,
    // which is what ECMAScript requires; only the layout differs.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .ok_or_else(|| JcsError(format!("unexpected float format {sci}")))?;
    let exp: i32 = exp
        .parse()
        .map_err(|_| JcsError(format!("unexpected float exponent in {sci}")))?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n >= 1 { '+' } else { '-' });
        let _ = write!(out, "{}", (n - 1).abs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest, Sha384};

    #[test]
    fn trustee_known_answer() {
        // Trustee's own vector: canonical form and SHA-384 of it.
        let v: Value = serde_json::from_str(r#"{"b":1,"a":"test","c":{"d":"e"}}"#).unwrap();
        let c = canonicalize(&v).unwrap();
        assert_eq!(c, r#"{"a":"test","b":1,"c":{"d":"e"}}"#);
        let h = hex::encode(Sha384::digest(c.as_bytes()));
        assert!(h.starts_with("e71ce8e7"), "{h}");
        assert!(h.ends_with("8870c3"), "{h}");
    }

    #[test]
    fn rfc8785_numbers() {
        // Values from RFC 8785 appendix B.
        let cases: &[(f64, &str)] = &[
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (333333333.3333333, "333333333.3333333"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (-0.0, "0"),
            (9007199254740994.0, "9007199254740994"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (4.50, "4.5"),
            (2e-3, "0.002"),
        ];
        for (f, want) in cases {
            let mut out = String::new();
            write_f64(*f, &mut out).unwrap();
            assert_eq!(&out, want, "for {f:e}");
        }
    }

    #[test]
    fn strings_and_sorting() {
        let v = json!({"\u{20ac}": 1, "\r": 2, "1": 3, "\u{1f600}": 4, "\u{fb33}": 5, "\u{80}": 6, "a\u{1}\"\\/": "\u{2028}"});
        let c = canonicalize(&v).unwrap();
        // U+1F600 (surrogates D83D..) sorts before U+FB33 in UTF-16 order.
        assert_eq!(
            c,
            "{\"\\r\":2,\"1\":3,\"a\\u0001\\\"\\\\/\":\"\u{2028}\",\"\u{80}\":6,\"\u{20ac}\":1,\"\u{1f600}\":4,\"\u{fb33}\":5}"
        );
    }
}
