//! Rules files -> compiled rule set -> planned deliveries.
//!
//! [`route`] is a pure function of the event, a directory view and a state
//! view: no I/O, so `rules test`, `explain` and the worker all run the same code.

mod lookup;
pub mod model;
pub mod path;
pub mod rules;
pub mod selector;
mod state;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{Value, json};

use crate::directory::DirectoryView;
use crate::event::{Event, PartnerId};
use rules::{Action, Channel, DayBoundary, FanOut, NotifyAction, Rule};
pub use rules::{RuleSet, RulesError};
pub use selector::Recipient;
pub use state::{MemoryState, StateView};

/// What the log and `explain` name, among the deciding rules, for a delivery
/// its recipient turned off: their own choice, not a rule.
pub const PREFERENCE: &str = "preference";

/// The key of a digest counter: one per counter, partner and partner-local day.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DigestKey {
    pub counter: String,
    pub partner: PartnerId,
    pub day: NaiveDate,
}

/// What happens to one planned delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Send,
    /// Held for the digest named by the key.
    Hold,
    Suppress,
}

/// One notification, on one channel, to one person.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delivery {
    pub notification: String,
    pub template: String,
    pub channel: Channel,
    pub recipient: Recipient,
    pub decision: Decision,
    /// The rules that decided it: the one that sent it, then any that held or suppressed it.
    pub rules: Vec<String>,
    /// The receiver this delivery is about, for fan-out rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestKey>,
    /// For a held delivery, the digest it waits for: kept with it, so it is
    /// still sent as that digest if its rule changes meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_for: Option<HeldFor>,
}

/// The digest notification and template a held delivery goes out in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HeldFor {
    pub notification: String,
    pub template: String,
}

impl Delivery {
    /// A delivery of `template` that no rule planned: for rendering examples
    /// and previews. `receiver` is the party a fan-out template is about.
    pub fn stand_in(
        template: &str,
        channel: Channel,
        recipient: Recipient,
        receiver: Option<&crate::event::Party>,
    ) -> Self {
        Self {
            notification: template.to_owned(),
            template: template.to_owned(),
            channel,
            recipient,
            decision: Decision::Send,
            rules: Vec::new(),
            receiver: receiver.map(|r| serde_json::to_value(r).unwrap_or_default()),
            digest: None,
            held_for: None,
        }
    }
}

/// A state change a `record` rule asks for, applied by whoever owns the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateChange {
    pub rule: String,
    pub referral: String,
    /// The receiver partner, for a per-receiver status.
    pub receiver: Option<String>,
    pub status: String,
}

/// Why a rule did or did not act on this event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    pub rule: String,
    /// The receiver's name, for fan-out rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub matched: bool,
    pub reason: String,
}

/// Everything routing decided for one event.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub deliveries: Vec<Delivery>,
    pub records: Vec<StateChange>,
    /// Digest counters this event counts towards (once per key).
    pub counters: Vec<DigestKey>,
    pub trace: Vec<Trace>,
}

/// Routes one event: who gets which notification on which channel, and why.
pub fn route(event: &Event, rules: &RuleSet, dir: &dyn DirectoryView, state: &dyn StateView) -> Plan {
    let base = context(event, state);
    let fanned = fan_out(event, rules, state, &base);
    let mut router = Router {
        event,
        rules,
        dir,
        state,
        plan: Plan::default(),
        raw: Vec::new(),
        suppressions: Vec::new(),
    };
    for rule in &rules.rules {
        if !rule.on.contains(&event.event_type) {
            continue;
        }
        let scopes: Vec<(Option<usize>, &Value)> = match rule.for_each {
            None => vec![(None, &base)],
            Some(FanOut::Receiver) => fanned.iter().enumerate().map(|(i, c)| (Some(i), c)).collect(),
        };
        for (scope, ctx) in scopes {
            router.apply(rule, scope, ctx);
        }
    }
    router.finish()
}

/// The document rules read for each receiver, when a rule for this event
/// type fans out; empty otherwise.
fn fan_out(event: &Event, rules: &RuleSet, state: &dyn StateView, base: &Value) -> Vec<Value> {
    if rules.rules_for(event.event_type).any(|r| r.for_each.is_some()) {
        (0..event.receivers().len())
            .map(|i| {
                let mut ctx = base.clone();
                bind_receiver(&mut ctx, event, state, Some(i));
                ctx
            })
            .collect()
    } else {
        Vec::new()
    }
}

/// One event being routed: what routing reads, and what it has planned so far.
struct Router<'a> {
    event: &'a Event,
    rules: &'a RuleSet,
    dir: &'a dyn DirectoryView,
    state: &'a dyn StateView,
    plan: Plan,
    /// Deliveries as the rules planned them, with the fan-out item each is for.
    raw: Vec<(Delivery, Option<usize>)>,
    /// Suppressions that matched, applied once every rule has run.
    suppressions: Vec<(&'a Rule, &'a [String], Option<usize>)>,
}

