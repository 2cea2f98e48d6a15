//! The admin HTTP API: the [`Notifier`]'s operations as JSON over HTTP, with
//! Prometheus metrics and health checks beside them.
//!
//! It binds to loopback by default. Beyond loopback it refuses to start
//! without a bearer token, and with a token every route but `/healthz` and
//! `/readyz` requires it. Errors are JSON `{"error": "..."}`: 404 for an
//! unknown subscriber or channel, 400 for bad input.

use super::api::{self, ChannelsBody, Readiness};
use super::config::ControlSettings;
use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use pgnotifier::durable::{DeadLetter, DurableError};
use pgnotifier::registry::RegistryError;
use pgnotifier::Error;
use pgnotifier::{ChannelView, ListenerView, Notifier, Selection, SubscriberView};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long a client may take to send a request's headers, so a half-sent
/// request cannot hold a connection (or shutdown) for long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 128;
/// The longest request line taken. The parser's own limit (64 KiB) answers
/// with a bare 414; this one answers with JSON, like every other error.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// How long shutdown waits for requests in flight before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the live stream's state is looked at: a change goes out at
/// most this often, to every stream at once.
const LIVE_EVERY: Duration = Duration::from_millis(500);
/// Live streams open at once: each holds a connection, and `ctl` must
/// still get one.
const MAX_STREAMS: usize = 64;

/// The running admin server.
pub struct AdminServer {
    addr: SocketAddr,
    addr_file: PathBuf,
    token: Arc<ArcSwapOption<String>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Bind `settings.admin_addr` (refusing a non-loopback address without a
    /// token), write the bound address to the data dir for `ctl`, and serve.
    pub async fn start(notifier: Notifier, settings: &ControlSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        settings.check_exposure()?;
        let listener = tokio::net::TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("cannot bind the admin API to {}", settings.admin_addr))?;
        let addr = listener.local_addr()?;
        let addr_file = settings.addr_file();
        std::fs::create_dir_all(&settings.data_dir)
            .and_then(|()| std::fs::write(&addr_file, format!("{addr}\n")))
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        let token = Arc::new(ArcSwapOption::from(
            settings.admin_token.clone().map(Arc::new),
        ));
        let (stop, stopped) = watch::channel(false);
        let live = Live {
            state: Arc::new(watch::channel(Arc::from("")).0),
            stopping: stopped.clone(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        };
        tokio::spawn(follow_live_state(notifier.clone(), live.clone()));
        let app = routes(notifier, token.clone(), live);
        let task = tokio::spawn(serve(listener, app, stopped));
        tracing::info!(%addr, token = settings.admin_token.is_some(), "admin API listening");
        Ok(Self {
            addr,
            addr_file,
            token,
            stop,
            task,
        })
    }

    /// The address bound, with the port chosen if 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Require a new token from now on (a config reload).
    pub fn set_token(&self, token: Option<String>) {
        self.token.store(token.map(Arc::new));
    }

    /// Stop accepting, let requests in flight finish (for a short while),
    /// and remove the address file so `ctl` does not find a host that is gone.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(e) = std::fs::remove_file(&self.addr_file) {
            tracing::debug!(file = %self.addr_file.display(), "cannot remove the address file: {e}");
        }
    }
}

/// Accept and serve connections until `stopped`, then wait a bounded time
/// for the requests in flight.
async fn serve(listener: TcpListener, app: Router, mut stopped: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!("admin API: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "admin API: {MAX_CONNECTIONS} connections open already; closing a new one"
            );
            continue;
        };
        let (app, watcher) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // One deadline for the request line and the headers together.
            let arrived = std::time::Instant::now();
            let Some(stream) = request_line(stream).await else {
                return drop(slot);
            };
            let left = HEADER_READ_TIMEOUT.saturating_sub(arrived.elapsed());
            // One request per connection: every request line is read above.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(left.max(Duration::from_millis(1)))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!("admin API connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "admin API: requests still open {SHUTDOWN_GRACE:?} after shutdown began were cut off"
        );
    }
}

#[derive(Clone)]
struct App {
    notifier: Notifier,
    token: Arc<ArcSwapOption<String>>,
    live: Live,
}

/// The live stream's state, made once for every stream that follows it.
#[derive(Clone)]
struct Live {
    /// The latest state as JSON; a stream subscribes to it.
    state: Arc<watch::Sender<Arc<str>>>,
    /// The server is shutting down: every stream ends.
    stopping: watch::Receiver<bool>,
    streams: Arc<Semaphore>,
}

