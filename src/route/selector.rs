//! Named recipient selectors: who a rule's `to` reaches. The names and what
//! they read are rules data (`selectors:` in `rules/`); the four ways of
//! finding people are here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::path::present;
use crate::directory::DirectoryView;
use crate::event::{EmailAddress, LocationId, PartnerId, Role, UserId};

/// A person a delivery goes to, with what rendering needs to address them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recipient {
    pub email: EmailAddress,
    pub name: String,
    pub user_id: Option<UserId>,
    pub partner_id: Option<PartnerId>,
    /// The recipient's locale, else their partner's; `None` means the default.
    pub locale: Option<String>,
    /// The recipient's time zone, else their partner's; `None` means UTC.
    pub time_zone: Option<String>,
}

/// How a selector finds people.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// The person object at a path (with `name` and `email`).
    Person(String),
    /// Every person in the array at a path.
    People(String),
    /// Users holding `role` at the location of the party at `of`, plus the
    /// partner's global holders of that role.
    Role { role: Role, of: String },
    /// The business-profile contact of the party's location.
    ProfileContactOf(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelector {
    person: Option<String>,
    people: Option<String>,
    role: Option<Role>,
    of: Option<String>,
    profile_contact_of: Option<String>,
}

impl TryFrom<RawSelector> for Selector {
    type Error = String;

    fn try_from(raw: RawSelector) -> Result<Self, String> {
        match raw {
            RawSelector {
                person: Some(p),
                people: None,
                role: None,
                of: None,
                profile_contact_of: None,
            } => Ok(Selector::Person(p)),
            RawSelector {
                person: None,
                people: Some(p),
                role: None,
                of: None,
                profile_contact_of: None,
            } => Ok(Selector::People(p)),
            RawSelector {
                person: None,
                people: None,
                role: Some(role),
                of: Some(of),
                profile_contact_of: None,
            } => Ok(Selector::Role { role, of }),
            RawSelector {
                person: None,
                people: None,
                role: None,
                of: None,
                profile_contact_of: Some(p),
            } => Ok(Selector::ProfileContactOf(p)),
            _ => Err(
                "a selector is one of `person: PATH`, `people: PATH`, `role: ROLE` with `of: PATH`, \
                 or `profile_contact_of: PATH`"
                    .into(),
            ),
        }
    }
}

impl Selector {
    /// The paths the selector reads, checked against the event model.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Selector::Person(p) | Selector::People(p) | Selector::ProfileContactOf(p) => vec![p],
            Selector::Role { of, .. } => vec![of],
        }
    }

    /// The people this selector reaches in `context`.
    pub fn resolve(&self, context: &Value, dir: &dyn DirectoryView) -> Vec<Recipient> {
        match self {
            Selector::Person(path) => present(context, path)
                .and_then(|v| person(v, dir))
                .into_iter()
                .collect(),
            Selector::People(path) => present(context, path)
                .and_then(Value::as_array)
                .map(|people| people.iter().filter_map(|v| person(v, dir)).collect())
                .unwrap_or_default(),
            Selector::Role { role, of } => {
                let Some((partner, location)) = party(context, of) else {
                    return Vec::new();
                };
                dir.holders(&partner, *role, location.as_ref())
                    .into_iter()
                    .map(|u| Recipient {
                        email: u.email.clone(),
                        name: u.name.clone(),
                        user_id: Some(u.user_id.clone()),
                        locale: u.locale.clone().or_else(|| partner_locale(dir, &partner)),
                        time_zone: u
                            .time_zone
                            .as_ref()
                            .map(|t| t.as_str().to_owned())
                            .or_else(|| partner_tz(dir, &partner)),
                        partner_id: Some(partner.clone()),
                    })
                    .collect()
            }
            Selector::ProfileContactOf(of) => {
                let Some((partner, Some(location))) = party(context, of) else {
                    return Vec::new();
                };
                dir.profile_contact(&partner, &location)
                    .map(|c| Recipient {
                        email: c.email.clone(),
                        name: c.name.clone(),
                        user_id: None,
                        locale: c.locale.clone().or_else(|| partner_locale(dir, &partner)),
                        time_zone: partner_tz(dir, &partner),
                        partner_id: Some(partner.clone()),
                    })
                    .into_iter()
                    .collect()
            }
        }
    }
}

/// A partner party: its id and location. Microsoft parties have no partner id.
fn party(context: &Value, path: &str) -> Option<(PartnerId, Option<LocationId>)> {
    let value = present(context, path)?;
    let partner = value.get("partner_id")?.as_str()?;
    let location = value.get("location_id").and_then(Value::as_str).map(LocationId::new);
    Some((PartnerId::new(partner), location))
}

fn partner_locale(dir: &dyn DirectoryView, partner: &PartnerId) -> Option<String> {
    dir.partner(partner).and_then(|p| p.locale.clone())
}

fn partner_tz(dir: &dyn DirectoryView, partner: &PartnerId) -> Option<String> {
    dir.partner(partner)
        .and_then(|p| p.time_zone.as_ref())
        .map(|t| t.as_str().to_owned())
}

/// A person named in the event; the directory adds what it knows of them.
pub fn person(value: &Value, dir: &dyn DirectoryView) -> Option<Recipient> {
    let email = EmailAddress::parse(value.get("email")?.as_str()?).ok()?;
    let name = value.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let known = dir.user_by_email(&email);
    let partner = known.map(|u| u.partner_id.clone());
    Some(Recipient {
        user_id: value
            .get("user_id")
            .and_then(Value::as_str)
            .map(UserId::new)
            .or_else(|| known.map(|u| u.user_id.clone())),
        locale: known
            .and_then(|u| u.locale.clone())
            .or_else(|| value.get("locale").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| partner.as_ref().and_then(|p| partner_locale(dir, p))),
        time_zone: known
            .and_then(|u| u.time_zone.as_ref().map(|t| t.as_str().to_owned()))
            .or_else(|| partner.as_ref().and_then(|p| partner_tz(dir, p))),
        partner_id: partner,
        email,
        name,
    })
}
