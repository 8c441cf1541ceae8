//! The store on its own, on both backends: idempotent admission, atomic
//! counters, leases between two workers (two store handles on one database),
//! and the directory converging whatever order its changes arrive in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use referral_router::decode::{read_directory, read_event};
use referral_router::directory::{Directory, DirectoryView};
use referral_router::event::{Event, EventId, LocationId, PartnerId, Role};
use referral_router::route::{DigestKey, MemoryState, RuleSet, route};
use referral_router::store::{self, Admission, DigestOutcome, Store};

use crate::support::{self, Backend, TestStore, on_both_backends};

on_both_backends!(
    admits_once_counts_atomically_and_holds_past_the_threshold,
    counters_are_atomic_across_workers,
    a_leased_event_is_busy_for_others_until_done_or_expired,
    a_send_recorded_just_before_a_crash_is_not_sent_again,
    a_retried_event_does_not_claim_what_it_already_sent,
    directory_changes_converge_in_any_order,
    a_digest_claim_is_exclusive_until_its_lease_ends_and_then_the_same_digest,
    leads_held_after_a_claim_wait_for_the_next_digest,
    the_archive_keeps_admitted_events_in_order_until_pruned,
);

const LEASE: Duration = Duration::from_secs(30);

struct Fixture {
    rules: RuleSet,
    dir: Directory,
}

impl Fixture {
    fn load() -> Self {
        let root = support::root();
        Self {
            rules: RuleSet::load_dir(&root.join("rules")).unwrap(),
            dir: read_directory(&root.join("rules/tests/directory.jsonl")).unwrap(),
        }
    }

    fn event(&self, file: &str, id: &str) -> Event {
        let mut event = read_event(&support::root().join("rules/tests/events").join(file)).unwrap();
        event.id = EventId::new(id);
        event
    }

    /// Admits `event` as the worker would: count first, then plan with the positions.
    async fn admit(&self, store: &dyn Store, event: &Event) -> Admission {
        let counters = route(event, &self.rules, &self.dir, &MemoryState::new()).counters;
        let planner = |positions: &[(DigestKey, u32)]| {
            let mut state = MemoryState::new();
            for (key, position) in positions {
                state.set_count(key.clone(), *position);
            }
            route(event, &self.rules, &self.dir, &state)
        };
        store.admit(event, &counters, &planner).await.unwrap()
    }
}

async fn open(db: &TestStore, lease: Duration) -> Arc<dyn Store> {
    store::connect(
        &db.settings(lease),
        &referral_router::config::Archive {
            retention: Duration::from_secs(86400),
        },
    )
    .await
    .unwrap()
}

async fn admits_once_counts_atomically_and_holds_past_the_threshold(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let store = open(&db, LEASE).await;
    let mut held = 0;
    for n in 1..=11u32 {
        let event = fx.event("lead.created.contact_me.json", &format!("lead-{n}"));
        let Admission::Pending { fresh: true, items } = fx.admit(&*store, &event).await else {
            panic!("a new event is admitted fresh");
        };
        held += 6 - items.len();
        // The same id again: nothing re-planned, the same pending items, no extra count.
        let again = store.admit(&event, &[], &|_| panic!("not re-planned")).await.unwrap();
        assert!(matches!(again, Admission::Pending { fresh: false, items: ref i } if i.len() == items.len()));
        for item in items {
            assert!(store.claim_delivery(item.log_id).await.unwrap());
            store.mark_sent(event.id.as_str(), item.log_id, None).await.unwrap();
        }
        assert!(store.complete(event.id.as_str()).await.unwrap());
        let done = store.admit(&event, &[], &|_| panic!("not re-planned")).await.unwrap();
        assert!(matches!(done, Admission::Done));
    }
    assert_eq!(held, 3, "the 11th lead's three emails are held, its entries are not");
}

