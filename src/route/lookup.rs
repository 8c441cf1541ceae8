//! What the rest of the router asks of a rule set about its catalogue.

use std::collections::BTreeSet;

use super::RuleSet;
use super::rules::{Action, ActionCenterSpec, Channel, DigestPolicy};

impl RuleSet {
    /// Whether the catalogue marks `notification` optional (no action needed).
    pub fn is_optional(&self, notification: &str) -> bool {
        self.notifications.get(notification).is_some_and(|n| n.optional)
    }

    /// The category `notification` is turned off by, when it has one.
    pub fn category_of(&self, notification: &str) -> Option<&str> {
        self.notifications.get(notification)?.category.as_deref()
    }

    /// The channels rules send `notification` on (a digest goes out by email).
    pub fn channels_of(&self, notification: &str) -> BTreeSet<Channel> {
        let mut out = BTreeSet::new();
        for rule in &self.rules {
            if let Action::Notify(n) = &rule.action {
                if n.notification == notification {
                    out.extend(n.channels.iter().copied());
                }
                if n.digest.as_ref().is_some_and(|d| d.notification == notification) {
                    out.insert(Channel::Email);
                }
            }
        }
        out
    }

    /// How `notification` appears in the Action Center, when the catalogue says.
    pub fn action_center(&self, notification: &str) -> Option<&ActionCenterSpec> {
        self.notifications.get(notification)?.action_center.as_ref()
    }

    /// The rules among `ids` that suppress, and [`super::PREFERENCE`] when the recipient's choice did.
    pub fn suppressing<'a>(&self, ids: &'a [String]) -> Vec<&'a str> {
        ids.iter()
            .filter(|id| {
                *id == super::PREFERENCE
                    || self
                        .rules
                        .iter()
                        .any(|r| &r.id == *id && matches!(r.action, Action::Suppress(_)))
            })
            .map(String::as_str)
            .collect()
    }

    /// The digest policy of a counter, with the id of the rule that carries it.
    pub fn digest_policy(&self, counter: &str) -> Option<(&str, &DigestPolicy)> {
        self.rules.iter().find_map(|r| match &r.action {
            Action::Notify(n) => n
                .digest
                .as_ref()
                .filter(|d| d.counter == counter)
                .map(|d| (r.id.as_str(), d)),
            Action::Suppress(_) | Action::Record(_) => None,
        })
    }

    /// The digest policy of the first rule that notifies `notification` and holds it for a digest.
    pub fn digest_for(&self, notification: &str) -> Option<&DigestPolicy> {
        self.rules.iter().find_map(|r| match &r.action {
            Action::Notify(n) if n.notification == notification => n.digest.as_ref(),
            Action::Notify(_) | Action::Suppress(_) | Action::Record(_) => None,
        })
    }
}