/// While anyone follows the live stream, make its state every
/// [`LIVE_EVERY`], and pass it on when it changed; until shutdown.
async fn follow_live_state(notifier: Notifier, mut live: Live) {
    let mut every = tokio::time::interval(LIVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = live.stopping.wait_for(|s| *s) => return,
        }
        if live.state.receiver_count() == 0 {
            continue;
        }
        let state = live_state(&notifier);
        live.state.send_if_modified(|current| {
            let changed = **current != *state;
            if changed {
                *current = state;
            }
            changed
        });
    }
}

fn live_state(notifier: &Notifier) -> Arc<str> {
    let state = api::LiveState {
        listener: notifier.listener(),
        channels: notifier.channels(),
        subscribers: notifier.subscribers(),
        last_event: notifier.last_host_event(),
    };
    serde_json::to_string(&state).unwrap_or_default().into()
}

fn routes(notifier: Notifier, token: Arc<ArcSwapOption<String>>, live: Live) -> Router {
    let app = App {
        notifier,
        token,
        live,
    };
    let controlled = Router::new()
        .route(api::METRICS.route, handle(&api::METRICS, metrics))
        .route(api::CHANNELS.route, handle(&api::CHANNELS, channels))
        .route(
            api::ADD_CHANNELS.route,
            handle(&api::ADD_CHANNELS, add_channels),
        )
        .route(
            api::REMOVE_CHANNEL.route,
            handle(&api::REMOVE_CHANNEL, remove_channel),
        )
        .route(
            api::MUTE_CHANNELS.route,
            handle(&api::MUTE_CHANNELS, mute_channels),
        )
        .route(
            api::UNMUTE_CHANNELS.route,
            handle(&api::UNMUTE_CHANNELS, unmute_channels),
        )
        .route(
            api::SUBSCRIBERS.route,
            handle(&api::SUBSCRIBERS, subscribers),
        )
        .route(api::SUBSCRIBER.route, handle(&api::SUBSCRIBER, subscriber))
        .route(api::SUBSCRIBE.route, handle(&api::SUBSCRIBE, subscribe))
        .route(
            api::UNSUBSCRIBE.route,
            handle(&api::UNSUBSCRIBE, unsubscribe),
        )
        .route(
            api::MUTE_SUBSCRIBER.route,
            handle(&api::MUTE_SUBSCRIBER, mute_subscriber),
        )
        .route(
            api::UNMUTE_SUBSCRIBER.route,
            handle(&api::UNMUTE_SUBSCRIBER, unmute_subscriber),
        )
        .route(api::RELOAD.route, handle(&api::RELOAD, reload))
        .route(api::SKIP.route, handle(&api::SKIP, skip))
        .route(
            api::DEAD_LETTERS.route,
            handle(&api::DEAD_LETTERS, dead_letters),
        )
        .route(api::REDELIVER.route, handle(&api::REDELIVER, redeliver))
        .route(api::DISCARD.route, handle(&api::DISCARD, discard))
        .route(api::NOTIFY.route, handle(&api::NOTIFY, notify))
        .route(api::EVENTS.route, handle(&api::EVENTS, events))
        .route(api::LISTENER.route, handle(&api::LISTENER, listener))
        .route(api::START.route, handle(&api::START, start))
        .route(api::STOP.route, handle(&api::STOP, stop))
        .route(api::RESTART.route, handle(&api::RESTART, restart))
        .route(api::STREAM.route, handle(&api::STREAM, stream))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            refuse_browsers_elsewhere,
        ));
    Router::new()
        .route("/", axum::routing::get(|| console(CONSOLE_PAGE)))
        .route(
            "/console.js",
            axum::routing::get(|| console(CONSOLE_SCRIPT)),
        )
        .route(
            "/console.css",
            axum::routing::get(|| console(CONSOLE_STYLE)),
        )
        .route(api::HEALTH.route, handle(&api::HEALTH, || async { "ok\n" }))
        .route(api::READY.route, handle(&api::READY, readyz))
        .merge(controlled)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(app.clone(), warn_unsaved))
        .with_state(app)
}

