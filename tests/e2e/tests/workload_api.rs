//! The workload API (CoCo's api-server-rest REST API) of the real agent binary, attested
//! (mock TEE) to the KBS test server, over real HTTP on 127.0.0.1: each endpoint, allowed and
//! refused resources, the KBS down, re-attestation, concurrent fetches sharing one, malformed
//! and slow clients, and the audit and metrics records of it all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kbs_test_server::{KbsTestServer, Rule};
use serde_json::{json, Value};
use vigil_kbc::Tee;
use vigil_tests::attested::Tenant;
use vigil_tests::{call, Agent, AgentSetup};

const POLICY_RESOURCE: &str = "default/vigil-policy/prod";
const T: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"db-password-4f9a1c";
const TENANT_POLICY: &str = "package agent_policy\n\ndefault GetMetricsRequest := true\n";

/// A tenant, a KBS holding its signed policy and secrets, and an attested agent.
struct World {
    tenant: Tenant,
    dir: tempfile::TempDir,
    digest: String,
}

impl World {
    fn new() -> World {
        World {
            tenant: Tenant::new(),
            dir: tempfile::tempdir().unwrap(),
            digest: String::new(),
        }
    }

    fn kbs(&self) -> &KbsTestServer {
        &self.tenant.kbs
    }

    fn rule(&self) -> Rule {
        Tenant::rule(&self.digest)
    }

    /// Starts the agent with `workload` as its `[workload_api]` section.
    fn start(&mut self, workload: &str) -> Agent {
        let config = format!(
            "[endpoints]\nallowed = [\"GetMetricsRequest\"]\n\n[policy]\nsigner = \"\"\"\n{signer}\"\"\"\n\n\
             [attestation]\ntee = \"mock\"\npolicy_resource = \"{POLICY_RESOURCE}\"\ndeadline_secs = 10\n\n\
             [attestation.kbs]\nkbs_url = \"{url}\"\ntimeout_secs = 3\nconnect_timeout_secs = 1\nconnect_retries = 0\n\n\
             [workload_api]\n{workload}\n",
            signer = self.tenant.signer_pem(),
            url = self.kbs().url(),
        );
        let (initdata, digest) = Tenant::initdata(&config);
        self.digest = digest;
        self.tenant
            .publish_policy(POLICY_RESOURCE, TENANT_POLICY, &self.digest);
        let file = self.dir.path().join("initdata.toml");
        std::fs::write(&file, &initdata).unwrap();
        self.tenant
            .start_agent(&file, &self.digest)
            .unwrap_or_else(|f| panic!("{}", f.stderr))
    }

    /// A world whose agent serves every endpoint, with `default/app/db` on the KBS.
    fn serving_db() -> (World, Agent, String) {
        let mut w = World::new();
        let agent = w.start(ALL);
        let addr = agent
            .workload_addr()
            .expect("workload API address on stdout");
        w.kbs()
            .put_resource("default/app/db", SECRET.to_vec(), w.rule());
        (w, agent, addr)
    }

    fn metrics(&self, agent: &Agent) -> String {
        self.tenant.rt.block_on(async {
            let c = vigilctl::connect(&agent.addr, T).await.unwrap();
            let m = call(&c, "GetMetrics", json!({})).await.unwrap();
            m["metrics"].as_str().unwrap().to_string()
        })
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends raw bytes and reads the answer until the server closes the connection.
fn raw(addr: &str, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf).unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
}

fn parse(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

fn get(addr: &str, target: &str) -> Reply {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn audit_lines(agent: &Agent) -> Vec<Value> {
    std::fs::read_to_string(agent.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["api"] == "workload")
        .collect()
}

const ALL: &str = "listen = \"127.0.0.1:0\"\nallowed_resources = [\"default/app/*\", \"default/denied/one\"]\nendpoints = [\"resource\", \"evidence\", \"token\"]\n";

#[test]
fn resources_allowed_refused_and_audited_without_contents() {
    let (w, mut agent, addr) = World::serving_db();
    w.kbs().put_resource(
        "default/denied/one",
        b"x".to_vec(),
        Rule {
            tees: vec![Tee::Sample],
            init_data_digests: vec!["00".repeat(48)],
        },
    );
    w.kbs()
        .put_resource("other/app/key", b"never".to_vec(), w.rule());
    let before = w.kbs().stats();

    let r = get(&addr, "/cdh/resource/default/app/db");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, SECRET);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));

