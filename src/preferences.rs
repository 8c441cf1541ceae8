//! Recipients' own choices: which optional notifications they want, by
//! notification or by category, per channel. Kept in the store as a sequence
//! of changes (like the directory), so every worker reads the same choices;
//! routing turns a delivery a recipient does not want into a suppression by
//! [`crate::route::PREFERENCE`].
//!
//! Also the signed links an email carries to its recipient's choice for its
//! notification: `List-Unsubscribe` (RFC 8058 one-click) and the footer's
//! "notification settings" link.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::route::RuleSet;
use crate::route::rules::Channel;
use crate::signed::{Signer, TokenError, hex, unhex};

/// What a choice is about: one notification, or every notification of a category.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Notification(String),
    Category(String),
}

impl Subject {
    /// How the store keeps it: `notification:ID` or `category:ID`.
    pub fn key(&self) -> String {
        match self {
            Subject::Notification(id) => format!("notification:{id}"),
            Subject::Category(id) => format!("category:{id}"),
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        match key.split_once(':')? {
            ("notification", id) => Some(Subject::Notification(id.to_owned())),
            ("category", id) => Some(Subject::Category(id.to_owned())),
            _ => None,
        }
    }
}

/// One recipient turning one subject on or off on one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferenceChange {
    /// Lower-cased email address.
    pub recipient: String,
    pub subject: Subject,
    pub channel: Channel,
    pub enabled: bool,
}

impl PreferenceChange {
    pub fn new(recipient: &str, subject: Subject, channel: Channel, enabled: bool) -> Self {
        Self {
            recipient: recipient.trim().to_lowercase(),
            subject,
            channel,
            enabled,
        }
    }
}

/// Every recipient's choices, as the changes recorded so far leave them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preferences {
    by_recipient: HashMap<String, BTreeMap<(Subject, Channel), bool>>,
}

impl Preferences {
    pub fn apply(&mut self, change: &PreferenceChange) {
        self.by_recipient
            .entry(change.recipient.clone())
            .or_default()
            .insert((change.subject.clone(), change.channel), change.enabled);
    }

    /// Whether `email` wants `notification` (of `category`) on `channel`: a
    /// choice about the notification itself wins over one about its
    /// category; with neither, yes.
    pub fn wants(&self, email: &str, notification: &str, category: Option<&str>, channel: Channel) -> bool {
        let Some(choices) = self.recipient(email) else {
            return true;
        };
        let own = choices.get(&(Subject::Notification(notification.to_owned()), channel));
        let by_category = category.and_then(|c| choices.get(&(Subject::Category(c.to_owned()), channel)));
        own.or(by_category).copied().unwrap_or(true)
    }

    /// The choice `email` made about `subject` on `channel`, if any.
    pub fn choice(&self, email: &str, subject: &Subject, channel: Channel) -> Option<bool> {
        self.recipient(email)?.get(&(subject.clone(), channel)).copied()
    }

    fn recipient(&self, email: &str) -> Option<&BTreeMap<(Subject, Channel), bool>> {
        if email.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_recipient.get(&email.to_lowercase())
        } else {
            self.by_recipient.get(email)
        }
    }
}

/// What a recipient asks to change: per notification and per category, per channel, on or off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub notifications: BTreeMap<String, BTreeMap<Channel, bool>>,
    #[serde(default)]
    pub categories: BTreeMap<String, BTreeMap<Channel, bool>>,
}

/// Why a request was refused (nothing of it is recorded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown notification `{0}`")]
    UnknownNotification(String),
    #[error("unknown category `{0}`")]
    UnknownCategory(String),
    #[error("`{0}` is mandatory: its recipients must act on it, so it cannot be turned off")]
    Mandatory(String),
    #[error("every notification of category `{0}` is mandatory: none can be turned off")]
    MandatoryCategory(String),
    #[error("`{subject}` is not sent on {channel}")]
    NoSuchChannel { subject: String, channel: Channel },
}

