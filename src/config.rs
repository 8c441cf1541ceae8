//! Boot: the worker's settings, layered (embedded defaults -> `--config` file ->
//! `ROUTER__SECTION__KEY` environment) and validated before anything connects.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

/// The defaults compiled into the binary; the README lists every key.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Why the settings cannot be used; the text names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A value that must never reach a log line.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Amqp {
    /// Holds the broker password, hence a secret; [`Amqp::redacted_url`] is loggable.
    pub url: Secret,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    /// Empty means `<queue>.dead`.
    pub dead_letter_queue: String,
    pub action_center_exchange: String,
    pub prefetch: u16,
    pub concurrency: usize,
    pub delivery_limit: u32,
    /// Larger messages are dead-lettered unread (`too_large`).
    pub max_message_bytes: usize,
    #[serde(with = "duration")]
    pub reconnect_min: Duration,
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// `amqps://` only: a PEM bundle trusted besides the system's store.
    pub tls_ca_file: String,
    /// `amqps://` only: the client certificate (PEM) and its key (PEM,
    /// PKCS#8) for brokers that require one (mutual TLS, `EXTERNAL`).
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Amqp {
    pub fn dead_letter_queue(&self) -> String {
        if self.dead_letter_queue.is_empty() {
            format!("{}.dead", self.queue)
        } else {
            self.dead_letter_queue.clone()
        }
    }

    /// The broker URL with any password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text, upgraded with STARTTLS, which is required.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text; only for a relay on the same host or a test server.
    None,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Smtp {
    /// Empty: no SMTP, messages are written as `.eml` files into `outbox_dir`.
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: String,
    pub password: Secret,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub pool_max_size: u32,
    /// Messages one worker has sent the content of and not yet recorded as sent
    /// (the staged envelopes before that are bounded by `pool_max_size`).
    pub max_in_flight: usize,
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    pub outbox_dir: PathBuf,
    /// A PEM bundle trusted besides the system's store, for `starttls` and `tls`.
    pub tls_ca_file: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Mail {
    pub from: String,
    pub reply_to: String,
    pub unsubscribe_url: String,
    pub portal_url: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Store {
    /// `sqlite://PATH` (one worker) or `postgres://…` (several); may hold a
    /// password, hence a secret.
    pub url: Secret,
    /// PostgreSQL: the pool size per worker. SQLite: the readers (there is one writer).
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection before failing (and being retried).
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
    /// How long a worker's claim on an event or a delivery lasts unless renewed;
    /// after a crash, another worker takes the event over once it runs out.
    #[serde(with = "duration")]
    pub lease: Duration,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Http {
    pub addr: String,
    /// HS256 key of the Action Center API's bearer tokens; empty disables the API (401).
    pub jwt_secret: Secret,
    /// Bearer token of the notification log API (operators); empty disables it (401).
    pub admin_token: Secret,
    /// This server as recipients' browsers and mail providers reach it, e.g.
    /// `https://notify.example.com`: the base of each email's signed
    /// preferences link. Empty: emails link to `mail.unsubscribe_url` instead.
    pub public_url: String,
    /// HMAC key of the preferences links; set with `http.public_url`.
    pub preferences_secret: Secret,
}

impl Http {
    /// The signed preferences links, when `public_url` and `preferences_secret` are set.
    pub fn preference_links(&self) -> Option<crate::preferences::Links> {
        (!self.public_url.is_empty() && !self.preferences_secret.is_empty())
            .then(|| crate::preferences::Links::new(&self.public_url, self.preferences_secret.expose().as_bytes()))
    }

    fn check(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.addr.parse::<SocketAddr>() {
            errors.push(format!("http.addr `{}` is not HOST:PORT: {e}", self.addr));
        }
        let url = &self.public_url;
        if !url.is_empty() && !url.starts_with("https://") && !url.starts_with("http://") {
            errors.push(format!("http.public_url `{url}` must be an absolute http(s) URL"));
        }
        if url.is_empty() != self.preferences_secret.is_empty() {
            errors.push("http.public_url and http.preferences_secret are set together or not at all".into());
        }
        if !self.preferences_secret.is_empty() && self.preferences_secret.expose().len() < 16 {
            errors.push("http.preferences_secret must be at least 16 characters".into());
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Rules {
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Templates {
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Retry {
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Digest {
    /// How often the worker looks for digests that are due.
    #[serde(with = "duration")]
    pub check_every: Duration,
    /// How long a flush may hold a claim before another flush takes it over.
    #[serde(with = "duration")]
    pub lease: Duration,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Archive {
    /// How long the store keeps each admitted event's body for `replay
    /// --from-store`; zero keeps none. Events carry customer contact data.
    #[serde(with = "duration")]
    pub retention: Duration,
}

impl Archive {
    pub fn enabled(&self) -> bool {
        !self.retention.is_zero()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Shutdown {
    /// How long SIGTERM waits for in-flight messages; what is unfinished then
    /// is left unacked, and the broker delivers it again.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// Every setting of `referral-router run`.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub amqp: Amqp,
    pub smtp: Smtp,
    pub mail: Mail,
    pub store: Store,
    pub http: Http,
    pub rules: Rules,
    pub templates: Templates,
    pub retry: Retry,
    pub digest: Digest,
    pub archive: Archive,
    pub shutdown: Shutdown,
    pub log: Log,
}

impl Settings {
    /// Loads defaults, then the file (if any), then `ROUTER__*` variables, and
    /// validates. Every problem is reported at once, each naming its key, and
    /// the environment variable when the value came from one: unknown keys
    /// (a misspelling is never silently ignored), values of the wrong type,
    /// and values out of range.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let (environment, mut errors) = environment(std::env::vars());
        builder = builder.add_source(
            config::Environment::with_prefix("ROUTER")
                .separator("__")
                .try_parsing(true)
                .source(Some(environment)),
        );
        let built = builder.build()?;
        errors.extend(unknown_keys(&built, file));
        let settings = match built.clone().try_deserialize::<Settings>() {
            Ok(settings) => Some(settings),
            Err(_) => {
                errors.extend(section_errors(&built));
                None
            }
        };
        if let Some(settings) = &settings
            && let Err(ConfigError::Invalid(invalid)) = settings.validate()
        {
            errors.extend(invalid);
        }
        match settings {
            Some(settings) if errors.is_empty() => Ok(settings),
            _ => Err(ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|e| if e.contains(" (from ") { e } else { from_env(&e) })
                    .collect(),
            )),
        }
    }

    /// Every problem at once, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.amqp.check(&mut errors);
        self.smtp.check(&mut errors);
        self.mail.check(&mut errors);
        self.store.check(&self.smtp, &mut errors);
        self.http.check(&mut errors);
        if self.digest.check_every.is_zero() {
            errors.push("digest.check_every must be longer than zero".into());
        }
        if self.digest.lease < Duration::from_secs(1) {
            errors.push("digest.lease must be at least 1s".into());
        }
        if self.shutdown.drain_timeout.is_zero() {
            errors.push("shutdown.drain_timeout must be longer than zero".into());
        }
        if self.retry.max_attempts == 0 {
            errors.push("retry.max_attempts must be at least 1".into());
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            errors.push("retry.initial_backoff must not exceed retry.max_backoff".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errors.push(format!("log.level `{}` is not a tracing filter", self.log.level));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr.parse().expect("validated at load")
    }
}

impl Amqp {
    fn check(&self, errors: &mut Vec<String>) {
        let url = self.url.expose();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            errors.push(format!(
                "amqp.url `{}` must start with amqp:// or amqps://",
                redact_url(url)
            ));
        }
        let files = [
            ("amqp.tls_ca_file", &self.tls_ca_file),
            ("amqp.tls_cert_file", &self.tls_cert_file),
            ("amqp.tls_key_file", &self.tls_key_file),
        ];
        for (key, path) in files {
            check_readable(key, path, errors);
            if !path.is_empty() && !url.starts_with("amqps://") {
                errors.push(format!("{key} is set, but amqp.url is not amqps://"));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            errors.push("amqp.tls_cert_file and amqp.tls_key_file are set together or not at all".into());
        }
        for (key, value) in [
            ("amqp.exchange", &self.exchange),
            ("amqp.queue", &self.queue),
            ("amqp.dead_letter_exchange", &self.dead_letter_exchange),
            ("amqp.action_center_exchange", &self.action_center_exchange),
        ] {
            if value.trim().is_empty() {
                errors.push(format!("{key} must not be empty"));
            }
        }
        if self.prefetch == 0 {
            errors.push("amqp.prefetch must be at least 1".into());
        }
        if self.concurrency == 0 || self.concurrency > usize::from(self.prefetch) {
            errors.push(format!(
                "amqp.concurrency must be between 1 and amqp.prefetch ({}), not {}",
                self.prefetch, self.concurrency
            ));
        }
        if self.max_message_bytes < 1024 {
            errors.push("amqp.max_message_bytes must be at least 1024".into());
        }
        if self.delivery_limit == 0 {
            errors.push("amqp.delivery_limit must be at least 1".into());
        }
        if self.reconnect_min > self.reconnect_max {
            errors.push("amqp.reconnect_min must not exceed amqp.reconnect_max".into());
        }
    }
}

/// What a TLS client checks a server's certificate against, as messages say it.
pub fn trust(key: &str, ca_file: &str) -> String {
    if ca_file.is_empty() {
        "the system's trust store".into()
    } else {
        format!("the system's trust store and {key} `{ca_file}`")
    }
}

/// A file a setting names must be readable now, not at the first connection.
fn check_readable(key: &str, path: &str, errors: &mut Vec<String>) {
    if !path.is_empty()
        && let Err(e) = std::fs::File::open(path)
    {
        errors.push(format!("{key}: cannot read `{path}`: {e}"));
    }
}

impl Smtp {
    fn check(&self, errors: &mut Vec<String>) {
        check_readable("smtp.tls_ca_file", &self.tls_ca_file, errors);
        if !self.tls_ca_file.is_empty() && (self.host.is_empty() || self.tls == SmtpTls::None) {
            errors.push("smtp.tls_ca_file is set, but smtp.tls is `none` (or there is no smtp.host)".into());
        }
        if self.host.is_empty() {
            if self.outbox_dir.as_os_str().is_empty() {
                errors.push("smtp.outbox_dir must be set when smtp.host is empty".into());
            }
            return;
        }
        if self.port == 0 {
            errors.push("smtp.port must not be 0".into());
        }
        if self.max_in_flight == 0 {
            errors.push("smtp.max_in_flight must be at least 1".into());
        }
        if self.pool_max_size == 0 {
            errors.push("smtp.pool_max_size must be at least 1".into());
        }
        if self.username.is_empty() != self.password.is_empty() {
            errors.push("smtp.username and smtp.password are set together or not at all".into());
        }
    }
}

impl Mail {
    fn check(&self, errors: &mut Vec<String>) {
        for (key, value) in [("mail.from", &self.from), ("mail.reply_to", &self.reply_to)] {
            if let Err(e) = value.parse::<Mailbox>() {
                errors.push(format!("{key} `{value}` is not a mailbox: {e}"));
            }
        }
        for (key, value) in [
            ("mail.unsubscribe_url", &self.unsubscribe_url),
            ("mail.portal_url", &self.portal_url),
        ] {
            if !value.starts_with("https://") && !value.starts_with("http://") {
                errors.push(format!("{key} `{value}` must be an absolute http(s) URL"));
            }
        }
    }
}

impl Store {
    fn check(&self, smtp: &Smtp, errors: &mut Vec<String>) {
        let store_url = self.url.expose();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| store_url.starts_with(scheme))
        {
            errors.push(format!(
                "store.url `{}` is not supported: use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(store_url)
            ));
        }
        if self.max_connections == 0 {
            errors.push("store.max_connections must be at least 1".into());
        }
        if self.acquire_timeout.is_zero() {
            errors.push("store.acquire_timeout must be positive".into());
        }
        // A lease must outlast one delivery's SMTP exchange, or a slow send
        // could be taken over (and sent twice) while it is still running.
        if self.lease <= smtp.timeout {
            errors.push(format!(
                "store.lease ({}) must exceed smtp.timeout ({})",
                humantime::format_duration(self.lease),
                humantime::format_duration(smtp.timeout)
            ));
        }
    }
}

/// Keys set (by the file or the environment) that the defaults do not have:
/// every key the worker reads is in the embedded defaults.
fn unknown_keys(built: &config::Config, file: Option<&Path>) -> Vec<String> {
    let known = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
        .unwrap_or_default();
    let Ok(set) = built.clone().try_deserialize::<config::Map<String, config::Value>>() else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    walk_unknown("", &set, &known, &mut unknown);
    unknown.sort();
    unknown
        .into_iter()
        // A key set by a variable is named by it later (`from_env`); one from the file names the file.
        .map(|key| match file.filter(|_| env_var_for(&key).is_none()) {
            Some(path) => format!("{key} (in {}) is not a setting", path.display()),
            None => format!("{key} is not a setting"),
        })
        .collect()
}

fn walk_unknown(
    prefix: &str,
    set: &config::Map<String, config::Value>,
    known: &config::Map<String, config::Value>,
    out: &mut Vec<String>,
) {
    for (name, value) in set {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (known.get(name), value.clone().into_table()) {
            // An unknown section: name each of its keys, as they were set.
            (None, Ok(table)) => walk_unknown(&key, &table, &config::Map::new(), out),
            (None, Err(_)) => out.push(key),
            (Some(k), Ok(table)) => {
                if let Ok(known_table) = k.clone().into_table() {
                    walk_unknown(&key, &table, &known_table, out);
                }
            }
            (Some(_), Err(_)) => {}
        }
    }
}

/// With the whole set unreadable, reads it a section at a time, so every
/// section's type errors are reported, not only the first.
fn section_errors(built: &config::Config) -> Vec<String> {
    fn section<T: serde::de::DeserializeOwned>(built: &config::Config, name: &str) -> Option<String> {
        let value = match built.get::<config::Value>(name) {
            Ok(value) => value,
            Err(e) => return Some(format!("{name}: {e}")),
        };
        serde_path_to_error::deserialize::<_, T>(value)
            .err()
            .map(|e| format!("{name}.{}: {}", e.path(), e.inner()))
    }
    [
        section::<Amqp>(built, "amqp"),
        section::<Smtp>(built, "smtp"),
        section::<Mail>(built, "mail"),
        section::<Store>(built, "store"),
        section::<Http>(built, "http"),
        section::<Rules>(built, "rules"),
        section::<Templates>(built, "templates"),
        section::<Retry>(built, "retry"),
        section::<Digest>(built, "digest"),
        section::<Archive>(built, "archive"),
        section::<Shutdown>(built, "shutdown"),
        section::<Log>(built, "log"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The `ROUTER__…` variable that sets `key` (`amqp.prefetch`), if one does.
fn env_var_for(key: &str) -> Option<String> {
    let wanted = format!("ROUTER__{}", key.replace('.', "__"));
    let from_file = format!("{wanted}{FILE_SUFFIX}");
    std::env::vars()
        .map(|(k, _)| k)
        .find(|k| k.eq_ignore_ascii_case(&wanted) || k.eq_ignore_ascii_case(&from_file))
}

/// `ROUTER__SMTP__PASSWORD__FILE=/run/secrets/smtp` sets `smtp.password` to that file's content.
const FILE_SUFFIX: &str = "__FILE";

/// The `ROUTER__…` variables as the settings read them: each `…__FILE=PATH`
/// replaced by the variable it names, set to the file's content (without its
/// trailing newline), as Kubernetes and Docker mount secrets. A file that
/// cannot be read, or a setting given both ways, is an error naming the key;
/// the content is never part of a message.
fn environment(vars: impl Iterator<Item = (String, String)>) -> (config::Map<String, String>, Vec<String>) {
    let mut out = config::Map::new();
    let mut errors = Vec::new();
    let vars: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with("ROUTER__")).collect();
    for (name, value) in &vars {
        let Some(base) = name.strip_suffix(FILE_SUFFIX).filter(|b| b.len() > "ROUTER__".len()) else {
            out.insert(name.clone(), value.clone());
            continue;
        };
        let key = base["ROUTER__".len()..].to_lowercase().replace("__", ".");
        if vars.iter().any(|(other, _)| other == base) {
            errors.push(format!(
                "{key} (from {name}) is also set by {base}: give one or the other"
            ));
            continue;
        }
        match std::fs::read_to_string(value) {
            Ok(content) => {
                let content = content.strip_suffix('\n').unwrap_or(&content);
                let content = content.strip_suffix('\r').unwrap_or(content);
                out.insert(base.to_owned(), content.to_owned());
            }
            Err(e) => errors.push(format!("{key} (from {name}): cannot read `{value}`: {e}")),
        }
    }
    (out, errors)
}

/// Names the variable a message's key came from: `amqp.prefetch (from ROUTER__AMQP__PREFETCH) …`.
fn from_env(message: &str) -> String {
    // Every message starts with its key.
    let key_end = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(message.len());
    let key = &message[..key_end];
    match env_var_for(key).filter(|_| key.contains('.')) {
        Some(var) => format!("{key} (from {var}){}", &message[key_end..]),
        None => message.to_string(),
    }
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_duration(&raw).map_err(|e| serde::de::Error::custom(format!("`{raw}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.amqp.exchange, "referrals.events");
        assert_eq!(s.amqp.dead_letter_queue(), "referral-router.dead");
        assert!(s.smtp.host.is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn postgres_urls_are_accepted_and_redacted() {
        let mut s = Settings::load(None).unwrap();
        for url in ["postgres://router:pw@db/router", "postgresql://db/router"] {
            s.store.url = Secret::new(url);
            s.validate().unwrap();
        }
        s.store.url = Secret::new("postgres:/db");
        let text = s.validate().unwrap_err().to_string();
        assert!(text.contains("store.url"), "{text}");
    }

    #[test]
    fn secrets_and_urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        let s = Settings::load(None).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("guest:guest"), "{shown}");
    }

    #[test]
    fn errors_name_the_keys() {
        let mut s = Settings::load(None).unwrap();
        s.amqp.prefetch = 0;
        s.http.addr = "nowhere".into();
        s.store.url = Secret::new("mysql://x");
        s.store.max_connections = 0;
        s.store.lease = Duration::from_secs(5);
        let text = s.validate().unwrap_err().to_string();
        for key in [
            "amqp.prefetch",
            "http.addr",
            "store.url",
            "store.max_connections",
            "store.lease",
        ] {
            assert!(text.contains(key), "{text}");
        }
    }
}
