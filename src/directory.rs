//! Who holds which role where: built from `directory.*` events, read by routing.
//!
//! Referral admins never appear in referral events, so the router keeps its own
//! copy of the partner directory. This in-memory form is what routing reads;
//! the store persists the events that build it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::event::{
    DirectoryChange, EmailAddress, Event, LocationId, PartnerId, ProfileContact, Role, RoleGrant, TimeZone, UserId,
};
use crate::preferences::Preferences;
use crate::route::rules::Channel;

/// A partner's settings that shape its messages and its digest day.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Partner {
    pub name: String,
    pub time_zone: Option<TimeZone>,
    pub locale: Option<String>,
}

/// A user with the roles they hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct User {
    pub partner_id: PartnerId,
    pub user_id: UserId,
    pub name: String,
    pub email: EmailAddress,
    pub locale: Option<String>,
    pub time_zone: Option<TimeZone>,
    pub roles: Vec<RoleGrant>,
}

impl User {
    /// True when the user holds `role` for `location` itself or for the whole partner.
    pub fn holds(&self, role: Role, location: Option<&LocationId>) -> bool {
        self.roles
            .iter()
            .any(|g| g.role == role && (g.location_id.is_none() || g.location_id.as_ref() == location))
    }
}

/// Read access to the directory, as routing needs it.
pub trait DirectoryView {
    fn partner(&self, partner: &PartnerId) -> Option<&Partner>;
    /// Users of `partner` holding `role` at `location`, or globally.
    fn holders(&self, partner: &PartnerId, role: Role, location: Option<&LocationId>) -> Vec<&User>;
    fn profile_contact(&self, partner: &PartnerId, location: &LocationId) -> Option<&ProfileContact>;
    /// A known user by email, to learn their locale and time zone.
    fn user_by_email(&self, email: &EmailAddress) -> Option<&User>;
    /// Whether `email` wants `notification` (of `category`) on `channel`, by their own choice.
    fn wants(&self, email: &EmailAddress, notification: &str, category: Option<&str>, channel: Channel) -> bool;
}

/// The directory, in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directory {
    partners: HashMap<PartnerId, Partner>,
    users: BTreeMap<(PartnerId, UserId), User>,
    contacts: HashMap<(PartnerId, LocationId), ProfileContact>,
    /// The users with each email address (ignoring case), in `users` order:
    /// routing looks a recipient up by address for every delivery.
    by_email: HashMap<EmailAddress, BTreeSet<(PartnerId, UserId)>>,
    /// Recipients' choices, read with the directory so routing sees both as of one moment.
    pub preferences: Preferences,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event; returns false (and changes nothing) for non-directory events.
    pub fn apply(&mut self, event: &Event) -> bool {
        let Some(change) = event.directory_change() else {
            return false;
        };
        match change {
            DirectoryChange::PartnerUpserted(p) => {
                self.partners.insert(
                    p.partner_id.clone(),
                    Partner {
                        name: p.name.clone(),
                        time_zone: p.time_zone.clone(),
                        locale: p.locale.clone(),
                    },
                );
            }
            DirectoryChange::UserUpserted(u) => {
                let user = User {
                    partner_id: u.partner_id.clone(),
                    user_id: u.user.user_id.clone(),
                    name: u.user.name.clone(),
                    email: u.user.email.clone(),
                    locale: u.user.locale.clone(),
                    time_zone: u.user.time_zone.clone(),
                    roles: u.roles.clone(),
                };
                let key = (u.partner_id.clone(), u.user.user_id.clone());
                self.by_email.entry(user.email.clone()).or_default().insert(key.clone());
                if let Some(before) = self.users.insert(key.clone(), user) {
                    self.forget_email(&before.email, &key, Some(&u.user.email));
                }
            }
            DirectoryChange::UserRemoved(u) => {
                let key = (u.partner_id.clone(), u.user_id.clone());
                if let Some(before) = self.users.remove(&key) {
                    self.forget_email(&before.email, &key, None);
                }
            }
            DirectoryChange::ProfileContactSet(c) => {
                self.contacts
                    .insert((c.partner_id.clone(), c.location_id.clone()), c.contact.clone());
            }
        }
        true
    }

    /// Builds a directory from directory events, e.g. the lines of a `.jsonl` file.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut dir = Self::new();
        for event in events {
            dir.apply(event);
        }
        dir
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Drops `key` from the index under `old`, unless the user still has that address (`now`).
    fn forget_email(&mut self, old: &EmailAddress, key: &(PartnerId, UserId), now: Option<&EmailAddress>) {
        if now == Some(old) {
            return;
        }
        if let Some(keys) = self.by_email.get_mut(old) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_email.remove(old);
            }
        }
    }
}

impl DirectoryView for Directory {
    fn partner(&self, partner: &PartnerId) -> Option<&Partner> {
        self.partners.get(partner)
    }