    // Not on the measured allow-list: 403, and the KBS never hears of it.
    let r = get(&addr, "/cdh/resource/other/app/key");
    assert_eq!((r.status, r.text().as_str()), (403, "Forbidden"));
    assert!(r
        .header("x-vigil-reason")
        .unwrap()
        .contains("allowed_resources"));
    let s = w.kbs().stats();
    assert_eq!(
        s.resources_served + s.resources_refused,
        before.resources_served + before.resources_refused + 1,
        "only the allowed request reached the KBS"
    );

    // The KBS refuses (Trustee: 401 PolicyDeny) or lacks it (401 PluginInternalError): 500
    // with the cause, as CoCo's server answers a failed fetch, and no re-attestation.
    let r = get(&addr, "/cdh/resource/default/denied/one");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("PolicyDeny"), "{}", r.text());
    let r = get(&addr, "/cdh/resource/default/app/missing");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("PluginInternalError"), "{}", r.text());
    assert_eq!(
        w.kbs().stats().auth,
        s.auth,
        "a policy denial is not worth a new handshake"
    );

    let m = w.metrics(&agent);
    let count = |outcome: &str| {
        metric(
            &m,
            &format!("vigil_workload_api_requests_total{{endpoint=\"/cdh/resource\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(
        (count("allowed"), count("denied"), count("error")),
        (1, 1, 2)
    );
    assert_eq!(metric(&m, "vigil_workload_api_kbs_fetches_total"), 3);

    let (_, log) = agent.stop();
    let audit = audit_lines(&agent);
    assert_eq!(audit.len(), 4, "{audit:?}");
    let first = &audit[0];
    assert_eq!(first["endpoint"], "/cdh/resource");
    assert_eq!(first["resource"], "default/app/db");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["status"], 200);
    assert_eq!(audit[1]["decision"], "deny");
    assert_eq!(audit[1]["resource"], "other/app/key");
    assert_eq!(audit[2]["decision"], "error");
    let all = std::fs::read_to_string(agent.dir.path().join("audit.jsonl")).unwrap();
    let secret = std::str::from_utf8(SECRET).unwrap();
    assert!(
        !all.contains(secret),
        "a resource's contents reached the audit log"
    );
    assert!(
        !log.contains(secret),
        "a resource's contents reached the agent's log"
    );
}

