//! State: one [`Store`] interface over what the worker must remember, so that
//! effects are durable before a message is acked. SQLite is the embedded
//! backend (one worker); PostgreSQL implements the same trait for several
//! workers sharing one database. [`connect`] picks one by the URL's scheme.

mod delivery_json;
pub mod postgres;
mod record;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::Event;
use crate::route::{DigestKey, MemoryState, Plan};

pub use delivery_json::StoredDelivery;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A store operation failed. The worker retries it: the usual causes are a
/// busy database or a lost connection; a message that keeps failing ends in
/// the dead-letter queue after the bounded retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: migrating: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file beside the database (the SQLite sent journal, its folder).
    #[error("store: {what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A SQLite group commit failed; every write in the batch sees this text.
    #[error("store: committing a batch: {0}")]
    Batch(String),
    /// Something stored cannot be read back.
    #[error("store: {0}")]
    Unreadable(String),
    #[error("store: {0}")]
    Unsupported(String),
    /// The TLS handshake with the database failed: the text names the server and the trust.
    #[error("store: {0}")]
    Tls(String),
}

impl StoreError {
    pub(crate) fn file(what: String, source: std::io::Error) -> Self {
        Self::File { what, source }
    }
}

/// Where one planned delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    /// Planned to go out, not yet accepted by the mail server / stored and published.
    Pending,
    Sent,
    /// Held for a digest (see the `held` table).
    Held,
    Suppressed,
    /// Given up for good (a permanent SMTP refusal, a rendering error).
    Failed,
    /// Held, then sent as part of a digest (the log row names it).
    Digested,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Pending => "pending",
            LogStatus::Sent => "sent",
            LogStatus::Held => "held",
            LogStatus::Suppressed => "suppressed",
            LogStatus::Failed => "failed",
            LogStatus::Digested => "digested",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => LogStatus::Pending,
            "sent" => LogStatus::Sent,
            "held" => LogStatus::Held,
            "suppressed" => LogStatus::Suppressed,
            "failed" => LogStatus::Failed,
            "digested" => LogStatus::Digested,
            _ => return None,
        })
    }
}

/// A delivery still to be dispatched, with its notification-log row.
#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub log_id: i64,
    pub delivery: crate::route::Delivery,
}

/// What the store says about an event it is given.
#[derive(Debug)]
pub enum Admission {
    /// Seen before and fully dispatched: nothing to do but ack.
    Done,
    /// Recorded (now or by an earlier attempt); these deliveries are still
    /// pending, and this worker now holds the event's lease and a claim on
    /// each of them (a delivery another worker's live claim holds is left out).
    Pending { fresh: bool, items: Vec<OutboxItem> },
    /// Another worker holds the event's lease (it is processing a copy, or it
    /// crashed and the lease runs out in `retry_in`): ask again then.
    Busy { retry_in: Duration },
}

/// Directory events stored after a sequence number, in the order to apply them.
#[derive(Debug, Default)]
pub struct DirectoryChanges {
    pub events: Vec<Event>,
    /// The newest sequence number seen: ask for changes after it next time.
    pub seq: i64,
}

/// An in-app notification for one user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionCenterEntry {
    pub id: String,
    /// The user id, or the lower-cased email of a recipient without one.
    pub user: String,
    pub partner_id: Option<String>,
    pub event_id: String,
    pub notification: String,
    pub category: String,
    pub priority: String,
    pub title: String,
    pub body: String,
    pub link: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub read: bool,
    /// The user opened the list it is in (what the badge counts down).
    pub seen: bool,
    pub archived: bool,
}

/// Which page of a user's inbox to read: newest first, before `cursor`.
#[derive(Clone, Debug, Default)]
pub struct InboxQuery<'a> {
    pub unread_only: bool,
    pub category: Option<&'a str>,
    /// Archived entries only (otherwise they are left out).
    pub archived: bool,
    /// The position after which the previous page stopped.
    pub before: Option<i64>,
    pub limit: u32,
}

/// A page of a user's inbox.
#[derive(Clone, Debug, Default)]
pub struct InboxPage {
    /// With each entry its position, newest (highest) first.
    pub entries: Vec<(i64, ActionCenterEntry)>,
    /// Whether more entries follow the last one.
    pub more: bool,
}

/// What a user's badge shows: entries not archived nor expired, unread and unseen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxCounts {
    pub unread: u64,
    pub unseen: u64,
}

/// A change a user makes to their own entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Read,
    Seen,
    Archived,
    /// Back out of the archive.
    Restored,
}

/// Preference changes stored after a sequence number, in the order they were made.
#[derive(Debug, Default)]
pub struct PreferenceChanges {
    pub changes: Vec<crate::preferences::PreferenceChange>,
    /// The newest sequence number seen: ask for changes after it next time.
    pub seq: i64,
}

