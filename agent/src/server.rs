//! The ttrpc listener: address checks, stale socket clean-up, graceful shutdown.

use std::collections::HashMap;
use std::path::Path;

use ttrpc::r#async::{Server, Service};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server address {0:?}: expected vsock://CID:PORT or unix:///PATH")]
    BadAddress(String),
    #[error("socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: ttrpc::Error },
}

/// Checks the address form before binding, so a typo gets a clear message.
pub fn validate_addr(addr: &str) -> Result<(), ServerError> {
    if let Some(path) = addr.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(ServerError::BadAddress(addr.into()));
        }
        return Ok(());
    }
    if let Some(rest) = addr.strip_prefix("vsock://") {
        let ok = rest.split_once(':').is_some_and(|(cid, port)| {
            (cid == "-1" || cid.parse::<u32>().is_ok()) && port.parse::<u32>().is_ok()
        });
        return if ok {
            Ok(())
        } else {
            Err(ServerError::BadAddress(addr.into()))
        };
    }
    Err(ServerError::BadAddress(addr.into()))
}

/// A unix socket file left by a previous run blocks the bind. Remove it only if it is a socket
/// that nobody answers on; anything else at that path is an error, not ours to delete.
fn clear_stale_socket(path: &str) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt;
    if path.starts_with('@') {
        return Ok(()); // abstract socket: no file
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ServerError::Socket {
                path: path.into(),
                reason: e.to_string(),
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::Socket {
            path: path.into(),
            reason: "exists and is not a socket".into(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::Socket {
            path: path.into(),
            reason: "another process is listening on it".into(),
        });
    }
    std::fs::remove_file(path).map_err(|e| ServerError::Socket {
        path: path.into(),
        reason: format!("removing stale socket: {e}"),
    })
}

/// Binds `addr`, registers `services` and starts serving in the background.
pub async fn listen(addr: &str, services: HashMap<String, Service>) -> Result<Server, ServerError> {
    validate_addr(addr)?;
    if let Some(path) = addr.strip_prefix("unix://") {
        clear_stale_socket(path)?;
        if let Some(parent) = Path::new(path).parent() {
            if !path.starts_with('@') && !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| ServerError::Socket {
                    path: path.into(),
                    reason: format!("creating {}: {e}", parent.display()),
                })?;
            }
        }
    }
    let listen_err = |source| ServerError::Listen {
        addr: addr.into(),
        source,
    };
    let mut server = Server::new()
        .bind(addr)
        .map_err(listen_err)?
        .register_service(services);
    server.start().await.map_err(listen_err)?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert!(validate_addr("vsock://-1:1024").is_ok());
        assert!(validate_addr("vsock://3:1024").is_ok());
        assert!(validate_addr("unix:///run/vigil/agent.sock").is_ok());
        for bad in [
            "vsock://x:1",
            "vsock://1024",
            "tcp://127.0.0.1:1",
            "unix://",
            "/run/a.sock",
        ] {
            let msg = validate_addr(bad).unwrap_err().to_string();
            assert!(msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn stale_socket_removed_but_not_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        clear_stale_socket(sock.to_str().unwrap()).unwrap();
        assert!(!sock.exists());

        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(clear_stale_socket(file.to_str().unwrap()).is_err());
        assert!(file.exists());

        let live = dir.path().join("live.sock");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(clear_stale_socket(live.to_str().unwrap()).is_err());
        assert!(live.exists());
    }
}
