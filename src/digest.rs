//! The digest: leads held past a partner's daily threshold go out together,
//! one email per recipient per flush. A held lead is in exactly one digest:
//! a flush claims a recipient's held leads in the store (with a lease), sends,
//! then records the send. A flush that dies is taken over when its lease ends,
//! as the same digest with the same Message-ID.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::directory::DirectoryView;
use crate::dispatch::Dispatcher;
use crate::error::Failure;
use crate::flow::Flow;
use crate::route::rules::{Channel, DayBoundary, DigestPolicy};
use crate::route::{DigestKey, PREFERENCE};
use crate::serving::ServingSet;
use crate::store::{DigestClaim, DigestOutcome, HeldGroup, StoreError};
use crate::telemetry::Metrics;
use crate::ticker::Ticker;

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

/// When a group held since `oldest` falls due: a whole flush interval later,
/// or at the end of its day (in the partner's time zone), whichever is first.
/// The same moment [`is_due`] first answers yes for.
pub fn due_at(key: &DigestKey, oldest: DateTime<Utc>, policy: &DigestPolicy, dir: &dyn DirectoryView) -> DateTime<Utc> {
    let interval = oldest + chrono::Duration::from_std(policy.flush_every).unwrap_or(chrono::Duration::hours(1));
    let Some(next_day) = key.day.succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)) else {
        return interval;
    };
    let midnight = match policy.day {
        DayBoundary::Utc => Some(next_day.and_utc()),
        DayBoundary::PartnerLocal => {
            let tz = dir
                .partner(&key.partner)
                .and_then(|p| p.time_zone.as_ref())
                .map_or(chrono_tz::UTC, |t| t.tz());
            tz.from_local_datetime(&next_day)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }
    };
    midnight.map_or(interval, |m| m.min(interval))
}

/// What one flush did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    pub digests_sent: u32,
    pub leads_digested: u32,
    /// Groups another worker was flushing.
    pub busy: u32,
    pub not_due: u32,
    /// Digests that failed for now (the server was down, say): retried at a later flush.
    pub failed: u32,
    /// Digests refused for good (a permanent SMTP refusal, a template that
    /// cannot render): their items are marked failed and not retried.
    pub refused: u32,
    /// Held items left out because their recipient turned them off (suppressed by `preference`).
    pub leads_dropped: u32,
}

/// Everything a flush needs.
pub struct Flusher<'a> {
    pub dispatcher: &'a Dispatcher,
    pub serving: &'a ServingSet,
    pub directory: &'a (dyn DirectoryView + Sync),
    pub clock: &'a dyn Clock,
    /// Who is flushing, recorded on claims.
    pub worker: &'a str,
    pub lease: Duration,
    /// When it fires, the flush stops before its next group (never in the middle of one).
    pub stop: Option<&'a CancellationToken>,
}

/// Which digest a group goes out as.
struct DigestAs<'a> {
    notification: &'a str,
    template: &'a str,
}

