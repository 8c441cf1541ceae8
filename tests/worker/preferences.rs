//! Recipients in control, through the real worker, SMTP server and HTTP
//! server: the one-click link of an optional email stops that notification
//! for that recipient only, the preferences API round-trips and refuses what
//! it must, and the Action Center inbox pages, archives and streams.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{
    self, Backend, Broker, JWT_SECRET, PUBLIC_URL, SmtpSink, TestStore, Worker, example, http, http_body, jwt,
    on_both_backends,
};

on_both_backends!(
    one_click_stops_one_notification_for_one_recipient_and_tampering_changes_nothing,
    the_preferences_api_round_trips_and_refuses_what_cannot_be_done,
    the_inbox_pages_without_gaps_or_repeats_archives_and_streams_with_counts,
);

/// An example event under another id.
fn with_id(name: &str, id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&example(name)).unwrap();
    v["id"] = id.into();
    serde_json::to_vec(&v).unwrap()
}

fn header(mail: &support::smtp::Received, name: &str) -> Option<String> {
    mail.parsed().header_raw(name).map(|h| h.trim().to_string())
}

const ONE_CLICK: Option<(&str, &[u8])> = Some(("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click"));

async fn json_of(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let body = bytes.as_deref().map(|b| ("application/json", b));
    let (status, text) = http_body(addr, method, path, Some(token), body).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn one_click_stops_one_notification_for_one_recipient_and_tampering_changes_nothing(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("unsub", backend, &[]).await;
    let addr = &worker.http;
    let dir = support::directory_events().len();
    // "Selected for review" is optional: Amy and Ben get it.
    broker
        .publish(&with_id("dealreg.review_selected.json", "evt-sel-1"))
        .await;
    let mails = smtp.wait_for(2, Duration::from_secs(20)).await;
    let amys = mails
        .iter()
        .find(|m| m.rcpt == ["amy@fabrikam.example"])
        .expect("Amy's email");
    let bens = mails
        .iter()
        .find(|m| m.rcpt == ["ben@fabrikam.example"])
        .expect("Ben's email");
    assert_eq!(
        header(amys, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let url = header(amys, "List-Unsubscribe").unwrap();
    let url = url.trim_start_matches('<').trim_end_matches('>').to_string();
    let path = url.strip_prefix(PUBLIC_URL).expect("under http.public_url").to_string();
    assert!(path.starts_with("/preferences/"), "{url}");
    let bens_url = header(bens, "List-Unsubscribe").unwrap();
    assert!(!bens_url.contains(&path), "each recipient has a link of their own");
    // The footer links to the same place, in both parts.
    let parsed = amys.parsed();
    assert!(
        parsed.body_html(0).unwrap().contains(&url),
        "the HTML footer links to {url}"
    );
    assert!(
        parsed.body_text(0).unwrap().contains(&url),
        "the text footer links to {url}"
    );

    // GET shows what would stop, and changes nothing.
    let (status, page) = http(addr, "GET", &path, None).await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("amy@fabrikam.example") && page.contains("Stop these emails"),
        "{page}"
    );
    // A forged or malformed link, or a POST without the one-click body, is refused.
    let mut forged = path.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(http_body(addr, "POST", &forged, None, ONE_CLICK).await.unwrap().0, 403);
    let amys_other = path.replace("dealreg-review-selected", "dealreg-action-required");
    assert_eq!(
        http_body(addr, "POST", &amys_other, None, ONE_CLICK).await.unwrap().0,
        403
    );
    assert_eq!(
        http_body(addr, "POST", "/preferences/not-a-token", None, ONE_CLICK)
            .await
            .unwrap()
            .0,
        400
    );
    let wrong_body = Some(("application/x-www-form-urlencoded", b"unsubscribe=yes".as_slice()));
    assert_eq!(http_body(addr, "POST", &path, None, wrong_body).await.unwrap().0, 400);
    let amy = jwt("fab-amy", JWT_SECRET, 600);
    let (_, prefs) = json_of(addr, "GET", "/api/v1/preferences", &amy, None).await;
    assert_eq!(choice(&prefs, "dealreg-review-selected")["email"], true, "{prefs}");

    // The one click, twice (mail providers retry): 200 both times.
    for _ in 0..2 {
        let (status, page) = http_body(addr, "POST", &path, None, ONE_CLICK).await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("no longer receive"), "{page}");
    }
    let (_, prefs) = json_of(addr, "GET", "/api/v1/preferences", &amy, None).await;
    assert_eq!(choice(&prefs, "dealreg-review-selected")["email"], false, "{prefs}");

    // The next such event reaches Ben only; a mandatory one still reaches Amy.
    broker
        .publish(&with_id("dealreg.review_selected.json", "evt-sel-2"))
        .await;
    broker
        .publish(&with_id("dealreg.action_required.json", "evt-act-2"))
        .await;
    worker.wait_settled(dir + 3, Duration::from_secs(20)).await;
    smtp.wait_for(5, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = |event: &str| -> BTreeSet<String> {
        smtp.messages()
            .iter()
            .filter(|m| header(m, "X-Router-Event").as_deref() == Some(event))
            .map(|m| m.rcpt.join(","))
            .collect()
    };
    assert_eq!(got("evt-sel-2"), BTreeSet::from(["ben@fabrikam.example".to_string()]));
    assert_eq!(
        got("evt-act-2"),
        BTreeSet::from(["amy@fabrikam.example".to_string(), "ben@fabrikam.example".to_string()])
    );
    let log = worker.cli(&["log", "--event", "evt-sel-2"]);
    let log = String::from_utf8_lossy(&log.stdout).to_string();
    let amys_line = log
        .lines()
        .find(|l| l.contains("amy@fabrikam.example"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(amys_line.contains("suppressed by preference"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("ben@fabrikam.example") && l.contains("sent")),
        "{log}"
    );
    broker.cleanup().await;
}

/// Two workers on one PostgreSQL database: a choice made through one is
/// honoured by the other at its next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choice_made_through_one_worker_is_honoured_by_another() {
    let _gate = support::shared().await;
    let store = TestStore::new(Backend::Postgres).await;
    let (broker_a, broker_b) = (Broker::new("prefs-a").await, Broker::new("prefs-b").await);
    let (smtp_a, smtp_b) = (SmtpSink::start().await, SmtpSink::start().await);
    let a = Worker::start(&broker_a, &smtp_a, &store, &[]).await;
    let b = Worker::start(&broker_b, &smtp_b, &store, &[]).await;
    let dir = support::directory_events();
    for line in &dir {
        broker_a.publish(line).await;
    }
    a.wait_settled(dir.len(), Duration::from_secs(30)).await;
    let ben = jwt("fab-ben", JWT_SECRET, 600);
    let ask = json!({"notifications": {"dealreg-review-selected": {"email": false}}});
    let (status, body) = json_of(&a.http, "PUT", "/api/v1/preferences", &ben, Some(&ask)).await;
    assert_eq!(status, 200, "{body}");
    let (_, through_b) = json_of(&b.http, "GET", "/api/v1/preferences", &ben, None).await;
    assert_eq!(
        choice(&through_b, "dealreg-review-selected")["email"],
        false,
        "{through_b}"
    );
    broker_b
        .publish(&with_id("dealreg.review_selected.json", "evt-sel-b"))
        .await;
    b.wait_settled(1, Duration::from_secs(20)).await;
    smtp_b.wait_for(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to: Vec<String> = smtp_b.messages().iter().map(|m| m.rcpt.join(",")).collect();
    assert_eq!(
        to,
        ["amy@fabrikam.example"],
        "Ben turned it off through the other worker"
    );
    broker_a.cleanup().await;
    broker_b.cleanup().await;
}

/// One notification of a preferences overview.
fn choice<'v>(prefs: &'v Value, id: &str) -> &'v Value {
    let n = prefs["notifications"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("{id} missing from {prefs}"));
    &n["channels"]
}

async fn the_preferences_api_round_trips_and_refuses_what_cannot_be_done(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, _smtp, worker) = support::start("prefs", backend, &[]).await;
    let addr = &worker.http;
    let dana = jwt("fab-dana", JWT_SECRET, 600);
    let gina = jwt("gina@fabrikam.example", JWT_SECRET, 600);

    let (status, before) = json_of(addr, "GET", "/api/v1/preferences", &dana, None).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["recipient"], "dana@fabrikam.example");
    let all = before["notifications"].as_array().unwrap();
    assert_eq!(all.len(), 15, "every notification is listed: {before}");
    let mandatory = all.iter().find(|n| n["id"] == "cosell-incoming-opportunity").unwrap();
    assert_eq!(mandatory["can_turn_off"], false);
    assert_eq!(mandatory["category"], "cosell");
    let lead = all.iter().find(|n| n["id"] == "lead-generated").unwrap();
    assert_eq!(lead["can_turn_off"], true);
    assert_eq!(lead["channels"], json!({"email": true, "action_center": true}));

    // Leads by email off, for the whole category; then the digest back on by itself.
    let ask = json!({"categories": {"leads": {"email": false}}});
    let (status, after) = json_of(addr, "PUT", "/api/v1/preferences", &dana, Some(&ask)).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        choice(&after, "lead-generated"),
        &json!({"email": false, "action_center": true})
    );
    assert_eq!(choice(&after, "leads-digest"), &json!({"email": false}));
    let (status, after) = json_of(
        addr,
        "PUT",
        "/api/v1/preferences/leads-digest",
        &dana,
        Some(&json!({"email": true})),
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(choice(&after, "leads-digest"), &json!({"email": true}));
    let (_, again) = json_of(addr, "GET", "/api/v1/preferences", &dana, None).await;
    assert_eq!(again, after, "what PUT answered is what GET reads");
    // Gina's are her own.
    let (_, ginas) = json_of(addr, "GET", "/api/v1/preferences", &gina, None).await;
    assert_eq!(choice(&ginas, "lead-generated")["email"], true, "{ginas}");

    // What cannot be done is refused whole, with the reason; nothing changes.
    for (path, body, status, says) in [
        (
            "/api/v1/preferences",
            json!({"notifications": {"cosell-incoming-opportunity": {"email": false}}}),
            409,
            "mandatory",
        ),
        (
            "/api/v1/preferences",
            json!({"notifications": {"lead-generated": {"email": true}, "no-such-thing": {"email": false}}}),
            400,
            "unknown notification",
        ),
        (
            "/api/v1/preferences",
            json!({"categories": {"cosell": {"email": false}}}),
            409,
            "mandatory",
        ),
        (
            "/api/v1/preferences",
            json!({"notifications": {"leads-digest": {"action_center": false}}}),
            400,
            "not sent on action_center",
        ),
        (
            "/api/v1/preferences",
            json!({"notifications": {"lead-generated": {"sms": false}}}),
            400,
            "body",
        ),
        ("/api/v1/preferences", json!(["not", "an", "object"]), 400, "body"),
        (
            "/api/v1/preferences/no-such-thing",
            json!({"email": false}),
            404,
            "unknown notification",
        ),
    ] {
        let (got, answer) = json_of(addr, "PUT", path, &dana, Some(&body)).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains(says),
            "{body} -> {answer}"
        );
    }
    let (_, unchanged) = json_of(addr, "GET", "/api/v1/preferences", &dana, None).await;
    assert_eq!(unchanged, after);
    for bad in [None, Some(jwt("fab-dana", "not-the-secret", 600))] {
        let (status, _) = http(addr, "GET", "/api/v1/preferences", bad.as_deref()).await.unwrap();
        assert_eq!(status, 401);
    }
    let stranger = jwt("nobody-we-know", JWT_SECRET, 600);
    assert_eq!(
        json_of(addr, "GET", "/api/v1/preferences", &stranger, None).await.0,
        404
    );
    broker.cleanup().await;
}

