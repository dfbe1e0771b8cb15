//! KBS resources for the workload: what the workload API and sealed secrets fetch through the
//! boot's attested KBS session.
//!
//! [`ResourceSource`] is the one thing both need from the session. [`SingleFlight`] in front
//! of it makes concurrent requests for the same resource share one fetch; nothing is cached
//! (in memory after the fetch completes, or ever on disk): each later request fetches again,
//! so a resource the KBS stops releasing stops being served.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::gate::WorkloadCounters;

/// Why a resource could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResourceError {
    pub kind: ResourceErrorKind,
    /// One line naming the cause (the KBS's `type` and `detail` when it refused).
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceErrorKind {
    /// The KBS could not be reached (connection, timeout, 5xx).
    Unreachable,
    /// The KBS answered and refused (policy, missing resource, attestation failed).
    Refused,
    /// Anything else: decryption failed, bad response, no attested session.
    Failed,
}

/// A resource's bytes, wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// The boot's attested KBS session, as the workload features use it.
#[async_trait]
pub trait ResourceSource: Send + Sync {
    /// The decrypted bytes of `path` (`repo/type/tag`, already validated).
    async fn get_resource(&self, path: &str) -> Result<Secret, ResourceError>;
}

impl From<vigil_kbc::Error> for ResourceError {
    fn from(e: vigil_kbc::Error) -> ResourceError {
        let kind = if e.is_retryable() {
            ResourceErrorKind::Unreachable
        } else if matches!(
            e,
            vigil_kbc::Error::Rejected { .. } | vigil_kbc::Error::Unauthorized { .. }
        ) {
            ResourceErrorKind::Refused
        } else {
            ResourceErrorKind::Failed
        };
        ResourceError {
            kind,
            message: format!("KBS: {e}"),
        }
    }
}

/// The boot's one attested session (attests on first use and again on a 401, within the
/// `[attestation.kbs]` bounds).
#[async_trait]
impl ResourceSource for vigil_kbc::KbsSession {
    async fn get_resource(&self, path: &str) -> Result<Secret, ResourceError> {
        Ok(Zeroizing::new(
            vigil_kbc::KbsSession::get_resource(self, path).await?,
        ))
    }
}

type Shared = Result<Arc<Secret>, ResourceError>;

/// Concurrent requests for one resource share one fetch from `source`.
pub struct SingleFlight {
    source: Arc<dyn ResourceSource>,
    inflight: Mutex<HashMap<String, Arc<OnceCell<Shared>>>>,
    counters: Arc<WorkloadCounters>,
}

impl SingleFlight {
    pub fn new(source: Arc<dyn ResourceSource>, counters: Arc<WorkloadCounters>) -> SingleFlight {
        SingleFlight {
            source,
            inflight: Mutex::new(HashMap::new()),
            counters,
        }
    }
}

/// Counts a request as waiting on another's fetch for as long as it waits (also when the
/// waiting request is dropped: its client went away).
struct Waiting<'a>(&'a WorkloadCounters);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ResourceSource for SingleFlight {
    async fn get_resource(&self, path: &str) -> Result<Secret, ResourceError> {
        let (cell, joined) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(path) {
                Some(cell) => (cell.clone(), true),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    map.insert(path.to_string(), cell.clone());
                    (cell, false)
                }
            }
        };
        let waiting = joined.then(|| {
            self.counters.fetch_waiters.fetch_add(1, Ordering::Relaxed);
            Waiting(&self.counters)
        });
        // If the request running the fetch is dropped, a waiting one takes it over.
        let shared = cell
            .get_or_init(|| async {
                self.counters.kbs_fetches.fetch_add(1, Ordering::Relaxed);
                self.source.get_resource(path).await.map(Arc::new)
            })
            .await
            .clone();
        drop(waiting);
        {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(path).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(path);
            }
        }
        shared.map(|bytes| Zeroizing::new(bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Answers once released (and from then on at once), counting calls.
    struct Gated {
        calls: AtomicU64,
        release: tokio::sync::watch::Sender<bool>,
        fail: bool,
    }

    impl Gated {
        fn new(fail: bool) -> Arc<Gated> {
            Arc::new(Gated {
                calls: AtomicU64::new(0),
                release: tokio::sync::watch::channel(false).0,
                fail,
            })
        }
    }

    #[async_trait]
    impl ResourceSource for Gated {
        async fn get_resource(&self, path: &str) -> Result<Secret, ResourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            if self.fail {
                return Err(ResourceError {
                    kind: ResourceErrorKind::Unreachable,
                    message: "down".into(),
                });
            }
            Ok(Zeroizing::new(path.as_bytes().to_vec()))
        }
    }

    async fn until(counters: &WorkloadCounters, waiters: u64) {
        while counters.fetch_waiters.load(Ordering::SeqCst) != waiters {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch_and_nothing_is_kept() {
        for fail in [false, true] {
            let source = Gated::new(fail);
            let counters = Arc::new(WorkloadCounters::default());
            let sf = Arc::new(SingleFlight::new(source.clone(), counters.clone()));
            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let sf = sf.clone();
                    tokio::spawn(async move { sf.get_resource("a/b/c").await })
                })
                .collect();
            until(&counters, 4).await;
            // Another resource is its own fetch.
            let other = {
                let sf = sf.clone();
                tokio::spawn(async move { sf.get_resource("a/b/d").await })
            };
            while source.calls.load(Ordering::SeqCst) != 2 {
                tokio::task::yield_now().await;
            }
            source.release.send_replace(true);
            for t in tasks {
                match t.await.unwrap() {
                    Ok(bytes) => assert_eq!(&bytes[..], b"a/b/c"),
                    Err(e) => assert!(fail && e.kind == ResourceErrorKind::Unreachable),
                }
            }
            assert_eq!(other.await.unwrap().is_ok(), !fail);
            assert_eq!(source.calls.load(Ordering::SeqCst), 2);
            assert_eq!(counters.kbs_fetches.load(Ordering::SeqCst), 2);
            assert_eq!(counters.fetch_waiters.load(Ordering::SeqCst), 0);
            // Done fetches are forgotten: the next request fetches again.
            assert_eq!(sf.get_resource("a/b/c").await.is_ok(), !fail);
            assert_eq!(source.calls.load(Ordering::SeqCst), 3);
        }
    }

    #[tokio::test]
    async fn a_dropped_fetcher_hands_the_fetch_to_a_waiter() {
        let source = Gated::new(false);
        let counters = Arc::new(WorkloadCounters::default());
        let sf = Arc::new(SingleFlight::new(source.clone(), counters.clone()));
        let first = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.get_resource("a/b/c").await })
        };
        while source.calls.load(Ordering::SeqCst) != 1 {
            tokio::task::yield_now().await;
        }
        let second = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.get_resource("a/b/c").await })
        };
        until(&counters, 1).await;
        first.abort();
        let _ = first.await;
        // The waiter starts its own fetch; release it.
        while source.calls.load(Ordering::SeqCst) != 2 {
            tokio::task::yield_now().await;
        }
        source.release.send_replace(true);
        assert_eq!(&second.await.unwrap().unwrap()[..], b"a/b/c");
        assert_eq!(counters.fetch_waiters.load(Ordering::SeqCst), 0);
    }
}