async fn counters_are_atomic_across_workers(backend: Backend) {
    let fx = Arc::new(Fixture::load());
    let db = TestStore::new(backend).await;
    let workers = [open(&db, LEASE).await, open(&db, LEASE).await];
    let mut tasks = Vec::new();
    for n in 0..24 {
        let (fx, store) = (fx.clone(), workers[n % 2].clone());
        tasks.push(tokio::spawn(async move {
            let event = fx.event("lead.created.contact_me.json", &format!("lead-{n}"));
            let counters = route(&event, &fx.rules, &fx.dir, &MemoryState::new()).counters;
            let position = std::sync::Mutex::new(0);
            let planner = |positions: &[(DigestKey, u32)]| {
                *position.lock().unwrap() = positions[0].1;
                Default::default()
            };
            store.admit(&event, &counters, &planner).await.unwrap();
            position.into_inner().unwrap()
        }));
    }
    let mut positions = BTreeSet::new();
    for task in tasks {
        positions.insert(task.await.unwrap());
    }
    assert_eq!(positions, (1..=24).collect(), "every lead got its own position");
}

async fn a_leased_event_is_busy_for_others_until_done_or_expired(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let (a, b) = (open(&db, LEASE).await, open(&db, LEASE).await);
    let event = fx.event("cosell.solution.validation_passed.json", "sol-1");
    let Admission::Pending { fresh: true, items } = fx.admit(&*a, &event).await else {
        panic!("fresh");
    };
    assert!(!items.is_empty());
    // B gets a copy while A works on it: B waits, and never sends A's deliveries.
    assert!(matches!(fx.admit(&*b, &event).await, Admission::Busy { retry_in } if retry_in <= LEASE));
    assert!(a.claim_delivery(items[0].log_id).await.unwrap());
    assert!(!b.claim_delivery(items[0].log_id).await.unwrap(), "claimed by A");
    assert!(!a.complete(event.id.as_str()).await.unwrap(), "still pending");
    for item in &items {
        assert!(a.claim_delivery(item.log_id).await.unwrap());
        a.mark_sent(event.id.as_str(), item.log_id, None).await.unwrap();
    }
    assert!(a.complete(event.id.as_str()).await.unwrap());
    assert!(matches!(fx.admit(&*b, &event).await, Admission::Done));

    // A failed attempt releases at once; a crashed worker's lease runs out.
    let short = open(&db, Duration::from_millis(300)).await;
    let other = fx.event("cosell.solution.validation_failed.json", "sol-2");
    let Admission::Pending { items, .. } = fx.admit(&*short, &other).await else {
        panic!("fresh");
    };
    assert!(short.claim_delivery(items[0].log_id).await.unwrap());
    assert!(matches!(fx.admit(&*b, &other).await, Admission::Busy { .. }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let Admission::Pending { fresh: false, items } = fx.admit(&*b, &other).await else {
        panic!("taken over after the lease ran out");
    };
    assert!(
        b.claim_delivery(items[0].log_id).await.unwrap(),
        "the crashed worker's claim expired"
    );
    b.release(other.id.as_str()).await.unwrap();
    assert!(matches!(
        fx.admit(&*a, &other).await,
        Admission::Pending { fresh: false, .. }
    ));
}

/// Admits a Contact-me lead fresh on `store` and records its first delivery as sent.
async fn admit_and_send_the_first(fx: &Fixture, store: &dyn Store, id: &str) -> (Event, Vec<store::OutboxItem>) {
    let event = fx.event("lead.created.contact_me.json", id);
    let Admission::Pending { fresh: true, items } = fx.admit(store, &event).await else {
        panic!("fresh");
    };
    assert!(items.len() >= 2, "the fixture plans several deliveries");
    store
        .mark_sent(
            event.id.as_str(),
            items[0].log_id,
            Some("<first@partner-center.example>"),
        )
        .await
        .unwrap();
    (event, items)
}

/// What a worker admitting `event` again (not fresh) is left to send.
async fn left_to_send(fx: &Fixture, store: &dyn Store, event: &Event) -> Vec<i64> {
    let Admission::Pending { fresh: false, items } = fx.admit(store, event).await else {
        panic!("admitted again, not fresh");
    };
    items.iter().map(|i| i.log_id).collect()
}

fn log_ids(items: &[store::OutboxItem]) -> Vec<i64> {
    items.iter().map(|i| i.log_id).collect()
}

async fn a_send_recorded_just_before_a_crash_is_not_sent_again(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let dying = open(&db, Duration::from_millis(300)).await;
    let (event, items) = admit_and_send_the_first(&fx, &*dying, "lead-crash").await;
    // Killed right after the record: no complete, no release.
    drop(dying);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = open(&db, LEASE).await;
    assert_eq!(
        left_to_send(&fx, &*next, &event).await,
        log_ids(&items[1..]),
        "only what was not sent is left to send"
    );
    let log = next.log_for_event(event.id.as_str()).await.unwrap();
    let sent: Vec<_> = log.iter().filter(|e| e.status == store::LogStatus::Sent).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].message_id.as_deref(), Some("<first@partner-center.example>"));
}

