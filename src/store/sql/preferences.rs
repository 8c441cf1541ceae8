//! Recipients' choices as the sequence of changes they made: written once in
//! the SQL both stores speak and compiled into each backend with its `dialect`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::dialect::{Pool, stamp};
use crate::preferences::{PreferenceChange, Subject};
use crate::route::rules::Channel;
use crate::store::{PreferenceChanges, StoreError};

pub async fn changes(pool: &Pool, after: i64) -> Result<PreferenceChanges, StoreError> {
    let rows = sqlx::query(
        "SELECT CAST(seq AS BIGINT) AS seq, recipient, subject, channel, enabled FROM preference_changes
         WHERE seq > $1 ORDER BY seq",
    )
    .bind(after)
    .fetch_all(pool)
    .await?;
    let mut out = PreferenceChanges {
        changes: Vec::with_capacity(rows.len()),
        seq: after,
    };
    for row in &rows {
        let subject: String = row.try_get("subject")?;
        let channel: String = row.try_get("channel")?;
        let unreadable = |what: &str| StoreError::Unreadable(format!("a stored preference names {what}"));
        out.changes.push(PreferenceChange {
            recipient: row.try_get("recipient")?,
            subject: Subject::parse(&subject).ok_or_else(|| unreadable(&format!("`{subject}`")))?,
            channel: match channel.as_str() {
                "email" => Channel::Email,
                "action_center" => Channel::ActionCenter,
                other => return Err(unreadable(&format!("channel `{other}`"))),
            },
            enabled: row.try_get("enabled")?,
        });
        out.seq = row.try_get("seq")?;
    }
    Ok(out)
}

pub async fn record(pool: &Pool, changes: &[PreferenceChange], now: DateTime<Utc>) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for c in changes {
        sqlx::query(
            "INSERT INTO preference_changes (recipient, subject, channel, enabled, changed_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.recipient)
        .bind(c.subject.key())
        .bind(c.channel.to_string())
        .bind(c.enabled)
        .bind(stamp(now))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
