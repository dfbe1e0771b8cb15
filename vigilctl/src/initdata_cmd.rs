//! `vigilctl initdata ...`: make and check the initdata a tenant gives a confidential pod, with
//! the same parser and digest code the agent uses (`vigil_attester::initdata`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use vigil_attester::binding;
use vigil_attester::initdata::{self, HashAlgorithm, InitData};
use vigil_policy::{Limits, PolicyEngine};

/// The `[data]` entry the agent reads its config from (the agent's `INITDATA_CONFIG_KEY`).
const CONFIG_ENTRY: &str = "vigil.toml";
/// The `[data]` entry holding the initial policy.
const POLICY_ENTRY: &str = "policy.rego";

#[derive(Subcommand, Debug)]
pub enum InitdataCommand {
    /// Write the initdata TOML for an agent config (and initial policy); or print its digest
    /// (--digest) or Kata's pod annotation value (--annotation)
    Pack {
        /// The agent's config (TOML); becomes the [data] entry "vigil.toml"
        #[arg(long)]
        config: PathBuf,
        /// The initial policy (Rego, package agent_policy); becomes "policy.rego"
        #[arg(long)]
        policy: Option<PathBuf>,
        /// More [data] entries, KEY=FILE (e.g. "cdh.toml=cdh.toml"); repeatable
        #[arg(long = "entry", value_name = "KEY=FILE")]
        entries: Vec<String>,
        /// Digest algorithm recorded in the initdata
        #[arg(long, value_enum, default_value_t = Algorithm::Sha384)]
        algorithm: Algorithm,
        /// Write the initdata TOML to FILE (stdout prints only what --digest/--annotation ask)
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print the digest in hex: the whole digest (what the mock TEE's
        /// agent.mock_launch_binding and KBS release rules take), or with --tee the value the
        /// host must set: SNP HOST_DATA (32 bytes) or TDX MRCONFIGID (48 bytes)
        #[arg(long, conflicts_with = "annotation")]
        digest: bool,
        /// With --digest: the launch field to print the digest for
        #[arg(long, value_enum, requires = "digest")]
        tee: Option<LaunchField>,
        /// Print Kata's pod annotation value
        /// (io.katacontainers.config.hypervisor.cc_init_data: base64 of the gzip'd TOML)
        #[arg(long)]
        annotation: bool,
    },
    /// Check initdata (TOML, Kata's block-device layout, or an annotation value) against the
    /// digest or launch field value the host set; exits non-zero on a mismatch
    Verify {
        /// Initdata: TOML text, Kata's block layout ("initdata" magic), or an annotation value
        file: PathBuf,
        /// Expected value in hex: the whole digest, SNP HOST_DATA (32 bytes) or TDX
        /// MRCONFIGID (48 bytes)
        #[arg(long, value_name = "HEX")]
        digest: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl From<Algorithm> for HashAlgorithm {
    fn from(a: Algorithm) -> HashAlgorithm {
        match a {
            Algorithm::Sha256 => HashAlgorithm::Sha256,
            Algorithm::Sha384 => HashAlgorithm::Sha384,
            Algorithm::Sha512 => HashAlgorithm::Sha512,
        }
    }
}

/// A launch-time field the host programs with the initdata digest.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LaunchField {
    /// SEV-SNP HOST_DATA, 32 bytes (digest truncated or zero-padded)
    Snp,
    /// TDX MRCONFIGID, 48 bytes (digest truncated or zero-padded)
    Tdx,
}

impl LaunchField {
    fn len(self) -> usize {
        match self {
            LaunchField::Snp => 32,
            LaunchField::Tdx => 48,
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Refuses entries the agent would refuse at boot: a config that is not TOML, a policy that
/// does not compile. Catching them here costs nothing; at boot it costs a launch.
fn check_entries(data: &BTreeMap<String, String>, source: &str) -> Result<(), String> {
    if let Some(config) = data.get(CONFIG_ENTRY) {
        toml::from_str::<toml::Table>(config).map_err(|e| {
            format!(
                "{source}: \"{CONFIG_ENTRY}\" is not valid TOML: {}",
                e.to_string().trim_end().replace('\n', " | ")
            )
        })?;
    }
    if let Some(policy) = data.get(POLICY_ENTRY) {
        PolicyEngine::load(
            policy,
            &vigil_protos::agent_request_names(),
            Limits::default(),
        )
        .map_err(|e| format!("{source}: \"{POLICY_ENTRY}\": {e}"))?;
    }
    Ok(())
}

/// Reads initdata in any form a tenant or host handles: Kata's block layout, an annotation
/// value (base64 of gzip, which always starts "H4sI"), or the TOML text itself.
fn load_any(path: &Path) -> Result<InitData, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let named = |e: initdata::InitDataError| format!("{}: {e}", path.display());
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"H4sI") {
        let text = std::str::from_utf8(trimmed).map_err(|_| {
            format!(
                "{}: looks like an annotation value but is not text",
                path.display()
            )
        })?;
        return InitData::parse(&initdata::from_annotation(text).map_err(named)?).map_err(named);
    }
    InitData::from_bytes(&bytes).map_err(named)
}

pub fn run(cmd: InitdataCommand) -> Result<(), String> {
    match cmd {
        InitdataCommand::Pack {
            config,
            policy,
            entries,
            algorithm,
            output,
            digest,
            tee,
            annotation,
        } => {
            let mut data = BTreeMap::new();
            data.insert(CONFIG_ENTRY.to_string(), read(&config)?);
            if let Some(p) = &policy {
                data.insert(POLICY_ENTRY.to_string(), read(p)?);
            }
            for entry in &entries {
                let (key, file) = entry
                    .split_once('=')
                    .filter(|(k, f)| !k.is_empty() && !f.is_empty())
                    .ok_or_else(|| format!("--entry {entry:?} is not KEY=FILE"))?;
                if data.contains_key(key) {
                    return Err(format!(
                        "--entry {key:?} is given twice (or clashes with --config/--policy)"
                    ));
                }
                data.insert(key.to_string(), read(Path::new(file))?);
            }
            check_entries(&data, "initdata")?;
            let packed = InitData::render(algorithm.into(), &data).map_err(|e| e.to_string())?;
            if let Some(path) = &output {
                std::fs::write(path, &packed.toml)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            if digest {
                let value = match tee {
                    Some(field) => binding::expected_field(&packed.digest, field.len()),
                    None => packed.digest.clone(),
                };
                println!("{}", hex::encode(value));
            } else if annotation {
                println!("{}", initdata::to_annotation(&packed.toml));
            } else if output.is_none() {
                print!("{}", packed.toml);
            }
            Ok(())
        }
        InitdataCommand::Verify { file, digest } => {
            let expected =
                hex::decode(digest.trim()).map_err(|e| format!("--digest is not hex: {e}"))?;
            let d = load_any(&file)?;
            check_entries(&d.data, &file.display().to_string())?;
            binding::check(&d.digest, &expected).map_err(|e| {
                format!(
                    "{}: does not match --digest ({} digest {}): {e}",
                    file.display(),
                    d.algorithm.name(),
                    hex::encode(&d.digest)
                )
            })?;
            let what = match expected.len() {
                n if n == d.digest.len() => "the whole digest".to_string(),
                32 => "SNP HOST_DATA".to_string(),
                48 => "TDX MRCONFIGID".to_string(),
                n => format!("a {n}-byte field"),
            };
            let keys: Vec<&str> = d.data.keys().map(String::as_str).collect();
            println!(
                "{}: ok: {} digest {} matches {what}; entries: {}",
                file.display(),
                d.algorithm.name(),
                hex::encode(&d.digest),
                keys.join(", ")
            );
            Ok(())
        }
    }
}
