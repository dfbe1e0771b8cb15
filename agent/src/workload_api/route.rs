//! From an HTTP request line to what the workload API will do, or the refusal it answers
//! with. Pure: no I/O, so every rule is unit-tested. Paths and answers follow CoCo's
//! `api-server-rest` (its router and `openapi/api.json`); where CoCo would pass bad input on
//! to a backend, vigil refuses it here with a 4xx.

use hyper::{Method, StatusCode};
use vigil_policy::Outcome;

use super::config::WorkloadApiConfig;
use crate::gate::WorkloadEndpoint;

/// Longest path accepted (a resource path is three short segments).
pub const MAX_PATH: usize = 512;
/// Longest query accepted (runtime data is at most 64 bytes, even base64'd and escaped).
pub const MAX_QUERY: usize = 1024;
/// Largest runtime data: the report data field of SNP and TDX is 64 bytes, and CoCo's
/// attestation agent passes runtime data as report data unchanged.
pub const MAX_RUNTIME_DATA: usize = 64;

/// CoCo's response bodies for its error statuses.
pub mod body {
    pub const BAD_REQUEST: &str = "BAD REQUEST";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const NOT_FOUND: &str = "URL NOT FOUND";
    pub const METHOD_NOT_ALLOWED: &str = "Method Not Allowed";
    pub const RESOURCE_OFF: &str = "Resource Feature Not Enabled";
    pub const ATTESTATION_OFF: &str = "Attestation Feature Not Enabled";
    pub const URI_TOO_LONG: &str = "URI Too Long";
    pub const UNAVAILABLE: &str = "Service Unavailable";
}

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Info,
    /// A resource on the allow-list, `repo/type/tag`.
    Resource(String),
    /// Evidence whose report data is these bytes.
    Evidence(Vec<u8>),
    /// A KBS token and its TEE key.
    Token,
}

/// A request answered without doing anything: status, CoCo's body, and why (for the
/// `x-vigil-reason` header and the audit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: &'static str,
    pub outcome: Outcome,
    pub reason: String,
}

fn refuse(
    status: StatusCode,
    body: &'static str,
    outcome: Outcome,
    reason: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        body,
        outcome,
        reason: reason.into(),
    }
}

fn bad(reason: impl Into<String>) -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        body::BAD_REQUEST,
        Outcome::Error,
        reason,
    )
}

/// The request as routing sees it.
pub struct RequestLine<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Whether the request carries a body (no endpoint takes one).
    pub has_body: bool,
}

/// The endpoint a path names (for audit and metrics), whatever the rest of the request is.
pub fn endpoint_of(path: &str) -> WorkloadEndpoint {
    match path {
        "/info" => WorkloadEndpoint::Info,
        "/aa/evidence" => WorkloadEndpoint::Evidence,
        "/aa/token" => WorkloadEndpoint::Token,
        p if p.starts_with("/cdh/resource/") => WorkloadEndpoint::Resource,
        _ => WorkloadEndpoint::Other,
    }
}

