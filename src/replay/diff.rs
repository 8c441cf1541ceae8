//! The difference between two replays of the same events: the base (what is
//! deployed) and the change. Deliveries are matched on (event, notification,
//! channel, recipient); a digest is matched under its first held event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use serde::Serialize;

use super::{Outcome, Planned};

/// One delivery planned under only one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    pub event: String,
    pub notification: String,
    pub channel: String,
    pub recipient: String,
    pub decision: Outcome,
}

/// What a delivery planned under both is, under one of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Version {
    pub decision: Outcome,
    pub template: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A delivery planned under both with another decision, template or subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub event: String,
    pub notification: String,
    pub channel: String,
    pub recipient: String,
    pub from: Version,
    pub to: Version,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// The difference; `events` is how many were replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub events: usize,
    pub added: Vec<Side>,
    pub removed: Vec<Side>,
    pub changed: Vec<Changed>,
    pub summary: Counts,
}

type Key = (String, String, String, String);

fn key(p: &Planned) -> Key {
    (
        p.event.clone(),
        p.notification.clone(),
        p.channel.to_string(),
        p.recipient.clone(),
    )
}

fn side(p: &Planned) -> Side {
    Side {
        event: p.event.clone(),
        notification: p.notification.clone(),
        channel: p.channel.to_string(),
        recipient: p.recipient.clone(),
        decision: p.decision,
    }
}

fn version(p: &Planned) -> Version {
    Version {
        decision: p.decision,
        template: p.template.clone(),
        subject: p.subject.clone(),
    }
}

/// Compares the base's deliveries with the change's, in the change's order.
pub fn diff(events: usize, base: &[Planned], change: &[Planned]) -> Diff {
    let base_by: HashMap<Key, &Planned> = base.iter().map(|p| (key(p), p)).collect();
    let change_by: HashSet<Key> = change.iter().map(key).collect();
    let mut out = Diff {
        events,
        ..Diff::default()
    };
    for p in change {
        match base_by.get(&key(p)) {
            None => out.added.push(side(p)),
            Some(b) if (b.decision, &b.template, &b.subject) != (p.decision, &p.template, &p.subject) => {
                out.changed.push(Changed {
                    event: p.event.clone(),
                    notification: p.notification.clone(),
                    channel: p.channel.to_string(),
                    recipient: p.recipient.clone(),
                    from: version(b),
                    to: version(p),
                });
            }
            Some(_) => {}
        }
    }
    out.removed = base.iter().filter(|p| !change_by.contains(&key(p))).map(side).collect();
    out.summary = Counts {
        added: out.added.len(),
        removed: out.removed.len(),
        changed: out.changed.len(),
    };
    out
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// For people: grouped by notification, with counts and the first few recipients.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} events replayed: {} added, {} removed, {} changed\n",
            self.events, self.summary.added, self.summary.removed, self.summary.changed
        );
        for (title, rows) in [
            (
                "added",
                group(
                    self.added
                        .iter()
                        .map(|s| (&s.notification, &s.channel, &s.recipient, format!("{:?}", s.decision))),
                ),
            ),
            (
                "removed",
                group(
                    self.removed
                        .iter()
                        .map(|s| (&s.notification, &s.channel, &s.recipient, format!("{:?}", s.decision))),
                ),
            ),
            (
                "changed",
                group(
                    self.changed
                        .iter()
                        .map(|c| (&c.notification, &c.channel, &c.recipient, change_text(c))),
                ),
            ),
        ] {
            for ((notification, channel), (count, examples)) in rows {
                let _ = writeln!(out, "  {title:<8} {notification} ({channel}): {count}");
                for e in examples {
                    let _ = writeln!(out, "           {e}");
                }
            }
        }
        out
    }
}

fn change_text(c: &Changed) -> String {
    let mut parts = Vec::new();
    if c.from.decision != c.to.decision {
        parts.push(format!("{:?} -> {:?}", c.from.decision, c.to.decision).to_lowercase());
    }
    if c.from.template != c.to.template {
        parts.push(format!("template {} -> {}", c.from.template, c.to.template));
    }
    if c.from.subject != c.to.subject {
        parts.push(format!(
            "subject {:?} -> {:?}",
            c.from.subject.as_deref().unwrap_or(""),
            c.to.subject.as_deref().unwrap_or("")
        ));
    }
    parts.join(", ")
}

/// Rows grouped by (notification, channel): how many, and the first three as text.
fn group<'a>(
    rows: impl Iterator<Item = (&'a String, &'a String, &'a String, String)>,
) -> BTreeMap<(String, String), (usize, Vec<String>)> {
    let mut out: BTreeMap<(String, String), (usize, Vec<String>)> = BTreeMap::new();
    for (notification, channel, recipient, what) in rows {
        let entry = out.entry((notification.clone(), channel.clone())).or_default();
        entry.0 += 1;
        if entry.1.len() < 3 {
            entry.1.push(format!("{recipient}: {}", what.to_lowercase()));
        }
    }
    out
}