impl<'a> Router<'a> {
    /// Runs one rule in one scope (the event, or one fan-out item) and
    /// traces why it did or did not act.
    fn apply(&mut self, rule: &'a Rule, scope: Option<usize>, ctx: &Value) {
        let scope_name = scope
            .and_then(|i| self.event.receivers().get(i))
            .map(|r| r.name.clone());
        if let Some(reason) = unmatched(rule, ctx) {
            self.plan.trace.push(Trace {
                rule: rule.id.clone(),
                scope: scope_name,
                matched: false,
                reason,
            });
            return;
        }
        let reason = match &rule.action {
            Action::Notify(n) => self.notify(rule, n, scope, ctx),
            Action::Suppress(names) => {
                self.suppressions.push((rule, names, scope));
                format!("matched: suppresses {}", names.join(", "))
            }
            Action::Record(spec) => record(rule, spec, ctx, &mut self.plan.records),
        };
        self.plan.trace.push(Trace {
            rule: rule.id.clone(),
            scope: scope_name,
            matched: true,
            reason,
        });
    }

    /// Plans a matched `notify` rule's deliveries: every recipient on every
    /// channel, held where its digest is over the threshold.
    fn notify(&mut self, rule: &Rule, n: &NotifyAction, scope: Option<usize>, ctx: &Value) -> String {
        let mut recipients: Vec<Recipient> = Vec::new();
        for name in &n.to {
            if let Some(sel) = self.rules.selectors.get(name) {
                recipients.extend(sel.resolve(ctx, self.dir));
            }
        }
        let digest = n.digest.as_ref().and_then(|d| self.digest(d, ctx));
        let receiver = scope.map(|_| ctx["receiver"].clone());
        for channel in &n.channels {
            let held = digest
                .as_ref()
                .filter(|(_, held, chans)| *held && chans.contains(channel));
            for r in &recipients {
                self.raw.push((
                    Delivery {
                        notification: n.notification.clone(),
                        template: n.template.clone(),
                        channel: *channel,
                        recipient: r.clone(),
                        decision: if held.is_some() { Decision::Hold } else { Decision::Send },
                        rules: vec![rule.id.clone()],
                        receiver: receiver.clone(),
                        digest: held.map(|(k, _, _)| k.clone()),
                        held_for: held.and(n.digest.as_ref()).map(|p| HeldFor {
                            notification: p.notification.clone(),
                            template: p.template.clone(),
                        }),
                    },
                    scope,
                ));
            }
        }
        let held_note = match &digest {
            Some((k, true, _)) => format!(", held for digest {} of {}", k.counter, k.day),
            _ => String::new(),
        };
        format!(
            "matched: {} to {} recipient(s){held_note}",
            n.notification,
            recipients.len()
        )
    }

    /// Counts the event towards its digest counter (once per key) and says
    /// whether it is over the threshold, and for which channels.
    fn digest(&mut self, d: &rules::DigestPolicy, ctx: &Value) -> Option<(DigestKey, bool, Vec<Channel>)> {
        let key = digest_key(d, self.event, ctx, self.dir)?;
        if !self.plan.counters.contains(&key) {
            self.plan.counters.push(key.clone());
        }
        let position = self.state.digest_position(&key).max(1);
        Some((key, position > d.threshold, d.channels.clone()))
    }

    /// Applies the matched suppressions (to their own fan-out item, or to
    /// the whole event) and settles one delivery per person.
    fn finish(mut self) -> Plan {
        for (rule, names, scope) in std::mem::take(&mut self.suppressions) {
            for (d, d_scope) in self.raw.iter_mut() {
                if names.contains(&d.notification) && (scope.is_none() || scope == *d_scope) {
                    d.decision = Decision::Suppress;
                    d.digest = None;
                    d.held_for = None;
                    if !d.rules.contains(&rule.id) {
                        d.rules.push(rule.id.clone());
                    }
                }
            }
        }
        self.plan.deliveries = dedupe(std::mem::take(&mut self.raw).into_iter().map(|(d, _)| d));
        self.honour_preferences();
        self.plan
    }

    /// Suppresses the optional deliveries their recipients turned off, by [`PREFERENCE`].
    fn honour_preferences(&mut self) {
        for d in &mut self.plan.deliveries {
            let Some(n) = self.rules.notifications.get(&d.notification) else {
                continue;
            };
            if !n.optional
                || d.decision == Decision::Suppress
                || self
                    .dir
                    .wants(&d.recipient.email, &d.notification, n.category.as_deref(), d.channel)
            {
                continue;
            }
            d.decision = Decision::Suppress;
            d.digest = None;
            d.held_for = None;
            d.rules.push(PREFERENCE.to_owned());
            self.plan.trace.push(Trace {
                rule: PREFERENCE.to_owned(),
                scope: Some(d.recipient.email.to_string()),
                matched: true,
                reason: format!(
                    "{} turned off {} on {}: suppressed",
                    d.recipient.email, d.notification, d.channel
                ),
            });
        }
    }
}