async fn a_retried_event_does_not_claim_what_it_already_sent(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let store = open(&db, LEASE).await;
    let (event, items) = admit_and_send_the_first(&fx, &*store, "lead-retried").await;
    // The attempt failed before `complete`: the same worker admits the event again.
    assert_eq!(
        left_to_send(&fx, &*store, &event).await,
        log_ids(&items[1..]),
        "what went out is not claimed again"
    );
}

fn directory_event(id: &str, time: &str, data: serde_json::Value, kind: &str) -> Event {
    let raw = serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/t", "type": kind, "time": time, "data": data
    });
    referral_router::decode::decode_structured(&serde_json::to_vec(&raw).unwrap()).unwrap()
}

fn upsert(id: &str, time: &str, role: &str) -> Event {
    let data = serde_json::json!({
        "partner_id": "fabrikam",
        "user": {"user_id": "zoe", "name": "Zoe", "email": "zoe@fabrikam.example"},
        "roles": [{"role": role, "location_id": null}]
    });
    directory_event(id, time, data, "directory.user.upserted")
}

async fn directory_changes_converge_in_any_order(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let (a, b) = (open(&db, LEASE).await, open(&db, LEASE).await);
    let admin = upsert("d-1", "2026-11-01T00:00:00Z", "referral_admin");
    let demoted = upsert("d-2", "2026-11-02T00:00:00Z", "referral_user");
    let removed = directory_event(
        "d-3",
        "2026-11-03T00:00:00Z",
        serde_json::json!({"partner_id": "fabrikam", "user_id": "zoe"}),
        "directory.user.removed",
    );
    // Worker B reads what worker A records, newest first: older changes must not win.
    let start = b.directory_changes(0).await.unwrap().seq;
    for event in [&removed, &demoted, &admin] {
        fx.admit(&*a, event).await;
    }
    let changes = b.directory_changes(start).await.unwrap();
    let dir = Directory::from_events(&changes.events);
    assert!(dir.users().next().is_none(), "the removal is the newest change");

    // In order instead, on a fresh store: the same outcome.
    let db2 = TestStore::new(backend).await;
    let c = open(&db2, LEASE).await;
    let p = PartnerId::new("fabrikam");
    let mut seen = 0;
    let mut dir = Directory::new();
    for (event, admins) in [(&admin, 1), (&demoted, 0)] {
        fx.admit(&*c, event).await;
        let changes = c.directory_changes(seen).await.unwrap();
        assert!(changes.seq > seen, "a change moves the sequence");
        seen = changes.seq;
        for e in &changes.events {
            dir.apply(e);
        }
        let l1 = LocationId::new("L1");
        assert_eq!(dir.holders(&p, Role::ReferralAdmin, Some(&l1)).len(), admins);
    }
    // A late copy of the older upsert (new id, old time) changes nothing.
    let late = upsert("d-1-late", "2026-11-01T12:00:00Z", "referral_admin");
    fx.admit(&*c, &late).await;
    for e in &c.directory_changes(seen).await.unwrap().events {
        dir.apply(e);
    }
    assert!(dir.holders(&p, Role::ReferralAdmin, None).is_empty(), "still demoted");
    assert!(
        c.directory_changes(0).await.unwrap().events.len() == 1,
        "one row per user"
    );
}

/// A store holding the emails of leads 11..=`leads` for Fabrikam's three recipients.
async fn with_held(fx: &Fixture, store: &dyn Store, leads: u32) {
    for n in 1..=leads {
        let event = fx.event("lead.created.contact_me.json", &format!("lead-{n}"));
        assert!(matches!(fx.admit(store, &event).await, Admission::Pending { .. }));
    }
}

