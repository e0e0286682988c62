//! Shared helpers of the reliability suites: a loopback HTTP/1.1 proxy that injects faults
//! (dropped connections, delays, 5xx answers, truncated bodies, corrupted JSON) and rewrites
//! answers, plus small device helpers.
//!
//! The proxy reads one request per connection, forwards it to the real server with its own
//! HTTP client, and answers with `connection: close`, so every request the engine makes is
//! seen (and can be faulted) on its own.

#![allow(dead_code)]

use diesel::prelude::*;
use oversync_diesel::transport::{AuthError, Transport, TransportConfig, token_fn};
use oversync_e2e::schema::users;
use oversync_e2e::{Device, User};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without forwarding or answering.
    DropBefore,
    /// Forward (the server acts on it), then close without answering.
    DropAfter,
    /// Wait, then forward normally.
    Delay(Duration),
    /// Answer this status (with a JSON error body) without forwarding.
    Status(u16),
    /// Answer this status with this protocol error code, without forwarding.
    ErrorCode(u16, &'static str),
    /// Forward, then answer the headers with the full `content-length` but only half the body.
    Truncate,
    /// Forward, then answer `200` with a body that is not valid JSON.
    CorruptJson,
    /// Answer `status` with this content type and body, without forwarding (an error the
    /// real server would not produce on cue, or an event stream that ends at once).
    Answer {
        /// HTTP status.
        status: u16,
        /// `content-type` header.
        content_type: &'static str,
        /// The whole body.
        body: &'static str,
    },
}

/// How often a rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The first `n` matching requests.
    First(u32),
    /// Every matching request.
    Always,
}

/// A response rewriter: method, path (no query), the decoded JSON body -> new body.
pub type Rewriter = Arc<dyn Fn(&str, &str, Value) -> Value + Send + Sync>;

struct Rule {
    method: String,
    pattern: String,
    action: Action,
    times: Times,
    hits: u32,
}

enum Action {
    Fault(Fault),
    Rewrite(Rewriter),
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// Every request seen, as `METHOD /path`.
    log: Vec<String>,
}

/// A running fault-injecting proxy on `127.0.0.1`.
#[derive(Clone)]
pub struct Proxy {
    url: String,
    state: Arc<Mutex<State>>,
}

/// Whether `path` matches `pattern` segment by segment (`*` matches one segment).
fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let s: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

impl Proxy {
    /// Starts a proxy forwarding to `upstream` (a base URL without trailing slash).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state: Arc<Mutex<State>> = Arc::default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("proxy client");
        let (upstream, shared) = (upstream.to_string(), state.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (http, upstream, state) = (http.clone(), upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, &http, &upstream, &state).await;
                });
            }
        });
        Proxy { url, state }
    }

    /// The proxy's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Injects `fault` into requests `method pattern` (pattern segments may be `*`).
    pub fn fault(&self, method: &str, pattern: &str, fault: Fault, times: Times) {
        self.push(method, pattern, Action::Fault(fault), times);
    }

    /// Rewrites the JSON answers of `method pattern`.
    pub fn rewrite(
        &self,
        method: &str,
        pattern: &str,
        times: Times,
        f: impl Fn(&str, &str, Value) -> Value + Send + Sync + 'static,
    ) {
        self.push(method, pattern, Action::Rewrite(Arc::new(f)), times);
    }

    fn push(&self, method: &str, pattern: &str, action: Action, times: Times) {
        self.state.lock().unwrap().rules.push(Rule {
            method: method.to_string(),
            pattern: pattern.to_string(),
            action,
            times,
            hits: 0,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// How often the rules fired in total.
    pub fn hits(&self) -> u32 {
        self.state
            .lock()
            .unwrap()
            .rules
            .iter()
            .map(|r| r.hits)
            .sum()
    }

    /// Requests seen so far (`METHOD /path`).
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn write_response(
    socket: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    send: usize,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body[..send.min(body.len())]).await?;
    socket.flush().await?;
    socket.shutdown().await
}

async fn serve(
    mut socket: TcpStream,
    http: &reqwest::Client,
    upstream: &str,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut socket).await else {
        return Ok(());
    };
    let path = req.target.split('?').next().unwrap_or("").to_string();
    // Decide under the lock; fire the first matching rule that still has budget.
    let action = {
        let mut st = state.lock().unwrap();
        st.log.push(format!("{} {path}", req.method));
        let mut chosen = None;
        for rule in st.rules.iter_mut() {
            let budget = match rule.times {
                Times::First(n) => rule.hits < n,
                Times::Always => true,
            };
            if budget && rule.method == req.method && matches(&rule.pattern, &path) {
                rule.hits += 1;
                chosen = Some(match &rule.action {
                    Action::Fault(f) => Ok(*f),
                    Action::Rewrite(r) => Err(r.clone()),
                });
                break;
            }
        }
        chosen
    };
    match action {
        Some(Ok(Fault::DropBefore)) => return Ok(()),
        Some(Ok(Fault::Status(code))) => {
            let body =
                serde_json::json!({"error": "injected", "message": format!("injected {code}")});
            let bytes = body.to_string().into_bytes();
            return write_response(&mut socket, code, "application/json", &bytes, bytes.len())
                .await;
        }
        Some(Ok(Fault::ErrorCode(code, error))) => {
            let body = serde_json::json!({"error": error, "message": format!("injected {error}")});
            let bytes = body.to_string().into_bytes();
            return write_response(&mut socket, code, "application/json", &bytes, bytes.len())
                .await;
        }
        Some(Ok(Fault::Answer {
            status,
            content_type,
            body,
        })) => {
            let bytes = body.as_bytes();
            return write_response(&mut socket, status, content_type, bytes, bytes.len()).await;
        }
        Some(Ok(Fault::Delay(d))) => tokio::time::sleep(d).await,
        _ => {}
    }
    // Forward.
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).expect("method");
    let mut forward = http.request(method, format!("{upstream}{}", req.target));
    for (k, v) in &req.headers {
        if !matches!(
            k.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            forward = forward.header(k, v);
        }
    }
    let answer = match forward.body(req.body).send().await {
        Ok(a) => a,
        Err(_) => return Ok(()),
    };
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let mut body = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    match action {
        Some(Ok(Fault::DropAfter)) => return Ok(()),
        Some(Ok(Fault::Truncate)) => {
            let half = body.len() / 2;
            return write_response(&mut socket, status, &content_type, &body, half).await;
        }
        Some(Ok(Fault::CorruptJson)) => {
            let mut bad = body[..body.len() / 2].to_vec();
            bad.extend_from_slice(b"\x00}{not json");
            return write_response(&mut socket, 200, "application/json", &bad, bad.len()).await;
        }
        Some(Err(rewrite)) if (200..300).contains(&status) => {
            if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                body = rewrite(&req.method, &path, value).to_string().into_bytes();
            }
        }
        _ => {}
    }
    write_response(&mut socket, status, &content_type, &body, body.len()).await
}