/// The operator console's files, in the binary: no CDN, nothing to build
/// at install time. The page holds no data: it reads the live stream and
/// acts through the API's routes, with the token when one is set.
const CONSOLE_PAGE: (&str, &str) = (
    "text/html; charset=utf-8",
    include_str!("console/index.html"),
);
const CONSOLE_SCRIPT: (&str, &str) = (
    "text/javascript; charset=utf-8",
    include_str!("console/console.js"),
);
const CONSOLE_STYLE: (&str, &str) = (
    "text/css; charset=utf-8",
    include_str!("console/console.css"),
);

/// One of the console's files, allowed to load nothing from elsewhere and
/// not to be framed.
async fn console((content_type, body): (&'static str, &'static str)) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `handler` on `endpoint`'s method. Routes that share a path (a GET and a
/// POST) are merged by the router.
fn handle<Reply, H, T>(endpoint: &api::Endpoint<Reply>, handler: H) -> MethodRouter<App>
where
    H: Handler<T, App>,
    T: 'static,
{
    let method = MethodFilter::try_from(endpoint.method.clone())
        .expect("the contract's methods are ones a router takes");
    on(method, handler)
}

/// A change that the state file could not keep is applied, but lost at
/// restart: say so in a `Warning` header, which `ctl` prints.
async fn warn_unsaved(State(app): State<App>, request: Request, next: Next) -> Response {
    let changes = request.method() != axum::http::Method::GET;
    let mut response = next.run(request).await;
    if changes {
        // The state file is written off this thread: say what it holds.
        app.notifier.state_saved().await;
    }
    if let (true, Some(reason)) = (changes, app.notifier.unsaved_changes()) {
        let text = format!("299 pgnotifier {:?}", reason);
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().insert(header::WARNING, value);
        }
    }
    response
}

/// Every error is `{"error": ...}`, also those that routing and extractors
/// answer with an empty or plain-text body (405, 413, a bad path).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = match std::str::from_utf8(&text).map(str::trim) {
        Ok(text) if !text.is_empty() => text.to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut out = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// Read the request line (within the header timeout), then hand the
/// connection on with those bytes in front. A line too long is answered here.
async fn request_line(mut stream: tokio::net::TcpStream) -> Option<Prefixed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut read = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(HEADER_READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !read.contains(&b'\n') && read.len() <= MAX_REQUEST_LINE {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
        true
    });
    if !complete.await.unwrap_or(false) {
        return None;
    }
    let line = read.iter().position(|b| *b == b'\n').unwrap_or(read.len());
    if line > MAX_REQUEST_LINE {
        let body = serde_json::to_string(&api::ErrorReply {
            error: format!("request line longer than {MAX_REQUEST_LINE} bytes"),
        })
        .unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return None;
    }
    Some(Prefixed {
        prefix: Bytes::from(read),
        stream,
    })
}

/// A connection with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    stream: tokio::net::TcpStream,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Check the bearer token, when one is set.
async fn authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = app.token.load_full() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer TOKEN)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// A browser is the one client that sends requests its user did not mean:
/// a page of any site can POST to 127.0.0.1 (cross-site request forgery),
/// or read replies as its own through a DNS name that it points at
/// 127.0.0.1 (DNS rebinding). So a request that changes anything is
/// refused when the browser says it comes from another site
/// (`Sec-Fetch-Site`, or an `Origin` that is not this address), and,
/// without a token, any request whose `Host` is not a loopback name.
/// `ctl` sends no such headers, and the address as `Host`.
async fn refuse_browsers_elsewhere(
    State(app): State<App>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name: &header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(&header::HOST).unwrap_or("");
    if app.token.load().is_none() && !is_loopback_host(host) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("the admin API answers requests for a loopback address, not for Host {host:?}: without admin_token, a name that points here could be a page's (DNS rebinding)"),
        )
        .into_response();
    }
    let changes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if changes {
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let same_site = fetch_site.is_none_or(|site| site == "same-origin" || site == "none");
        let origin = text(&header::ORIGIN);
        let same_origin = origin.is_none_or(|origin| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        });
        if !same_site || !same_origin {
            let from = origin.or(fetch_site).unwrap_or("another site");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a cross-site request is refused (from {from}): the admin API changes state only for ctl, or for a page it serves itself"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme's case does not matter.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Compare without stopping at the first difference, so timing tells
/// nothing about how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error as JSON, with its status.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(api::ErrorReply {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Registry(
                RegistryError::UnknownChannel(_)
                | RegistryError::UnknownSubscriber(_)
                | RegistryError::NotSubscribed { .. },
            ) => StatusCode::NOT_FOUND,
            Error::Registry(RegistryError::InvalidChannel(_)) | Error::NotAPlugin(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::Registry(RegistryError::SubscriberExists(_)) => StatusCode::CONFLICT,
            Error::Durable(DurableError::UnknownDeadLetter(_)) => StatusCode::NOT_FOUND,
            Error::Durable(DurableError::NotDurable(_)) => StatusCode::CONFLICT,
            // The plugin file is at fault; the running version keeps running.
            Error::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The database refused or could not be reached.
            Error::Notify { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, pgnotifier::printable::with_causes(&e))
    }
}

