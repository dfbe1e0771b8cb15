//! CopyFile's policy input. Kata does not show the policy the raw request (its `data` may
//! be megabytes of file content); it shows a summary whose `file_type` is decoded from the
//! mode bits and, for symlinks, the link target decoded from `data`. Its `path` is the
//! request's, normalised ([`normalize_path`]) the way the agent reads it, so a policy matching
//! paths cannot be sidestepped by spelling one path differently (`/a//./b`).

use base64::Engine as _;
use serde_json::{json, Value};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Why a CopyFile request could not be turned into a policy input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyFileInputError {
    #[error("CopyFileRequest field {field:?} is missing or not {expected}")]
    Field {
        field: &'static str,
        expected: &'static str,
    },
    #[error("CopyFileRequest symlink target is not valid UTF-8")]
    SymlinkNotUtf8,
    #[error("CopyFileRequest field \"data\" is not valid base64: {0}")]
    DataEncoding(String),
}

/// The `file_type` Kata derives from the `S_IFMT` bits of `file_mode`.
pub fn file_type(mode: u32) -> &'static str {
    match mode & S_IFMT {
        S_IFREG => "Regular",
        S_IFDIR => "Directory",
        S_IFLNK => "Symlink",
        _ => "Unknown",
    }
}

/// A path as the file system reads it: empty and `.` components dropped (`//`, `/./`, a
/// trailing `/`), everything else kept, `..` included (the agent refuses those; the policy
/// sees them to refuse too). `"/a//b/./c/"` is `"/a/b/c"`; `"/"` stays `"/"`.
pub fn normalize_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) if !path.is_empty() => ".".to_string(),
        (false, _) => joined,
    }
}

fn field<'a>(req: &'a Value, name: &'static str) -> Option<&'a Value> {
    req.get(name)
}

fn int_field<T: TryFrom<i64>>(
    req: &Value,
    name: &'static str,
    expected: &'static str,
) -> Result<T, CopyFileInputError> {
    field(req, name)
        .and_then(Value::as_i64)
        .and_then(|n| T::try_from(n).ok())
        .ok_or(CopyFileInputError::Field {
            field: name,
            expected,
        })
}

/// The symlink target bytes: `data` as serialised in the Kata JSON shape (serde's default for
/// `Vec<u8>`, an array of numbers) or, accepted as well, a base64 string (protobuf JSON).
fn data_bytes(req: &Value) -> Result<Vec<u8>, CopyFileInputError> {
    let bad = || CopyFileInputError::Field {
        field: "data",
        expected: "an array of bytes or a base64 string",
    };
    match field(req, "data") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(bad)
            })
            .collect(),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| CopyFileInputError::DataEncoding(e.to_string())),
        Some(_) => Err(bad()),
    }
}

/// Convert a CopyFileRequest in the Kata JSON shape into the input Kata's policy sees:
/// `{path, file_type, symlink_target, file_size, file_mode, dir_mode, uid, gid, offset}`.
/// The file content is never part of it.
pub fn copy_file_input(req: &Value) -> Result<Value, CopyFileInputError> {
    let path = field(req, "path")
        .and_then(Value::as_str)
        .ok_or(CopyFileInputError::Field {
            field: "path",
            expected: "a string",
        })?;
    let file_mode: u32 = int_field(req, "file_mode", "a u32")?;
    let dir_mode: u32 = int_field(req, "dir_mode", "a u32")?;
    let file_size: i64 = int_field(req, "file_size", "an i64")?;
    let uid: i32 = int_field(req, "uid", "an i32")?;
    let gid: i32 = int_field(req, "gid", "an i32")?;
    let offset: i64 = int_field(req, "offset", "an i64")?;
    let kind = file_type(file_mode);
    let symlink_target = if kind == "Symlink" {
        let bytes = data_bytes(req)?;
        Value::String(String::from_utf8(bytes).map_err(|_| CopyFileInputError::SymlinkNotUtf8)?)
    } else {
        Value::Null
    };
    Ok(json!({
        "path": normalize_path(path),
        "file_type": kind,
        "symlink_target": symlink_target,
        "file_size": file_size,
        "file_mode": file_mode,
        "dir_mode": dir_mode,
        "uid": uid,
        "gid": gid,
        "offset": offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_the_file_system_reads_them() {
        for (given, want) in [
            ("/run/s/shared/a", "/run/s/shared/a"),
            ("/run//s/./shared/a/", "/run/s/shared/a"),
            ("//run/s/shared/./././a", "/run/s/shared/a"),
            ("/run/s/shared/../x", "/run/s/shared/../x"),
            ("/", "/"),
            ("/./", "/"),
            ("a//b", "a/b"),
            ("./", "."),
            ("", ""),
        ] {
            assert_eq!(normalize_path(given), want, "{given:?}");
        }
        let input = copy_file_input(&json!({
            "path": "/run//s/./f", "file_mode": 0o100644, "dir_mode": 0, "file_size": 0,
            "uid": 0, "gid": 0, "offset": 0,
        }))
        .unwrap();
        assert_eq!(input["path"], "/run/s/f");
    }
}
