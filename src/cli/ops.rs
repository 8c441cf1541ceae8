//! The operator's commands that read or act on the store: `digest flush`
//! and `log`. Both run beside live workers; the store keeps them safe.

use std::fmt::Write;

use crate::app::App;
use crate::digest::{Scope, flush_now, hostname};
use crate::route::RuleSet;
use crate::store::{EventRecord, LogEntry};

/// Flushes every held digest now (due or not) and says what it did.
pub async fn digest_flush(app: &App) -> Result<String, String> {
    let worker = format!("flush-{}-{}", hostname(), std::process::id());
    let r = flush_now(&app.flow, &worker, app.settings.digest.lease, Scope::All, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = format!("digests sent: {}, leads digested: {}", r.digests_sent, r.leads_digested);
    if r.busy > 0 {
        let _ = write!(out, ", being flushed elsewhere: {}", r.busy);
    }
    if r.leads_dropped > 0 {
        let _ = write!(
            out,
            ", left out because their recipient turned them off: {}",
            r.leads_dropped
        );
    }
    if r.refused > 0 {
        let _ = write!(out, ", refused for good (marked failed): {}", r.refused);
    }
    if r.failed > 0 {
        let _ = write!(out, ", failed (kept for the next flush): {}", r.failed);
    }
    if r.failed > 0 { Err(out) } else { Ok(out) }
}

/// Who it is about: one event, or one recipient.
pub enum LogQuery {
    Event(String),
    Recipient(String),
}

/// The notification log as text: one line per planned delivery, saying what
/// happened and which rules decided it.
pub async fn log(app: &App, query: &LogQuery) -> Result<(String, Vec<LogEntry>), String> {
    let rows = match query {
        LogQuery::Event(id) => app.flow.store.log_for_event(id).await,
        LogQuery::Recipient(email) => app.flow.store.log_for_recipient(email, 500).await,
    }
    .map_err(|e| e.to_string())?;
    let mut text = log_text(&rows, &app.flow.serving.current().rules);
    if let (LogQuery::Event(id), true) = (query, rows.is_empty()) {
        let record = app.flow.store.event_record(id).await.map_err(|e| e.to_string())?;
        text = unrouted_text(id, &record);
    }
    Ok((text, rows))
}

/// What the store knows of an event that planned no delivery.
fn unrouted_text(id: &str, record: &EventRecord) -> String {
    match record {
        EventRecord::Unknown => format!("{id}: never seen\n"),
        EventRecord::Seen { event_type, .. } => {
            format!("{id}: seen ({event_type}) and routed to nobody: no rule planned a delivery\n")
        }
        EventRecord::DeadLettered { reason, detail, at } => format!(
            "{id}: dead-lettered ({reason}) at {}: {detail}\n",
            at.format("%Y-%m-%d %H:%M:%S")
        ),
    }
}

/// Renders log rows for people.
pub fn log_text(rows: &[LogEntry], rules: &RuleSet) -> String {
    if rows.is_empty() {
        return "no deliveries recorded\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let why = match r.status {
            crate::store::LogStatus::Suppressed => format!("suppressed by {}", rules.suppressing(&r.rules).join(", ")),
            crate::store::LogStatus::Held => format!("held for a digest by {}", r.rules.join(", ")),
            crate::store::LogStatus::Digested => format!(
                "sent in digest {} ({})",
                r.digest_id.as_deref().unwrap_or("?"),
                r.message_id.as_deref().unwrap_or("?")
            ),
            crate::store::LogStatus::Sent => format!(
                "sent ({}) by {}",
                r.message_id.as_deref().unwrap_or("?"),
                r.rules.join(", ")
            ),
            crate::store::LogStatus::Failed => format!("failed: {}", r.error.as_deref().unwrap_or("?")),
            crate::store::LogStatus::Pending => format!("pending after {} attempt(s)", r.attempts),
        };
        let _ = writeln!(
            out,
            "{}  {:<12} {:<32} {:<13} {:<32} {}",
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.event_id,
            r.notification,
            r.channel,
            r.recipient,
            why
        );
    }
    out
}