/// A handler's answer: `R`, the reply its endpoint names, or an error.
type Reply<R> = Result<Json<R>, ApiError>;

impl ChannelsBody {
    /// The channels named; at least one.
    fn named(self) -> Result<Vec<String>, ApiError> {
        match self.channels {
            Some(channels) if !channels.is_empty() && !self.all => Ok(channels),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name at least one channel: {\"channels\": [\"...\"]}",
            )),
        }
    }

    /// For channel mutes: the channels named, or all when `"all": true`.
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.all, self.channels) {
            (true, None) => Ok(Selection::All),
            (false, Some(channels)) if !channels.is_empty() => Ok(Selection::Only(channels)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name the channels ({\"channels\": [\"...\"]}) or say {\"all\": true}",
            )),
        }
    }

    /// For subscriber mutes: the channels named, or all of the subscriber's.
    fn of_subscriber(self) -> Selection {
        match self.channels {
            Some(channels) if !channels.is_empty() && !self.all => Selection::Only(channels),
            _ => Selection::All,
        }
    }
}

/// The JSON body; an empty one is `{}`.
fn body(bytes: &[u8]) -> Result<ChannelsBody, ApiError> {
    json_body(bytes)
}

/// A JSON body; none (or blanks) is the default one.
fn json_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

async fn readyz(State(app): State<App>) -> Response {
    match app.notifier.readiness() {
        Ok(()) => Json(Readiness {
            ready: true,
            cluster: Some(app.notifier.cluster()),
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                cluster: None,
                reason: Some(reason.to_string()),
            }),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.notifier.metrics(),
    )
        .into_response()
}

// Channels: each operation answers with every channel.

fn channel_list(app: &App) -> Reply<Vec<ChannelView>> {
    Ok(Json(app.notifier.channels()))
}

async fn channels(State(app): State<App>) -> Reply<Vec<ChannelView>> {
    channel_list(&app)
}

async fn add_channels(State(app): State<App>, request: Bytes) -> Reply<Vec<ChannelView>> {
    app.notifier.add_channels(body(&request)?.named()?)?;
    channel_list(&app)
}

async fn remove_channel(
    State(app): State<App>,
    Path(channel): Path<String>,
) -> Reply<Vec<ChannelView>> {
    app.notifier.remove_channels(channel)?;
    channel_list(&app)
}

async fn mute_channels(State(app): State<App>, request: Bytes) -> Reply<Vec<ChannelView>> {
    app.notifier.mute_channels(body(&request)?.selection()?)?;
    channel_list(&app)
}

async fn unmute_channels(State(app): State<App>, request: Bytes) -> Reply<Vec<ChannelView>> {
    app.notifier.unmute_channels(body(&request)?.selection()?)?;
    channel_list(&app)
}

// Subscribers: each operation on one answers with it.

fn subscriber_view(app: &App, id: &str) -> Reply<SubscriberView> {
    match app.notifier.subscribers().into_iter().find(|s| s.id == id) {
        Some(view) => Ok(Json(view)),
        None => Err(Error::from(RegistryError::UnknownSubscriber(id.to_owned())).into()),
    }
}

async fn subscribers(State(app): State<App>) -> Reply<Vec<SubscriberView>> {
    Ok(Json(app.notifier.subscribers()))
}

async fn subscriber(State(app): State<App>, Path(id): Path<String>) -> Reply<SubscriberView> {
    subscriber_view(&app, &id)
}

async fn subscribe(
    State(app): State<App>,
    Path(id): Path<String>,
    request: Bytes,
) -> Reply<SubscriberView> {
    app.notifier.subscribe_to(&id, body(&request)?.named()?)?;
    subscriber_view(&app, &id)
}

