//! TLS for the tests: certificates they make themselves (a test CA and
//! another CA, server certificates for `localhost`/`127.0.0.1`, for a wrong
//! name, expired ones, a client certificate), and real TLS servers on
//! loopback: a PostgreSQL started from the installed binaries and a RabbitMQ
//! node of the test's own, each with TLS on. (The SMTP sink speaks TLS itself.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every certificate a TLS test needs, in a folder removed when it is dropped.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA the servers' certificates are issued by.
    pub ca: PathBuf,
    /// A CA that issued none of them.
    pub other_ca: PathBuf,
    /// For `localhost` and `127.0.0.1`.
    pub server: Pem,
    /// For `elsewhere.example` only.
    pub wrong_name: Pem,
    /// For `localhost` and `127.0.0.1`, expired in 2021.
    pub expired: Pem,
    /// A client certificate issued by the test CA, for mutual TLS.
    pub client: Pem,
}

struct Issuer {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Issuer {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issuer { cert, key }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let test_ca = ca("referral-router test CA");
        let other = ca("some other CA");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let issue = |name: &str, sans: &[&str], expired: bool| {
            let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, sans[0]);
            params.distinguished_name = dn;
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &test_ca.cert, &test_ca.key).unwrap();
            Pem {
                cert: write(&format!("{name}.pem"), &cert.pem()),
                key: write(&format!("{name}.key"), &key.serialize_pem()),
            }
        };
        let server = issue("server", &["localhost", "127.0.0.1"], false);
        let wrong_name = issue("wrong-name", &["elsewhere.example"], false);
        let expired = issue("expired", &["localhost", "127.0.0.1"], true);
        let client = issue("client", &["referral-router"], false);
        let ca = write("ca.pem", &test_ca.cert.pem());
        let other_ca = write("other-ca.pem", &other.cert.pem());
        Self {
            _dir: dir,
            ca,
            other_ca,
            server,
            wrong_name,
            expired,
            client,
        }
    }
}

/// A rustls server configuration for `pem`.
pub fn server_config(pem: &Pem) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pem.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pem.key).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program` as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root), else as ourselves.
fn as_postgres(program: &Path) -> Command {
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The installed PostgreSQL's binaries.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("PostgreSQL's {name} is not installed under /usr/lib/postgresql/*/bin"))
}

/// A throw-away PostgreSQL server with `ssl = on`, on a port of its own; stopped when dropped.
pub struct PgTls {
    pub port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl PgTls {
    pub fn start(cert: &Pem) -> Self {
        let dir = tempfile::Builder::new().prefix("pgtls").tempdir_in("/tmp").unwrap();
        let data = dir.path().join("data");
        let port = super::free_port();
        // The server's own copies of its certificate and key: its user must own them (the key 0600).
        std::fs::copy(&cert.cert, dir.path().join("server.crt")).unwrap();
        std::fs::copy(&cert.key, dir.path().join("server.key")).unwrap();
        run(
            Command::new("chmod").arg("0600").arg(dir.path().join("server.key")),
            "chmod",
        );
        if as_postgres(Path::new("true")).get_program() == "runuser" {
            run(
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()),
                "chown",
            );
        }
        run(
            as_postgres(&pg_bin("initdb")).args(["-D"]).arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        );
        let options = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key} -c fsync=off",
            sock = dir.path().display(),
            crt = dir.path().join("server.crt").display(),
            key = dir.path().join("server.key").display(),
        );
        run(
            as_postgres(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        Self { port, data, _dir: dir }
    }

    /// `postgres://…` to this server's `postgres` database, with `params` (e.g. `sslmode=require`).
    pub fn url(&self, params: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?{params}", self.port)
    }
}

impl Drop for PgTls {
    fn drop(&mut self) {
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A RabbitMQ node of the test's own: a plain listener (for the test to
/// publish on) and a TLS listener that requires a client certificate issued by the test CA.
pub struct RabbitTls {
    pub plain_port: u16,
    pub tls_port: u16,
    node: String,
    dir: tempfile::TempDir,
}

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

impl RabbitTls {
    pub fn start(pki: &Pki) -> Self {
        let dir = tempfile::Builder::new().prefix("rmqtls").tempdir_in("/tmp").unwrap();
        let (plain_port, tls_port, dist_port) = (super::free_port(), super::free_port(), super::free_port());
        let node = format!("tls{}-{plain_port}@localhost", std::process::id());
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{plain_port}\n\
             listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            ca = pki.ca.display(),
            cert = pki.server.cert.display(),
            key = pki.server.key.display(),
        );
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let this = Self {
            plain_port,
            tls_port,
            node,
            dir,
        };
        run(
            this.env(&mut Command::new(format!("{RABBIT_BIN}/rabbitmq-server")), dist_port)
                .arg("-detached"),
            "rabbitmq-server -detached",
        );
        let out = this
            .ctl()
            .args(["wait", "--timeout", "90"])
            .arg(this.dir.path().join("pid"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the test's RabbitMQ node did not start (see {}): {}",
            this.dir.path().join("log").display(),
            String::from_utf8_lossy(&out.stderr)
        );
        this
    }

    fn env<'c>(&self, cmd: &'c mut Command, dist_port: u16) -> &'c mut Command {
        let d = self.dir.path();
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.plain_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(format!("{RABBIT_BIN}/rabbitmqctl"));
        cmd.env("HOME", self.dir.path().join("home"))
            .args(["-q", "-n", &self.node]);
        cmd
    }

    pub fn plain_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.plain_port)
    }

    /// The TLS listener, by the name its certificate carries.
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.tls_port)
    }
}

impl Drop for RabbitTls {
    fn drop(&mut self) {
        let _ = self.ctl().args(["stop"]).output();
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).output();
        }
    }
}
