//! Properties of the rule engine over random directories and event variants.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use referral_router::decode::decode_structured;
use referral_router::directory::Directory;
use referral_router::event::Event;
use referral_router::route::rules::Action;
use referral_router::route::{Decision, MemoryState, Plan, RuleSet, route};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn shipped_sources() -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap()))
        .collect()
}

fn examples() -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("rules/tests/events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .filter(|v: &Value| !v["type"].as_str().unwrap().starts_with("directory."))
        .collect()
}

const LOCATIONS: &[(&str, Option<&str>)] = &[
    ("fabrikam", Some("4100001")),
    ("fabrikam", Some("4100002")),
    ("fabrikam", None),
    ("northwind", Some("5200002")),
    ("northwind", Some("5200003")),
    ("northwind", None),
];
const MAILBOXES: &[&str] = &[
    "dana@fabrikam.example",
    "DANA@fabrikam.example",
    "gina@fabrikam.example",
    "cara@northwind.example",
    "amy@fabrikam.example",
    "sales@fabrikam.example",
];
const ROLES: &[&str] = &[
    "referral_admin",
    "referral_user",
    "cosell_solution_admin",
    "business_profile_admin",
];

/// A directory event for user `n`: a mailbox (letter case varies) and some role grants.
fn user_event(n: usize, mailbox: usize, grants: &[(usize, usize)]) -> Value {
    let (partner, _) = LOCATIONS[grants.first().map_or(0, |g| g.1)];
    let roles: Vec<Value> = grants
        .iter()
        .filter(|(_, l)| LOCATIONS[*l].0 == partner)
        .map(|(r, l)| json!({"role": ROLES[*r], "location_id": LOCATIONS[*l].1}))
        .collect();
    json!({
        "specversion": "1.0", "id": format!("u{n}"), "source": "/p", "type": "directory.user.upserted",
        "time": "2026-11-01T00:00:00Z",
        "data": {"partner_id": partner, "user": {"user_id": format!("user-{n}"), "name": format!("User {n}"),
                 "email": MAILBOXES[mailbox]}, "roles": roles}
    })
}

fn decode(v: &Value) -> Event {
    decode_structured(&serde_json::to_vec(v).unwrap()).unwrap()
}

fn directory_of(events: &[Value]) -> Directory {
    let mut dir = Directory::new();
    dir.apply(&decode(&json!({
        "specversion": "1.0", "id": "c", "source": "/p", "type": "directory.profile.contact_set",
        "time": "2026-11-01T00:00:00Z",
        "data": {"partner_id": "fabrikam", "location_id": "4100001", "contact": {"name": "Desk", "email": "Sales@Fabrikam.example"}}
    })));
    for e in events {
        dir.apply(&decode(e));
    }
    dir
}

fn arb_users() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        (
            0..MAILBOXES.len(),
            prop::collection::vec((0..ROLES.len(), 0..LOCATIONS.len()), 1..4),
        ),
        0..8,
    )
    .prop_map(|users| {
        users
            .iter()
            .enumerate()
            .map(|(n, (m, g))| user_event(n, *m, g))
            .collect()
    })
}

/// An example event with a few fields varied the way rules look at them.
fn arb_event() -> impl Strategy<Value = Event> {
    let examples = examples();
    (
        0..examples.len(),
        prop::sample::select(vec!["partner_center", "new_deal", "bulk_upload", "connector"]),
        prop::sample::select(vec!["contact_me", "free_trial", "test_drive"]),
        prop::sample::select(vec!["partner", "microsoft"]),
    )
        .prop_map(move |(i, origin, cta, sender_kind)| {
            let mut v = examples[i].clone();
            if v["data"]["referral"].is_object() {
                v["data"]["referral"]["origin"] = origin.into();
            }
            if v["data"]["lead"]["kind"] == "offer" {
                v["data"]["lead"]["call_to_action"] = cta.into();
            }
            if v["data"]["sender"].is_object() {
                v["data"]["sender"]["kind"] = sender_kind.into();
            }
            decode(&v)
        })
}

fn keys(plan: &Plan) -> Vec<(String, String, String)> {
    plan.deliveries
        .iter()
        .map(|d| (d.notification.clone(), d.channel.to_string(), d.recipient.email.key()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn one_delivery_per_notification_channel_and_person(event in arb_event(), users in arb_users()) {
        let rules = RuleSet::from_sources(&shipped_sources()).unwrap();
        let plan = route(&event, &rules, &directory_of(&users), &MemoryState::new());
        let all = keys(&plan);
        let unique: BTreeSet<_> = all.iter().cloned().collect();
        prop_assert_eq!(all.len(), unique.len(), "{:?}", all);
        prop_assert!(plan.deliveries.iter().all(|d| !d.recipient.email.key().ends_with("@microsoft.example")));
    }

    #[test]
    fn adding_a_suppression_never_adds_a_delivery(
        event in arb_event(),
        users in arb_users(),
        pick in any::<prop::sample::Index>(),
        only_this_event in any::<bool>(),
    ) {
        let sources = shipped_sources();
        let rules = RuleSet::from_sources(&sources).unwrap();
        let senders: Vec<_> = rules.rules.iter().filter_map(|r| match &r.action {
            Action::Notify(n) => Some((n.notification.clone(), r.on.clone())),
            _ => None,
        }).collect();
        let (notification, on) = pick.get(&senders).clone();
        let on: Vec<&str> = on.iter().map(|t| t.as_str()).collect();
        let when = if only_this_event {
            format!("    when:\n      id: {{ in: [\"{}\"] }}\n", event.id)
        } else {
            String::new()
        };
        let extra = format!(
            "rules:\n  - id: extra-suppression\n    on: [{}]\n{when}    suppress: [{notification}]\n",
            on.join(", ")
        );
        let mut more = sources.clone();
        more.push((PathBuf::from("zz-extra.yaml"), extra));
        let stricter = RuleSet::from_sources(&more).unwrap();

        let dir = directory_of(&users);
        let before = route(&event, &rules, &dir, &MemoryState::new());
        let after = route(&event, &stricter, &dir, &MemoryState::new());
        prop_assert_eq!(keys(&before), keys(&after), "the same people are planned");
        for (b, a) in before.deliveries.iter().zip(&after.deliveries) {
            if a.decision != Decision::Suppress {
                prop_assert_eq!(&a.decision, &b.decision);
            }
            if a.notification == notification && on.contains(&event.event_type.as_str()) {
                prop_assert_eq!(&a.decision, &Decision::Suppress);
            }
        }
    }

    #[test]
    fn commuting_directory_events_give_the_same_plan(
        event in arb_event(),
        users in arb_users(),
        seed in any::<u64>(),
    ) {
        // Users have distinct ids, so their upserts commute.
        let rules = RuleSet::from_sources(&shipped_sources()).unwrap();
        let mut shuffled = users.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = route(&event, &rules, &directory_of(&users), &MemoryState::new());
        let b = route(&event, &rules, &directory_of(&shuffled), &MemoryState::new());
        let sorted = |p: &Plan| {
            let mut rows: Vec<_> = p.deliveries.iter().map(|d| (d.notification.clone(), d.channel.to_string(), d.recipient.email.key(), format!("{:?}", d.decision))).collect();
            rows.sort();
            rows
        };
        prop_assert_eq!(sorted(&a), sorted(&b));
    }
}
