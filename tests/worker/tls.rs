//! TLS with the operator's own trust, against real TLS servers on loopback
//! that the tests start with certificates they make: the mail relay
//! (STARTTLS and implicit TLS), PostgreSQL (`sslmode`, `sslrootcert`) and a
//! RabbitMQ node that requires a client certificate (`amqps://`).

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::smtp::SinkTls;
use crate::support::tls::{PgTls, Pki, RabbitTls, server_config};
use crate::support::{self, Backend, Broker, SmtpSink, TestStore, Worker, example};

fn router(vars: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_referral-router"));
    cmd.args(args).current_dir(support::root());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A worker on a fresh SQLite store that knows the test directory, sending to `smtp`.
async fn worker_for(broker: &Broker, smtp: &SmtpSink, extra: &[(&str, &str)]) -> Worker {
    let store = TestStore::new(Backend::Sqlite).await;
    let worker = Worker::start(broker, smtp, &store, extra).await;
    let dir = support::directory_events();
    for line in &dir {
        broker.publish(line).await;
    }
    worker.wait_settled(dir.len(), Duration::from_secs(30)).await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_over_starttls_and_implicit_tls_trusting_the_operators_ca() {
    let _gate = support::shared().await;
    let pki = Pki::new();
    let ca = pki.ca.display().to_string();
    for (mode, tls) in [
        ("starttls", SinkTls::StartTls(server_config(&pki.server))),
        ("tls", SinkTls::Implicit(server_config(&pki.server))),
    ] {
        let broker = Broker::new(&format!("smtp-{mode}")).await;
        let smtp = SmtpSink::start_tls(tls).await;
        let env = [
            ("ROUTER__SMTP__HOST", "localhost"),
            ("ROUTER__SMTP__TLS", mode),
            ("ROUTER__SMTP__TLS_CA_FILE", ca.as_str()),
        ];
        let _worker = worker_for(&broker, &smtp, &env).await;
        broker.publish(&example("dealreg.review_selected.json")).await;
        let got = smtp.wait_for(2, Duration::from_secs(20)).await;
        assert_eq!(got.len(), 2, "{mode}: both emails arrive over TLS");
        assert_eq!(smtp.handshake_failures.load(std::sync::atomic::Ordering::SeqCst), 0);
        broker.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_that_does_not_verify_is_a_transient_failure_named_clearly_and_nothing_is_lost() {
    let _gate = support::shared().await;
    let pki = Pki::new();
    let (ca, other) = (pki.ca.display().to_string(), pki.other_ca.display().to_string());
    // A wrong name and an expired certificate, each trusted otherwise: refused, with the reason.
    for (cert, says) in [
        (&pki.wrong_name, "not valid for name \"localhost\""),
        (&pki.expired, "expired"),
    ] {
        let broker = Broker::new("smtp-bad").await;
        let smtp = SmtpSink::start_tls(SinkTls::StartTls(server_config(cert))).await;
        let env = [
            ("ROUTER__SMTP__HOST", "localhost"),
            ("ROUTER__SMTP__TLS", "starttls"),
            ("ROUTER__SMTP__TLS_CA_FILE", ca.as_str()),
        ];
        let worker = worker_for(&broker, &smtp, &env).await;
        broker.publish(&example("dealreg.review_selected.json")).await;
        let logs = wait_for_log(&worker, "TLS with the SMTP server").await;
        assert!(logs.contains("its certificate must name `localhost`"), "{logs}");
        assert!(logs.to_lowercase().contains(says), "wanted {says}: {logs}");
        assert!(smtp.messages().is_empty());
        broker.cleanup().await;
    }

    // Trusting another CA: nothing goes out, the log says why; once the
    // worker trusts the right CA, the same event's emails arrive, once each.
    let broker = Broker::new("smtp-ca").await;
    let smtp = SmtpSink::start_tls(SinkTls::StartTls(server_config(&pki.server))).await;
    let store = TestStore::new(Backend::Sqlite).await;
    let wrong = [
        ("ROUTER__SMTP__HOST", "localhost"),
        ("ROUTER__SMTP__TLS", "starttls"),
        ("ROUTER__SMTP__TLS_CA_FILE", other.as_str()),
        // Stop retrying soon on SIGTERM: the broker keeps the message for the next worker.
        ("ROUTER__SHUTDOWN__DRAIN_TIMEOUT", "2s"),
    ];
    let mut worker = Worker::start(&broker, &smtp, &store, &wrong).await;
    let dir = support::directory_events();
    for line in &dir {
        broker.publish(line).await;
    }
    worker.wait_settled(dir.len(), Duration::from_secs(30)).await;
    broker.publish(&example("dealreg.review_selected.json")).await;
    let logs = wait_for_log(&worker, "TLS with the SMTP server").await;
    assert!(
        logs.contains(&format!(
            "trusted: the system's trust store and smtp.tls_ca_file `{other}`"
        )),
        "{logs}"
    );
    let lower = logs.to_lowercase();
    assert!(
        lower.contains("unknownissuer") || lower.contains("unknown issuer"),
        "{logs}"
    );
    assert!(smtp.messages().is_empty());
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(40)).await, Some(0));
    drop(worker);
    let right = [
        ("ROUTER__SMTP__HOST", "localhost"),
        ("ROUTER__SMTP__TLS", "starttls"),
        ("ROUTER__SMTP__TLS_CA_FILE", ca.as_str()),
    ];
    let _worker = Worker::start(&broker, &smtp, &store, &right).await;
    let got = smtp.wait_for(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut to: Vec<String> = got.iter().map(|m| m.rcpt.join(",")).collect();
    to.sort();
    assert_eq!(to, ["amy@fabrikam.example", "ben@fabrikam.example"]);
    assert_eq!(smtp.messages().len(), 2, "once each");
    broker.cleanup().await;
}

async fn wait_for_log(worker: &Worker, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = worker.logs();
        if logs.contains(needle) {
            return logs;
        }
        assert!(std::time::Instant::now() < deadline, "no `{needle}` in:\n{logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_tls_verify_full_with_the_test_ca_require_without_and_another_ca_refused() {
    let _gate = support::shared().await;
    let pki = Pki::new();
    let pg = PgTls::start(&pki.server);
    let (ca, other) = (pki.ca.display().to_string(), pki.other_ca.display().to_string());

    let refused = router(
        &[(
            "ROUTER__STORE__URL",
            pg.url(&format!("sslmode=verify-full&sslrootcert={other}")),
        )],
        &["log", "--event", "evt-1"],
    );
    let shown = text(&refused);
    assert!(!refused.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "PostgreSQL 127.0.0.1:{} over TLS (sslmode=verify-full, its certificate must name `127.0.0.1`; \
             trusted: the system's trust store and sslrootcert `{other}`)",
            pg.port
        )),
        "{shown}"
    );
    // `require` encrypts without checking who answers: no CA needed.
    let required = router(
        &[("ROUTER__STORE__URL", pg.url("sslmode=require"))],
        &["log", "--event", "evt-1"],
    );
    assert!(required.status.success(), "{}", text(&required));

    // The worker itself, over verify-full with the test CA.
    let url = pg.url(&format!("sslmode=verify-full&sslrootcert={ca}"));
    let (broker, smtp, _worker) = support::start("pgtls", Backend::Sqlite, &[("ROUTER__STORE__URL", &url)]).await;
    broker.publish(&example("dealreg.review_selected.json")).await;
    assert_eq!(smtp.wait_for(2, Duration::from_secs(20)).await.len(), 2);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_over_amqps_with_a_client_certificate_and_the_wrong_ca_refused_clearly() {
    let _gate = support::shared().await;
    let pki = Pki::new();
    let node = RabbitTls::start(&pki);
    let (ca, other) = (pki.ca.display().to_string(), pki.other_ca.display().to_string());
    let (cert, key) = (
        pki.client.cert.display().to_string(),
        pki.client.key.display().to_string(),
    );
    let url = node.tls_url();
    let listing = |ca: &str, client: bool| {
        let mut vars = vec![
            ("ROUTER__AMQP__URL", url.clone()),
            ("ROUTER__AMQP__TLS_CA_FILE", ca.to_string()),
        ];
        if client {
            vars.push(("ROUTER__AMQP__TLS_CERT_FILE", cert.clone()));
            vars.push(("ROUTER__AMQP__TLS_KEY_FILE", key.clone()));
        }
        router(&vars, &["dlq", "list"])
    };
    let wrong_ca = listing(&other, true);
    let shown = text(&wrong_ca);
    assert!(!wrong_ca.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "over TLS (trusted: the system's trust store and amqp.tls_ca_file `{other}`)"
        )),
        "{shown}"
    );
    assert!(shown.contains("localhost"), "names the server: {shown}");
    // The listener requires a client certificate.
    let no_client = listing(&ca, false);
    let shown = text(&no_client);
    assert!(!no_client.status.success(), "{shown}");
    assert!(shown.contains("over TLS"), "{shown}");
    // With it, the connection is made (this node has no dead-letter queue yet).
    let listed = listing(&ca, true);
    let shown = text(&listed);
    assert!(!shown.contains("over TLS"), "{shown}");
    assert!(listed.status.success() || shown.contains("no queue"), "{shown}");

    // The worker consumes over amqps:// presenting its certificate, its URL
    // (with the broker password) read from a file as a mounted secret is.
    let broker = Broker::new_at("amqps", &node.plain_url()).await;
    let smtp = SmtpSink::start().await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{url}\n")).unwrap();
    let secret_path = secret.path().display().to_string();
    let env = [
        ("ROUTER__AMQP__URL__FILE", secret_path.as_str()),
        ("ROUTER__AMQP__TLS_CA_FILE", ca.as_str()),
        ("ROUTER__AMQP__TLS_CERT_FILE", cert.as_str()),
        ("ROUTER__AMQP__TLS_KEY_FILE", key.as_str()),
    ];
    let _worker = worker_for(&broker, &smtp, &env).await;
    broker.publish(&example("dealreg.review_selected.json")).await;
    assert_eq!(smtp.wait_for(2, Duration::from_secs(20)).await.len(), 2);
}
