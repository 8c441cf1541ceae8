//! SPEC section 3, row by row: the shipped rules, routed against every example
//! event with a directory holding referral admins at two locations of each
//! partner plus a global admin, reach exactly the people the SPEC names.

use std::collections::BTreeSet;
use std::path::Path;

use referral_router::decode::{read_directory, read_event, read_jsonl};
use referral_router::directory::Directory;
use referral_router::event::Event;
use referral_router::route::{Decision, MemoryState, Plan, RuleSet, route};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

type Row = (String, String, String, String);

fn rules() -> RuleSet {
    RuleSet::load_dir(&Path::new(ROOT).join("rules")).expect("the shipped rules load")
}

fn directory() -> Directory {
    read_directory(&Path::new(ROOT).join("rules/tests/directory.jsonl")).expect("the test directory loads")
}

fn example(name: &str) -> Event {
    read_event(&Path::new(ROOT).join(format!("rules/tests/events/{name}.json"))).expect("the example decodes")
}

fn patched(name: &str, patch: impl FnOnce(&mut serde_json::Value)) -> Event {
    let path = Path::new(ROOT).join(format!("rules/tests/events/{name}.json"));
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    patch(&mut json);
    referral_router::decode::decode_structured(&serde_json::to_vec(&json).unwrap()).unwrap()
}

fn plan_of(event: &Event, dir: &Directory, state: &MemoryState) -> Plan {
    route(event, &rules(), dir, state)
}

fn rows(plan: &Plan) -> BTreeSet<Row> {
    plan.deliveries
        .iter()
        .map(|d| {
            let decision = match d.decision {
                Decision::Send => "send",
                Decision::Hold => "hold",
                Decision::Suppress => "suppress",
            };
            (
                d.notification.clone(),
                d.channel.to_string(),
                d.recipient.email.key(),
                decision.to_string(),
            )
        })
        .collect()
}

/// `notification`, the channels, the people and the decision, expanded into rows.
fn expect(notification: &str, channels: &[&str], people: &[&str], decision: &str) -> BTreeSet<Row> {
    let mut out = BTreeSet::new();
    for c in channels {
        for p in people {
            out.insert((notification.into(), (*c).into(), (*p).into(), decision.into()));
        }
    }
    out
}

fn union(sets: impl IntoIterator<Item = BTreeSet<Row>>) -> BTreeSet<Row> {
    sets.into_iter().flatten().collect()
}

const AMY: &str = "amy@fabrikam.example";
const BEN: &str = "ben@fabrikam.example";
const NORTHWIND_ADMINS: &[&str] = &["cara@northwind.example", "ida@northwind.example"];
const LEAD_PEOPLE: &[&str] = &[
    "dana@fabrikam.example",
    "gina@fabrikam.example",
    "sales@fabrikam.example",
];
const BOTH: &[&str] = &["email", "action_center"];
const EMAIL: &[&str] = &["email"];

fn assert_plan(name: &str, want: BTreeSet<Row>) {
    let plan = plan_of(&example(name), &directory(), &MemoryState::new());
    assert_eq!(rows(&plan), want, "{name}");
}

#[test]
fn row_1_and_2_shared() {
    assert_plan(
        "cosell.opportunity.shared",
        union([
            expect("cosell-outgoing-opportunity", EMAIL, &[AMY], "send"),
            expect("cosell-incoming-opportunity", BOTH, NORTHWIND_ADMINS, "send"),
        ]),
    );
}

#[test]
fn row_3_accepted() {
    assert_plan(
        "cosell.opportunity.accepted",
        expect("cosell-outgoing-accepted", EMAIL, &[AMY], "send"),
    );
}

#[test]
fn row_4_declined() {
    assert_plan(
        "cosell.opportunity.declined",
        expect("cosell-outgoing-declined", EMAIL, &[AMY], "send"),
    );
}

#[test]
fn row_5_expiring() {
    assert_plan(
        "cosell.opportunity.expiring",
        expect("cosell-incoming-expiring", BOTH, NORTHWIND_ADMINS, "send"),
    );
}

#[test]
fn row_6_expired() {
    assert_plan(
        "cosell.opportunity.expired",
        expect("cosell-outgoing-expired", EMAIL, &[AMY], "send"),
    );
}

