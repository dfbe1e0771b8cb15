//! `vigilctl secret ...`: sealed secrets (CoCo's `sealed.<JWS>` format) for the tenant. A
//! sealed secret names a KBS resource and is signed with the tenant's P-256 key; the agent
//! unseals it inside the guest at CreateContainer.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use vigil_kbc::envelope::SigningKey;
use vigil_kbc::sealed::{self, SealedSecret};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Seal a KBS resource: prints `sealed.<header>.<payload>.<signature>`, a value to put in
    /// a container's environment or in a (Kubernetes) secret file. It holds no plaintext.
    Seal {
        /// The KBS resource the secret stands for, repo/type/tag
        #[arg(long)]
        resource: String,
        /// Tenant signing key (PKCS#8 PEM, P-256)
        #[arg(long)]
        key: PathBuf,
        /// Key id in the header [default: the key's RFC 7638 thumbprint]. Use
        /// kbs:///repo/type/tag when the agent should fetch the verification key (the JWK from
        /// `vigilctl secret jwk`) from that KBS resource
        #[arg(long)]
        kid: Option<String>,
    },
    /// Check a sealed secret's signature and print what it names
    Verify {
        /// Verification key: SPKI PEM public key or JWK (a PKCS#8 private key also works)
        #[arg(long)]
        signer: PathBuf,
        /// The sealed secret, or @FILE, or @- for stdin
        sealed: String,
    },
    /// Print the public JWK of a key, to publish on the KBS for kid = kbs:///repo/type/tag
    Jwk {
        /// PKCS#8 PEM private key or SPKI PEM public key (P-256)
        #[arg(long)]
        key: PathBuf,
        /// kid member [default: the RFC 7638 thumbprint]
        #[arg(long)]
        kid: Option<String>,
    },
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn signing_key(path: &Path) -> Result<p256::ecdsa::SigningKey, String> {
    match SigningKey::from_pkcs8_pem(&read(path)?) {
        Ok(SigningKey::Es256(k)) => Ok(k),
        Ok(_) => Err(format!(
            "{}: sealed secrets are signed with ES256; this is not a P-256 key",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A verification key from a public key (PEM or JWK) or, for convenience, a private key file.
fn verifying_key(path: &Path) -> Result<p256::ecdsa::VerifyingKey, String> {
    let text = read(path)?;
    if text.contains("PRIVATE KEY") {
        return signing_key(path).map(|k| *k.verifying_key());
    }
    sealed::verifying_key_from_text(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_arg(arg: &str) -> Result<String, String> {
    let text = match arg {
        "@-" => std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("reading the sealed secret from stdin: {e}"))?,
        a if a.starts_with('@') => read(Path::new(&a[1..]))?,
        a => a.to_string(),
    };
    Ok(text.trim().to_string())
}

pub fn run(cmd: SecretCommand) -> Result<(), String> {
    match cmd {
        SecretCommand::Seal { resource, key, kid } => {
            let key = signing_key(&key)?;
            let kid = kid.unwrap_or_else(|| sealed::thumbprint(key.verifying_key()));
            let text = sealed::seal(&resource, &key, &kid).map_err(|e| e.to_string())?;
            println!("{text}");
            Ok(())
        }
        SecretCommand::Verify {
            signer,
            sealed: arg,
        } => {
            let key = verifying_key(&signer)?;
            let secret = SealedSecret::parse(&read_arg(&arg)?).map_err(|e| e.to_string())?;
            let vault = secret.verify(&key).map_err(|e| e.to_string())?;
            println!(
                "{}",
                json!({"kid": secret.kid(), "resource": vault.resource, "type": "vault", "provider": "kbs"})
            );
            Ok(())
        }
        SecretCommand::Jwk { key, kid } => {
            let key = verifying_key(&key)?;
            let kid = kid.unwrap_or_else(|| sealed::thumbprint(&key));
            println!("{}", sealed::public_jwk(&key, &kid));
            Ok(())
        }
    }
}
