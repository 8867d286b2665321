//! Knot DNS serving the user's own zones on loopback, as the authoritative servers the
//! delegation check asks on the Internet.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::daemon::{Daemon, program, start_on_free_ports};

pub struct Knot {
    pub addr: SocketAddr,
    config: PathBuf,
    zones: Vec<String>,
    _daemon: Daemon,
}

/// A zone file for `origin` with its SOA, NS and the NS host's address, plus `records`
/// (RFC 1035 master-file lines, relative to the origin).
pub fn zone_text(origin: &str, records: &[String]) -> String {
    let mut text = format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ SOA ns.{origin}. hostmaster.{origin}. 1 60 60 600 60\n@ NS ns.{origin}.\nns A 127.0.0.1\n"
    );
    for record in records {
        text.push_str(record);
        text.push('\n');
    }
    text
}

impl Knot {
    /// Serves each zone file, whose origin is its file name without `.zone`, from `dir`
    /// (config, database, control socket, log). Returns once every zone answers SOA
    /// authoritatively.
    pub fn start(dir: &Path, zone_files: &[PathBuf]) -> Knot {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let zones: Vec<String> = zone_files
            .iter()
            .map(|f| {
                let stem = f.file_name().unwrap().to_str().unwrap();
                let origin = stem
                    .strip_suffix(".zone")
                    .expect("zone file named <origin>.zone");
                format!("{origin}.")
            })
            .collect();
        let zone_config: String = zones
            .iter()
            .zip(zone_files)
            .map(|(zone, file)| {
                format!("  - domain: \"{zone}\"\n    file: \"{}\"\n", file.display())
            })
            .collect();
        let config = dir.join("knot.conf");
        start_on_free_ports(1, |ports| {
            let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
            // Block-style YAML only: knotd rejects flow maps.
            std::fs::write(
                &config,
                format!(
                    r#"server:
    rundir: "{dir}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "{dir}/db"

control:
    listen: "{dir}/knot.sock"

template:
  - id: default
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none

zone:
{zone_config}"#,
                    dir = dir.display(),
                    port = addr.port(),
                ),
            )
            .unwrap();
            let mut command = Command::new(program("knotd"));
            command.arg("-c").arg(&config);
            let mut daemon = Daemon::spawn("knotd", command, dir)
                .fatal_log_lines(&["failed to load zone", "failed to parse zone"]);
            daemon.wait_ready(Duration::from_secs(20), || {
                match zones
                    .iter()
                    .find(|z| !super::dns::answers_soa(addr, z, false))
                {
                    Some(zone) => Err(format!("no authoritative SOA for {zone}")),
                    None => Ok(()),
                }
            })?;
            Ok(Knot {
                addr,
                config: config.clone(),
                zones: zones.clone(),
                _daemon: daemon,
            })
        })
    }

    /// Re-reads every zone file, as an operator does after editing one; returns once the
    /// reload is done and every zone answers again.
    pub fn reload(&self) {
        // -b: wait until every zone's reload has finished.
        super::run(
            program("knotc").to_str().unwrap(),
            &[
                "-c",
                self.config.to_str().unwrap(),
                "-b",
                "-t",
                "60",
                "zone-reload",
            ],
            None,
        );
        for zone in &self.zones {
            assert!(
                super::dns::answers_soa(self.addr, zone, false),
                "{zone} does not answer SOA after the reload"
            );
        }
    }
}