/// A transport for `user` through `base_url` with short backoff and `timeout` per attempt;
/// sign-in goes to `base_url` too.
pub fn transport_with_timeout(base_url: &str, user: &str, timeout: Duration) -> Transport {
    let (base, user) = (base_url.to_string(), user.to_string());
    let provider = token_fn(move |_refresh| {
        let (base, user) = (base.clone(), user.clone());
        async move {
            oversync_e2e::sign_in(&base, &user)
                .await
                .map_err(|e| AuthError(e.0))
        }
    });
    let config = TransportConfig {
        request_timeout: timeout,
        max_retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(80),
    };
    Transport::with_config(base_url, provider, config).expect("valid base URL")
}

/// A `users` row.
pub fn user_row(id: &str, name: &str) -> User {
    User {
        id: id.into(),
        name: name.into(),
        email: format!("{name}@example.com"),
        created_at: None,
        updated_at: None,
    }
}

/// Inserts a `users` row.
pub fn insert_user(d: &mut Device, id: &str, name: &str) {
    diesel::insert_into(users::table)
        .values(&user_row(id, name))
        .execute(&mut *d.conn)
        .expect("insert user");
}

/// All `users` rows, ordered by id.
pub fn all_users(d: &mut Device) -> Vec<(String, String, String)> {
    users::table
        .select((users::id, users::name, users::email))
        .order(users::id)
        .load(&mut *d.conn)
        .expect("load users")
}

/// Rows of a table dumped as text, for equality checks across devices.
pub fn dump(d: &mut Device, table: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let sql = match table {
        "users" => "SELECT id || '|' || name || '|' || email AS line FROM users ORDER BY id",
        "posts" => {
            "SELECT id || '|' || title || '|' || content || '|' || IFNULL(author_id, '-') AS line FROM posts ORDER BY id"
        }
        other => panic!("no dump for {other}"),
    };
    diesel::sql_query(sql)
        .load::<Line>(&mut *d.conn)
        .expect("dump")
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// Everything a failed sync must leave as it was: synced tables, pending rows, the
/// checkpoint and the outbox state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub users: Vec<String>,
    pub posts: Vec<String>,
    pub pending_rows: u64,
    pub last_bundle_seq_seen: i64,
}

/// Reads [`LocalState`].
pub fn local_state(d: &mut Device) -> LocalState {
    LocalState {
        users: dump(d, "users"),
        posts: dump(d, "posts"),
        pending_rows: d
            .conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        last_bundle_seq_seen: d.conn.oversync().last_bundle_seq_seen().unwrap(),
    }
}

/// `PRAGMA integrity_check` of the device's database.
pub fn integrity_ok(conn: &mut diesel::SqliteConnection) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let rows: Vec<Row> = diesel::sql_query("PRAGMA integrity_check")
        .load(conn)
        .expect("integrity_check");
    rows.len() == 1 && rows[0].integrity_check == "ok"
}
