//! Replay: a sequence of events routed in order through a serving set, with
//! the state carried from one to the next exactly as the worker carries it
//! (directory events applied as they come, digest counters per partner and
//! day, receiver and referral statuses, one delivery per person), and held
//! leads flushed into digests as the worker's periodic flush would. Nothing
//! is sent: the result is the list of planned deliveries.
//!
//! The routing is the worker's own ([`crate::route::route`]); only the state
//! lives in memory instead of the store.

pub mod diff;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::digest::due_at;
use crate::directory::Directory;
use crate::event::Event;
use crate::render::{Rendered, Templates};
use crate::route::rules::Channel;
use crate::route::{Decision, Delivery, DigestKey, MemoryState, RuleSet, StateView, route};

/// What a replayed delivery became.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Would go out now.
    Send,
    /// Held for a digest (and later sent in one: see [`Planned::digest`]).
    Hold,
    Suppress,
}

/// One delivery the replay planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// The event that planned it; for a digest, the first held event.
    pub event: String,
    pub notification: String,
    pub template: String,
    pub channel: Channel,
    /// The lower-cased email address.
    pub recipient: String,
    pub decision: Outcome,
    /// The rules that decided it.
    pub rules: Vec<String>,
    /// For a suppressed delivery, the rules that suppressed it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed_by: Vec<String>,
    /// A digest: how many held items it carries. A held item: whether a digest took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<u32>,
    /// The rendered subject (emails that go out, when subjects are asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// The rules and templates to replay through.
pub struct Engine<'a> {
    pub rules: &'a RuleSet,
    /// Given: the subjects of emails that go out are rendered.
    pub templates: Option<&'a Templates>,
}

/// Held items of one (counter, partner, day, recipient), waiting for their digest.
struct Held {
    /// Indexes of the held deliveries in the output, and their events.
    items: Vec<(usize, Event)>,
    /// The digest they wait for (notification, template) and a delivery to address it to.
    notification: String,
    template: String,
    delivery: Delivery,
}

/// The replay of one sequence: state carried across events.
pub struct Replay<'a> {
    engine: &'a Engine<'a>,
    directory: Directory,
    state: MemoryState,
    seen: HashSet<String>,
    held: BTreeMap<(DigestKey, String), Held>,
    /// The held groups by when they fall due.
    due: BTreeSet<(DateTime<Utc>, (DigestKey, String))>,
    planned: Vec<Planned>,
    /// Events skipped because their id was seen before.
    duplicates: usize,
}

impl<'a> Replay<'a> {
    pub fn new(engine: &'a Engine<'a>, directory: Directory) -> Self {
        Self {
            engine,
            directory,
            state: MemoryState::new(),
            seen: HashSet::new(),
            held: BTreeMap::new(),
            due: BTreeSet::new(),
            planned: Vec::new(),
            duplicates: 0,
        }
    }

    /// Routes one event as the worker would: an id seen before is a duplicate
    /// and plans nothing; digests due by the event's time are flushed first.
    pub fn push(&mut self, event: &Event) {
        if !self.seen.insert(event.id.as_str().to_string()) {
            self.duplicates += 1;
            return;
        }
        self.flush(Some(event.time));
        // Routed once, with each counter read as it will be once this event is
        // counted: the position the worker's admission gives it.
        let plan = route(event, self.engine.rules, &self.directory, &Counting(&self.state));
        for key in &plan.counters {
            self.state.count(key);
        }
        self.state.apply(&plan.records);
        let mut session = self.engine.templates.map(|t| t.session(event));
        for d in plan.deliveries {
            let subject = match (&mut session, d.decision == Decision::Send, d.channel) {
                (Some(session), true, Channel::Email) => match session.render(&d) {
                    Ok(Rendered::Email(e)) => Some(e.subject),
                    Ok(Rendered::ActionCenter(_)) => None,
                    Err(e) => Some(format!("(does not render: {e})")),
                },
                _ => None,
            };
            self.record(event, d, subject);
        }
        self.directory.apply(event);
    }

    fn record(&mut self, event: &Event, d: Delivery, subject: Option<String>) {
        let decision = match d.decision {
            Decision::Send => Outcome::Send,
            Decision::Hold => Outcome::Hold,
            Decision::Suppress => Outcome::Suppress,
        };
        let suppressed_by = match decision {
            Outcome::Suppress => self
                .engine
                .rules
                .suppressing(&d.rules)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Outcome::Send | Outcome::Hold => Vec::new(),
        };
        let index = self.planned.len();
        self.planned.push(Planned {
            event: event.id.to_string(),
            notification: d.notification.clone(),
            template: d.template.clone(),
            channel: d.channel,
            recipient: d.recipient.email.key(),
            decision,
            rules: d.rules.clone(),
            suppressed_by,
            digest: (decision == Outcome::Hold).then_some(0),
            subject,
        });
        if let (Outcome::Hold, Some(key), Some(held_for)) = (decision, d.digest.clone(), d.held_for.clone()) {
            let group = (key, d.recipient.email.key());
            if !self.held.contains_key(&group) {
                let due = self.due_at(&group.0, event.time);
                self.due.insert((due, group.clone()));
                self.held.insert(
                    group.clone(),
                    Held {
                        items: Vec::new(),
                        notification: held_for.notification,
                        template: held_for.template,
                        delivery: d,
                    },
                );
            }
            if let Some(held) = self.held.get_mut(&group) {
                held.items.push((index, event.clone()));
            }
        }
    }

