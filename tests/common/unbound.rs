//! An unbound recursive resolver on loopback that resolves as a resolver on the Internet
//! does (following a CNAME out of one zone into a delegated one), but every zone it can
//! reach is on this machine, so no query leaves 127.0.0.0/8.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::daemon::{Daemon, program, start_on_free_ports};

pub struct Unbound {
    pub addr: SocketAddr,
    _daemon: Daemon,
}

impl Unbound {
    /// Serves each zone file (origin = file name without `.zone`) as upstream data and
    /// sends queries for each stub name (and below) to its server. Every other name is
    /// NXDOMAIN from an empty local root zone: the root servers are never asked. Returns
    /// once every zone's SOA resolves through it.
    pub fn start(dir: &Path, zone_files: &[PathBuf], stubs: &[(&str, SocketAddr)]) -> Unbound {
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join("root.zone");
        std::fs::write(
            &root,
            ".  3600 IN SOA localhost. nobody.invalid. 1 3600 600 86400 1\n.  3600 IN NS localhost.\n",
        )
        .unwrap();
        let mut zones = Vec::new();
        // Upstream data (for-downstream: no): answers go through the iterator, which
        // follows a CNAME out of the zone as a resolver on the Internet does.
        let mut tail = auth_zone(".", &root);
        for file in zone_files {
            let stem = file.file_name().unwrap().to_str().unwrap();
            let origin = stem
                .strip_suffix(".zone")
                .expect("zone file named <origin>.zone");
            let zone = format!("{origin}.");
            tail.push_str(&auth_zone(&zone, file));
            zones.push(zone);
        }
        for (name, addr) in stubs {
            assert!(
                addr.ip().is_loopback(),
                "stub {name} must be on loopback: {addr}"
            );
            tail.push_str(&format!(
                "stub-zone:\n    name: \"{}.\"\n    stub-addr: {}@{}\n    stub-prime: no\n    stub-first: no\n",
                name.trim_end_matches('.'),
                addr.ip(),
                addr.port()
            ));
        }
        let config = dir.join("unbound.conf");
        start_on_free_ports(1, |ports| {
            let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
            std::fs::write(
                &config,
                format!(
                    r#"server:
    directory: "{dir}"
    chroot: ""
    username: ""
    use-syslog: no
    logfile: ""
    log-time-ascii: yes
    verbosity: 1
    log-servfail: yes
    num-threads: 1
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    # Upstream queries leave from 127.0.0.1, which reaches only loopback.
    outgoing-interface: 127.0.0.1
    do-not-query-localhost: no
    module-config: "iterator"
    # RFC 6761 makes test. a static local zone by default (NXDOMAIN for every name).
    local-zone: "test." nodefault
    # Tests change TXT values every few seconds: keep nothing longer than 1 s.
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    serve-expired: no
    prefetch: no
    # A responder that restarts is asked again within seconds, not after 15 minutes.
    infra-host-ttl: 5
    infra-keep-probing: yes

{tail}"#,
                    dir = dir.display(),
                    port = addr.port(),
                ),
            )
            .unwrap();
            super::run(
                program("unbound-checkconf").to_str().unwrap(),
                &[config.to_str().unwrap()],
                None,
            );
            let mut command = Command::new(program("unbound"));
            // -d: stay in the foreground, so the process is ours to stop; -p: no pidfile.
            command.arg("-d").arg("-p").arg("-c").arg(&config);
            let mut daemon = Daemon::spawn("unbound", command, dir);
            daemon.wait_ready(Duration::from_secs(20), || {
                match zones
                    .iter()
                    .find(|z| !super::dns::answers_soa(addr, z, true))
                {
                    Some(zone) => Err(format!("{zone} SOA does not resolve")),
                    None => Ok(()),
                }
            })?;
            Ok(Unbound {
                addr,
                _daemon: daemon,
            })
        })
    }
}

fn auth_zone(name: &str, file: &Path) -> String {
    format!(
        "auth-zone:\n    name: \"{name}\"\n    zonefile: \"{}\"\n    for-downstream: no\n    for-upstream: yes\n    fallback-enabled: no\n\n",
        file.display()
    )
}
