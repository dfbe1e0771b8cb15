//! What the agent's decision logs are written with: the size-rotated log file, the
//! timestamp format, and the endpoints Kata leaves out of its input log. (The records
//! themselves, the audit log's and the input log's `{"kind","request"}` lines, are made by
//! the agent, which also counts the allow-list's decisions.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Endpoints Kata leaves out of its input log: frequent and uninteresting (stats, stream
/// reads) or large and available elsewhere (the SetPolicy text).
pub const INPUT_LOG_SKIPPED: &[&str] = &[
    "StatsContainerRequest",
    "ReadStreamRequest",
    "SetPolicyRequest",
];

/// An append-only line log bounded in size: when a line would take the current file past
/// `max_bytes`, the file is rotated to `<path>.1` (older ones shift up to `<path>.<keep>`,
/// the oldest is dropped).
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    inner: Mutex<Option<(File, u64)>>,
}

impl RotatingLog {
    /// Open (append) `path`. `keep` is the number of rotated files retained besides the
    /// current one; `max_bytes` must leave room for at least one line.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            max_bytes: max_bytes.max(1),
            keep,
            inner: Mutex::new(Some((file, len))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&self) -> io::Result<File> {
        if self.keep == 0 {
            return OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path);
        }
        match fs::remove_file(self.rotated(self.keep)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for n in (1..self.keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
    }

    /// Append one line (a newline is added).
    pub fn write_line(&self, line: &str) -> io::Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let len = line.len() as u64 + 1;
        let (mut file, mut written) = match guard.take() {
            Some(f) => f,
            None => (
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
                fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            ),
        };
        if written > 0 && written + len > self.max_bytes {
            drop(file);
            file = self.rotate()?;
            written = 0;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let res = file.write_all(&buf);
        if res.is_ok() {
            written += len;
        }
        *guard = Some((file, written));
        res
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-24T05:03:30.123Z`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}