/// The changes `request` makes for `recipient`, checked against the rules
/// whole: one refused part refuses it all.
pub fn changes_for(rules: &RuleSet, recipient: &str, request: &Request) -> Result<Vec<PreferenceChange>, Refusal> {
    let mut out = Vec::new();
    for (id, channels) in &request.notifications {
        let n = rules
            .notifications
            .get(id)
            .ok_or_else(|| Refusal::UnknownNotification(id.clone()))?;
        let sent_on = rules.channels_of(id);
        for (channel, enabled) in channels {
            if !sent_on.contains(channel) {
                return Err(Refusal::NoSuchChannel {
                    subject: id.clone(),
                    channel: *channel,
                });
            }
            if !n.optional && !enabled {
                return Err(Refusal::Mandatory(id.clone()));
            }
            if n.optional {
                out.push(PreferenceChange::new(
                    recipient,
                    Subject::Notification(id.clone()),
                    *channel,
                    *enabled,
                ));
            }
        }
    }
    for (id, channels) in &request.categories {
        if !rules.categories.contains_key(id) {
            return Err(Refusal::UnknownCategory(id.clone()));
        }
        let optional: Vec<&String> = rules
            .notifications
            .iter()
            .filter(|(_, n)| n.optional && n.category.as_deref() == Some(id))
            .map(|(name, _)| name)
            .collect();
        if optional.is_empty() && channels.values().any(|on| !on) {
            return Err(Refusal::MandatoryCategory(id.clone()));
        }
        for (channel, enabled) in channels {
            if !optional.iter().any(|n| rules.channels_of(n).contains(channel)) {
                return Err(Refusal::NoSuchChannel {
                    subject: id.clone(),
                    channel: *channel,
                });
            }
            out.push(PreferenceChange::new(
                recipient,
                Subject::Category(id.clone()),
                *channel,
                *enabled,
            ));
        }
    }
    Ok(out)
}

/// One notification as a recipient's preferences show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotificationChoice {
    pub id: String,
    pub title: String,
    pub category: Option<String>,
    /// False for mandatory notifications: they always go out.
    pub can_turn_off: bool,
    /// Whether it reaches the recipient, per channel it is sent on.
    pub channels: BTreeMap<Channel, bool>,
}

/// One category as a recipient's preferences show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryChoice {
    pub id: String,
    pub title: String,
    /// The recipient's choice for the category, per channel its optional notifications use.
    pub channels: BTreeMap<Channel, bool>,
}

/// Everything a recipient can choose, and what they chose.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    pub recipient: String,
    pub categories: Vec<CategoryChoice>,
    pub notifications: Vec<NotificationChoice>,
}

pub fn overview(rules: &RuleSet, preferences: &Preferences, recipient: &str) -> Overview {
    let recipient = recipient.trim().to_lowercase();
    let notifications: Vec<NotificationChoice> = rules
        .notifications
        .iter()
        .map(|(id, n)| NotificationChoice {
            id: id.clone(),
            title: n.title.clone(),
            category: n.category.clone(),
            can_turn_off: n.optional,
            channels: rules
                .channels_of(id)
                .into_iter()
                .map(|c| {
                    let on = !n.optional || preferences.wants(&recipient, id, n.category.as_deref(), c);
                    (c, on)
                })
                .collect(),
        })
        .collect();
    let categories = rules
        .categories
        .iter()
        .map(|(id, c)| {
            let channels = notifications
                .iter()
                .filter(|n| n.can_turn_off && n.category.as_deref() == Some(id))
                .flat_map(|n| n.channels.keys().copied())
                .map(|ch| {
                    let subject = Subject::Category(id.clone());
                    (ch, preferences.choice(&recipient, &subject, ch).unwrap_or(true))
                })
                .collect();
            CategoryChoice {
                id: id.clone(),
                title: c.title.clone(),
                channels,
            }
        })
        .collect();
    Overview {
        recipient,
        categories,
        notifications,
    }
}

/// Where an email's recipient manages their choice for its notification:
/// `{public_url}/preferences/{token}`, the token naming (recipient,
/// notification) and signed, so nobody can make one for someone else.
#[derive(Clone, Debug)]
pub struct Links {
    base: String,
    signer: Signer,
}

/// What a valid token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressee {
    /// Lower-cased email address.
    pub recipient: String,
    pub notification: String,
}

/// What the signature of a link covers besides its payload.
const LINK: &str = "preferences";

impl Links {
    /// Links under `public_url` (the worker's HTTP server as the internet sees it).
    pub fn new(public_url: &str, secret: &[u8]) -> Self {
        Self {
            base: public_url.trim_end_matches('/').to_owned(),
            signer: Signer::new(secret),
        }
    }

    /// The page (GET) and one-click endpoint (POST) for `recipient` and `notification`.
    pub fn url(&self, recipient: &str, notification: &str) -> String {
        format!("{}/preferences/{}", self.base, self.token(recipient, notification))
    }

    /// `v1.<hex recipient>.<notification>.<signature>`: only URL-safe characters.
    pub fn token(&self, recipient: &str, notification: &str) -> String {
        let recipient = recipient.trim().to_lowercase();
        self.signer
            .seal(LINK, &format!("v1.{}.{notification}", hex(recipient.as_bytes())))
    }

