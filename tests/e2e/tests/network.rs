//! The pod network RPCs end to end: the real `vigil-agent` binary configures links, routes and
//! neighbours in a network namespace of its own, driven over ttrpc in Kata's JSON shape, and
//! the test checks the kernel's view with `ip` (iproute2) beside the agent's answers.
//!
//! Needs root (a new network namespace) and `ip` from iproute2; skips with a printed reason
//! when not root. The host's network is never touched: the test thread leaves the host's
//! namespace before it creates any link or starts the agent, and both inherit the new one.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vigil_tests::{call, Agent, AgentSetup};

const T: Duration = Duration::from_secs(30);
const MAC: &str = "02:00:5e:10:00:01";
const PEER_MAC: &str = "02:00:5e:10:00:02";
const OTHER_MAC: &str = "02:00:5e:10:00:03";
const HOTPLUG_MAC: &str = "02:00:5e:10:00:04";

/// Runs `ip ARGS` in the test thread's namespace; panics with its stderr when it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` not found: install iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ip(&full);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {text}"))
}

/// The kernel's addresses of `dev`, as "ip/prefix", link-local IPv6 excluded.
fn kernel_addresses(dev: &str) -> Vec<String> {
    let mut out: Vec<String> = ip_json(&["addr", "show", "dev", dev])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    out.sort();
    out
}