/// Held deliveries waiting for one recipient's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldGroup {
    pub key: DigestKey,
    /// The lower-cased recipient email.
    pub recipient: String,
    /// When the oldest of them was held.
    pub oldest: DateTime<Utc>,
    pub items: u32,
}

/// One held lead in a claimed digest.
#[derive(Clone, Debug)]
pub struct HeldItem {
    pub log_id: i64,
    pub event: Event,
    pub delivery: crate::route::Delivery,
}

/// A digest this worker has claimed and must now send.
#[derive(Clone, Debug)]
pub struct DigestClaim {
    /// Stable for the same group and items, so a retried send keeps its Message-ID.
    pub id: String,
    pub key: DigestKey,
    pub recipient: String,
    pub items: Vec<HeldItem>,
    /// 1 for a first claim; more when a claim was taken over or retried.
    pub attempt: u32,
}

/// What the store knows of an event id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EventRecord {
    /// Never seen (or dead-lettered without an id).
    Unknown,
    /// Recorded; `completed` once every delivery was settled.
    Seen { event_type: String, completed: bool },
    /// Dead-lettered and never recorded (bad input, or retries exhausted before admission).
    DeadLettered {
        reason: String,
        detail: String,
        at: DateTime<Utc>,
    },
}

/// How a claimed digest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestOutcome<'a> {
    Sent {
        message_id: &'a str,
    },
    Failed {
        error: &'a str,
    },
    /// Every item was dropped (see [`DigestStore::drop_held`]): nothing to send.
    Empty,
}

/// One row of the notification log: what happened to one planned delivery.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    pub event_id: String,
    pub event_type: String,
    pub notification: String,
    pub channel: String,
    pub recipient: String,
    pub status: LogStatus,
    /// The rules that decided it; for `suppressed`, the suppressing rules follow the planning one.
    pub rules: Vec<String>,
    pub message_id: Option<String>,
    pub digest_id: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Computes the plan once the digest positions of this event are known.
pub type Planner<'a> = &'a (dyn Fn(&[(DigestKey, u32)]) -> Plan + Send + Sync);

/// The worker's state, one trait per concern; [`Store`] is all of them.
#[async_trait]
pub trait Store: DirectoryStore + EventStore + EntryStore + DigestStore + LogStore + ArchiveStore {
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The directory as every worker recorded it.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// The directory events stored (by any worker) after `after`, oldest first;
    /// `after = 0` gives the whole directory. Cheap when nothing changed.
    async fn directory_changes(&self, after: i64) -> Result<DirectoryChanges, StoreError>;

    /// The preference changes stored (by any worker) after `after`, oldest first.
    async fn preference_changes(&self, after: i64) -> Result<PreferenceChanges, StoreError>;

    /// Whether a directory change after `directory` or a preference change
    /// after `preferences` is stored: one query, where reading both would be two.
    async fn changed_since(&self, directory: i64, preferences: i64) -> Result<bool, StoreError>;

    /// Records recipients' choices, in order, in one transaction.
    async fn record_preferences(&self, changes: &[crate::preferences::PreferenceChange]) -> Result<(), StoreError>;

    /// A number that changes whenever this process commits a directory or
    /// preference change, for a store only this process writes to (SQLite):
    /// while it stands still, there is nothing new to read. `None` (any
    /// worker may write: PostgreSQL): ask the store every time.
    fn change_hint(&self) -> Option<u64> {
        None
    }
}

/// Events: admission, the claims on their deliveries, and what became of each.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// The statuses routing reads for the event's referral.
    async fn state_for(&self, event: &Event) -> Result<MemoryState, StoreError>;

    /// In one transaction: record the event id (or find it recorded), take
    /// the event's lease (unless another worker holds it: `Busy`), count it
    /// under `counters` (each increment returns its position), apply its
    /// directory change (if newer than the stored one) and the plan's state
    /// records, log every planned delivery, and claim the pending ones.
    /// Returns the deliveries claimed.
    async fn admit(&self, event: &Event, counters: &[DigestKey], plan: Planner<'_>) -> Result<Admission, StoreError>;

    /// Claims (or renews this worker's claim on) a pending delivery, and
    /// renews the event's lease: for an event whose sending outlasts a good
    /// part of the lease. False when it is no longer pending or another
    /// worker's claim on it is still live: then it must not be sent.
    async fn claim_delivery(&self, log_id: i64) -> Result<bool, StoreError>;

    /// Gives up this worker's lease on the event and claims on its deliveries
    /// (processing failed), so another worker can take it over at once.
    async fn release(&self, event_id: &str) -> Result<(), StoreError>;

    /// A delivery of `event_id` went out (the mail server accepted it / the
    /// entry is stored and published). Quick, because it is called while
    /// holding a send turn: once it returns, the record survives this process
    /// being killed; it is durable (a power cut) once the event's `complete`
    /// returns true (or its `release` returns): those commit in full, after it.
    async fn mark_sent(&self, event_id: &str, log_id: i64, message_id: Option<&str>) -> Result<(), StoreError>;

    /// A delivery will never go out; the error explains why.
    async fn mark_failed(&self, log_id: i64, error: &str) -> Result<(), StoreError>;

    /// A transient failure, counted on the log row.
    async fn note_attempt(&self, log_id: i64, error: &str) -> Result<(), StoreError>;

    /// Marks the event done if none of its deliveries is still pending; false
    /// when one is (another worker claimed it and is sending it).
    async fn complete(&self, event_id: &str) -> Result<bool, StoreError>;
}