    /// Sends the digests due at `now` (all of them when `None`: the end of the replay).
    pub fn flush(&mut self, now: Option<DateTime<Utc>>) {
        while let Some((due, _)) = self.due.first() {
            if now.is_some_and(|now| *due > now) {
                break;
            }
            let Some((_, group)) = self.due.pop_first() else {
                break;
            };
            if let Some(held) = self.held.remove(&group) {
                self.send_digest(held);
            }
        }
    }

    /// When a group held from `oldest` falls due; at once when no rule holds its counter any more.
    fn due_at(&self, key: &DigestKey, oldest: DateTime<Utc>) -> DateTime<Utc> {
        match self.engine.rules.digest_policy(&key.counter) {
            Some((_, policy)) => due_at(key, oldest, policy, &self.directory),
            None => oldest,
        }
    }

    fn send_digest(&mut self, held: Held) {
        let count = u32::try_from(held.items.len()).unwrap_or(u32::MAX);
        for (index, _) in &held.items {
            self.planned[*index].digest = Some(1);
        }
        let subject = self.engine.templates.map(|t| {
            let leads: Vec<Event> = held.items.iter().map(|(_, e)| e.clone()).collect();
            match t.render_digest(&held.notification, &held.template, &held.delivery.recipient, &leads) {
                Ok(e) => e.subject,
                Err(e) => format!("(does not render: {e})"),
            }
        });
        let first = held.items.first().map(|(_, e)| e.id.to_string()).unwrap_or_default();
        self.planned.push(Planned {
            event: first,
            notification: held.notification,
            template: held.template,
            channel: Channel::Email,
            recipient: held.delivery.recipient.email.key(),
            decision: Outcome::Send,
            rules: held.delivery.rules.clone(),
            suppressed_by: Vec::new(),
            digest: Some(count),
            subject,
        });
    }

    /// Flushes what is still held (their day ends after the replay) and returns the deliveries.
    pub fn finish(mut self) -> Vec<Planned> {
        self.flush(None);
        self.planned
    }
}

/// The state as routing sees it for an event about to be counted: each
/// counter one past what earlier events counted.
struct Counting<'s>(&'s MemoryState);

impl StateView for Counting<'_> {
    fn receiver_status(&self, referral: &str, receiver: &str) -> Option<String> {
        self.0.receiver_status(referral, receiver)
    }

    fn referral_status(&self, referral: &str) -> Option<String> {
        self.0.referral_status(referral)
    }

    fn digest_position(&self, key: &DigestKey) -> u32 {
        self.0.digest_position_of(key) + 1
    }
}

/// Replays `events` in order from `directory`; every planned delivery.
pub fn replay(engine: &Engine<'_>, directory: Directory, events: &[Event]) -> (Vec<Planned>, usize) {
    let mut replay = Replay::new(engine, directory);
    for event in events {
        replay.push(event);
    }
    let duplicates = replay.duplicates;
    (replay.finish(), duplicates)
}

/// Counts per notification and channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub sent: u32,
    pub held: u32,
    /// Held items that went out in a digest.
    pub digested: u32,
    pub suppressed: u32,
    /// Suppressions by the suppressing rule.
    pub suppressed_by: BTreeMap<String, u32>,
    pub recipients: u32,
}

/// The summary: a tally per (notification, channel).
pub fn summary(planned: &[Planned]) -> BTreeMap<(String, String), Tally> {
    let mut out: BTreeMap<(String, String), (Tally, BTreeSet<&str>)> = BTreeMap::new();
    for p in planned {
        let (tally, people) = out.entry((p.notification.clone(), p.channel.to_string())).or_default();
        people.insert(&p.recipient);
        match p.decision {
            Outcome::Send => tally.sent += 1,
            Outcome::Hold => {
                tally.held += 1;
                if p.digest == Some(1) {
                    tally.digested += 1;
                }
            }
            Outcome::Suppress => {
                tally.suppressed += 1;
                for rule in &p.suppressed_by {
                    *tally.suppressed_by.entry(rule.clone()).or_default() += 1;
                }
            }
        }
    }
    out.into_iter()
        .map(|(k, (mut tally, people))| {
            tally.recipients = u32::try_from(people.len()).unwrap_or(u32::MAX);
            (k, tally)
        })
        .collect()
}