/// The agent's addresses of `name` in a ListInterfaces/UpdateInterface answer, as "ip/mask",
/// link-local IPv6 excluded.
fn answered_addresses(iface: &Value) -> Vec<String> {
    let mut out: Vec<String> = iface["IPAddresses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| !a["address"].as_str().unwrap().starts_with("fe80:"))
        .map(|a| {
            format!(
                "{}/{}",
                a["address"].as_str().unwrap(),
                a["mask"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

/// A route of an answer as "dest via gateway dev device" (dest empty for a default route).
fn route_key(r: &Value) -> String {
    format!(
        "{} via {} dev {}",
        r["dest"].as_str().unwrap_or(""),
        r["gateway"].as_str().unwrap_or(""),
        r["device"].as_str().unwrap_or("")
    )
}

fn keys(routes: &Value) -> Vec<String> {
    let mut k: Vec<String> = routes["Routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(route_key)
        .collect();
    k.sort();
    k
}

/// The kernel's IPv4 main table as the same keys.
fn kernel_routes() -> Vec<String> {
    let mut k: Vec<String> = ip_json(&["-4", "route", "show", "table", "main"])
        .iter()
        .map(|r| {
            let dst = match r["dst"].as_str().unwrap() {
                "default" => String::new(),
                d if d.contains('/') => d.to_string(),
                d => format!("{d}/32"),
            };
            format!(
                "{dst} via {} dev {}",
                r["gateway"].as_str().unwrap_or(""),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect();
    k.sort();
    k
}

fn expect_err(answer: &Result<Value, (ttrpc::Code, String)>, code: ttrpc::Code, text: &str) {
    assert!(
        matches!(answer, Err((c, m)) if *c == code && m.contains(text)),
        "expected {code:?} mentioning {text:?}, got {answer:?}"
    );
}

/// Moves the test thread into a new network namespace: the links it creates, the agent it
/// starts and every `ip` it runs live there. False (with the reason printed) when not root.
fn enter_private_network_namespace(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (a network namespace)");
        return false;
    }
    // SAFETY: unshare(2) of this thread's network namespace only; what the thread creates
    // from now on (links, processes) lives in the new one.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    true
}

/// The agent, started from the test thread (so in its namespace), and a one-thread runtime
/// to drive it: everything the test spawns stays in this thread's namespace.
fn agent_in_this_namespace() -> (Agent, tokio::runtime::Runtime) {
    let agent = Agent::start(AgentSetup::default())
        .unwrap_or_else(|f| panic!("agent did not start: {:?}\n{}", f.status, f.stderr));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (agent, rt)
}

#[test]
fn pod_network_through_the_agent() {
    if !enter_private_network_namespace("pod_network_through_the_agent") {
        return;
    }

    // The pod's interface as a hypervisor would hot-plug it: a veth end with a known MAC and a
    // stray address and route that UpdateInterface / UpdateRoutes must replace. A second link
    // with its own route shows that a route update leaves other devices alone.
    ip(&[
        "link", "add", "vg0", "address", MAC, "type", "veth", "peer", "name", "vg0p", "address",
        PEER_MAC,
    ]);
    ip(&[
        "link", "add", "vg1", "address", OTHER_MAC, "type", "veth", "peer", "name", "vg1p",
    ]);
    for dev in ["vg0p", "vg1", "vg1p"] {
        ip(&["link", "set", dev, "up"]);
    }
    ip(&["addr", "add", "192.168.77.1/24", "dev", "vg0"]);
    // A secondary address, which the kernel removes together with the primary above.
    ip(&["addr", "add", "192.168.77.2/24", "dev", "vg0"]);
    ip(&["addr", "add", "10.98.0.1/24", "dev", "vg1"]);
    ip(&[
        "route",
        "add",
        "10.97.0.0/16",
        "via",
        "10.98.0.254",
        "dev",
        "vg1",
    ]);

    let (agent, rt) = agent_in_this_namespace();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();

        // UpdateInterface: found by MAC, renamed, MTU set, addresses replaced, brought up.
        let iface = json!({"interface": {
            "hwAddr": MAC.to_uppercase(), "name": "eth0", "mtu": 1400,
            "IPAddresses": [
                {"family": 0, "address": "10.20.0.2", "mask": "24"},
                {"family": 1, "address": "fd00:20::2", "mask": "64"},
            ],
        }});
        let updated = call(&c, "UpdateInterface", iface.clone()).await.unwrap();
        assert_eq!(updated["name"], "eth0", "{updated}");
        assert_eq!(updated["mtu"], 1400, "{updated}");
        assert_eq!(updated["hwAddr"], MAC, "{updated}");
        assert_eq!(updated["type_"], "veth", "{updated}");
        assert_ne!(updated["raw_flags"].as_u64().unwrap() & libc::IFF_UP as u64, 0, "{updated}");
        let want = vec!["10.20.0.2/24".to_string(), "fd00:20::2/64".to_string()];
        assert_eq!(answered_addresses(&updated), want);
        assert_eq!(kernel_addresses("eth0"), want, "the kernel's view differs");
        let link = &ip_json(&["link", "show", "dev", "eth0"])[0];
        assert_eq!(link["mtu"], 1400);
        assert!(link["flags"].as_array().unwrap().contains(&json!("UP")), "{link}");
        // Applying the same request again changes nothing.
        let again = call(&c, "UpdateInterface", iface.clone()).await.unwrap();
        assert_eq!(answered_addresses(&again), want);
        // Keeping only a secondary address: removing its primary takes it too, so it is
        // added back.
        ip(&["addr", "add", "10.20.0.3/24", "dev", "eth0"]);
        let secondary = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": MAC, "name": "eth0", "mtu": 1400,
                   "IPAddresses": [{"family": 0, "address": "10.20.0.3", "mask": "24"}]}}),
        )
        .await
        .unwrap();
        assert_eq!(answered_addresses(&secondary), vec!["10.20.0.3/24".to_string()]);
        assert_eq!(kernel_addresses("eth0"), vec!["10.20.0.3/24".to_string()]);
        let back = call(&c, "UpdateInterface", iface).await.unwrap();
        assert_eq!(answered_addresses(&back), want);
        assert_eq!(kernel_addresses("eth0"), want);

        // ListInterfaces: the kernel's links, in Kata's shape.
        let listed = call(&c, "ListInterfaces", json!({})).await.unwrap();
        let all = listed["Interfaces"].as_array().unwrap();
        let eth0 = all.iter().find(|i| i["name"] == "eth0").expect("eth0 listed");
        assert_eq!(eth0["hwAddr"], MAC);
        assert_eq!(answered_addresses(eth0), want);
        let v6 = eth0["IPAddresses"].as_array().unwrap().iter().find(|a| a["address"] == "fd00:20::2").unwrap();
        assert_eq!(v6["family"], 1, "{v6}");
        let vg1 = all.iter().find(|i| i["name"] == "vg1").expect("vg1 listed");
        assert_eq!(answered_addresses(vg1), vec!["10.98.0.1/24".to_string()]);
        assert!(all.iter().any(|i| i["name"] == "lo"), "{listed}");

        // The loopback link is the guest's own: the host may not configure it, take its name,
        // route through it or add neighbours on it; nothing changes on a refusal.
        let lo_before = ip_json(&["addr", "show", "dev", "lo"]);
        for (method, request, field) in [
            ("UpdateInterface", json!({"interface": {"name": "lo", "IPAddresses": [{"address": "10.66.0.1", "mask": "8"}]}}), "interface:"),
            ("UpdateInterface", json!({"interface": {"hwAddr": "00:00:00:00:00:00", "name": "lo"}}), "interface:"),
            ("UpdateInterface", json!({"interface": {"hwAddr": MAC, "name": "lo", "mtu": 1400}}), "interface.name:"),
            ("UpdateRoutes", json!({"routes": {"Routes": [{"dest": "10.66.0.0/16", "device": "lo"}]}}), "routes[0].device:"),
            ("AddARPNeighbors", json!({"neighbors": {"ARPNeighbors": [{"toIPAddress": {"address": "10.66.0.9"}, "device": "lo", "lladdr": PEER_MAC}]}}), "neighbors[0].device:"),
        ] {
            let answer = call(&c, method, request).await;
            expect_err(&answer, ttrpc::Code::INVALID_ARGUMENT, field);
            expect_err(&answer, ttrpc::Code::INVALID_ARGUMENT, "loopback");
        }
        assert_eq!(ip_json(&["addr", "show", "dev", "lo"]), lo_before);
        assert_eq!(kernel_addresses("eth0"), want, "eth0 must be untouched by the refused rename");
        let link = &ip_json(&["link", "show", "dev", "eth0"])[0];
        assert!(link["flags"].as_array().unwrap().contains(&json!("UP")), "{link}");

        // UpdateInterface refusals: unknown MAC, malformed mask, both naming what was wrong.
        let ghost = call(&c, "UpdateInterface", json!({"interface": {"hwAddr": "02:00:5e:10:00:99", "name": "eth9"}})).await;
        expect_err(&ghost, ttrpc::Code::NOT_FOUND, "02:00:5e:10:00:99");
        let bad_mask = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": MAC, "name": "eth0", "IPAddresses": [{"address": "10.20.0.2", "mask": "24x"}]}}),
        )
        .await;
        expect_err(&bad_mask, ttrpc::Code::INVALID_ARGUMENT, "interface.IPAddresses[0].mask");
        assert_eq!(kernel_addresses("eth0"), want, "a refused request changed the link");
        // A value only the kernel can judge: its refusal, with the field it concerns.
        let huge_mtu = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": MAC, "name": "eth0", "mtu": 1u64 << 30,
                   "IPAddresses": [
                       {"family": 0, "address": "10.20.0.2", "mask": "24"},
                       {"family": 1, "address": "fd00:20::2", "mask": "64"},
                   ]}}),
        )
        .await;
        expect_err(&huge_mtu, ttrpc::Code::INVALID_ARGUMENT, "interface.mtu");
        assert_eq!(ip_json(&["link", "show", "dev", "eth0"])[0]["mtu"], 1400);

        // UpdateRoutes: the gateway route comes first in the request, but its gateway is
        // reachable only through the link route after it; the stray route on eth0 goes, vg1's
        // route stays.
        ip(&["route", "add", "10.99.0.0/16", "dev", "eth0"]);
        let routes = json!({"routes": {"Routes": [
            {"dest": "10.50.0.0/16", "gateway": "10.40.0.1", "device": "eth0", "family": 0},
            {"dest": "10.40.0.0/24", "device": "eth0", "scope": 253, "family": 0},
            // Kata's runtime also sends the kernel's own subnet route: already there, accepted.
            {"dest": "10.20.0.0/24", "device": "eth0", "scope": 253, "source": "10.20.0.2", "family": 0},
            {"dest": "", "gateway": "10.20.0.1", "device": "eth0", "family": 0},
            {"dest": "fd00:30::/64", "gateway": "fd00:20::1", "device": "eth0", "family": 1},
        ]}});
        let table = call(&c, "UpdateRoutes", routes).await.unwrap();
        let expected_v4 = vec![
            " via 10.20.0.1 dev eth0".to_string(),
            "10.20.0.0/24 via  dev eth0".to_string(),
            "10.40.0.0/24 via  dev eth0".to_string(),
            "10.50.0.0/16 via 10.40.0.1 dev eth0".to_string(),
            "10.97.0.0/16 via 10.98.0.254 dev vg1".to_string(),
            "10.98.0.0/24 via  dev vg1".to_string(),
        ];
        assert_eq!(kernel_routes(), expected_v4, "the kernel's table");
        let answered = keys(&table);
        for k in &expected_v4 {
            assert!(answered.contains(k), "{k} missing from {answered:?}");
        }
        assert!(answered.contains(&"fd00:30::/64 via fd00:20::1 dev eth0".to_string()), "{answered:?}");
        assert!(!answered.iter().any(|k| k.starts_with("10.99.")), "{answered:?}");
        let link_route = table["Routes"].as_array().unwrap().iter().find(|r| r["dest"] == "10.40.0.0/24").unwrap();
        assert_eq!(link_route["scope"], 253, "{link_route}");
        assert_eq!(link_route["family"], 0, "{link_route}");
        let v6_route = table["Routes"].as_array().unwrap().iter().find(|r| r["dest"] == "fd00:30::/64").unwrap();
        assert_eq!(v6_route["family"], 1, "{v6_route}");
        // The subnet route keeps the kernel's preferred source, shown as a bare address.
        let subnet = table["Routes"].as_array().unwrap().iter().find(|r| r["dest"] == "10.20.0.0/24").unwrap();
        assert_eq!(subnet["source"], "10.20.0.2", "{subnet}");
        // ListRoutes answers the same table.
        assert_eq!(keys(&call(&c, "ListRoutes", json!({})).await.unwrap()), answered);

        // UpdateRoutes refusals name the bad route by index and leave the table as it was.
        let bad_dest = call(
            &c,
            "UpdateRoutes",
            json!({"routes": {"Routes": [
                {"dest": "10.60.0.0/24", "device": "eth0", "scope": 253},
                {"dest": "10.60.0.0/40", "device": "eth0"},
            ]}}),
        )
        .await;
        expect_err(&bad_dest, ttrpc::Code::INVALID_ARGUMENT, "routes[1].dest");
        let no_dev = call(&c, "UpdateRoutes", json!({"routes": {"Routes": [{"dest": "10.60.0.0/24", "device": "eth7"}]}})).await;
        expect_err(&no_dev, ttrpc::Code::NOT_FOUND, "routes[0].device");
        // The kernel refuses an unreachable gateway only after the old routes are gone: they
        // come back.
        let unreachable = call(
            &c,
            "UpdateRoutes",
            json!({"routes": {"Routes": [
                {"dest": "10.40.0.0/24", "device": "eth0", "scope": 253},
                {"dest": "10.70.0.0/16", "gateway": "10.71.0.1", "device": "eth0"},
            ]}}),
        )
        .await;
        expect_err(&unreachable, ttrpc::Code::INVALID_ARGUMENT, "routes[1]");
        assert!(unreachable.as_ref().unwrap_err().1.contains("restored"), "{unreachable:?}");
        assert_eq!(kernel_routes(), expected_v4, "a refused update changed the table");

        // AddARPNeighbors: a permanent entry with its link-layer address.
        call(
            &c,
            "AddARPNeighbors",
            json!({"neighbors": {"ARPNeighbors": [
                {"toIPAddress": {"address": "10.20.0.9", "family": 0}, "device": "eth0", "lladdr": "02:00:5e:10:00:09"},
            ]}}),
        )
        .await
        .unwrap();
        let neigh = ip_json(&["neigh", "show", "dev", "eth0"]);
        let entry = neigh.iter().find(|n| n["dst"] == "10.20.0.9").unwrap_or_else(|| panic!("{neigh:?}"));
        assert_eq!(entry["lladdr"], "02:00:5e:10:00:09", "{entry}");
        assert!(entry["state"].as_array().unwrap().contains(&json!("PERMANENT")), "{entry}");
        let bad_neigh = call(
            &c,
            "AddARPNeighbors",
            json!({"neighbors": {"ARPNeighbors": [{"toIPAddress": {"address": "10.20.0.10"}, "device": "eth0", "lladdr": "02:00"}]}}),
        )
        .await;
        expect_err(&bad_neigh, ttrpc::Code::INVALID_ARGUMENT, "neighbors[0].lladdr");

        // GetIPTables: the guest's iptables-save, or a refusal naming the missing program.
        let installed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join("iptables-save").is_file());
        let saved = call(&c, "GetIPTables", json!({})).await;
        if installed {
            assert!(saved.is_ok(), "{saved:?}");
        } else {
            expect_err(&saved, ttrpc::Code::FAILED_PRECONDITION, "iptables-save");
        }

        // A name already taken: the two links swap names, as in Kata's agent.
        let swapped = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": OTHER_MAC, "name": "eth0", "mtu": 1500,
                   "IPAddresses": [{"family": 0, "address": "10.98.0.1", "mask": "24"}]}}),
        )
        .await
        .unwrap();
        assert_eq!(swapped["name"], "eth0", "{swapped}");
        assert_eq!(swapped["hwAddr"], OTHER_MAC, "{swapped}");
        let names: Vec<(String, String)> = ip_json(&["link", "show"])
            .iter()
            .map(|l| {
                (
                    l["ifname"].as_str().unwrap().to_string(),
                    l["address"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert!(names.contains(&("eth0".into(), OTHER_MAC.into())), "{names:?}");
        assert!(names.contains(&("vg1".into(), MAC.into())), "{names:?}");
        assert_eq!(kernel_addresses("eth0"), vec!["10.98.0.1/24".to_string()]);

        // A hot-plugged NIC (the request names its devicePath) may appear only after the
        // request: the agent waits for it. The link is added from a thread of this one, so in
        // this namespace.
        let adder = std::thread::spawn(|| {
            ip(&["link", "add", "vg2", "address", HOTPLUG_MAC, "type", "veth", "peer", "name", "vg2p"])
        });
        let hot = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": HOTPLUG_MAC, "name": "eth1", "devicePath": "02/00",
                   "IPAddresses": [{"family": 0, "address": "10.80.0.2", "mask": "24"}]}}),
        )
        .await;
        adder.join().unwrap();
        let hot = hot.unwrap();
        assert_eq!(hot["name"], "eth1", "{hot}");
        assert_eq!(kernel_addresses("eth1"), vec!["10.80.0.2/24".to_string()]);
        // One that never appears: NOT_FOUND once the wait is over, saying so.
        let never = call(
            &c,
            "UpdateInterface",
            json!({"interface": {"hwAddr": "02:00:5e:10:00:98", "name": "eth2", "devicePath": "03/00"}}),
        )
        .await;
        expect_err(&never, ttrpc::Code::NOT_FOUND, "none appeared");
    });
}

