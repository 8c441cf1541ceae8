//! Load for benchmarks and soak tests, and the count afterwards.
//!
//! `publish` builds a directory of synthetic partners, then publishes N events
//! in the SPEC's mix (mostly Contact-me leads reaching three people each, then
//! co-sell and deal-registration events), optionally with malformed messages,
//! and writes a manifest: what was published when, and every email the rules
//! say must arrive (by Message-ID, computed by routing each event here).
//!
//! `publish --rate N` paces the events at N per second, so faults can be
//! injected while they flow. Publishing survives a broker restart or closed
//! connection: messages are sent in small batches with publisher confirms, and
//! a batch not wholly confirmed is published again on a new connection (a
//! repeated event is a duplicate the worker must ignore by its id), for at
//! most `--give-up-secs` (default 120) per batch.
//! `--directory-only` publishes just the directory (to let it settle before
//! the events when several workers compete); `--no-directory` skips it.
//!
//! `check` compares an `smtp_sink` file with the manifest and prints what was
//! lost, what arrived twice (copies are counted per Message-ID, so every
//! duplicate carries the same Message-ID as its original), the dead letters
//! (each malformed message must be there with the reason its defect implies),
//! and latency and throughput; its last line is `lost=N duplicates=N dlq=N`,
//! where `dlq` counts the distinct malformed messages found with their reason.
//!
//!   cargo run --release --example loadgen -- publish --events 20000 --malformed-percent 2 --manifest m.jsonl [--rate 50]
//!   cargo run --release --example loadgen -- check --manifest m.jsonl --sink sink.jsonl [--dlq QUEUE]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
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

/// The examples the mix is made of, by the kind [`event`] names them.
fn mix_examples(root: &Path) -> BTreeMap<&'static str, Value> {
    [
        ("lead", "lead.created.contact_me.json"),
        ("shared", "cosell.opportunity.shared.json"),
        ("accepted", "cosell.opportunity.accepted.json"),
        ("dealreg", "dealreg.action_required.json"),
    ]
    .into_iter()
    .map(|(k, f)| (k, example(root, f)))
    .collect()
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

/// Malformed message `n`: its routing key, body, and the dead-letter reason its defect implies.
fn malformed(n: usize) -> (String, Vec<u8>, &'static str) {
    match n % 3 {
        0 => (
            "lead.created".into(),
            format!("{{not json {n}").into_bytes(),
            "not_json",
        ),
        1 => (
            "cosell.opportunity.teleported".into(),
            serde_json::to_vec(&json!({"specversion": "1.0", "id": format!("bad-{n}"), "source": "/x",
                  "type": "cosell.opportunity.teleported", "time": "2026-10-01T00:00:00Z", "data": {}}))
            .unwrap(),
            "unknown_type",
        ),
        _ => (
            "lead.created".into(),
            serde_json::to_vec(&json!({"specversion": "1.0", "id": format!("bad-{n}"), "source": "/x",
                  "type": "lead.created", "time": "2026-10-01T00:00:00Z", "data": {"lead": {}}}))
            .unwrap(),
            "bad_data",
        ),
    }
}

/// A confirmed publisher that reconnects and publishes a batch again until
/// the broker has confirmed all of it.
struct Publisher {
    url: String,
    exchange: String,
    conn: Option<Connection>,
    channel: Option<lapin::Channel>,
    republished: usize,
}