/// The Action Center entries the HTTP API serves.
#[async_trait]
pub trait EntryStore: Send + Sync {
    /// Stores an entry; storing the same id again changes nothing.
    async fn put_entry(&self, entry: &ActionCenterEntry) -> Result<(), StoreError>;

    /// A page of a user's entries (not expired), newest first.
    async fn inbox(&self, user: &str, query: &InboxQuery<'_>) -> Result<InboxPage, StoreError>;

    /// A user's entries stored after position `after` (not expired nor archived), oldest first.
    async fn entries_after(&self, user: &str, after: i64) -> Result<Vec<(i64, ActionCenterEntry)>, StoreError>;

    /// The position of the newest entry stored for `user` (0 when none).
    async fn newest_entry(&self, user: &str) -> Result<i64, StoreError>;

    async fn counts(&self, user: &str) -> Result<InboxCounts, StoreError>;

    /// One of the user's entries, if it is theirs and not expired.
    async fn entry(&self, user: &str, id: &str) -> Result<Option<ActionCenterEntry>, StoreError>;

    /// Marks the user's entries (one, or all when `id` is `None`); returns how many changed.
    async fn mark(&self, user: &str, id: Option<&str>, mark: Mark) -> Result<u64, StoreError>;
}

/// Held deliveries and the digests that send them.
#[async_trait]
pub trait DigestStore: Send + Sync {
    /// Recipients with held deliveries not yet in a sent digest.
    async fn held_groups(&self) -> Result<Vec<HeldGroup>, StoreError>;

    /// Claims one recipient's held deliveries for a digest until `lease_until`.
    /// An open claim whose lease ran out (its worker died) is taken over as the
    /// same digest; one still leased to another worker gives `None`, as does a
    /// group with nothing left to send.
    async fn claim_digest(
        &self,
        group: &HeldGroup,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<DigestClaim>, StoreError>;

    /// Renews this worker's claim on an open digest until `lease_until`;
    /// false when the claim is no longer this worker's (another flush took it
    /// over after the lease ran out) or is settled: then it must not be sent.
    async fn renew_digest(&self, digest_id: &str, worker: &str, lease_until: DateTime<Utc>)
    -> Result<bool, StoreError>;

    /// The digest is settled: sent (its items are digested, in the log too),
    /// or failed for good (its items are failed, in the log too, and never
    /// claimed again).
    async fn settle_digest(
        &self,
        digest_id: &str,
        outcome: &DigestOutcome<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Takes items out of a claimed digest because their recipient turned
    /// them off: their log rows become `suppressed` with these rules, and
    /// they are never claimed again.
    async fn drop_held(
        &self,
        digest_id: &str,
        items: &[(i64, Vec<String>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// The bodies of admitted events, kept for `archive.retention` (see `replay --from-store`).
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Archived events received in `[since, until)`, in the order they were admitted.
    async fn archived(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Event>, StoreError>;

    /// Forgets archived events received before `before`; how many it forgot.
    async fn prune_archive(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The notification log: what happened to every planned delivery.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// A message was dead-lettered; `event_id` is the id it carried.
    async fn record_dead_letter(&self, event_id: &str, reason: &str, detail: &str) -> Result<(), StoreError>;

    /// Whether the event was recorded, dead-lettered, or never seen.
    async fn event_record(&self, event_id: &str) -> Result<EventRecord, StoreError>;

    /// The notification log of one event.
    async fn log_for_event(&self, event_id: &str) -> Result<Vec<LogEntry>, StoreError>;

    /// The notification log of one recipient, newest first.
    async fn log_for_recipient(&self, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError>;
}

/// Opens and migrates the store named by `settings.url`: `sqlite://PATH` or
/// `postgres://…` (also `postgresql://`). The one place a backend is chosen.
pub async fn connect(
    settings: &crate::config::Store,
    archive: &crate::config::Archive,
) -> Result<Arc<dyn Store>, StoreError> {
    let url = settings.url.expose();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, settings, archive.enabled()).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(settings, archive.enabled()).await?))
    } else {
        Err(StoreError::Unsupported(format!(
            "unsupported store url scheme: {}",
            crate::config::redact_url(url)
        )))
    }
}

/// Names this process in leases: host, process id and a start-time nonce, so a
/// restarted worker does not mistake its predecessor's leases for its own.
pub fn worker_id() -> String {
    static OPENED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{host}-{}-{nanos:x}-{n}", std::process::id())
}
