//! Routing over arbitrary directory states and event variants, with the
//! shipped rules. Checks the invariants that must hold for every plan.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use referral_router::decode::decode_structured;
use referral_router::directory::Directory;
use referral_router::route::{Decision, MemoryState, RuleSet, route};
use serde_json::{Value, json};

const RULES: &[(&str, &str)] = &[
    ("cosell.yaml", include_str!("../../rules/cosell.yaml")),
    ("dealreg.yaml", include_str!("../../rules/dealreg.yaml")),
    ("leads.yaml", include_str!("../../rules/leads.yaml")),
    ("notifications.yaml", include_str!("../../rules/notifications.yaml")),
    ("selectors.yaml", include_str!("../../rules/selectors.yaml")),
    ("solutions.yaml", include_str!("../../rules/solutions.yaml")),
];

const EVENTS: &[&str] = &[
    include_str!("../../rules/tests/events/cosell.opportunity.shared.json"),
    include_str!("../../rules/tests/events/cosell.opportunity.accepted.json"),
    include_str!("../../rules/tests/events/cosell.opportunity.declined.json"),
    include_str!("../../rules/tests/events/cosell.opportunity.expiring.json"),
    include_str!("../../rules/tests/events/cosell.opportunity.expired.json"),
    include_str!("../../rules/tests/events/dealreg.action_required.json"),
    include_str!("../../rules/tests/events/dealreg.review_failed.json"),
    include_str!("../../rules/tests/events/dealreg.review_selected.json"),
    include_str!("../../rules/tests/events/cosell.solution.validation_failed.json"),
    include_str!("../../rules/tests/events/cosell.solution.validation_passed.json"),
    include_str!("../../rules/tests/events/lead.created.contact_me.json"),
    include_str!("../../rules/tests/events/lead.created.free_trial.json"),
    include_str!("../../rules/tests/events/lead.created.profile.json"),
    include_str!("../../rules/tests/events/lead.declined.json"),
    include_str!("../../rules/tests/events/lead.expired.json"),
];

const PARTNERS: &[&str] = &["fabrikam", "northwind", "contoso"];
const LOCATIONS: &[&str] = &["4100001", "4100002", "5200002", "5200003"];
const ROLES: &[&str] = &["referral_admin", "referral_user", "cosell_solution_admin", "business_profile_admin"];
const ZONES: &[&str] = &["America/Los_Angeles", "Europe/Berlin", "Pacific/Kiritimati", "UTC"];
const WORDS: &[&str] = &["partner_center", "new_deal", "bulk_upload", "connector", "contact_me", "free_trial", "offer", "profile", "won", "lost", "pending", "accepted", "declined", "expired", "microsoft", "partner"];

#[derive(Arbitrary, Debug)]
struct User {
    partner: u8,
    mailbox: u8,
    upper: bool,
    grants: Vec<(u8, Option<u8>)>,
    removed: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    users: Vec<User>,
    contacts: Vec<(u8, u8, u8)>,
    zones: Vec<(u8, u8)>,
    event: u8,
    edits: Vec<(u8, u8)>,
    receivers: Vec<(u8, Option<u8>, bool)>,
    receiver_status: Option<u8>,
    referral_status: Option<u8>,
    position: u16,
    hour: u8,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

fn directory_event(id: usize, ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": format!("d{id}"), "source": "/f", "type": ty,
           "time": "2026-11-01T00:00:00Z", "data": data})
}

fn rules() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let sources: Vec<_> = RULES.iter().map(|(n, t)| (n.into(), (*t).to_string())).collect();
        RuleSet::from_sources(&sources).expect("the shipped rules load")
    })
}