/// The kernel's route to `dst` in the main table (`ip -j route`), if any.
fn kernel_route(family: &str, dst: &str) -> Option<Value> {
    ip_json(&[family, "route", "show", "table", "main"])
        .into_iter()
        .find(|r| r["dst"] == dst)
}

/// The MTU `ip` shows for a route (its RTAX_MTU metric), 0 when it has none.
fn kernel_route_mtu(route: &Value) -> u64 {
    route["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| m["mtu"].as_u64())
        .unwrap_or(0)
}

fn answered_route<'a>(table: &'a Value, dest: &str) -> &'a Value {
    table["Routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dest"] == dest)
        .unwrap_or_else(|| panic!("{dest} missing from {table}"))
}

#[test]
fn route_mtu_through_the_agent() {
    if !enter_private_network_namespace("route_mtu_through_the_agent") {
        return;
    }
    ip(&["link", "add", "vm0", "type", "veth", "peer", "name", "vm0p"]);
    for dev in ["vm0", "vm0p"] {
        ip(&["link", "set", dev, "up"]);
    }
    // Gives the kernel's own subnet route 10.30.0.0/24, without an MTU.
    ip(&["addr", "add", "10.30.0.2/24", "dev", "vm0"]);
    let subnet = kernel_route("-4", "10.30.0.0/24").expect("the kernel's subnet route");
    assert_eq!(subnet["protocol"], "kernel", "{subnet}");
    assert_eq!(kernel_route_mtu(&subnet), 0, "{subnet}");

    let (agent, rt) = agent_in_this_namespace();
    rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, T).await.unwrap();
        // The subnet route as Kata's runtime copies it from the host, with the host route's
        // MTU: the existing route takes it.
        let subnet_route = json!({"dest": "10.30.0.0/24", "device": "vm0", "scope": 253,
                                  "source": "10.30.0.2", "family": 0, "mtu": 1400});

        // Refused after the subnet route was replaced: the kernel's route comes back as it
        // was, without the MTU.
        let unreachable = call(
            &c,
            "UpdateRoutes",
            json!({"routes": {"Routes": [
                subnet_route.clone(),
                {"dest": "10.70.0.0/16", "gateway": "10.71.0.1", "device": "vm0", "family": 0, "mtu": 1300},
            ]}}),
        )
        .await;
        expect_err(&unreachable, ttrpc::Code::INVALID_ARGUMENT, "routes[1]");
        assert!(unreachable.as_ref().unwrap_err().1.contains("restored"), "{unreachable:?}");
        let back = kernel_route("-4", "10.30.0.0/24").expect("subnet route restored");
        assert_eq!(kernel_route_mtu(&back), 0, "{back}");
        assert_eq!(back["protocol"], "kernel", "{back}");
        assert!(kernel_route("-4", "10.70.0.0/16").is_none());

        let table = call(
            &c,
            "UpdateRoutes",
            json!({"routes": {"Routes": [
                {"dest": "", "gateway": "10.30.0.1", "device": "vm0", "family": 0, "mtu": 1300},
                subnet_route,
                {"dest": "10.31.0.0/24", "device": "vm0", "scope": 253, "family": 0},
                {"dest": "fd00:31::/64", "device": "vm0", "family": 1, "mtu": 1280},
            ]}}),
        )
        .await
        .unwrap();
        // The kernel's view, from `ip -j route`.
        for (family, dst, mtu) in [
            ("-4", "default", 1300),
            ("-4", "10.30.0.0/24", 1400),
            ("-4", "10.31.0.0/24", 0),
            ("-6", "fd00:31::/64", 1280),
        ] {
            let r = kernel_route(family, dst).unwrap_or_else(|| panic!("{dst} not in the table"));
            assert_eq!(kernel_route_mtu(&r), mtu, "{dst}: {r}");
        }
        assert_eq!(
            kernel_route("-4", "10.30.0.0/24").unwrap()["prefsrc"],
            "10.30.0.2"
        );
        // The answer and ListRoutes report the same MTUs.
        let listed = call(&c, "ListRoutes", json!({})).await.unwrap();
        for answer in [&table, &listed] {
            assert_eq!(answered_route(answer, "")["mtu"], 1300, "{answer}");
            assert_eq!(answered_route(answer, "10.30.0.0/24")["mtu"], 1400, "{answer}");
            assert_eq!(answered_route(answer, "10.31.0.0/24")["mtu"], 0, "{answer}");
            assert_eq!(answered_route(answer, "fd00:31::/64")["mtu"], 1280, "{answer}");
        }

        // An MTU the kernel would silently cap is refused, naming the route, before any change.
        let huge = call(
            &c,
            "UpdateRoutes",
            json!({"routes": {"Routes": [
                {"dest": "10.32.0.0/24", "device": "vm0", "scope": 253, "family": 0, "mtu": 70000},
            ]}}),
        )
        .await;
        expect_err(&huge, ttrpc::Code::INVALID_ARGUMENT, "routes[0].mtu");
        assert_eq!(kernel_route_mtu(&kernel_route("-4", "default").unwrap()), 1300);
        assert!(kernel_route("-4", "10.32.0.0/24").is_none());
    });
}