async fn a_digest_claim_is_exclusive_until_its_lease_ends_and_then_the_same_digest(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let store = open(&db, LEASE).await;
    with_held(&fx, &*store, 14).await;
    let groups = store.held_groups().await.unwrap();
    assert_eq!(groups.len(), 3, "one group per recipient");
    assert!(groups.iter().all(|g| g.items == 4), "leads 11 to 14");
    let g = &groups[0];
    let now = chrono::Utc::now();
    let secs = chrono::Duration::seconds;
    let a = store.claim_digest(g, "a", now, now + secs(30)).await.unwrap().unwrap();
    assert_eq!((a.items.len(), a.attempt), (4, 1));
    assert!(
        store.claim_digest(g, "b", now, now + secs(30)).await.unwrap().is_none(),
        "leased to a"
    );
    // a dies; after its lease, b takes over the same digest with the same items.
    let later = now + secs(31);
    let b = store
        .claim_digest(g, "b", later, later + secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.id.as_str(), b.attempt), (a.id.as_str(), 2));
    let ids = |c: &store::DigestClaim| c.items.iter().map(|i| i.log_id).collect::<Vec<_>>();
    assert_eq!(ids(&b), ids(&a));
    store
        .settle_digest(&b.id, &DigestOutcome::Sent { message_id: "<m@x>" }, later)
        .await
        .unwrap();
    // Sent: nothing more to claim for that recipient, and the log says where each lead went.
    assert!(
        store
            .claim_digest(g, "c", later, later + secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.held_groups().await.unwrap().len(), 2);
    let log = store.log_for_recipient(&g.recipient, 100).await.unwrap();
    let digested: Vec<_> = log.iter().filter(|r| r.status == store::LogStatus::Digested).collect();
    assert_eq!(digested.len(), 4);
    assert!(digested.iter().all(|r| r.digest_id.as_deref() == Some(a.id.as_str())));
    assert_eq!(log.iter().filter(|r| r.status == store::LogStatus::Held).count(), 0);
    let by_event = store.log_for_event("lead-14").await.unwrap();
    assert_eq!(by_event.len(), 6, "three recipients, two channels");
}

async fn leads_held_after_a_claim_wait_for_the_next_digest(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let store = open(&db, LEASE).await;
    with_held(&fx, &*store, 12).await;
    let g = store.held_groups().await.unwrap().remove(0);
    let now = chrono::Utc::now();
    let first = store
        .claim_digest(&g, "a", now, now + chrono::Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.items.len(), 2);
    // A lead held while the digest is being sent waits for the next one.
    with_held_one(&fx, &*store, 13).await;
    store
        .settle_digest(&first.id, &DigestOutcome::Sent { message_id: "<1@x>" }, now)
        .await
        .unwrap();
    let next = store.held_groups().await.unwrap();
    let mine: Vec<_> = next.iter().filter(|h| h.recipient == g.recipient).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].items, 1, "only the lead held after the claim");
}

async fn with_held_one(fx: &Fixture, store: &dyn Store, n: u32) {
    let event = fx.event("lead.created.contact_me.json", &format!("lead-{n}"));
    assert!(matches!(fx.admit(store, &event).await, Admission::Pending { .. }));
}

async fn the_archive_keeps_admitted_events_in_order_until_pruned(backend: Backend) {
    let fx = Fixture::load();
    let db = TestStore::new(backend).await;
    let store = open(&db, LEASE).await;
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    for n in 1..=3 {
        let event = fx.event("lead.created.contact_me.json", &format!("archived-{n}"));
        fx.admit(&*store, &event).await;
        // The same event again is not archived twice.
        store.admit(&event, &[], &|_| panic!("not re-planned")).await.unwrap();
    }
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let kept = store.archived(start, later).await.unwrap();
    let ids: Vec<&str> = kept.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["archived-1", "archived-2", "archived-3"]);
    assert_eq!(
        kept[0].data,
        fx.event("lead.created.contact_me.json", "x").data,
        "the body as admitted"
    );
    assert!(
        store
            .archived(start - chrono::Duration::hours(1), start)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        store.prune_archive(start).await.unwrap(),
        0,
        "nothing is older than the window"
    );
    assert_eq!(store.prune_archive(later).await.unwrap(), 3);
    assert!(store.archived(start, later).await.unwrap().is_empty());

    // With the archive off, nothing is kept.
    let off = store::connect(
        &db.settings(LEASE),
        &referral_router::config::Archive {
            retention: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    fx.admit(&*off, &fx.event("lead.created.contact_me.json", "not-archived"))
        .await;
    assert!(
        off.archived(start, chrono::Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap()
            .is_empty()
    );
}
