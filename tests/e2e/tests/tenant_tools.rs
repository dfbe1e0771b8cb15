//! The tenant's tools on the host: `vigilctl initdata pack/verify` (whose output the agent
//! boots from, attested) and `vigilctl secret seal/verify/jwk`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vigil_attester::initdata::{self, InitData};
use vigil_kbc::envelope::{Algorithm, SigningKey};
use vigil_tests::attested::Tenant;
use vigil_tests::{call, vigilctl};

const RESOURCE: &str = "default/vigil-policy/prod";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn ok(args: &[&str]) -> String {
    let (success, out, err) = vigilctl(args);
    assert!(success, "vigilctl {args:?} failed: {err}");
    out
}

fn fails(args: &[&str]) -> String {
    let (success, out, err) = vigilctl(args);
    assert!(!success, "vigilctl {args:?} should have failed: {out}");
    err
}

#[test]
fn initdata_pack_digest_annotation_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = write(
        d,
        "vigil.toml",
        "[endpoints]\nallowed = [\"GuestDetailsRequest\"]\n# a ''' and a \"\"\" in a comment\n",
    );
    let policy = write(
        d,
        "p.rego",
        "package agent_policy\ndefault GuestDetailsRequest := true\n",
    );
    let toml = ok(&["initdata", "pack", "--config", &config, "--policy", &policy]);
    let parsed = InitData::parse(&toml).unwrap();
    assert_eq!(
        parsed.entry("vigil.toml"),
        Some(std::fs::read_to_string(&config).unwrap().as_str())
    );
    assert!(parsed
        .entry("policy.rego")
        .unwrap()
        .contains("GuestDetailsRequest"));
    assert_eq!(parsed.algorithm, initdata::HashAlgorithm::Sha384);

    let digest = ok(&[
        "initdata", "pack", "--config", &config, "--policy", &policy, "--digest",
    ]);
    assert_eq!(digest.trim(), hex::encode(&parsed.digest));
    let snp = ok(&[
        "initdata", "pack", "--config", &config, "--policy", &policy, "--digest", "--tee", "snp",
    ]);
    assert_eq!(snp.trim(), hex::encode(&parsed.digest[..32]));
    let sha256 = ok(&[
        "initdata",
        "pack",
        "--config",
        &config,
        "--algorithm",
        "sha256",
        "--digest",
        "--tee",
        "tdx",
    ]);
    assert_eq!(sha256.trim().len(), 96, "MRCONFIGID is 48 bytes");
    assert!(
        sha256.trim().ends_with(&"0".repeat(32)),
        "sha256 zero-padded into MRCONFIGID"
    );

    let annotation = ok(&[
        "initdata",
        "pack",
        "--config",
        &config,
        "--policy",
        &policy,
        "--annotation",
    ]);
    assert_eq!(initdata::from_annotation(&annotation).unwrap(), toml);

    // verify: every form the tenant or host handles, against each launch value.
    let toml_file = write(d, "initdata.toml", &toml);
    let annotation_file = write(d, "annotation.txt", &annotation);
    let block_file = d.join("initdata.img");
    std::fs::write(&block_file, initdata::pack_block(&toml)).unwrap();
    let block_file = block_file.display().to_string();
    for file in [&toml_file, &annotation_file, &block_file] {
        for value in [digest.trim(), snp.trim()] {
            let out = ok(&["initdata", "verify", file, "--digest", value]);
            assert!(out.contains("ok: sha384 digest"), "{out}");
        }
    }
    let other = InitData::parse(&toml.replace(
        "GuestDetailsRequest\"]",
        "GuestDetailsRequest\", \"CreateContainerRequest\"]",
    ))
    .unwrap();
    let err = fails(&[
        "initdata",
        "verify",
        &toml_file,
        "--digest",
        &hex::encode(&other.digest),
    ]);
    assert!(
        err.contains("does not match") && err.contains(&hex::encode(&parsed.digest)),
        "{err}"
    );
    // A config that is not TOML and a policy that does not compile are refused before packing.
    let broken = write(d, "broken.toml", "[endpoints\n");
    assert!(fails(&["initdata", "pack", "--config", &broken]).contains("vigil.toml"));
    let bad_policy = write(d, "bad.rego", "package agent_policy\ndefault X := \n");
    assert!(fails(&[
        "initdata",
        "pack",
        "--config",
        &config,
        "--policy",
        &bad_policy
    ])
    .contains("policy.rego"));
}

