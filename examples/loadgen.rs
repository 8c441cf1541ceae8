//! Load for benchmarks and soak tests, and the count afterwards.
//!
//! `publish` builds a directory of synthetic partners, then publishes N events
//! in the SPEC's mix (mostly Contact-me leads reaching three people each, then
//! co-sell and deal-registration events), optionally with malformed messages,
//! and writes a manifest: what was published when, and every email the rules
//! say must arrive (by Message-ID, computed by routing each event here).
//!
//! `check` compares an `smtp_sink` file with the manifest and prints what was
//! lost, what arrived twice (and whether copies share a Message-ID), how many
//! dead letters there are, and latency and throughput; its last line is
//! `lost=N duplicates=N dlq=N`.
//!
//!   cargo run --release --example loadgen -- publish --events 20000 --malformed-percent 2 --manifest m.jsonl
//!   cargo run --release --example loadgen -- check --manifest m.jsonl --sink sink.jsonl [--dlq QUEUE]
//!   cargo run --release --example loadgen -- cleanup --queues q1,q2 --exchanges e1,e2

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use referral_router::decode::decode_structured;
use referral_router::directory::Directory;
use referral_router::render::message_id;
use referral_router::route::rules::Channel;
use referral_router::route::{Decision, MemoryState, RuleSet, route};
use serde_json::{Value, json};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

const PARTNERS: usize = 400;
const ZONES: &[&str] = &["America/Los_Angeles", "Europe/Berlin", "Asia/Tokyo", "UTC"];

fn example(root: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(root.join("rules/tests/events").join(name)).expect("example event");
    serde_json::from_str(&text).expect("example JSON")
}

fn dir_event(id: String, ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/loadgen", "type": ty,
           "time": "2026-11-01T00:00:00Z", "data": data})
}

/// Synthetic partners (two referral admins and a profile contact each), plus the test directory.
fn directory(root: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_to_string(root.join("rules/tests/directory.jsonl"))
        .expect("test directory")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).expect("directory line"))
        .collect();
    for p in 0..PARTNERS {
        let partner = format!("p{p:03}");
        out.push(dir_event(format!("lg-partner-{p}"), "directory.partner.upserted",
            json!({"partner_id": partner, "name": format!("Partner {p}"), "time_zone": ZONES[p % ZONES.len()], "locale": if p % 5 == 0 { "de-DE" } else { "en-US" }})));
        for (u, location) in [(0, Some("L1")), (1, None)] {
            out.push(dir_event(format!("lg-user-{p}-{u}"), "directory.user.upserted", json!({
                "partner_id": partner,
                "user": {"user_id": format!("{partner}-u{u}"), "name": format!("Admin {u} of {p}"), "email": format!("admin{u}@{partner}.example")},
                "roles": [{"role": "referral_admin", "location_id": location}]})));
        }
        out.push(dir_event(
            format!("lg-contact-{p}"),
            "directory.profile.contact_set",
            json!({
            "partner_id": partner, "location_id": "L1",
            "contact": {"name": format!("Desk {p}"), "email": format!("desk@{partner}.example")}}),
        ));
    }
    out
}

/// Event `n` of the mix. Leads are spread so no partner gets more than ten a day.
fn event(n: usize, examples: &BTreeMap<&str, Value>) -> Value {
    let kind = n % 10;
    let mut v = match kind {
        0..=6 => {
            let mut v = examples["lead"].clone();
            let lead_no = n / 10 * 7 + kind;
            let partner = lead_no % PARTNERS;
            let day = lead_no / (PARTNERS * 8);
            v["data"]["partner"]["partner_id"] = format!("p{partner:03}").into();
            v["data"]["partner"]["location_id"] = "L1".into();
            v["data"]["lead"]["id"] = format!("lead-{n}").into();
            v["data"]["lead"]["customer"]["company"] = format!("Company {n}").into();
            v["time"] = format!("2026-10-{:02}T12:00:00Z", 1 + day % 28).into();
            v
        }
        7 => examples["shared"].clone(),
        8 => examples["accepted"].clone(),
        _ => examples["dealreg"].clone(),
    };
    v["id"] = format!("lg-{n}").into();
    if v["data"]["referral"].is_object() {
        // Each co-sell event is about its own referral, so no order between events matters.
        v["data"]["referral"]["id"] = format!("ref-lg-{n}").into();
    }
    v
}

