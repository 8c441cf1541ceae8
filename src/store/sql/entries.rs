//! Action Center entries: stored once per id, read per user. Written once in
//! the SQL both stores speak; compiled into each backend with its `dialect`.

use sqlx::Row;

use super::dialect::{Db, Pool, Stamp, read_stamp, stamp};
use crate::store::{ActionCenterEntry, StoreError};

pub async fn put<'c>(db: impl sqlx::Executor<'c, Database = Db>, e: &ActionCenterEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO action_center (id, user_key, partner_id, event_id, notification, category, priority, title,
               body, link, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(&e.user)
    .bind(&e.partner_id)
    .bind(&e.event_id)
    .bind(&e.notification)
    .bind(&e.category)
    .bind(&e.priority)
    .bind(&e.title)
    .bind(&e.body)
    .bind(&e.link)
    .bind(stamp(e.created_at))
    .bind(e.expires_at.map(stamp))
    .execute(db)
    .await?;
    Ok(())
}

pub async fn list(
    pool: &Pool,
    user: &str,
    unread_only: bool,
    limit: u32,
) -> Result<Vec<ActionCenterEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM action_center WHERE user_key = $1 AND (NOT $2 OR read_at IS NULL)
               AND (expires_at IS NULL OR expires_at > $3)
             ORDER BY created_at DESC, id LIMIT $4",
    )
    .bind(user)
    .bind(unread_only)
    .bind(stamp(chrono::Utc::now()))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let read_at: Option<Stamp> = row.try_get("read_at")?;
            Ok(ActionCenterEntry {
                id: row.try_get("id")?,
                user: row.try_get("user_key")?,
                partner_id: row.try_get("partner_id")?,
                event_id: row.try_get("event_id")?,
                notification: row.try_get("notification")?,
                category: row.try_get("category")?,
                priority: row.try_get("priority")?,
                title: row.try_get("title")?,
                body: row.try_get("body")?,
                link: row.try_get("link")?,
                created_at: read_stamp(row.try_get("created_at")?),
                expires_at: row.try_get::<Option<Stamp>, _>("expires_at")?.map(read_stamp),
                read: read_at.is_some(),
            })
        })
        .collect()
}

pub async fn unread(pool: &Pool, user: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM action_center WHERE user_key = $1 AND read_at IS NULL
               AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(user)
    .bind(stamp(chrono::Utc::now()))
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub async fn mark_read(pool: &Pool, user: &str, id: Option<&str>) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE action_center SET read_at = $1
         WHERE user_key = $2 AND read_at IS NULL AND (CAST($3 AS TEXT) IS NULL OR id = $3)",
    )
    .bind(stamp(chrono::Utc::now()))
    .bind(user)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