    fn holders(&self, partner: &PartnerId, role: Role, location: Option<&LocationId>) -> Vec<&User> {
        // The partner's users are one run of the map, from its smallest key.
        self.users
            .range((partner.clone(), UserId::new(String::new()))..)
            .take_while(|((p, _), _)| p == partner)
            .map(|(_, u)| u)
            .filter(|u| u.holds(role, location))
            .collect()
    }

    fn profile_contact(&self, partner: &PartnerId, location: &LocationId) -> Option<&ProfileContact> {
        self.contacts.get(&(partner.clone(), location.clone()))
    }

    fn user_by_email(&self, email: &EmailAddress) -> Option<&User> {
        let first = self.by_email.get(email)?.first()?;
        self.users.get(first)
    }

    fn wants(&self, email: &EmailAddress, notification: &str, category: Option<&str>, channel: Channel) -> bool {
        self.preferences.wants(email.as_str(), notification, category, channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_structured;

    fn event(json: serde_json::Value) -> Event {
        decode_structured(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn upsert(user: &str, email: &str, roles: serde_json::Value) -> Event {
        event(serde_json::json!({
            "specversion": "1.0", "id": format!("u-{user}"), "source": "/t", "type": "directory.user.upserted",
            "time": "2026-11-01T00:00:00Z",
            "data": {"partner_id": "fabrikam", "user": {"user_id": user, "name": user, "email": email}, "roles": roles}
        }))
    }

    #[test]
    fn location_and_global_roles() {
        let mut dir = Directory::new();
        dir.apply(&upsert(
            "a",
            "a@f.example",
            serde_json::json!([{"role": "referral_admin", "location_id": "L1"}]),
        ));
        dir.apply(&upsert(
            "g",
            "g@f.example",
            serde_json::json!([{"role": "referral_admin", "location_id": null}]),
        ));
        dir.apply(&upsert(
            "u",
            "u@f.example",
            serde_json::json!([{"role": "referral_user", "location_id": "L1"}]),
        ));
        let p = PartnerId::new("fabrikam");
        let at = |l: &str| -> Vec<String> {
            dir.holders(&p, Role::ReferralAdmin, Some(&LocationId::new(l)))
                .iter()
                .map(|u| u.user_id.to_string())
                .collect()
        };
        assert_eq!(at("L1"), ["a", "g"]);
        assert_eq!(at("L2"), ["g"]);
    }

    #[test]
    fn upsert_replaces_roles_and_remove_forgets() {
        let mut dir = Directory::new();
        dir.apply(&upsert(
            "a",
            "a@f.example",
            serde_json::json!([{"role": "referral_admin", "location_id": "L1"}]),
        ));
        dir.apply(&upsert(
            "a",
            "a@f.example",
            serde_json::json!([{"role": "referral_user", "location_id": "L1"}]),
        ));
        let p = PartnerId::new("fabrikam");
        assert!(
            dir.holders(&p, Role::ReferralAdmin, Some(&LocationId::new("L1")))
                .is_empty()
        );
        assert!(
            dir.user_by_email(&EmailAddress::parse("A@F.example").unwrap())
                .is_some()
        );
        dir.apply(&event(serde_json::json!({
            "specversion": "1.0", "id": "r", "source": "/t", "type": "directory.user.removed",
            "time": "2026-11-01T00:00:00Z", "data": {"partner_id": "fabrikam", "user_id": "a"}
        })));
        assert!(dir.users().next().is_none());
        assert!(
            dir.user_by_email(&EmailAddress::parse("a@f.example").unwrap())
                .is_none()
        );
    }

    #[test]
    fn a_user_is_found_by_their_current_address_only() {
        let mut dir = Directory::new();
        let roles = serde_json::json!([{"role": "referral_admin", "location_id": null}]);
        dir.apply(&upsert("b", "shared@f.example", roles.clone()));
        dir.apply(&upsert("a", "old@f.example", roles.clone()));
        dir.apply(&upsert("a", "Shared@F.example", roles.clone()));
        fn find(dir: &Directory, e: &str) -> Option<String> {
            dir.user_by_email(&EmailAddress::parse(e).unwrap())
                .map(|u| u.user_id.to_string())
        }
        assert_eq!(find(&dir, "old@f.example"), None);
        // Two users with one address: the first by user id, as a scan of the directory finds.
        assert_eq!(find(&dir, "shared@f.example").as_deref(), Some("a"));
        dir.apply(&upsert("a", "new@f.example", roles));
        assert_eq!(find(&dir, "shared@f.example").as_deref(), Some("b"));
        assert_eq!(find(&dir, "NEW@f.example").as_deref(), Some("a"));
        // Another partner's users are not this one's holders.
        let other = PartnerId::new("fabrikam-other");
        assert!(dir.holders(&other, Role::ReferralAdmin, None).is_empty());
    }
}