fn malformed(n: usize) -> (String, Vec<u8>) {
    match n % 3 {
        0 => ("lead.created".into(), format!("{{not json {n}").into_bytes()),
        1 => (
            "cosell.opportunity.teleported".into(),
            serde_json::to_vec(&json!({"specversion": "1.0", "id": format!("bad-{n}"), "source": "/x",
                  "type": "cosell.opportunity.teleported", "time": "2026-10-01T00:00:00Z", "data": {}}))
            .unwrap(),
        ),
        _ => (
            "lead.created".into(),
            serde_json::to_vec(&json!({"specversion": "1.0", "id": format!("bad-{n}"), "source": "/x",
                  "type": "lead.created", "time": "2026-10-01T00:00:00Z", "data": {"lead": {}}}))
            .unwrap(),
        ),
    }
}

async fn publish() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let url = arg("--amqp").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = arg("--exchange").unwrap_or_else(|| "referrals.events".into());
    let events: usize = arg("--events").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let malformed_pct: f64 = arg("--malformed-percent").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let domain = arg("--mail-domain").unwrap_or_else(|| "partner-center.example".into());
    let manifest_path = arg("--manifest").unwrap_or_else(|| "manifest.jsonl".into());
    let skip_directory = std::env::args().any(|a| a == "--no-directory");

    let rules = RuleSet::load_dir(&root.join("rules")).map_err(|e| e.to_string())?;
    let examples: BTreeMap<&str, Value> = [
        ("lead", "lead.created.contact_me.json"),
        ("shared", "cosell.opportunity.shared.json"),
        ("accepted", "cosell.opportunity.accepted.json"),
        ("dealreg", "dealreg.action_required.json"),
    ]
    .into_iter()
    .map(|(k, f)| (k, example(root, f)))
    .collect();
    let dir_events = directory(root);
    let mut dir = Directory::new();
    for e in &dir_events {
        dir.apply(&decode_structured(&serde_json::to_vec(e).unwrap()).map_err(|e| e.to_string())?);
    }

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut manifest = std::io::BufWriter::new(std::fs::File::create(&manifest_path).map_err(|e| e.to_string())?);
    let mut pending = Vec::new();
    let send = |key: String, body: Vec<u8>| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            let props = BasicProperties::default()
                .with_content_type("application/cloudevents+json".into())
                .with_delivery_mode(2);
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
        }
    };
    if !skip_directory {
        for e in &dir_events {
            let confirm = send(e["type"].as_str().unwrap().to_string(), serde_json::to_vec(e).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            pending.push(confirm);
        }
        for c in pending.drain(..) {
            c.await.map_err(|e| e.to_string())?;
        }
        writeln!(manifest, "{}", json!({"directory": dir_events.len()})).unwrap();
    }
    let mut counts: HashMap<referral_router::route::DigestKey, u32> = HashMap::new();
    let malformed_every = if malformed_pct > 0.0 {
        (100.0 / malformed_pct).round() as usize
    } else {
        0
    };
    let started = now_us();
    let mut body_bytes = 0usize;
    for n in 0..events {
        if malformed_every > 0 && n % malformed_every == malformed_every - 1 {
            let (key, body) = malformed(n);
            writeln!(
                manifest,
                "{}",
                json!({"malformed": n, "len": body.len(), "at_us": now_us()})
            )
            .unwrap();
            pending.push(send(key, body).await.map_err(|e| e.to_string())?);
            continue;
        }
        let v = event(n, &examples);
        let body = serde_json::to_vec(&v).unwrap();
        body_bytes += body.len();
        let decoded = decode_structured(&body).map_err(|e| e.to_string())?;
        let mut state = MemoryState::new();
        for key in route(&decoded, &rules, &dir, &state).counters {
            let c = counts.entry(key.clone()).or_default();
            *c += 1;
            state.set_count(key, *c);
        }
        let emails: Vec<String> = route(&decoded, &rules, &dir, &state)
            .deliveries
            .iter()
            .filter(|d| d.channel == Channel::Email && d.decision == Decision::Send)
            .map(|d| message_id(&decoded.id, &d.notification, &d.recipient.email, &domain))
            .collect();
        writeln!(
            manifest,
            "{}",
            json!({"event": decoded.id, "at_us": now_us(), "emails": emails})
        )
        .unwrap();
        pending.push(
            send(v["type"].as_str().unwrap().to_string(), body)
                .await
                .map_err(|e| e.to_string())?,
        );
        if pending.len() >= 500 {
            for c in pending.drain(..) {
                c.await.map_err(|e| e.to_string())?;
            }
        }
    }
    for c in pending.drain(..) {
        c.await.map_err(|e| e.to_string())?;
    }
    manifest.flush().map_err(|e| e.to_string())?;
    let secs = (now_us() - started) as f64 / 1e6;
    eprintln!(
        "loadgen: published {events} messages in {secs:.1}s ({:.0}/s)",
        events as f64 / secs.max(1e-9)
    );
    eprintln!("loadgen: mean_bytes={}", body_bytes / events.max(1));
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn check() -> Result<(), String> {
    let manifest_path = arg("--manifest").unwrap_or_else(|| "manifest.jsonl".into());
    let sink_path = arg("--sink").unwrap_or_else(|| "sink.jsonl".into());
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut published: HashMap<String, u64> = HashMap::new();
    let mut malformed = 0usize;
    let mut first_publish = u64::MAX;
    for line in std::io::BufReader::new(std::fs::File::open(&manifest_path).map_err(|e| e.to_string())?).lines() {
        let v: Value = serde_json::from_str(&line.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        if let Some(at) = v["at_us"].as_u64() {
            first_publish = first_publish.min(at);
        }
        if v["malformed"].is_number() {
            malformed += 1;
        }
        if let Some(id) = v["event"].as_str() {
            published.insert(id.to_string(), v["at_us"].as_u64().unwrap_or(0));
            for m in v["emails"].as_array().into_iter().flatten() {
                expected.insert(m.as_str().unwrap_or_default().to_string(), id.to_string());
            }
        }
    }
    let mut arrived: HashMap<String, usize> = HashMap::new();
    let mut latencies = Vec::new();
    let mut last_accept = 0u64;
    let mut unexpected = 0usize;
    for line in std::io::BufReader::new(std::fs::File::open(&sink_path).map_err(|e| e.to_string())?).lines() {
        let v: Value = serde_json::from_str(&line.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let id = v["message_id"].as_str().unwrap_or_default().to_string();
        let at = v["at_us"].as_u64().unwrap_or(0);
        last_accept = last_accept.max(at);
        match expected.get(&id) {
            Some(event) => {
                let n = arrived.entry(id.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    latencies.push(at.saturating_sub(published[event]));
                }
            }
            None => unexpected += 1,
        }
    }
    let lost = expected.keys().filter(|id| !arrived.contains_key(*id)).count();
    // Every extra copy is the same Message-ID again, by construction of `arrived`.
    let duplicates: usize = arrived.values().map(|n| n - 1).sum();
    let dlq = match arg("--dlq") {
        Some(queue) => count_dead_letters(&queue).await?,
        None => 0,
    };
    latencies.sort_unstable();
    let span = last_accept.saturating_sub(first_publish) as f64 / 1e6;
    println!("events published: {}, malformed: {malformed}", published.len());
    println!(
        "emails expected: {}, arrived: {}, unexpected: {unexpected}",
        expected.len(),
        arrived.len()
    );
    println!(
        "latency publish->accepted: p50={:.1}ms p99={:.1}ms; span {span:.1}s; emails/s {:.0}; events/s {:.0}",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        arrived.len() as f64 / span.max(1e-9),
        published.len() as f64 / span.max(1e-9),
    );
    if let Some(queue) = arg("--dlq") {
        println!("dead letters in {queue}: {dlq} (malformed published: {malformed})");
    }
    println!("lost={lost} duplicates={duplicates} dlq={dlq}");
    Ok(())
}

/// Counts (and leaves in place) the dead letters that carry a reason.
async fn count_dead_letters(queue: &str) -> Result<usize, String> {
    let url = arg("--amqp").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut n = 0;
    // Read without acking, then close: the broker puts them all back.
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|e| e.to_string())?
    {
        let has_reason = msg
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key("x-router-reason"));
        if has_reason {
            n += 1;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(n)
}

/// Deletes what a benchmark declared (queues first, then exchanges); missing ones are fine.
async fn cleanup() -> Result<(), String> {
    let url = arg("--amqp").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let names = |flag: &str| -> Vec<String> {
        arg(flag)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    for queue in names("--queues") {
        // A fresh channel each time: deleting something missing may close the channel.
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in names("--exchanges") {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = match std::env::args().nth(1).as_deref() {
        Some("publish") => publish().await,
        Some("check") => check().await,
        Some("cleanup") => cleanup().await,
        _ => Err("usage: loadgen publish|check|cleanup [options] (see the top of examples/loadgen.rs)".into()),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