impl Flusher<'_> {
    /// Flushes the held groups in `scope`; a failure of one group does not stop the others.
    pub async fn flush(&self, scope: Scope) -> Result<FlushReport, StoreError> {
        let mut report = FlushReport::default();
        let store = &*self.dispatcher.store;
        for group in store.held_groups().await? {
            if self.stop.is_some_and(CancellationToken::is_cancelled) {
                break;
            }
            let policy = self.serving.rules.digest_policy(&group.key.counter).map(|(_, p)| p);
            let now = self.clock.now();
            // A group no rule holds any more is due at once: nothing else would ever send it.
            if scope == Scope::Due && policy.is_some_and(|p| !is_due(&group, p, self.directory, now)) {
                report.not_due += 1;
                continue;
            }
            let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(5));
            let Some(claim) = store.claim_digest(&group, self.worker, now, lease_until).await? else {
                report.busy += 1;
                continue;
            };
            let Some(claim) = self.without_unwanted(claim, policy, &mut report).await? else {
                continue;
            };
            self.settle(&claim, self.send(&claim, policy).await, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Takes out of a claimed digest the items its recipient has since turned
    /// off (the held notification, or the digest itself, by email); `None`
    /// when nothing is left to send (the digest is then settled as empty).
    async fn without_unwanted(
        &self,
        mut claim: DigestClaim,
        policy: Option<&DigestPolicy>,
        report: &mut FlushReport,
    ) -> Result<Option<DigestClaim>, StoreError> {
        let rules = &self.serving.rules;
        let wants = |notification: &str, email: &crate::event::EmailAddress| {
            !rules.is_optional(notification)
                || self
                    .directory
                    .wants(email, notification, rules.category_of(notification), Channel::Email)
        };
        let digest = policy.map(|p| p.notification.as_str());
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut claim.items).into_iter().partition(|i| {
            let to = &i.delivery.recipient.email;
            wants(&i.delivery.notification, to) && digest.is_none_or(|d| wants(d, to))
        });
        claim.items = kept;
        if dropped.is_empty() {
            return Ok(Some(claim));
        }
        let store = &*self.dispatcher.store;
        let now = self.clock.now();
        let settled: Vec<(i64, Vec<String>)> = dropped
            .iter()
            .map(|i| {
                let mut rules = i.delivery.rules.clone();
                rules.push(PREFERENCE.to_owned());
                (i.log_id, rules)
            })
            .collect();
        store.drop_held(&claim.id, &settled, now).await?;
        report.leads_dropped += u32::try_from(dropped.len()).unwrap_or(u32::MAX);
        info!(digest = %claim.id, recipient = %claim.recipient, dropped = dropped.len(), kept = claim.items.len(),
              "held items their recipient turned off are left out of the digest");
        if claim.items.is_empty() {
            store.settle_digest(&claim.id, &DigestOutcome::Empty, now).await?;
            return Ok(None);
        }
        Ok(Some(claim))
    }

    /// Records and reports how one claimed digest's send ended.
    async fn settle(
        &self,
        claim: &DigestClaim,
        sent: Result<String, Failure>,
        report: &mut FlushReport,
    ) -> Result<(), StoreError> {
        match sent {
            Ok(message_id) => {
                report.digests_sent += 1;
                report.leads_digested += u32::try_from(claim.items.len()).unwrap_or(u32::MAX);
                info!(digest = %claim.id, recipient = %claim.recipient, items = claim.items.len(),
                      attempt = claim.attempt, %message_id, "digest sent");
            }
            Err(Failure::Permanent(reason)) => {
                let outcome = DigestOutcome::Failed { error: &reason };
                self.dispatcher
                    .store
                    .settle_digest(&claim.id, &outcome, self.clock.now())
                    .await?;
                report.refused += 1;
                warn!(digest = %claim.id, recipient = %claim.recipient, error = %reason,
                      "digest failed for good; its items are marked failed and not retried");
            }
            Err(Failure::Store(e)) => return Err(e),
            Err(Failure::TakenOver) => {
                report.busy += 1;
                info!(digest = %claim.id, recipient = %claim.recipient, "another flush took this digest over; leaving it to it");
            }
            Err(e @ (Failure::Mail(_) | Failure::Broker(_) | Failure::NotYet(_))) => {
                // The claim stays; the next flush after the lease retries it as the same digest.
                report.failed += 1;
                warn!(digest = %claim.id, recipient = %claim.recipient, error = %e, "digest not sent; will retry");
            }
        }
        Ok(())
    }

    /// Renders the digest and sends it through the one email path; the Message-ID it went out with.
    async fn send(&self, claim: &DigestClaim, policy: Option<&DigestPolicy>) -> Result<String, Failure> {
        let first = claim
            .items
            .first()
            .ok_or_else(|| Failure::Permanent("a digest with no items".into()))?;
        let how = self.digest_as(claim, policy)?;
        let recipient = &first.delivery.recipient;
        let leads: Vec<_> = claim.items.iter().map(|i| i.event.clone()).collect();
        let email = self
            .serving
            .templates
            .render_digest(how.notification, how.template, recipient, &leads)
            .map_err(|e| Failure::Permanent(format!("rendering: {e}")))?;
        let optional = self.serving.rules.is_optional(how.notification);
        let d = self.dispatcher;
        let (message, id) = d
            .letterhead
            .compose(&email, how.notification, optional, recipient, &claim.id)?;
        // Staging and the wait for a turn can be long: the claim must still be ours, for another lease.
        let still_ours = async {
            let until =
                self.clock.now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(5));
            d.store.renew_digest(&claim.id, self.worker, until).await
        };
        let record = async {
            let outcome = DigestOutcome::Sent { message_id: &id };
            d.store.settle_digest(&claim.id, &outcome, self.clock.now()).await
        };
        d.mailer.deliver(message, still_ours, record).await?;
        Ok(id)
    }

    /// The digest a claim goes out as: its counter's policy; or, when no rule
    /// defines that counter any more, the digest its items were held for.
    fn digest_as<'s>(
        &'s self,
        claim: &'s DigestClaim,
        policy: Option<&'s DigestPolicy>,
    ) -> Result<DigestAs<'s>, Failure> {
        if let Some(p) = policy {
            return Ok(DigestAs {
                notification: &p.notification,
                template: &p.template,
            });
        }
        if let Some(held_for) = claim.items.iter().find_map(|i| i.delivery.held_for.as_ref()) {
            info!(digest = %claim.id, counter = %claim.key.counter, notification = %held_for.notification,
                  "no rule holds this counter any more; sending its held items as the digest they were held for");
            return Ok(DigestAs {
                notification: &held_for.notification,
                template: &held_for.template,
            });
        }
        // Held before deliveries kept their digest: the digest of whichever rule now holds their notification.
        let notification = claim
            .items
            .first()
            .map(|i| i.delivery.notification.as_str())
            .unwrap_or_default();
        match self.serving.rules.digest_for(notification) {
            Some(p) => Ok(DigestAs {
                notification: &p.notification,
                template: &p.template,
            }),
            None => Err(Failure::NotYet(format!(
                "held for counter `{}`, which no rule defines any more, with no digest recorded: \
                 kept until a rule holds `{notification}` for a digest again",
                claim.key.counter
            ))),
        }
    }
}