#[test]
fn rows_7_to_9_deal_registration() {
    assert_plan(
        "dealreg.action_required",
        expect("dealreg-action-required", BOTH, &[AMY, BEN], "send"),
    );
    assert_plan(
        "dealreg.review_failed",
        expect("dealreg-review-failed", BOTH, &[AMY, BEN], "send"),
    );
    assert_plan(
        "dealreg.review_selected",
        expect("dealreg-review-selected", EMAIL, &[AMY, BEN], "send"),
    );
}

#[test]
fn rows_10_and_11_solutions() {
    assert_plan(
        "cosell.solution.validation_failed",
        expect("solution-validation-failed", BOTH, &[BEN], "send"),
    );
    assert_plan(
        "cosell.solution.validation_passed",
        expect("solution-validation-passed", EMAIL, &[BEN], "send"),
    );
}

#[test]
fn row_12_contact_me_lead() {
    assert_plan(
        "lead.created.contact_me",
        expect("lead-generated", BOTH, LEAD_PEOPLE, "send"),
    );
}

#[test]
fn row_13_past_the_threshold_email_is_held_and_the_entry_is_made() {
    let event = example("lead.created.contact_me");
    let dir = directory();
    let mut state = MemoryState::new();
    let mut last = Plan::default();
    for _ in 0..11 {
        let keys = plan_of(&event, &dir, &state).counters;
        assert_eq!(keys.len(), 1, "a Contact-me lead counts once");
        state.count(&keys[0]);
        last = plan_of(&event, &dir, &state);
        if state.digest_position_of(&keys[0]) == 10 {
            assert_eq!(
                rows(&last),
                expect("lead-generated", BOTH, LEAD_PEOPLE, "send"),
                "the 10th"
            );
        }
    }
    assert_eq!(
        rows(&last),
        union([
            expect("lead-generated", EMAIL, LEAD_PEOPLE, "hold"),
            expect("lead-generated", &["action_center"], LEAD_PEOPLE, "send"),
        ]),
        "the 11th"
    );
    let held = last.deliveries.iter().find(|d| d.decision == Decision::Hold).unwrap();
    let key = held.digest.as_ref().expect("a held delivery names its digest");
    assert_eq!(key.partner.as_str(), "fabrikam");
    // 09:15 UTC on 20 Nov is 01:15 on 20 Nov in Los Angeles.
    assert_eq!(key.day.to_string(), "2026-11-20");
}

#[test]
fn row_14_profile_lead() {
    assert_plan(
        "lead.created.profile",
        expect("lead-profile-new", BOTH, LEAD_PEOPLE, "send"),
    );
}

#[test]
fn row_15_customer_redirected() {
    let customer = &["sam@wideworld.example"];
    assert_plan(
        "lead.declined",
        expect("lead-customer-redirected", EMAIL, customer, "send"),
    );
    assert_plan(
        "lead.expired",
        expect("lead-customer-redirected", EMAIL, customer, "send"),
    );
}

#[test]
fn directory_events_notify_no_one() {
    for name in [
        "directory.partner.upserted",
        "directory.user.upserted",
        "directory.user.removed",
        "directory.profile.contact_set",
    ] {
        assert_plan(name, BTreeSet::new());
    }
}

#[test]
fn contact_me_only() {
    assert_plan("lead.created.free_trial", BTreeSet::new());
    for cta in ["get_it_now", "test_drive"] {
        let event = patched("lead.created.contact_me", |j| {
            j["data"]["lead"]["call_to_action"] = cta.into()
        });
        assert!(
            plan_of(&event, &directory(), &MemoryState::new()).deliveries.is_empty(),
            "{cta}"
        );
    }
}