#[test]
fn info_evidence_and_token_as_coco_returns_them() {
    let (w, _agent, addr) = World::serving_db();

    let info = get(&addr, "/info");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("application/json"));
    let info = info.json();
    assert_eq!(info["tee"], "sample");
    assert_eq!(info["additional_tees"], json!([]));
    assert_eq!(info["feature"], "all");
    assert!(info["version"].as_str().unwrap().contains("vigil-agent"));

    // Raw runtime data is the report data, as CoCo's attestation agent passes it on.
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = get(&addr, "/aa/evidence?runtime_data=hello%20workload");
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = r.json();
    assert_eq!(ev["svn"], "1");
    assert_eq!(
        b64.decode(ev["report_data"].as_str().unwrap()).unwrap(),
        b"hello workload"
    );
    let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(7)).collect();
    let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data);
    let ev = get(
        &addr,
        &format!("/aa/evidence?runtime_data={q}&encoding=base64"),
    )
    .json();
    assert_eq!(
        b64.decode(ev["report_data"].as_str().unwrap()).unwrap(),
        data
    );
    let r = get(
        &addr,
        &format!("/aa/evidence?runtime_data={}", "x".repeat(65)),
    );
    assert_eq!((r.status, r.text().as_str()), (400, "BAD REQUEST"));

    // A fresh KBS token and the key it was issued for: it fetches from the KBS directly, and
    // what the KBS encrypts to the token's key opens with the returned key.
    let auths = w.kbs().stats().auth;
    let r = get(&addr, "/aa/token?token_type=kbs");
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json();
    assert_eq!(
        w.kbs().stats().auth,
        auths + 1,
        "each token is a fresh handshake"
    );
    let jwt = token["token"].as_str().unwrap();
    assert_eq!(jwt.split('.').count(), 3);
    let pem = token["tee_keypair"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let kbs = w.kbs().addr().to_string();
    let jwe = raw(
        &kbs,
        format!("GET /kbs/v0/resource/default/app/db HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {jwt}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(jwe.status, 200, "{}", jwe.text());
    use p256::pkcs8::DecodePrivateKey as _;
    let key = p256::SecretKey::from_pkcs8_pem(pem).unwrap();
    assert_eq!(vigil_kbc::jwe::decrypt(&jwe.body, &key).unwrap(), SECRET);
    let r = get(&addr, "/aa/token?token_type=coco_as");
    assert_eq!((r.status, r.text().as_str()), (400, "BAD REQUEST"));
}

#[test]
fn endpoints_off_unless_listed() {
    let mut w = World::new();
    let agent = w.start("listen = \"127.0.0.1:0\"\nallowed_resources = [\"default/app/*\"]\n");
    let addr = agent.workload_addr().unwrap();
    assert_eq!(get(&addr, "/info").json()["feature"], "resource");
    for target in ["/aa/evidence?runtime_data=x", "/aa/token?token_type=kbs"] {
        let r = get(&addr, target);
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "Attestation Feature Not Enabled"),
            "{target}"
        );
    }
}

#[test]
fn kbs_down_and_re_attestation() {
    let (w, agent, addr) = World::serving_db();
    assert_eq!(get(&addr, "/cdh/resource/default/app/db").status, 200);
    let auths = w.kbs().stats().auth;
    // The session (cookie and token) expires at the KBS: a 401, one new handshake, served.
    w.kbs().advance_clock(Duration::from_secs(3600));
    let r = get(&addr, "/cdh/resource/default/app/db");
    assert_eq!((r.status, r.body.as_slice()), (200, SECRET));
    assert_eq!(w.kbs().stats().auth, auths + 1);

    // The KBS goes away: a clear 500, and the agent's own API is unaffected.
    let Tenant { kbs, rt, .. } = w.tenant;
    drop(kbs);
    let r = get(&addr, "/cdh/resource/default/app/db");
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .starts_with("resource default/app/db: KBS: transport"),
        "{}",
        r.text()
    );
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        assert!(call(&c, "Check", json!({})).await.is_ok());
    });
}

#[test]
fn concurrent_requests_share_one_kbs_fetch() {
    let (w, agent, addr) = World::serving_db();
    // Attest first, so the overlapping requests are all resource fetches.
    assert_eq!(get(&addr, "/cdh/resource/default/app/db").status, 200);
    let served = w.kbs().stats().resources_served;
    let hold = w.kbs().hold_resources();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || get(&addr, "/cdh/resource/default/app/db"))
        })
        .collect();
    // Readiness, not timing: one request is at the KBS and the other five wait on it.
    let deadline = Instant::now() + T;
    while !(hold.arrived() == 1
        && metric(&w.metrics(&agent), "vigil_workload_api_fetch_waiters") == 5)
    {
        assert!(Instant::now() < deadline, "the requests never overlapped");
        std::thread::sleep(Duration::from_millis(20));
    }
    hold.release();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, SECRET));
    }
    assert_eq!(
        w.kbs().stats().resources_served,
        served + 1,
        "one fetch for six requests"
    );
    // Nothing is kept: the next request fetches again.
    assert_eq!(get(&addr, "/cdh/resource/default/app/db").status, 200);
    assert_eq!(w.kbs().stats().resources_served, served + 2);
}

