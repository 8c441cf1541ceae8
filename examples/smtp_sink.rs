//! A standalone SMTP sink for benchmarks and soak tests: accepts every message
//! on 127.0.0.1 and appends one JSON line per message to a file, with the time
//! it was accepted and the headers that identify it. Restarting it appends.
//!
//!   cargo run --release --example smtp_sink -- --port 2525 --out sink.jsonl

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The value of a header in a raw message, unfolded.
fn header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line.trim_start());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(2525);
    let out = arg("--out").unwrap_or_else(|| "sink.jsonl".into());
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&out)?;
    let file = Arc::new(Mutex::new(std::io::BufWriter::new(file)));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("smtp_sink: listening on 127.0.0.1:{port}, writing {out}");
    loop {
        let (stream, _) = listener.accept().await?;
        let file = file.clone();
        tokio::spawn(async move {
            let _ = session(stream, file).await;
        });
    }
}

async fn session(stream: TcpStream, file: Arc<Mutex<std::io::BufWriter<std::fs::File>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut rcpt: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let addr = line.trim_end()[8..].trim().trim_start_matches('<');
            rcpt.push(addr.split('>').next().unwrap_or_default().to_ascii_lowercase());
            b"250 ok\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let record = serde_json::json!({
                "at_us": at as u64,
                "rcpt": std::mem::take(&mut rcpt),
                "message_id": header(&data, "Message-ID"),
                "notification": header(&data, "X-Router-Notification"),
                "event": header(&data, "X-Router-Event"),
                "bytes": data.len(),
            });
            {
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                writeln!(f, "{record}")?;
                f.flush()?;
            }
            b"250 queued\r\n"
        } else if upper.starts_with("RSET") {
            rcpt.clear();
            b"250 ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 ok\r\n"
        };
        write.write_all(reply).await?;
    }
}