/// One delivery per (notification, channel, person), however many roles or
/// rules reached them; the most deliverable decision wins.
fn dedupe(deliveries: impl Iterator<Item = Delivery>) -> Vec<Delivery> {
    let rank = |d: &Decision| match d {
        Decision::Send => 2,
        Decision::Hold => 1,
        Decision::Suppress => 0,
    };
    let mut out: Vec<Delivery> = Vec::new();
    for d in deliveries {
        match out.iter_mut().find(|o| {
            o.notification == d.notification && o.channel == d.channel && o.recipient.email == d.recipient.email
        }) {
            None => out.push(d),
            Some(existing) => {
                for r in &d.rules {
                    if !existing.rules.contains(r) {
                        existing.rules.push(r.clone());
                    }
                }
                if rank(&d.decision) > rank(&existing.decision) {
                    existing.decision = d.decision;
                    existing.digest = d.digest;
                    existing.held_for = d.held_for;
                }
            }
        }
    }
    out
}

/// The document rules read: the envelope, `data`, `state`, and `receiver`.
fn context(event: &Event, state: &dyn StateView) -> Value {
    let mut ctx = serde_json::to_value(event).unwrap_or(Value::Null);
    bind_receiver(&mut ctx, event, state, None);
    ctx
}

/// Binds `receiver` (the fan-out item, or an event's only receiver) and the
/// state recorded for it.
fn bind_receiver(ctx: &mut Value, event: &Event, state: &dyn StateView, index: Option<usize>) {
    let receivers = event.receivers();
    let receiver = match index {
        Some(i) => receivers.get(i),
        None if receivers.len() == 1 => receivers.first(),
        None => None,
    };
    let referral = event.referral().map(|r| r.id.as_str());
    let receiver_status = match (referral, receiver.and_then(|r| r.partner_id.as_ref())) {
        (Some(referral), Some(partner)) => state.receiver_status(referral, partner.as_str()),
        _ => None,
    };
    let referral_status = referral.and_then(|r| state.referral_status(r));
    ctx["receiver"] = receiver.map_or(Value::Null, |r| serde_json::to_value(r).unwrap_or(Value::Null));
    ctx["state"] = json!({
        "receiver": {"status": receiver_status},
        "referral": {"status": referral_status},
    });
}

/// The first condition that fails, described; `None` when all pass.
fn unmatched(rule: &Rule, ctx: &Value) -> Option<String> {
    rule.when.iter().find_map(|c| {
        let actual = path::present(ctx, &c.path);
        (!c.matcher.test(actual)).then(|| {
            let shown = actual.map_or("absent".to_string(), Value::to_string);
            format!("{} is {shown}, wanted {}", c.path, c.matcher.describe())
        })
    })
}

fn digest_key(d: &rules::DigestPolicy, event: &Event, ctx: &Value, dir: &dyn DirectoryView) -> Option<DigestKey> {
    let partner = PartnerId::new(path::present(ctx, &d.partner)?.as_str()?);
    let day = match d.day {
        DayBoundary::Utc => event.time.date_naive(),
        DayBoundary::PartnerLocal => {
            let tz = dir
                .partner(&partner)
                .and_then(|p| p.time_zone.as_ref())
                .map_or(chrono_tz::UTC, |t| t.tz());
            event.time.with_timezone(&tz).date_naive()
        }
    };
    Some(DigestKey {
        counter: d.counter.clone(),
        partner,
        day,
    })
}

fn record(rule: &Rule, spec: &rules::RecordSpec, ctx: &Value, out: &mut Vec<StateChange>) -> String {
    let value = |v: &rules::StatusValue| match v {
        rules::StatusValue::Literal(s) => Some(s.clone()),
        rules::StatusValue::From { from } => path::present(ctx, from).and_then(Value::as_str).map(str::to_owned),
    };
    let Some(referral) = path::present(ctx, "data.referral.id").and_then(Value::as_str) else {
        return "matched, but the event names no referral: nothing recorded".into();
    };
    let mut notes = Vec::new();
    if let Some(status) = spec.receiver_status.as_ref().and_then(value)
        && let Some(receiver) = path::present(ctx, "receiver.partner_id").and_then(Value::as_str)
    {
        notes.push(format!("receiver {receiver} is {status}"));
        out.push(StateChange {
            rule: rule.id.clone(),
            referral: referral.into(),
            receiver: Some(receiver.into()),
            status,
        });
    }
    if let Some(status) = spec.referral_status.as_ref().and_then(value) {
        notes.push(format!("referral is {status}"));
        out.push(StateChange {
            rule: rule.id.clone(),
            referral: referral.into(),
            receiver: None,
            status,
        });
    }
    format!("matched: records {}", notes.join(", "))
}
