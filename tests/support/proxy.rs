//! A TCP proxy to the test database that can slip a query of its own into
//! the connections through it, between two of the client's messages, and
//! hide the answer from the client: the server runs it, and the client is
//! not told, as a misbehaving pooler or a pooler's reset (`DISCARD ALL`)
//! would do. Connections must be in the clear (`sslmode=disable`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The test database's URL through a proxy on `proxy_port`, with `query`.
pub fn url_via(proxy_port: u16, query: &str) -> String {
    url_of_via(super::database_url(), None, proxy_port, query)
}

/// `url`'s database through a proxy on `proxy_port`, as `user` (else
/// `url`'s user), with `query` appended.
pub fn url_of_via(url: &str, user: Option<&str>, proxy_port: u16, query: &str) -> String {
    let url: tokio_postgres::Config = url.parse().unwrap();
    let user = user.or(url.get_user()).unwrap_or("postgres");
    let db = url.get_dbname().unwrap_or(user);
    format!("postgres://{user}@127.0.0.1:{proxy_port}/{db}{query}")
}

/// The port of the test database, for a proxy to forward to.
pub fn database_target() -> (String, u16) {
    let url: tokio_postgres::Config = super::database_url().parse().unwrap();
    (
        "127.0.0.1".into(),
        url.get_ports().first().copied().unwrap_or(5432),
    )
}

pub struct InjectingProxy {
    pub port: u16,
    /// The query to slip in, and a wake-up for every connection.
    armed: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl InjectingProxy {
    pub async fn start(target: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().expect("the proxy's address").port();
        let armed = Arc::new(tokio::sync::watch::Sender::new(None::<String>));
        let arm = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // A server that is down refuses this client, not the next.
                let Ok(server) = tokio::net::TcpStream::connect(target.clone()).await else {
                    continue;
                };
                // Small messages go at once, as they do between client and server.
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let books = Arc::new(Books::default());
                let mut orders = arm.subscribe();
                orders.borrow_and_update();
                tokio::spawn(to_server(cr, sw, orders, books.clone()));
                tokio::spawn(to_client(sr, cw, books));
            }
        });
        Self { port, armed }
    }

    /// Slip `query` into every connection open now, each as soon as it is
    /// between two messages of its client.
    pub fn inject(&self, query: &str) {
        self.armed.send_replace(Some(query.to_owned()));
    }
}

/// What one connection's two directions share: how many answers the client
/// awaits, and which answers to hide.
#[derive(Default)]
struct Books {
    /// Queries and syncs the client sent, and ReadyForQuery the server sent:
    /// each of the former gets exactly one of the latter.
    asked: AtomicU64,
    answered: AtomicU64,
    /// Hide what comes after the ReadyForQuery numbered here, up to and
    /// including the next one: the slipped-in query's answer.
    hide_after: Mutex<Vec<u64>>,
}

/// The length of the next whole message in `buf` (after the untyped startup
/// message when `startup`), if it is all there.
fn next_frame(buf: &[u8], startup: bool) -> Option<usize> {
    let (at, extra) = if startup { (0, 0) } else { (1, 1) };
    let len = u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize + extra;
    (buf.len() >= len).then_some(len)
}

async fn to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut orders: tokio::sync::watch::Receiver<Option<String>>,
    books: Arc<Books>,
) {
    let (mut buf, mut chunk, mut startup) = (Vec::new(), vec![0u8; 16 * 1024], true);
    let mut pending: Option<String> = None;
    loop {
        // Only between whole messages of the client's, once it is set up.
        if !startup && buf.is_empty() {
            if let Some(query) = pending.take() {
                let asked = books.asked.fetch_add(1, Ordering::SeqCst);
                (books.hide_after.lock().unwrap()).push(asked);
                let mut message = vec![b'Q'];
                message.extend_from_slice(&(5 + query.len() as u32).to_be_bytes());
                message.extend_from_slice(query.as_bytes());
                message.push(0);
                if to.write_all(&message).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            read = from.read(&mut chunk) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                while let Some(len) = next_frame(&buf, startup) {
                    // The startup message is answered by a ReadyForQuery too.
                    if startup || matches!(buf[0], b'Q' | b'S') {
                        books.asked.fetch_add(1, Ordering::SeqCst);
                    }
                    startup = false;
                    out.extend(buf.drain(..len));
                }
                if to.write_all(&out).await.is_err() {
                    return;
                }
            }
            changed = orders.changed() => {
                if changed.is_err() {
                    return;
                }
                pending = orders.borrow_and_update().clone();
            }
        }
    }
}

/// Forward the server's messages, except the answers to slipped-in queries;
/// notifications and notices always go through.
async fn to_client(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, books: Arc<Books>) {
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(len) = next_frame(&buf, false) {
            let frame: Vec<u8> = buf.drain(..len).collect();
            let answered = books.answered.load(Ordering::SeqCst);
            let hiding = (books.hide_after.lock().unwrap()).contains(&answered);
            if frame[0] == b'Z' {
                books.answered.fetch_add(1, Ordering::SeqCst);
                if hiding {
                    books
                        .hide_after
                        .lock()
                        .unwrap()
                        .retain(|at| *at != answered);
                    continue;
                }
            }
            if hiding && !matches!(frame[0], b'A' | b'N') {
                continue;
            }
            out.extend_from_slice(&frame);
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}