/// Flushes the held groups in `scope` with the flow's current serving set and
/// directory, claiming as `worker` for `lease`.
pub async fn flush_now(
    flow: &Flow,
    worker: &str,
    lease: Duration,
    scope: Scope,
    stop: Option<&CancellationToken>,
) -> Result<FlushReport, StoreError> {
    // Preferences changed on any worker count: a lead turned off since it was held is left out.
    flow.directory.refresh(&*flow.store).await?;
    let serving = flow.serving.current();
    let directory = flow.directory.snapshot();
    let flusher = Flusher {
        dispatcher: &flow.dispatcher,
        serving: &serving,
        directory: &directory,
        clock: &SystemClock,
        worker,
        lease,
        stop,
    };
    flusher.flush(scope).await
}

/// Runs due flushes every `every` until `shutdown`, with the serving set and
/// directory current at each tick.
pub async fn run_periodically(flow: Arc<Flow>, lease: Duration, every: Duration, shutdown: CancellationToken) {
    let worker = format!("{}-{}", hostname(), std::process::id());
    let mut ticker = Ticker::new(every);
    while ticker.tick(&shutdown).await {
        let flush = flush_now(&flow, &worker, lease, Scope::Due, Some(&shutdown));
        match AssertUnwindSafe(flush).catch_unwind().await {
            Ok(Ok(r)) => count(&flow.dispatcher.metrics, &r),
            Ok(Err(e)) => warn!(error = %e, "digest flush failed; retrying at the next tick"),
            Err(_) => {
                flow.metrics.panics.inc();
                error!("a digest flush panicked; retrying at the next tick");
            }
        }
    }
}

fn count(metrics: &Metrics, r: &FlushReport) {
    if r.digests_sent == 0 && r.failed == 0 && r.refused == 0 {
        return;
    }
    for (outcome, n) in [("sent", r.digests_sent), ("failed", r.failed), ("refused", r.refused)] {
        metrics.digests.with_label_values(&[outcome]).inc_by(u64::from(n));
    }
    info!(
        sent = r.digests_sent,
        leads = r.leads_digested,
        failed = r.failed,
        refused = r.refused,
        "digest flush"
    );
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
    use crate::decode::read_directory;
    use crate::event::PartnerId;
    use crate::route::DigestKey;
    use crate::route::RuleSet;
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
        let (_, policy) = rules
            .digest_policy("contact-me-leads")
            .expect("the shipped digest policy");
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
        // due_at names the first moment is_due says yes.
        for g in [&g, &late] {
            let at = due_at(&g.key, g.oldest, policy, &dir);
            assert!(is_due(g, policy, &dir, at));
            assert!(!is_due(g, policy, &dir, at - chrono::Duration::seconds(1)));
        }
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