#[test]
fn malformed_requests_get_a_clear_4xx() {
    let mut w = World::new();
    let agent = w.start(ALL);
    let addr = agent.workload_addr().unwrap();
    let close = "Host: x\r\nConnection: close\r\n\r\n";
    for (request, want) in [
        (
            format!("GET /cdh/resource/default/app/../x HTTP/1.1\r\n{close}"),
            400,
        ),
        (
            format!("GET /cdh/resource/default/app/%2e%2e HTTP/1.1\r\n{close}"),
            400,
        ),
        (
            format!(
                "GET /cdh/resource/default/app/{} HTTP/1.1\r\n{close}",
                "a".repeat(600)
            ),
            414,
        ),
        (
            format!(
                "GET /aa/evidence?runtime_data={} HTTP/1.1\r\n{close}",
                "a".repeat(5000)
            ),
            414,
        ),
        (
            format!("GET /aa/evidence?runtime_data=%ff%fe HTTP/1.1\r\n{close}"),
            400,
        ),
        (
            format!(
                "GET /info HTTP/1.1\r\nX-Big: {}\r\n{close}",
                "a".repeat(10_000)
            ),
            431,
        ),
        (
            format!("POST /cdh/resource/default/app/db HTTP/1.1\r\nContent-Length: 2\r\n{close}xx"),
            405,
        ),
        (
            format!("GET /info HTTP/1.1\r\nContent-Length: 2\r\n{close}xx"),
            400,
        ),
        (format!("GET /metrics HTTP/1.1\r\n{close}"), 404),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400),
    ] {
        let r = raw(&addr, request.as_bytes());
        assert_eq!(r.status, want, "{:.80}: {}", request, r.text());
    }
    // Bytes that are not UTF-8 (not even ASCII) in the request line.
    let r = raw(
        &addr,
        b"GET /cdh/resource/default/app/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // Requests hyper answers before routing (431, unparsable) are audited too.
    let mut agent = agent;
    agent.stop();
    let audit = audit_lines(&agent);
    assert!(audit.iter().any(|l| l["status"] == 431), "{audit:?}");
    assert_eq!(
        audit.iter().filter(|l| l["status"] == 414).count(),
        2,
        "{audit:?}"
    );
}

#[test]
fn slow_clients_and_connection_floods_do_not_stall_the_agent() {
    let mut w = World::new();
    let agent = w.start(&format!("{ALL}max_connections = 3\n"));
    let addr = agent.workload_addr().unwrap();
    // Three clients that send half a request head and then nothing.
    let slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // Proof the three hold their slots: a fourth connection is turned away at once.
    let deadline = Instant::now() + T;
    loop {
        let r = get(&addr, "/info");
        if r.status == 503 {
            assert_eq!(r.text(), "Service Unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow clients never filled the slots"
        );
    }
    // Meanwhile the agent's ttrpc API answers as ever.
    w.tenant.rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        assert!(call(&c, "Check", json!({})).await.is_ok());
    });
    // The slow clients are cut off (header timeout): each sees its connection closed...
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    // ...and the API serves again.
    let deadline = Instant::now() + T;
    while get(&addr, "/info").status != 200 {
        assert!(Instant::now() < deadline, "slots never freed");
    }
    // Each turned-away connection (503) and each cut-off slow client (408) is counted.
    let m = w.metrics(&agent);
    let other_errors = "vigil_workload_api_requests_total{endpoint=\"other\",outcome=\"error\"}";
    assert!(metric(&m, other_errors) >= 4, "{m}");
    let mut agent = agent;
    agent.stop();
    let audit = audit_lines(&agent);
    assert_eq!(
        audit.iter().filter(|l| l["status"] == 408).count(),
        3,
        "{audit:?}"
    );
    assert!(audit.iter().any(|l| l["status"] == 503));
}

#[test]
fn workload_api_needs_an_attested_measured_config() {
    let r = Agent::start(AgentSetup {
        config: Some("[endpoints]\nallowed = [\"*\"]\n[workload_api]\nlisten = \"127.0.0.1:0\"\n"),
        ..Default::default()
    });
    let f = r
        .err()
        .expect("an unattested agent must refuse [workload_api]");
    assert!(
        f.stderr.contains("[workload_api] needs an attested mode"),
        "{}",
        f.stderr
    );
}