impl Publisher {
    async fn connect(&mut self) -> Result<lapin::Channel, String> {
        if let Some(c) = self.channel.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        self.conn = Some(conn);
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    async fn try_batch(&mut self, batch: &[(String, Vec<u8>)]) -> Result<(), String> {
        let channel = self.connect().await?;
        let mut confirms = Vec::with_capacity(batch.len());
        for (key, body) in batch {
            let props = BasicProperties::default()
                .with_content_type("application/cloudevents+json".into())
                .with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .map_err(|e| e.to_string())?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            // Bounded: a confirm lost with its connection must not hang the publisher.
            match tokio::time::timeout(Duration::from_secs(15), confirm).await {
                Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => {}
                Ok(Ok(Confirmation::Nack(_))) => return Err("the broker refused a message".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no confirm within 15s".into()),
            }
        }
        Ok(())
    }

    /// Publishes the batch until the broker confirms all of it, giving up after `give_up`.
    async fn publish(&mut self, batch: &[(String, Vec<u8>)], give_up: Duration) -> Result<(), String> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            match self.try_batch(batch).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < give_up => {
                    eprintln!("loadgen: publishing failed ({e}); reconnecting and publishing the batch again");
                    self.channel = None;
                    if let Some(conn) = self.conn.take() {
                        let _ = conn.close(200, "reconnecting".into()).await;
                    }
                    self.republished += batch.len();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(format!("{e} (gave up after {give_up:?})")),
            }
        }
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
    let directory_only = std::env::args().any(|a| a == "--directory-only");
    let rate: f64 = arg("--rate").and_then(|v| v.parse().ok()).unwrap_or(0.0);

    let rules = RuleSet::load_dir(&root.join("rules")).map_err(|e| e.to_string())?;
    let examples = mix_examples(root);
    let dir_events = directory(root);
    let mut dir = Directory::new();
    for e in &dir_events {
        dir.apply(&decode_structured(&serde_json::to_vec(e).unwrap()).map_err(|e| e.to_string())?);
    }

    let mut publisher = Publisher {
        url,
        exchange,
        conn: None,
        channel: None,
        republished: 0,
    };
    let give_up = Duration::from_secs(arg("--give-up-secs").and_then(|v| v.parse().ok()).unwrap_or(120));
    let mut manifest = std::io::BufWriter::new(std::fs::File::create(&manifest_path).map_err(|e| e.to_string())?);
    if !skip_directory {
        let batch: Vec<(String, Vec<u8>)> = dir_events
            .iter()
            .map(|e| (e["type"].as_str().unwrap().to_string(), serde_json::to_vec(e).unwrap()))
            .collect();
        for chunk in batch.chunks(500) {
            publisher.publish(chunk, give_up).await?;
        }
        writeln!(manifest, "{}", json!({"directory": dir_events.len()})).unwrap();
    }
    if directory_only {
        manifest.flush().map_err(|e| e.to_string())?;
        eprintln!("loadgen: published {} directory events", dir_events.len());
        return Ok(());
    }
    let mut counts: HashMap<referral_router::route::DigestKey, u32> = HashMap::new();
    let malformed_every = if malformed_pct > 0.0 {
        (100.0 / malformed_pct).round() as usize
    } else {
        0
    };
    // Paced: a batch every tenth of a second; unpaced: batches of 500.
    let batch_size = if rate > 0.0 { (rate / 10.0).ceil() as usize } else { 500 };
    let started = now_us();
    let clock = Instant::now();
    let mut body_bytes = 0usize;
    let mut batch: Vec<(String, Vec<u8>)> = Vec::with_capacity(batch_size);
    for n in 0..events {
        if malformed_every > 0 && n % malformed_every == malformed_every - 1 {
            let (key, body, reason) = malformed(n);
            writeln!(
                manifest,
                "{}",
                json!({"malformed": n, "len": body.len(), "reason": reason,
                       "body": String::from_utf8_lossy(&body), "at_us": now_us()})
            )
            .unwrap();
            batch.push((key, body));
        } else {
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
            batch.push((v["type"].as_str().unwrap().to_string(), body));
        }
        if batch.len() >= batch_size || n + 1 == events {
            publisher.publish(&batch, give_up).await?;
            batch.clear();
            // The manifest is complete up to what the broker has confirmed.
            manifest.flush().map_err(|e| e.to_string())?;
            if rate > 0.0 {
                let due = Duration::from_secs_f64((n + 1) as f64 / rate);
                if let Some(ahead) = due.checked_sub(clock.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
    }
    manifest.flush().map_err(|e| e.to_string())?;
    eprintln!("loadgen: mean_bytes={}", body_bytes / events.max(1));
    let secs = (now_us() - started) as f64 / 1e6;
    eprintln!(
        "loadgen: published {events} messages in {secs:.1}s ({:.0}/s), {} published again after a failure",
        events as f64 / secs.max(1e-9),
        publisher.republished
    );
    if let Some(conn) = publisher.conn.take() {
        let _ = conn.close(200, "done".into()).await;
    }
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
    // Each malformed message's body and the reason it must be dead-lettered with.
    let mut malformed_bodies: HashMap<Vec<u8>, String> = HashMap::new();
    let mut malformed = 0usize;
    let mut first_publish = u64::MAX;
    for line in std::io::BufReader::new(std::fs::File::open(&manifest_path).map_err(|e| e.to_string())?).lines() {
        let v: Value = serde_json::from_str(&line.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        if let Some(at) = v["at_us"].as_u64() {
            first_publish = first_publish.min(at);
        }
        if v["malformed"].is_number() {
            malformed += 1;
            if let Some(body) = v["body"].as_str() {
                let reason = v["reason"].as_str().unwrap_or_default().to_string();
                malformed_bodies.insert(body.as_bytes().to_vec(), reason);
            }
        }
        if let Some(id) = v["event"].as_str() {
            published.insert(id.to_string(), v["at_us"].as_u64().unwrap_or(0));
            for m in v["emails"].as_array().into_iter().flatten() {
                expected.insert(m.as_str().unwrap_or_default().to_string(), id.to_string());
            }
        }
    }
    let mut arrived: HashMap<String, usize> = HashMap::new();
    // When the first copy of each email was accepted, to tell what a duplicate coincides with.
    let mut first_at: HashMap<String, u64> = HashMap::new();
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
                    first_at.insert(id.clone(), at);
                    latencies.push(at.saturating_sub(published[event]));
                }
            }
            None => unexpected += 1,
        }
    }
    let lost = expected.keys().filter(|id| !arrived.contains_key(*id)).count();
    // Every extra copy is the same Message-ID again, by construction of `arrived`.
    let duplicates: usize = arrived.values().map(|n| n - 1).sum();
    let dead = match arg("--dlq") {
        Some(queue) => read_dead_letters(&queue).await?,
        None => Vec::new(),
    };
    // A malformed message counts once, when found with the reason its defect implies;
    // a second copy (dead-lettered again after a redelivery) is reported, not counted.
    let mut found: HashSet<&[u8]> = HashSet::new();
    let (mut copies, mut wrong_reason, mut unexpected_dead) = (0usize, Vec::new(), Vec::new());
    for letter in &dead {
        match malformed_bodies.get(&letter.body) {
            Some(reason) if letter.reason.as_deref() == Some(reason.as_str()) => {
                if !found.insert(letter.body.as_slice()) {
                    copies += 1;
                }
            }
            Some(reason) => wrong_reason.push(format!("expected {reason}, got {:?}: {}", letter.reason, letter.error)),
            None => unexpected_dead.push(format!(
                "{} reason={:?} error={} body={}",
                letter.routing_key,
                letter.reason,
                letter.error,
                String::from_utf8_lossy(&letter.body)
                    .chars()
                    .take(80)
                    .collect::<String>()
            )),
        }
    }
    let dlq = found.len();
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
        println!(
            "dead letters in {queue}: {} ({dlq} distinct malformed with their reason, of {malformed} published; \
             {copies} extra copies)",
            dead.len()
        );
        for line in wrong_reason.iter().take(10) {
            println!("dead letter with the wrong reason: {line}");
        }
        for line in unexpected_dead.iter().take(10) {
            println!("unexpected dead letter: {line}");
        }
        println!(
            "dlq_wrong_reason={} dlq_unexpected={} dlq_copies={copies}",
            wrong_reason.len(),
            unexpected_dead.len()
        );
    }
    let mut duplicated: Vec<(u64, &String, usize)> = arrived
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (first_at[id], id, *n))
        .collect();
    duplicated.sort();
    for (at, id, n) in duplicated {
        println!("duplicate: first_at_us={at} copies={n} message_id={id}");
    }
    println!("lost={lost} duplicates={duplicates} dlq={dlq}");
    Ok(())
}