    /// The recipient and notification a token names, if this router signed it.
    pub fn verify(&self, token: &str) -> Result<Addressee, TokenError> {
        let payload = self.signer.open(LINK, token)?;
        let mut fields = payload.splitn(3, '.');
        let (Some("v1"), Some(recipient), Some(notification)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(TokenError::Malformed);
        };
        let recipient = unhex(recipient)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(TokenError::Malformed)?;
        if notification.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Addressee {
            recipient,
            notification: notification.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notifications_own_choice_wins_over_its_categorys() {
        let mut p = Preferences::default();
        let who = "Dana@Fabrikam.example";
        assert!(p.wants(who, "lead-generated", Some("leads"), Channel::Email));
        p.apply(&PreferenceChange::new(
            who,
            Subject::Category("leads".into()),
            Channel::Email,
            false,
        ));
        assert!(!p.wants("dana@fabrikam.example", "lead-generated", Some("leads"), Channel::Email));
        assert!(!p.wants(who, "leads-digest", Some("leads"), Channel::Email));
        assert!(p.wants(who, "lead-generated", Some("leads"), Channel::ActionCenter));
        assert!(p.wants(
            "other@fabrikam.example",
            "lead-generated",
            Some("leads"),
            Channel::Email
        ));
        p.apply(&PreferenceChange::new(
            who,
            Subject::Notification("lead-generated".into()),
            Channel::Email,
            true,
        ));
        assert!(p.wants(who, "lead-generated", Some("leads"), Channel::Email));
        assert!(!p.wants(who, "leads-digest", Some("leads"), Channel::Email));
    }

    fn rules() -> RuleSet {
        RuleSet::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap()
    }

    #[test]
    fn requests_are_checked_against_the_rules_whole() {
        let rules = rules();
        let who = "dana@fabrikam.example";
        let ask = |json: serde_json::Value| changes_for(&rules, who, &serde_json::from_value(json).unwrap());
        assert_eq!(
            ask(serde_json::json!({"notifications": {"lead-generated": {"email": false}}})).unwrap(),
            [PreferenceChange::new(
                who,
                Subject::Notification("lead-generated".into()),
                Channel::Email,
                false
            )]
        );
        assert_eq!(
            ask(serde_json::json!({"notifications": {"cosell-incoming-opportunity": {"email": false}}})),
            Err(Refusal::Mandatory("cosell-incoming-opportunity".into()))
        );
        assert_eq!(
            ask(serde_json::json!({"notifications": {"nope": {"email": false}}})),
            Err(Refusal::UnknownNotification("nope".into()))
        );
        assert_eq!(
            ask(serde_json::json!({"notifications": {"leads-digest": {"action_center": false}}})),
            Err(Refusal::NoSuchChannel {
                subject: "leads-digest".into(),
                channel: Channel::ActionCenter
            })
        );
        assert_eq!(
            ask(serde_json::json!({"categories": {"cosell": {"email": false}}})),
            Err(Refusal::MandatoryCategory("cosell".into()))
        );
        let mut prefs = Preferences::default();
        for c in ask(serde_json::json!({"categories": {"leads": {"email": false}}})).unwrap() {
            prefs.apply(&c);
        }
        let view = overview(&rules, &prefs, "Dana@Fabrikam.example");
        let lead = view.notifications.iter().find(|n| n.id == "lead-generated").unwrap();
        assert!(!lead.channels[&Channel::Email]);
        assert!(lead.channels[&Channel::ActionCenter]);
        let mandatory = view
            .notifications
            .iter()
            .find(|n| n.id == "cosell-incoming-opportunity")
            .unwrap();
        assert!(!mandatory.can_turn_off && mandatory.channels.values().all(|on| *on));
        let leads = view.categories.iter().find(|c| c.id == "leads").unwrap();
        assert!(!leads.channels[&Channel::Email]);
    }

    #[test]
    fn tokens_name_their_recipient_and_refuse_tampering() {
        let links = Links::new("https://router.example/", b"secret");
        let token = links.token("Dana@Fabrikam.example", "lead-generated");
        assert_eq!(
            links.verify(&token),
            Ok(Addressee {
                recipient: "dana@fabrikam.example".into(),
                notification: "lead-generated".into()
            })
        );
        assert!(
            links
                .url("dana@fabrikam.example", "x")
                .starts_with("https://router.example/preferences/v1.")
        );
        let other = links.token("eve@fabrikam.example", "lead-generated");
        let (_, eves_signature) = other.rsplit_once('.').unwrap();
        let (payload, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            links.verify(&format!("{payload}.{eves_signature}")),
            Err(TokenError::Forged)
        );
        let renamed = token.replace("lead-generated", "leads-digest");
        assert_eq!(links.verify(&renamed), Err(TokenError::Forged));
        assert_eq!(
            Links::new("https://x", b"other").verify(&token),
            Err(TokenError::Forged)
        );
        for bad in ["", "v1", "v1.61.n.0", "v1.61.n.zz"] {
            assert_eq!(links.verify(bad), Err(TokenError::Malformed), "{bad}");
        }
        let signer = Signer::new(b"secret");
        for unsigned_nonsense in ["v2.61.n", "v1.zz.n", "v1.61."] {
            let sealed = signer.seal(LINK, unsigned_nonsense);
            assert_eq!(links.verify(&sealed), Err(TokenError::Malformed), "{unsigned_nonsense}");
        }
    }
}