/// A live inbox stream: the events it sends, as (event name, data).
struct Stream {
    lines: BufReader<tokio::net::TcpStream>,
}

impl Stream {
    async fn open(addr: &str, token: &str) -> Self {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /api/v1/action-center/stream?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(tcp);
        let mut status = String::new();
        lines.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        Self { lines }
    }

    /// The next event named `name` (others are skipped), within `timeout`.
    async fn next(&mut self, name: &str, timeout: Duration) -> Value {
        let read = async {
            let mut event = String::new();
            loop {
                let mut line = String::new();
                if self.lines.read_line(&mut line).await.unwrap() == 0 {
                    panic!("the stream ended");
                }
                let line = line.trim_end();
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(data) = line.strip_prefix("data: ")
                    && event == name
                {
                    return serde_json::from_str::<Value>(data).unwrap();
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event"))
    }
}

async fn the_inbox_pages_without_gaps_or_repeats_archives_and_streams_with_counts(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, _smtp, worker) = support::start("inbox", backend, &[("ROUTER__DIGEST__CHECK_EVERY", "1h")]).await;
    let addr = &worker.http;
    let dir = support::directory_events().len();
    // 23 leads: 23 entries for Dana, more than two pages of ten; the last stored last.
    for n in 1..=23 {
        broker
            .publish(&with_id("lead.created.contact_me.json", &format!("evt-inbox-{n}")))
            .await;
        if n == 22 {
            worker.wait_settled(dir + 22, Duration::from_secs(60)).await;
        }
    }
    worker.wait_settled(dir + 23, Duration::from_secs(60)).await;
    let dana = jwt("fab-dana", JWT_SECRET, 600);
    let gina = jwt("fab-gina", JWT_SECRET, 600);

    let mut seen = Vec::new();
    let mut path = "/api/v1/action-center/entries?limit=10".to_string();
    let mut pages = 0;
    let mut first_cursor = None;
    loop {
        let (status, page) = json_of(addr, "GET", &path, &dana, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 10);
        seen.extend(entries.iter().map(|e| e["event_id"].as_str().unwrap().to_string()));
        assert_eq!(page["unread"], 23);
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                first_cursor.get_or_insert_with(|| cursor.to_string());
                path = format!("/api/v1/action-center/entries?limit=10&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: BTreeSet<String> = (1..=23).map(|n| format!("evt-inbox-{n}")).collect();
    assert_eq!(seen.len(), 23, "no entry twice: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected, "none missing");
    assert_eq!(seen[0], "evt-inbox-23", "newest first");

    // A cursor that was altered, or is another user's, and page sizes out of bounds: 400.
    let cursor = first_cursor.unwrap();
    let (seq, signature) = cursor.split_once('.').unwrap();
    let altered = format!("{}.{signature}", seq.parse::<i64>().unwrap() + 1);
    for (token, query) in [
        (&dana, format!("cursor={altered}")),
        (&gina, format!("cursor={cursor}")),
        (&dana, "cursor=nonsense".to_string()),
        (&dana, "limit=0".to_string()),
        (&dana, "limit=101".to_string()),
        (&dana, "limit=ten".to_string()),
        (&dana, "colour=red".to_string()),
    ] {
        let (status, body) = json_of(
            addr,
            "GET",
            &format!("/api/v1/action-center/entries?{query}"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let (_, cosell) = json_of(
        addr,
        "GET",
        "/api/v1/action-center/entries?category=cosell",
        &dana,
        None,
    )
    .await;
    assert_eq!(cosell["entries"].as_array().unwrap().len(), 0);
    let (_, leads) = json_of(
        addr,
        "GET",
        "/api/v1/action-center/entries?category=leads&limit=100",
        &dana,
        None,
    )
    .await;
    assert_eq!(leads["entries"].as_array().unwrap().len(), 23);

    // Seen, read and archived.
    let counts = |t: &str| {
        let t = t.to_string();
        async move {
            json_of(addr, "GET", "/api/v1/action-center/unread-count", &t, None)
                .await
                .1
        }
    };
    assert_eq!(counts(&dana).await, json!({"unread": 23, "unseen": 23}));
    let (status, marked) = json_of(addr, "POST", "/api/v1/action-center/entries/seen", &dana, None).await;
    assert_eq!((status, marked["marked"].clone()), (200, json!(23)));
    let newest = leads["entries"][0]["id"].as_str().unwrap().to_string();
    let archive = format!("/api/v1/action-center/entries/{newest}/archive");
    assert_eq!(
        http(addr, "POST", &archive, Some(&gina)).await.unwrap().0,
        404,
        "not Gina's"
    );
    assert_eq!(http(addr, "POST", &archive, Some(&dana)).await.unwrap().0, 204);
    assert_eq!(counts(&dana).await, json!({"unread": 22, "unseen": 0}));
    let (_, listed) = json_of(addr, "GET", "/api/v1/action-center/entries?limit=100", &dana, None).await;
    assert!(
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != newest.as_str())
    );
    let (_, archived) = json_of(addr, "GET", "/api/v1/action-center/entries?archived=true", &dana, None).await;
    let archived = archived["entries"].as_array().unwrap();
    assert_eq!(archived.len(), 1);
    assert_eq!(
        (archived[0]["id"].as_str(), &archived[0]["archived"]),
        (Some(newest.as_str()), &json!(true))
    );
    let bogus = format!("/api/v1/action-center/entries/{newest}/explode");
    assert_eq!(http(addr, "POST", &bogus, Some(&dana)).await.unwrap().0, 404);

    // The stream: counts at once, then each new entry with the counts as they stand with it.
    let mut stream = Stream::open(addr, &dana).await;
    let first = stream.next("counts", Duration::from_secs(5)).await;
    assert_eq!(first, json!({"unread": 22, "unseen": 0}));
    broker
        .publish(&with_id("lead.created.contact_me.json", "evt-inbox-live"))
        .await;
    let pushed = stream.next("entry", Duration::from_secs(10)).await;
    assert_eq!(pushed["entry"]["event_id"], "evt-inbox-live");
    assert_eq!(pushed["entry"]["user"], "fab-dana");
    let now = counts(&dana).await;
    assert_eq!((&pushed["unread"], &pushed["unseen"]), (&now["unread"], &now["unseen"]));
    assert_eq!(now, json!({"unread": 23, "unseen": 1}));
    // Reading one updates the badge through the stream too.
    let live = pushed["entry"]["id"].as_str().unwrap();
    let read = format!("/api/v1/action-center/entries/{live}/read");
    assert_eq!(http(addr, "POST", &read, Some(&dana)).await.unwrap().0, 204);
    let after = stream.next("counts", Duration::from_secs(5)).await;
    assert_eq!(after, json!({"unread": 22, "unseen": 0}));
    assert_eq!(
        http(addr, "GET", "/api/v1/action-center/stream?access_token=forged", None)
            .await
            .unwrap()
            .0,
        401
    );
    broker.cleanup().await;
}