struct DeadLetter {
    body: Vec<u8>,
    reason: Option<String>,
    error: String,
    routing_key: String,
}

/// Reads (and leaves in place) every dead letter, with the worker's reason headers.
async fn read_dead_letters(queue: &str) -> Result<Vec<DeadLetter>, String> {
    let url = arg("--amqp").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let text = |headers: &lapin::types::FieldTable, name: &str| match headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(lapin::types::AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    // Read without acking, then close: the broker puts them all back.
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|e| e.to_string())?
    {
        let headers = msg.properties.headers().clone().unwrap_or_default();
        out.push(DeadLetter {
            reason: text(&headers, "x-router-reason"),
            error: text(&headers, "x-router-error").unwrap_or_default(),
            // The dead-letter exchange routes by queue name; the worker records the original key.
            routing_key: text(&headers, "x-router-routing-key").unwrap_or_else(|| msg.routing_key.to_string()),
            body: msg.data.clone(),
        });
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Deletes the named queues and exchanges (what a benchmark declared).
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

/// `write --events N --directory DIR.jsonl --out EVENTS.jsonl`: the directory
/// and the mix as files, for `referral-router replay` to read.
fn write() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let events: usize = arg("--events").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let out = arg("--out").unwrap_or_else(|| "events.jsonl".into());
    let dir_out = arg("--directory").unwrap_or_else(|| "directory.jsonl".into());
    let examples = mix_examples(root);
    let lines = |values: &mut dyn Iterator<Item = Value>| values.map(|v| v.to_string() + "\n").collect::<String>();
    std::fs::write(&dir_out, lines(&mut directory(root).into_iter())).map_err(|e| format!("{dir_out}: {e}"))?;
    std::fs::write(&out, lines(&mut (0..events).map(|n| event(n, &examples)))).map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = match std::env::args().nth(1).as_deref() {
        Some("write") => write(),
        Some("publish") => publish().await,
        Some("check") => check().await,
        Some("cleanup") => cleanup().await,
        _ => Err("usage: loadgen publish|check|write [options] (see the top of examples/loadgen.rs)".into()),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
