//! BIND 9 (`named`, Debian's bind9) on loopback as the primary server of users' zones that
//! accept RFC 2136 dynamic updates signed with one TSIG key: what cert-manager's own
//! rfc2136 solver writes to.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use base64::{Engine, prelude::BASE64_STANDARD};

use super::{
    daemon::{Daemon, program, start_on_free_ports},
    knot::zone_text,
};

/// An HMAC-SHA256 TSIG key (RFC 8945).
pub struct TsigKey {
    pub name: String,
    /// The key, base64: how both named.conf and cert-manager's Secret hold it.
    pub secret: String,
}

impl TsigKey {
    /// A new random 256-bit key.
    pub fn generate(name: &str) -> TsigKey {
        let mut key = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .expect("read /dev/urandom");
        TsigKey {
            name: name.to_string(),
            secret: BASE64_STANDARD.encode(key),
        }
    }
}

pub struct Bind {
    pub addr: SocketAddr,
    /// named's output (`-g`): every update it applies, times in UTC to the millisecond.
    pub log: PathBuf,
    _daemon: Daemon,
}

/// One TXT record a dynamic update added, as named logged it.
#[derive(Debug)]
pub struct UpdateLogged {
    pub at: SystemTime,
    pub name: String,
    pub value: String,
}

impl Bind {
    /// Serves each zone (origin without the final dot) from a zone file of its own with
    /// SOA, NS and the NS host's address, taking updates signed with `key`; config, zone
    /// files and journals in `dir`. Returns once every zone answers SOA authoritatively.
    pub fn start(dir: &Path, zones: &[String], key: &TsigKey) -> Bind {
        std::fs::create_dir_all(dir).unwrap();
        let mut zone_config = String::new();
        for zone in zones {
            let file = dir.join(format!("{zone}.zone"));
            std::fs::write(&file, zone_text(zone, &[])).unwrap();
            zone_config.push_str(&format!(
                "zone \"{zone}\" {{\n    type primary;\n    file \"{}\";\n    allow-update {{ key \"{}\"; }};\n}};\n",
                file.display(),
                key.name
            ));
        }
        let config = dir.join("named.conf");
        start_on_free_ports(1, |ports| {
            let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
            std::fs::write(
                &config,
                format!(
                    r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
// No rndc channel: the process is stopped by signal.
controls {{ }};
key "{key_name}" {{
    algorithm hmac-sha256;
    secret "{secret}";
}};
{zone_config}"#,
                    dir = dir.display(),
                    port = addr.port(),
                    key_name = key.name,
                    secret = key.secret,
                ),
            )
            .unwrap();
            super::run(
                program("named-checkconf").to_str().unwrap(),
                &[config.to_str().unwrap()],
                None,
            );
            let mut command = Command::new(program("named"));
            // -g: foreground, every log line on stderr (info and up, the update category
            // included), with times in the process's time zone: UTC, to compare them
            // with this process's clock. One worker thread, like the resolver.
            command
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(&config)
                .env("TZ", "UTC");
            let mut daemon = Daemon::spawn("named", command, dir)
                .fatal_log_lines(&["loading configuration: failure", "exiting (due to"]);
            daemon.wait_ready(Duration::from_secs(30), || {
                match zones
                    .iter()
                    .find(|z| !super::dns::answers_soa(addr, &format!("{z}."), false))
                {
                    Some(zone) => Err(format!("no authoritative SOA for {zone}")),
                    None => Ok(()),
                }
            })?;
            Ok(Bind {
                addr,
                log: dir.join("named.log"),
                _daemon: daemon,
            })
        })
    }

    /// Every TXT record added by a dynamic update so far, from named's log lines such as
    /// `06-Dec-2026 18:20:01.123 client @0x… 127.0.0.1#41234/key k: updating zone
    /// 'd.test/IN': adding an RR at '_acme-challenge.d.test' TXT "value"`.
    pub fn updates(&self) -> Vec<UpdateLogged> {
        let line = regex_lite::Regex::new(
            r#"^(\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}:\d{2}\.\d{3}) .*updating zone '[^']+': adding an RR at '([^']+)' TXT "([^"]*)""#,
        )
        .unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let c = line.captures(l)?;
                let at =
                    k8s_openapi::jiff::civil::DateTime::strptime("%d-%b-%Y %H:%M:%S%.f", &c[1])
                        .ok()?
                        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
                        .ok()?;
                Some(UpdateLogged {
                    at: SystemTime::from(at.timestamp()),
                    name: c[2].trim_end_matches('.').to_string(),
                    value: c[3].to_string(),
                })
            })
            .collect()
    }
}