/// The agent boots, attested (mock TEE, KBS test server), from initdata that `vigilctl
/// initdata pack` made, with the launch binding its `--digest` printed.
#[test]
fn agent_boots_from_packed_initdata() {
    let tenant = Tenant::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = write(
        d,
        "vigil.toml",
        &format!(
            "[endpoints]\nallowed = [\"GuestDetailsRequest\"]\n[policy]\nsigner = \"\"\"\n{}\"\"\"\n\
             [attestation]\ntee = \"mock\"\npolicy_resource = \"{RESOURCE}\"\ndeadline_secs = 10\n\
             [attestation.kbs]\nkbs_url = \"{}\"\nconnect_retries = 0\n",
            tenant.signer_pem(),
            tenant.kbs.url()
        ),
    );
    let initdata_file = d.join("initdata.toml");
    let path = initdata_file.display().to_string();
    let digest = ok(&[
        "initdata", "pack", "--config", &config, "-o", &path, "--digest",
    ]);
    let digest = digest.trim();
    tenant.publish_policy(
        RESOURCE,
        "package agent_policy\ndefault GuestDetailsRequest := true\n",
        digest,
    );
    let agent = tenant
        .start_agent(&initdata_file, digest)
        .unwrap_or_else(|f| panic!("{}", f.stderr));
    tenant.rt.block_on(async {
        let c = vigilctl::connect(&agent.addr, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(call(&c, "GetGuestDetails", serde_json::json!({}))
            .await
            .is_ok());
    });
}

#[test]
fn secret_seal_verify_and_jwk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = SigningKey::generate(Algorithm::Es256);
    let key_file = write(d, "tenant.key", &key.to_pkcs8_pem().unwrap());
    let pub_file = write(
        d,
        "tenant.pub",
        &key.verifying_key().to_public_key_pem().unwrap(),
    );
    let sealed = ok(&[
        "secret",
        "seal",
        "--resource",
        "default/app/db",
        "--key",
        &key_file,
    ]);
    let sealed = sealed.trim();
    assert!(sealed.starts_with("sealed."), "{sealed}");

    let out: Value =
        serde_json::from_str(&ok(&["secret", "verify", "--signer", &pub_file, sealed])).unwrap();
    assert_eq!(out["resource"], "default/app/db");
    // The default kid is the key's thumbprint, which `secret jwk` prints as its kid.
    let jwk: Value = serde_json::from_str(&ok(&["secret", "jwk", "--key", &pub_file])).unwrap();
    assert_eq!(out["kid"], jwk["kid"]);
    assert!(
        jwk.get("d").is_none(),
        "the JWK must not carry the private key"
    );
    let jwk_file = write(d, "tenant.jwk", &jwk.to_string());
    let sealed_file = write(d, "sealed.txt", sealed);
    ok(&[
        "secret",
        "verify",
        "--signer",
        &jwk_file,
        &format!("@{sealed_file}"),
    ]);

    let other = SigningKey::generate(Algorithm::Es256);
    let other_pub = write(
        d,
        "other.pub",
        &other.verifying_key().to_public_key_pem().unwrap(),
    );
    assert!(fails(&["secret", "verify", "--signer", &other_pub, sealed]).contains("signature"));
    let ed = SigningKey::generate(Algorithm::EdDsa);
    let ed_file = write(d, "ed.key", &ed.to_pkcs8_pem().unwrap());
    assert!(fails(&["secret", "seal", "--resource", "a/b/c", "--key", &ed_file]).contains("P-256"));
    assert!(
        fails(&["secret", "seal", "--resource", "a/../c", "--key", &key_file])
            .contains("repo/type/tag")
    );
    let kbs_kid = ok(&[
        "secret",
        "seal",
        "--resource",
        "a/b/c",
        "--key",
        &key_file,
        "--kid",
        "kbs:///default/keys/sealing",
    ]);
    let out: Value = serde_json::from_str(&ok(&[
        "secret",
        "verify",
        "--signer",
        &key_file,
        kbs_kid.trim(),
    ]))
    .unwrap();
    assert_eq!(out["kid"], "kbs:///default/keys/sealing");
}