#[test]
fn automated_origins_silence_only_the_sender_side() {
    let sender_side = [
        ("cosell.opportunity.shared", "cosell-outgoing-opportunity"),
        ("cosell.opportunity.accepted", "cosell-outgoing-accepted"),
        ("cosell.opportunity.declined", "cosell-outgoing-declined"),
        ("cosell.opportunity.expired", "cosell-outgoing-expired"),
    ];
    for origin in ["new_deal", "bulk_upload", "connector"] {
        for (name, notification) in sender_side {
            let event = patched(name, |j| j["data"]["referral"]["origin"] = origin.into());
            let plan = plan_of(&event, &directory(), &MemoryState::new());
            let to_amy: Vec<_> = plan
                .deliveries
                .iter()
                .filter(|d| d.recipient.email.key() == AMY)
                .collect();
            assert_eq!(to_amy.len(), 1, "{origin} {name}");
            assert_eq!(to_amy[0].notification, notification);
            assert_eq!(to_amy[0].decision, Decision::Suppress, "{origin} {name}");
            assert!(
                to_amy[0]
                    .rules
                    .contains(&"quiet-sender-for-automated-origins".to_string())
            );
        }
        for (name, notification) in [
            ("cosell.opportunity.shared", "cosell-incoming-opportunity"),
            ("cosell.opportunity.expiring", "cosell-incoming-expiring"),
        ] {
            let event = patched(name, |j| j["data"]["referral"]["origin"] = origin.into());
            let plan = plan_of(&event, &directory(), &MemoryState::new());
            let receiver_side: BTreeSet<Row> = rows(&plan).into_iter().filter(|r| r.0 == notification).collect();
            assert_eq!(
                receiver_side,
                expect(notification, BOTH, NORTHWIND_ADMINS, "send"),
                "{origin} {name}"
            );
        }
    }
}

#[test]
fn microsoft_is_never_a_recipient() {
    // As sender: nothing goes to its inviting member.
    let event = patched("cosell.opportunity.accepted", |j| {
        j["data"]["sender"]["kind"] = "microsoft".into();
        j["data"]["sender"]["invited_by"]["email"] = "seller@microsoft.example".into();
    });
    let plan = plan_of(&event, &directory(), &MemoryState::new());
    assert!(
        plan.deliveries.iter().all(|d| d.decision == Decision::Suppress),
        "{:?}",
        rows(&plan)
    );
    // As the only receiver of a shared referral: no incoming notification at all.
    let event = patched("cosell.opportunity.shared", |j| {
        j["data"]["receivers"] = serde_json::json!([{"kind": "microsoft", "name": "Microsoft"}]);
    });
    let plan = plan_of(&event, &directory(), &MemoryState::new());
    assert!(
        rows(&plan).iter().all(|r| r.0 == "cosell-outgoing-opportunity"),
        "{:?}",
        rows(&plan)
    );
}

#[test]
fn one_person_through_two_roles_in_other_letter_case_gets_one_message() {
    let mut dir = directory();
    for e in read_jsonl(&Path::new(ROOT).join("rules/tests/directory-two-roles.jsonl")).unwrap() {
        dir.apply(&e);
    }
    let plan = plan_of(&example("lead.created.contact_me"), &dir, &MemoryState::new());
    let to_desk: Vec<_> = plan
        .deliveries
        .iter()
        .filter(|d| d.recipient.email.key() == "sales@fabrikam.example" && d.channel.to_string() == "email")
        .collect();
    assert_eq!(to_desk.len(), 1, "{:?}", rows(&plan));
    assert_eq!(rows(&plan), expect("lead-generated", BOTH, LEAD_PEOPLE, "send"));
}

#[test]
fn a_removed_user_is_no_longer_reached() {
    let mut dir = directory();
    let plan = plan_of(&example("lead.created.contact_me"), &dir, &MemoryState::new());
    assert!(rows(&plan).iter().any(|r| r.2 == "dana@fabrikam.example"));
    dir.apply(&patched("directory.user.removed", |j| {
        j["data"]["partner_id"] = "fabrikam".into();
        j["data"]["user_id"] = "fab-dana".into();
    }));
    let plan = plan_of(&example("lead.created.contact_me"), &dir, &MemoryState::new());
    assert!(
        rows(&plan).iter().all(|r| r.2 != "dana@fabrikam.example"),
        "{:?}",
        rows(&plan)
    );
    assert_eq!(
        rows(&plan),
        expect(
            "lead-generated",
            BOTH,
            &["gina@fabrikam.example", "sales@fabrikam.example"],
            "send"
        )
    );
}

#[test]
fn expiring_after_an_answer_is_suppressed_and_names_the_rule() {
    let dir = directory();
    let mut state = MemoryState::new();
    let accepted = plan_of(&example("cosell.opportunity.accepted"), &dir, &state);
    state.apply(&accepted.records);
    let plan = plan_of(&example("cosell.opportunity.expiring"), &dir, &state);
    assert_eq!(
        rows(&plan),
        expect("cosell-incoming-expiring", BOTH, NORTHWIND_ADMINS, "suppress")
    );
    assert!(
        plan.deliveries
            .iter()
            .all(|d| d.rules.contains(&"no-reminder-after-answer".to_string()))
    );
}

