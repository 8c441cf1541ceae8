//! The digest: leads held past a partner's daily threshold go out together,
//! one email per recipient per flush. A held lead is in exactly one digest:
//! a flush claims a recipient's held leads in the store (with a lease), sends,
//! then records the send. A flush that dies is taken over when its lease ends,
//! as the same digest with the same Message-ID.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::directory::DirectoryView;
use crate::dispatch::email::{Mailer, SendError, Staged};
use crate::event::EventId;
use crate::render::{Sender, Templates, build_email, message_id};
use crate::route::RuleSet;
use crate::route::rules::{Action, DayBoundary, DigestPolicy};
use crate::store::{DigestClaim, HeldGroup, Store, StoreError};

/// Where "now" comes from, so tests can move time instead of waiting for it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told.
pub struct FixedClock(pub std::sync::Mutex<DateTime<Utc>>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which held groups a flush takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only groups that are due: held for a whole flush interval, or whose day has ended.
    Due,
    /// Everything held (`referral-router digest flush`).
    All,
}

/// The digest policy (and the rule carrying it) of a counter.
pub fn policy<'r>(rules: &'r RuleSet, counter: &str) -> Option<(&'r str, &'r DigestPolicy)> {
    rules.rules.iter().find_map(|r| match &r.action {
        Action::Notify(n) => n
            .digest
            .as_ref()
            .filter(|d| d.counter == counter)
            .map(|d| (r.id.as_str(), d)),
        _ => None,
    })
}

/// Whether a group must be flushed now: its oldest item has waited a whole
/// flush interval, or its day (in the partner's time zone) is over.
pub fn is_due(group: &HeldGroup, policy: &DigestPolicy, dir: &dyn DirectoryView, now: DateTime<Utc>) -> bool {
    let today = match policy.day {
        DayBoundary::Utc => now.date_naive(),
        DayBoundary::PartnerLocal => {
            let tz = dir
                .partner(&group.key.partner)
                .and_then(|p| p.time_zone.as_ref())
                .map_or(chrono_tz::UTC, |t| t.tz());
            now.with_timezone(&tz).date_naive()
        }
    };
    let waited = (now - group.oldest).to_std().unwrap_or(Duration::ZERO);
    group.key.day < today || waited >= policy.flush_every
}

/// What one flush did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    pub digests_sent: u32,
    pub leads_digested: u32,
    /// Groups another worker was flushing.
    pub busy: u32,
    pub not_due: u32,
    pub failed: u32,
}

/// Everything a flush needs.
pub struct Flusher<'a> {
    pub store: &'a dyn Store,
    pub rules: &'a RuleSet,
    pub templates: &'a Templates,
    pub directory: &'a (dyn DirectoryView + Sync),
    pub mailer: &'a Mailer,
    pub mail: &'a crate::config::Mail,
    pub sender: &'a Sender,
    pub clock: &'a dyn Clock,
    /// Who is flushing, recorded on claims.
    pub worker: &'a str,
    pub lease: Duration,
}

impl Flusher<'_> {
    /// Flushes the held groups in `scope`; a failure of one group does not stop the others.
    pub async fn flush(&self, scope: Scope) -> Result<FlushReport, StoreError> {
        let mut report = FlushReport::default();
        for group in self.store.held_groups().await? {
            let Some((_, policy)) = policy(self.rules, &group.key.counter) else {
                warn!(counter = %group.key.counter, "held items whose counter no rule defines; flushing them as they are");
                continue;
            };
            let now = self.clock.now();
            if scope == Scope::Due && !is_due(&group, policy, self.directory, now) {
                report.not_due += 1;
                continue;
            }
            let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(5));
            let Some(claim) = self.store.claim_digest(&group, self.worker, now, lease_until).await? else {
                report.busy += 1;
                continue;
            };
            let sent = match self.stage(&claim, policy).await {
                Ok((staged, message_id)) => {
                    let turn = self.mailer.turn().await.map_err(|e| StoreError(e.to_string()))?;
                    staged
                        .finish()
                        .await
                        .map(|()| (message_id, turn))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok((message_id, turn)) => {
                    // Recorded before the turn is given up: see `smtp.max_in_flight`.
                    self.store.digest_sent(&claim.id, &message_id, self.clock.now()).await?;
                    drop(turn);
                    report.digests_sent += 1;
                    report.leads_digested += u32::try_from(claim.items.len()).unwrap_or(u32::MAX);
                    info!(digest = %claim.id, recipient = %claim.recipient, items = claim.items.len(),
                          attempt = claim.attempt, %message_id, "digest sent");
                }
                Err(e) => {
                    // The claim stays; the next flush after the lease retries it as the same digest.
                    report.failed += 1;
                    warn!(digest = %claim.id, recipient = %claim.recipient, error = %e, "digest not sent; will retry");
                }
            }
        }
        Ok(report)
    }

    /// Renders the digest and stages it with the mail server.
    async fn stage(&self, claim: &DigestClaim, policy: &DigestPolicy) -> Result<(Staged<'_>, String), String> {
        let first = claim.items.first().ok_or("a digest with no items")?;
        let recipient = &first.delivery.recipient;
        let leads: Vec<_> = claim.items.iter().map(|i| i.event.clone()).collect();
        let email = self
            .templates
            .render_digest(&policy.template, recipient, &leads)
            .map_err(|e| e.to_string())?;
        let id = message_id(
            &EventId::new(claim.id.clone()),
            &policy.notification,
            &recipient.email,
            self.sender.from.email.domain(),
        );
        let unsubscribe = self
            .rules
            .notifications
            .get(&policy.notification)
            .is_some_and(|n| n.optional)
            .then_some(self.mail.unsubscribe_url.as_str());
        let message =
            build_email(&email, self.sender, recipient, &id, unsubscribe, &claim.id).map_err(|e| e.to_string())?;
        match self.mailer.stage(message).await {
            Ok(staged) => Ok((staged, id)),
            Err(SendError::Transient(e) | SendError::Permanent(e)) => Err(e),
        }
    }
}

