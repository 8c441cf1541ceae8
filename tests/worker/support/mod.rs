//! The harness: real worker processes per test, on their own exchange, queue,
//! store (a SQLite file or a PostgreSQL database), HTTP port and SMTP sink;
//! a real AMQP client to publish.

pub mod broker;
pub mod fs;
pub mod smtp;
pub mod store;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use broker::Broker;
pub use smtp::SmtpSink;
pub(crate) use store::on_both_backends;
pub use store::{Backend, TestStore};

pub const JWT_SECRET: &str = "test-secret-for-the-action-center";
/// Where the workers under test say they are reached from outside (the base of preferences links).
pub const PUBLIC_URL: &str = "https://router.example";

/// A bearer JWT for `sub`, signed with `secret`, expiring in `exp_in` seconds.
pub fn jwt(sub: &str, secret: &str, exp_in: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Most tests share the broker; the one that closes every broker connection runs alone.
static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    GATE.read().await
}

pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    GATE.write().await
}

/// A broker, an SMTP sink and a worker on a fresh `backend` store that
/// already knows the test directory.
pub async fn start(name: &str, backend: Backend, extra: &[(&str, &str)]) -> (Broker, SmtpSink, Worker) {
    let broker = Broker::new(name).await;
    let smtp = SmtpSink::start().await;
    let store = TestStore::new(backend).await;
    let worker = Worker::start(&broker, &smtp, &store, extra).await;
    let dir = directory_events();
    for line in &dir {
        broker.publish(line).await;
    }
    worker.wait_settled(dir.len(), Duration::from_secs(30)).await;
    (broker, smtp, worker)
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(root().join("rules/tests/events").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The directory the examples route against, one event per line.
pub fn directory_events() -> Vec<Vec<u8>> {
    std::fs::read_to_string(root().join("rules/tests/directory.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// A unique name for this test's broker objects (and database).
pub fn unique(prefix: &str) -> String {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Worker {
    child: Child,
    pub http: String,
    /// Holds the worker's log; removed when the test ends.
    _dir: tempfile::TempDir,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// Kept until the last worker on it is gone (fields drop after `Drop::drop` kills the process).
    _store: Arc<TestStore>,
}

impl Worker {
    /// Starts `referral-router run` for `broker`'s names on `store`, sending mail to `smtp`.
    pub async fn start(broker: &Broker, smtp: &SmtpSink, store: &Arc<TestStore>, extra: &[(&str, &str)]) -> Self {
        Self::start_with(broker, smtp, store, extra, Output::Log).await
    }

    /// The same, with the worker's stdout and stderr going to `output`.
    pub async fn start_with(
        broker: &Broker,
        smtp: &SmtpSink,
        store: &Arc<TestStore>,
        extra: &[(&str, &str)],
        output: Output,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("ROUTER__AMQP__EXCHANGE", broker.exchange.as_str()),
            ("ROUTER__AMQP__QUEUE", broker.queue.as_str()),
            ("ROUTER__AMQP__DEAD_LETTER_EXCHANGE", broker.dlx.as_str()),
            ("ROUTER__AMQP__ACTION_CENTER_EXCHANGE", broker.action_center.as_str()),
            ("ROUTER__SMTP__HOST", "127.0.0.1"),
            ("ROUTER__SMTP__TLS", "none"),
            ("ROUTER__RETRY__INITIAL_BACKOFF", "200ms"),
            ("ROUTER__RETRY__MAX_BACKOFF", "1s"),
            ("ROUTER__RETRY__MAX_ATTEMPTS", "40"),
            ("ROUTER__AMQP__RECONNECT_MIN", "200ms"),
            ("ROUTER__AMQP__RECONNECT_MAX", "2s"),
            ("ROUTER__HTTP__JWT_SECRET", JWT_SECRET),
            ("ROUTER__HTTP__PUBLIC_URL", PUBLIC_URL),
            ("ROUTER__HTTP__PREFERENCES_SECRET", "test-secret-for-preference-links"),
            ("ROUTER__LOG__LEVEL", "info,referral_router=debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("ROUTER__SMTP__PORT".into(), smtp.port.to_string()));
        env.push(("ROUTER__HTTP__ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("ROUTER__STORE__URL".into(), store.url.clone()));
        env.push(("ROUTER__RULES__DIR".into(), root().join("rules").display().to_string()));
        env.push((
            "ROUTER__TEMPLATES__DIR".into(),
            root().join("templates").display().to_string(),
        ));
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let log = dir.path().join("worker.log");
        let child = spawn(&env, &log, output);
        let mut worker = Self {
            child,
            http: format!("127.0.0.1:{port}"),
            _dir: dir,
            log,
            env,
            _store: store.clone(),
        };
        worker.wait_ready().await;
        // The port was free when it was picked, not necessarily when the worker
        // bound it: an answer from another process does not make this one ready.
        let deadline = Instant::now() + Duration::from_secs(15);
        // Where this start's lines begin in the log: a retry reads only its own.
        let mut since = 0;
        while !broker.declared().await {
            if let Ok(Some(status)) = worker.child.try_wait()
                && worker.logs()[since..].contains("Address already in use")
            {
                let port = free_port();
                eprintln!("the worker's port was taken ({status}); starting it on {port}");
                worker.http = format!("127.0.0.1:{port}");
                worker.env.retain(|(k, _)| k != "ROUTER__HTTP__ADDR");
                worker.env.push(("ROUTER__HTTP__ADDR".into(), worker.http.clone()));
                since = worker.logs().len();
                worker.restart().await;
            }
            assert!(
                Instant::now() < deadline,
                "a process answered as ready on {} but the worker has not declared its queue; its log:\n{}",
                worker.http,
                worker.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker
    }

    /// Starts the same worker again (same store, queue and port) after it stopped.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.env, &self.log, Output::Log);
        self.wait_ready().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(&self.http, "GET", "/readyz", None).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the worker did not become ready in 30s; its log:\n{}", self.logs());
    }

    /// Sum of a metric's samples whose line starts with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http(&self.http, "GET", "/metrics", None).await.unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Messages acked or dead-lettered so far.
    pub async fn settled(&self) -> f64 {
        self.metric("router_messages_settled_total{outcome=\"ack\"}").await
            + self
                .metric("router_messages_settled_total{outcome=\"dead_letter\"}")
                .await
    }

    /// Waits (bounded) until `n` messages were acked or dead-lettered in total.
    pub async fn wait_settled(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.settled().await;
            if done >= n as f64 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "only {done} of {n} messages settled in {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs another `referral-router` command (`digest flush`, `log ...`) on this worker's settings.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("run the router")
    }

    /// The same, started in the background.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        self.cli_command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the router")
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_referral-router"));
        cmd.args(args)
            .current_dir(self.log.parent().unwrap())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ROUTER__LOG__LEVEL", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// Reads what the worker wrote to its pipes so far (a little), then closes
    /// them: every later write of the worker's fails.
    pub fn close_output(&mut self) -> String {
        use std::io::Read;
        let mut seen = vec![0; 4096];
        let n = self.child.stderr.as_mut().map_or(0, |e| e.read(&mut seen).unwrap_or(0));
        drop(self.child.stdout.take());
        drop(self.child.stderr.take());
        String::from_utf8_lossy(&seen[..n]).into_owned()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker did not exit in {timeout:?}; log:\n{}", self.logs());
    }
}

/// Where a worker's stdout and stderr go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Its log file ([`Worker::logs`]).
    Log,
    /// Pipes the test can close ([`Worker::close_output`]), as when the reader of `run | head` exits.
    Pipes,
}

fn spawn(env: &[(String, String)], log: &Path, output: Output) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let (stdout, stderr) = match output {
        Output::Log => (Stdio::from(out.try_clone().unwrap()), Stdio::from(out)),
        Output::Pipes => (Stdio::piped(), Stdio::piped()),
    };
    Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .arg("run")
        .current_dir(log.parent().unwrap())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(stdout)
        .stderr(stderr)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the worker")
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client: (status, body).
pub async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http_body(addr, method, path, token, None).await
}

/// The same, sending `body` (its content type, then the bytes).
pub async fn http_body(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let (content_type, bytes) = body.unwrap_or(("", b""));
        let content_type = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len()
        );
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(bytes).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTP timeout")))
}