/// Decides what `req` asks for under `cfg`.
pub fn route(req: &RequestLine, cfg: &WorkloadApiConfig) -> Result<Route, Refusal> {
    if req.path.len() > MAX_PATH || req.query.is_some_and(|q| q.len() > MAX_QUERY) {
        return Err(refuse(
            StatusCode::URI_TOO_LONG,
            body::URI_TOO_LONG,
            Outcome::Error,
            format!("path over {MAX_PATH} or query over {MAX_QUERY} bytes"),
        ));
    }
    let endpoint = endpoint_of(req.path);
    if endpoint == WorkloadEndpoint::Other {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            body::NOT_FOUND,
            Outcome::Error,
            "no such endpoint",
        ));
    }
    if req.method != Method::GET {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            body::METHOD_NOT_ALLOWED,
            Outcome::Error,
            format!("{} is not allowed: only GET", req.method),
        ));
    }
    if req.has_body {
        return Err(bad("a GET request carries no body"));
    }
    match endpoint {
        WorkloadEndpoint::Info => Ok(Route::Info),
        WorkloadEndpoint::Resource => {
            if !cfg.resource {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    body::RESOURCE_OFF,
                    Outcome::Denied,
                    "the resource endpoint is not enabled in [workload_api] endpoints",
                ));
            }
            let path = &req.path["/cdh/resource/".len()..];
            vigil_kbc::client::validate_resource_path(path).map_err(|_| {
                bad("the resource path is not repo/type/tag (segments of A-Z a-z 0-9 . _ -)")
            })?;
            if !cfg.allows(path) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    body::FORBIDDEN,
                    Outcome::Denied,
                    "not in [workload_api] allowed_resources",
                ));
            }
            Ok(Route::Resource(path.to_string()))
        }
        WorkloadEndpoint::Evidence => {
            attestation_on(cfg.evidence, "evidence")?;
            let params = query_params(req.query)?;
            let raw =
                param(&params, "runtime_data").ok_or_else(|| bad("runtime_data is missing"))?;
            let data = match param(&params, "encoding") {
                None => raw.as_bytes().to_vec(),
                Some("base64") => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(raw)
                        .map_err(|_| bad("runtime_data is not URL-safe base64 without padding"))?
                }
                Some(_) => return Err(bad("encoding must be base64 (or absent)")),
            };
            if data.len() > MAX_RUNTIME_DATA {
                return Err(bad(format!(
                    "runtime_data is {} bytes; the report data holds at most {MAX_RUNTIME_DATA}",
                    data.len()
                )));
            }
            Ok(Route::Evidence(data))
        }
        WorkloadEndpoint::Token => {
            attestation_on(cfg.token, "token")?;
            let params = query_params(req.query)?;
            match param(&params, "token_type") {
                Some("kbs") => Ok(Route::Token),
                Some(_) => Err(bad("token_type must be kbs")),
                None => Err(bad("token_type is missing")),
            }
        }
        WorkloadEndpoint::Other => unreachable!("answered above"),
    }
}

fn attestation_on(on: bool, name: &str) -> Result<(), Refusal> {
    if on {
        return Ok(());
    }
    Err(refuse(
        StatusCode::NOT_FOUND,
        body::ATTESTATION_OFF,
        Outcome::Denied,
        format!("the {name} endpoint is not enabled in [workload_api] endpoints"),
    ))
}

