//! The HTTP/1.1 listener, on its own thread and single-threaded runtime so that nothing a
//! workload sends (a flood of connections, slow clients, evidence requests) can take CPU or
//! runtime workers from the agent's ttrpc API. Its own limits: a cap on connections (more get
//! 503), a time limit for request headers and for a whole connection, small header buffers,
//! at most two evidence calls at once and one token handshake at a time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{watch, Semaphore};
use vigil_policy::Outcome;

use super::handlers::{self, Ctx, Reply};
use super::route::body;
use crate::gate::{WorkloadCall, WorkloadEndpoint};

/// Time a client has to send a request's headers (also the idle limit between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may stay open, whatever it does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Request head buffer (hyper's minimum); a longer head is answered 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A running workload API.
pub struct Listener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Binds `addr` now (so a taken port fails start-up) and serves on a new thread.
    pub fn start(addr: SocketAddr, ctx: Ctx) -> Result<Listener, String> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("workload API: binding {addr}: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("workload API: {e}"))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| format!("workload API: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(4)
            .thread_name("vigil-workload-blocking")
            .build()
            .map_err(|e| format!("workload API: starting its runtime: {e}"))?;
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("vigil-workload-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => serve(l, Arc::new(ctx), stop_rx).await,
                        Err(e) => tracing::error!(error = %e, "workload API: listener"),
                    }
                });
                // Blocking evidence calls still running are abandoned, not waited for.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("workload API: starting its thread: {e}"))?;
        Ok(Listener {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes connections, and waits for the thread.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: keep serving, without spinning.
                    tracing::warn!(error = %e, "workload API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.audit(WorkloadCall {
                endpoint: WorkloadEndpoint::Other,
                resource: None,
                outcome: Outcome::Error,
                status: 503,
                reason: format!(
                    "more than [workload_api] max_connections = {} connections",
                    ctx.config.max_connections
                ),
            });
            tokio::spawn(busy(stream));
            continue;
        };
        let ctx = ctx.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc_ctx = ctx.clone();
            let svc = hyper::service::service_fn(move |req| {
                let ctx = svc_ctx.clone();
                async move { Ok::<_, Infallible>(respond(&ctx, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::pin!(lifetime);
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = &mut lifetime => None,
                _ = stop.changed() => None,
            };
            match finished {
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "workload API: connection ended");
                    if let Some(call) = refused_before_routing(&e) {
                        ctx.audit(call);
                    }
                }
                Some(Ok(())) => {}
                None => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

/// A request hyper answered (or dropped) before it reached the router: still a call that is
/// audited and counted.
fn refused_before_routing(e: &hyper::Error) -> Option<WorkloadCall> {
    let (status, reason) = if e.is_parse_too_large() {
        (431, format!("request head over {MAX_HEAD_BYTES} bytes"))
    } else if e.is_parse() {
        (400, "not a valid HTTP/1.1 request".to_string())
    } else if e.is_timeout() {
        (
            408,
            format!(
                "request head not complete within {} s: connection closed",
                HEADER_TIMEOUT.as_secs()
            ),
        )
    } else {
        return None;
    };
    Some(WorkloadCall {
        endpoint: WorkloadEndpoint::Other,
        resource: None,
        outcome: Outcome::Error,
        status,
        reason,
    })
}

/// Answers a connection over the cap with 503 and closes it, spending at most a second.
async fn busy(mut stream: tokio::net::TcpStream) {
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body::UNAVAILABLE.len(),
        body::UNAVAILABLE
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn respond(ctx: &Ctx, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Only GET is served, and no endpoint takes a body: one that announces a body is refused
    // (and the connection closed) rather than read.
    let has_body = !req.body().is_end_stream();
    let reply = handlers::handle(ctx, peer, req.method(), req.uri(), has_body).await;
    into_response(reply, has_body)
}

fn into_response(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(reply.body));
    *r.status_mut() = reply.status;
    if let Some(ct) = reply.content_type {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if reply.status != StatusCode::OK {
        if let Ok(v) = HeaderValue::from_str(&reply.reason) {
            r.headers_mut().insert("x-vigil-reason", v);
        }
    }
    if close {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