#[test]
fn shared_fans_out_once_per_partner_receiver() {
    let event = patched("cosell.opportunity.shared", |j| {
        j["data"]["receivers"] = serde_json::json!([
            {"kind": "partner", "partner_id": "northwind", "name": "Northwind Berlin", "location_id": "5200002"},
            {"kind": "microsoft", "name": "Microsoft"},
            {"kind": "partner", "partner_id": "northwind", "name": "Northwind Munich", "location_id": "5200003"},
        ]);
    });
    let plan = plan_of(&event, &directory(), &MemoryState::new());
    let incoming = |who: &str| -> Vec<String> {
        plan.deliveries
            .iter()
            .filter(|d| d.notification == "cosell-incoming-opportunity" && d.recipient.email.key() == who)
            .map(|d| {
                format!(
                    "{} {}",
                    d.channel,
                    d.receiver.as_ref().unwrap()["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        incoming("cara@northwind.example"),
        ["email Northwind Berlin", "action_center Northwind Berlin"]
    );
    assert_eq!(
        incoming("hans@northwind.example"),
        ["email Northwind Munich", "action_center Northwind Munich"]
    );
    // The global admin is reached through both receivers, and told once.
    assert_eq!(incoming("ida@northwind.example").len(), 2);
    let traced: Vec<_> = plan
        .trace
        .iter()
        .filter(|t| t.rule == "cosell-incoming-opportunity")
        .collect();
    assert_eq!(traced.len(), 3, "the rule ran once per receiver");
}

/// SPEC section 9: a recipient's own choice turns an optional notification
/// off for them alone, as a suppression by `preference` that explain traces;
/// a mandatory one cannot be turned off, whatever is stored.
#[test]
fn preferences_suppress_optional_notifications_only() {
    use referral_router::preferences::{PreferenceChange, Subject};
    use referral_router::route::rules::Channel;
    let mut dir = directory();
    for change in [
        PreferenceChange::new(
            "Amy@Fabrikam.example",
            Subject::Category("deal_registration".into()),
            Channel::Email,
            false,
        ),
        PreferenceChange::new(
            "dana@fabrikam.example",
            Subject::Notification("lead-generated".into()),
            Channel::ActionCenter,
            false,
        ),
    ] {
        dir.preferences.apply(&change);
    }
    let selected = plan_of(&example("dealreg.review_selected"), &dir, &MemoryState::new());
    assert_eq!(
        rows(&selected),
        union([
            expect(
                "dealreg-review-selected",
                &["email"],
                &["amy@fabrikam.example"],
                "suppress"
            ),
            expect("dealreg-review-selected", &["email"], &["ben@fabrikam.example"], "send"),
        ])
    );
    let amys = selected
        .deliveries
        .iter()
        .find(|d| d.recipient.email.key() == "amy@fabrikam.example")
        .unwrap();
    assert_eq!(
        amys.rules.last().map(String::as_str),
        Some(referral_router::route::PREFERENCE)
    );
    assert!(
        selected
            .trace
            .iter()
            .any(|t| t.rule == "preference" && t.reason.contains("amy@fabrikam.example"))
    );
    // The same category holds mandatory notifications: they still go out.
    let required = plan_of(&example("dealreg.action_required"), &dir, &MemoryState::new());
    assert!(
        required.deliveries.iter().all(|d| d.decision == Decision::Send),
        "{:?}",
        rows(&required)
    );
    // Per channel: Dana's lead entries stop, her lead emails do not.
    let lead = plan_of(&example("lead.created.contact_me"), &dir, &MemoryState::new());
    let danas: BTreeSet<Row> = rows(&lead)
        .into_iter()
        .filter(|r| r.2 == "dana@fabrikam.example")
        .collect();
    assert_eq!(
        danas,
        union([
            expect("lead-generated", &["email"], &["dana@fabrikam.example"], "send"),
            expect(
                "lead-generated",
                &["action_center"],
                &["dana@fabrikam.example"],
                "suppress"
            ),
        ])
    );
}