fuzz_target!(|input: Input| {
    let mut dir_events = Vec::new();
    for (n, (p, z)) in input.zones.iter().enumerate() {
        dir_events.push(directory_event(n, "directory.partner.upserted",
            json!({"partner_id": pick(PARTNERS, *p), "name": "P", "time_zone": pick(ZONES, *z)})));
    }
    for (n, u) in input.users.iter().enumerate() {
        let partner = pick(PARTNERS, u.partner);
        let mut email = format!("person{}@{partner}.example", u.mailbox % 6);
        if u.upper {
            email = email.to_uppercase();
        }
        let roles: Vec<Value> = u.grants.iter().take(6)
            .map(|(r, l)| json!({"role": pick(ROLES, *r), "location_id": l.map(|l| pick(LOCATIONS, l))}))
            .collect();
        dir_events.push(directory_event(100 + n, "directory.user.upserted",
            json!({"partner_id": partner, "user": {"user_id": format!("u{n}"), "name": "U", "email": email}, "roles": roles})));
        if u.removed {
            dir_events.push(directory_event(200 + n, "directory.user.removed", json!({"partner_id": partner, "user_id": format!("u{n}")})));
        }
    }
    for (n, (p, l, m)) in input.contacts.iter().enumerate() {
        dir_events.push(directory_event(300 + n, "directory.profile.contact_set", json!({
            "partner_id": pick(PARTNERS, *p), "location_id": pick(LOCATIONS, *l),
            "contact": {"name": "C", "email": format!("person{}@{}.example", m % 6, pick(PARTNERS, *p))}})));
    }
    let mut dir = Directory::new();
    for e in &dir_events {
        dir.apply(&decode_structured(&serde_json::to_vec(e).unwrap()).expect("generated directory events decode"));
    }

    let mut event: Value = serde_json::from_str(EVENTS[input.event as usize % EVENTS.len()]).unwrap();
    event["time"] = format!("2026-11-20T{:02}:15:00Z", input.hour % 24).into();
    let editable = ["/data/referral/origin", "/data/referral/status", "/data/lead/kind", "/data/lead/call_to_action", "/data/sender/kind", "/data/receiver/kind"];
    for (field, word) in input.edits.iter().take(8) {
        if let Some(slot) = event.pointer_mut(editable[*field as usize % editable.len()]) {
            *slot = pick(WORDS, *word).into();
        }
    }
    if event["data"]["receivers"].is_array() && !input.receivers.is_empty() {
        event["data"]["receivers"] = input.receivers.iter().take(5).map(|(p, l, ms)| {
            if *ms { json!({"kind": "microsoft", "name": "Microsoft"}) }
            else { json!({"kind": "partner", "partner_id": pick(PARTNERS, *p), "name": "R", "location_id": l.map(|l| pick(LOCATIONS, l))}) }
        }).collect();
    }
    let Ok(event) = decode_structured(&serde_json::to_vec(&event).unwrap()) else { return };

    let mut state = MemoryState::new();
    if let Some(referral) = event.referral() {
        if let Some(s) = input.referral_status {
            state.set_referral_status(referral.id.as_str(), pick(WORDS, s));
        }
        if let Some(s) = input.receiver_status {
            for r in event.receivers().iter().filter_map(|r| r.partner_id.as_ref()) {
                state.set_receiver_status(referral.id.as_str(), r.as_str(), pick(WORDS, s));
            }
        }
    }
    for key in route(&event, rules(), &dir, &state).counters {
        state.set_count(key, u32::from(input.position));
    }
    let plan = route(&event, rules(), &dir, &state);

    let mut seen = BTreeSet::new();
    for d in &plan.deliveries {
        assert!(seen.insert((d.notification.clone(), d.channel, d.recipient.email.key())), "one delivery per person");
        assert!(!d.rules.is_empty(), "every delivery names the rule that planned it");
        assert_eq!(d.decision == Decision::Hold, d.digest.is_some(), "held deliveries name their digest");
        if d.decision == Decision::Hold {
            assert!(u32::from(input.position) > 10, "nothing is held before the threshold");
        }
    }
    // Recomputing gives the same plan: routing is a pure function.
    assert_eq!(route(&event, rules(), &dir, &state), plan);
});