/// Flushes the held groups in `scope` with the worker's current rules,
/// templates and directory, claiming as `worker`.
pub async fn flush_for(app: &crate::app::App, worker: &str, scope: Scope) -> Result<FlushReport, StoreError> {
    let active = app.active();
    let dir = app.directory().clone();
    let flusher = Flusher {
        store: &*app.store,
        rules: &active.rules,
        templates: &active.templates,
        directory: &dir,
        mailer: &app.mailer,
        mail: &app.settings.mail,
        sender: &app.sender,
        clock: &SystemClock,
        worker,
        lease: app.settings.digest.lease,
    };
    flusher.flush(scope).await
}

/// Runs due flushes every `every` until `shutdown`.
pub async fn run_periodically(app: Arc<crate::app::App>, every: Duration) {
    let worker = format!("{}-{}", hostname(), std::process::id());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = flush_for(&app, &worker, Scope::Due).await;
        match report {
            Ok(r) if r.digests_sent > 0 || r.failed > 0 => {
                app.metrics
                    .digests
                    .with_label_values(&["sent"])
                    .inc_by(u64::from(r.digests_sent));
                app.metrics
                    .digests
                    .with_label_values(&["failed"])
                    .inc_by(u64::from(r.failed));
                info!(
                    sent = r.digests_sent,
                    leads = r.leads_digested,
                    failed = r.failed,
                    "digest flush"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "digest flush failed; retrying at the next tick"),
        }
    }
}

/// This host's name, for naming claims.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "router".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::read_directory;
    use crate::event::PartnerId;
    use crate::route::DigestKey;
    use chrono::NaiveDate;
    use std::path::Path;

    fn rules() -> RuleSet {
        RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap()
    }

    fn group(day: &str, oldest: &str) -> HeldGroup {
        HeldGroup {
            key: DigestKey {
                counter: "contact-me-leads".into(),
                partner: PartnerId::new("fabrikam"),
                day: NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap(),
            },
            recipient: "dana@fabrikam.example".into(),
            oldest: oldest.parse().unwrap(),
            items: 1,
        }
    }

    #[test]
    fn due_after_a_flush_interval_or_at_the_partners_midnight() {
        let rules = rules();
        let (_, policy) = policy(&rules, "contact-me-leads").expect("the shipped digest policy");
        assert_eq!(policy.flush_every, Duration::from_secs(3600));
        let dir = read_directory(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/tests/directory.jsonl")).unwrap();
        // Fabrikam is in Los Angeles (UTC-8 in November). Held at 20:00 local on the 20th.
        let g = group("2026-11-20", "2026-11-21T04:00:00Z");
        let at = |t: &str| is_due(&g, policy, &dir, t.parse().unwrap());
        assert!(!at("2026-11-21T04:30:00Z"), "half an hour later");
        assert!(at("2026-11-21T05:00:00Z"), "a whole interval later");
        // Held at 23:30 local: due at local midnight, before its interval is up.
        let late = group("2026-11-20", "2026-11-21T07:30:00Z");
        assert!(!is_due(&late, policy, &dir, "2026-11-21T07:59:59Z".parse().unwrap()));
        assert!(is_due(&late, policy, &dir, "2026-11-21T08:00:00Z".parse().unwrap()));
        // UTC midnight is not the partner's midnight.
        let utc_evening = group("2026-11-20", "2026-11-20T23:50:00Z");
        assert!(!is_due(
            &utc_evening,
            policy,
            &dir,
            "2026-11-21T00:10:00Z".parse().unwrap()
        ));
    }
}