async fn unsubscribe(
    State(app): State<App>,
    Path(id): Path<String>,
    request: Bytes,
) -> Reply<SubscriberView> {
    app.notifier.unsubscribe(&id, body(&request)?.named()?)?;
    subscriber_view(&app, &id)
}

async fn mute_subscriber(
    State(app): State<App>,
    Path(id): Path<String>,
    request: Bytes,
) -> Reply<SubscriberView> {
    app.notifier
        .mute_subscriber(&id, body(&request)?.of_subscriber())?;
    subscriber_view(&app, &id)
}

async fn unmute_subscriber(
    State(app): State<App>,
    Path(id): Path<String>,
    request: Bytes,
) -> Reply<SubscriberView> {
    app.notifier
        .unmute_subscriber(&id, body(&request)?.of_subscriber())?;
    subscriber_view(&app, &id)
}

async fn reload(State(app): State<App>, Path(id): Path<String>) -> Reply<SubscriberView> {
    app.notifier.reload_plugin(&id).await?;
    subscriber_view(&app, &id)
}

async fn skip(State(app): State<App>, Path(id): Path<String>) -> Reply<SubscriberView> {
    app.notifier.skip_ahead(&id).await?;
    subscriber_view(&app, &id)
}

// Dead letters.

async fn dead_letters(State(app): State<App>) -> Reply<Vec<DeadLetter>> {
    Ok(Json(app.notifier.dead_letters().await?))
}

async fn redeliver(State(app): State<App>, Path(id): Path<String>) -> Reply<DeadLetter> {
    Ok(Json(app.notifier.redeliver(dead_letter_id(&id)?).await?))
}

async fn discard(State(app): State<App>, Path(id): Path<String>) -> Reply<DeadLetter> {
    let id = dead_letter_id(&id)?;
    Ok(Json(app.notifier.discard_dead_letter(id).await?))
}

fn dead_letter_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a dead letter id (a number)"),
        )
    })
}

// Test notifications and the host's events.

async fn notify(
    State(app): State<App>,
    Path(channel): Path<String>,
    request: Bytes,
) -> Reply<api::Notified> {
    let api::NotifyBody { payload } = json_body(&request)?;
    app.notifier.notify(&channel, &payload).await?;
    Ok(Json(api::Notified { channel, payload }))
}

async fn events(
    State(app): State<App>,
    Query(query): Query<api::EventsQuery>,
) -> Reply<Vec<pgnotifier::HostEvent>> {
    Ok(Json(app.notifier.host_events(query.after)))
}

// The listener: each operation answers with its state.

/// The live state as server-sent events: the state now, then each change.
async fn stream(State(app): State<App>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let Ok(slot) = app.live.streams.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live streams are open already"),
        )
        .into_response();
    };
    let event = |state: &str| {
        Ok::<_, std::convert::Infallible>(Event::default().event("state").data(state))
    };
    let now = event(&live_state(&app.notifier));
    let changes = futures_util::stream::unfold(
        (app.live.state.subscribe(), app.live.stopping.clone(), slot),
        move |(mut state, mut stopping, slot)| async move {
            tokio::select! {
                changed = state.changed() => changed.ok()?,
                _ = stopping.wait_for(|s| *s) => return None,
            }
            let next = event(&state.borrow_and_update());
            Some((next, (state, stopping, slot)))
        },
    );
    Sse::new(futures_util::stream::once(async { now }).chain(changes))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn listener(State(app): State<App>) -> Reply<ListenerView> {
    Ok(Json(app.notifier.listener()))
}

async fn start(State(app): State<App>) -> Reply<ListenerView> {
    app.notifier.start().await?;
    Ok(Json(app.notifier.listener()))
}

async fn stop(State(app): State<App>) -> Reply<ListenerView> {
    app.notifier.stop().await;
    Ok(Json(app.notifier.listener()))
}

async fn restart(State(app): State<App>) -> Reply<ListenerView> {
    app.notifier.restart().await?;
    Ok(Json(app.notifier.listener()))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_told_from_the_rest() {
        for host in [
            "127.0.0.1:7433",
            "127.1.2.3",
            "localhost:7433",
            "LOCALHOST",
            "[::1]:7433",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:7433",
            "10.0.0.1:7433",
            "",
            "[::2]:1",
            "localhost.evil.example",
            "x",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