/// `key=value` pairs, percent-decoded (`+` is a space), each key at most once, every key and
/// value UTF-8.
fn query_params(query: Option<&str>) -> Result<Vec<(String, String)>, Refusal> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| -> Result<String, Refusal> {
            let spaced = s.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("a query parameter is not UTF-8"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(bad(format!("query parameter {k:?} is given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload_api::config::WorkloadApiSection;

    fn cfg(endpoints: &str) -> WorkloadApiConfig {
        let s: WorkloadApiSection = toml::from_str(&format!(
            "listen = \"127.0.0.1:8006\"\nallowed_resources = [\"default/app/*\"]\nendpoints = {endpoints}\n"
        ))
        .unwrap();
        s.validate().unwrap()
    }

    fn get(path_and_query: &str, cfg: &WorkloadApiConfig) -> Result<Route, Refusal> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        route(
            &RequestLine {
                method: &Method::GET,
                path,
                query,
                has_body: false,
            },
            cfg,
        )
    }

    fn status(r: Result<Route, Refusal>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.body)
    }

    #[test]
    fn valid_requests() {
        let all = cfg(r#"["resource", "evidence", "token"]"#);
        assert_eq!(get("/info", &all), Ok(Route::Info));
        assert_eq!(
            get("/cdh/resource/default/app/db-password", &all),
            Ok(Route::Resource("default/app/db-password".into()))
        );
        assert_eq!(
            get("/aa/evidence?runtime_data=hello%20world", &all),
            Ok(Route::Evidence(b"hello world".to_vec()))
        );
        assert_eq!(
            get("/aa/evidence?runtime_data=aGk_&encoding=base64", &all),
            Ok(Route::Evidence(vec![b'h', b'i', 0x3f]))
        );
        assert_eq!(get("/aa/token?token_type=kbs", &all), Ok(Route::Token));
        // 64 bytes is the limit.
        let max = "x".repeat(64);
        assert!(get(&format!("/aa/evidence?runtime_data={max}"), &all).is_ok());
    }

    #[test]
    fn refusals_use_coco_statuses_and_bodies() {
        let all = cfg(r#"["resource", "evidence", "token"]"#);
        for (req, want) in [
            ("/", (404, body::NOT_FOUND)),
            ("/info/", (404, body::NOT_FOUND)),
            ("/cdh/resourcex", (404, body::NOT_FOUND)),
            ("/aa/aael", (404, body::NOT_FOUND)),
            (
                "/aa/additional-evidence?runtime_data=x",
                (404, body::NOT_FOUND),
            ),
            (
                "/cdh/resource/default/vigil-policy/prod",
                (403, body::FORBIDDEN),
            ),
            ("/cdh/resource/default/app/../x", (400, body::BAD_REQUEST)),
            ("/cdh/resource/default/app/a/b", (400, body::BAD_REQUEST)),
            ("/cdh/resource/default/app/", (400, body::BAD_REQUEST)),
            ("/cdh/resource/default/app/%2e%2e", (400, body::BAD_REQUEST)),
            ("/cdh/resource/default/app/a%00", (400, body::BAD_REQUEST)),
            ("/aa/evidence", (400, body::BAD_REQUEST)),
            ("/aa/evidence?runtime_data=%ff%fe", (400, body::BAD_REQUEST)),
            (
                "/aa/evidence?runtime_data=x&runtime_data=y",
                (400, body::BAD_REQUEST),
            ),
            (
                "/aa/evidence?runtime_data=x&encoding=hex",
                (400, body::BAD_REQUEST),
            ),
            (
                "/aa/evidence?runtime_data=***&encoding=base64",
                (400, body::BAD_REQUEST),
            ),
            ("/aa/token", (400, body::BAD_REQUEST)),
            ("/aa/token?token_type=coco_as", (400, body::BAD_REQUEST)),
        ] {
            assert_eq!(status(get(req, &all)), want, "{req}");
        }
        let e = get(
            &format!("/aa/evidence?runtime_data={}", "x".repeat(65)),
            &all,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.reason.contains("65 bytes"), "{}", e.reason);
        let long = format!("/cdh/resource/default/app/{}", "a".repeat(MAX_PATH));
        assert_eq!(status(get(&long, &all)), (414, body::URI_TOO_LONG));
        let q = format!("/aa/evidence?runtime_data={}", "a".repeat(MAX_QUERY));
        assert_eq!(status(get(&q, &all)), (414, body::URI_TOO_LONG));
        // Methods and bodies.
        for (method, has_body, want) in [
            (Method::POST, false, 405),
            (Method::PUT, false, 405),
            (Method::GET, true, 400),
        ] {
            let r = route(
                &RequestLine {
                    method: &method,
                    path: "/info",
                    query: None,
                    has_body,
                },
                &all,
            );
            assert_eq!(status(r).0, want, "{method} body={has_body}");
        }
    }

    #[test]
    fn switched_off_endpoints_are_denied_as_coco_does_without_the_feature() {
        let none = cfg("[]");
        assert_eq!(get("/info", &none), Ok(Route::Info));
        for (req, want) in [
            ("/cdh/resource/default/app/x", body::RESOURCE_OFF),
            ("/aa/evidence?runtime_data=x", body::ATTESTATION_OFF),
            ("/aa/token?token_type=kbs", body::ATTESTATION_OFF),
        ] {
            let e = get(req, &none).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.body, e.outcome),
                (404, want, Outcome::Denied),
                "{req}"
            );
        }
    }

    #[test]
    fn endpoint_names() {
        assert_eq!(
            endpoint_of("/cdh/resource/a/b/c"),
            WorkloadEndpoint::Resource
        );
        assert_eq!(endpoint_of("/aa/evidence"), WorkloadEndpoint::Evidence);
        assert_eq!(endpoint_of("/aa/token"), WorkloadEndpoint::Token);
        assert_eq!(endpoint_of("/info"), WorkloadEndpoint::Info);
        assert_eq!(endpoint_of("/metrics"), WorkloadEndpoint::Other);
    }
}
