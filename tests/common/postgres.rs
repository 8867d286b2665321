//! A PostgreSQL server of the test's own (Debian's `postgresql` package, `make deps`):
//! a fresh cluster in a temporary directory, listening on 127.0.0.1 and a socket in that
//! directory only, trusting local connections. PostgreSQL refuses to run as root, so
//! when the tests do, it runs as `nobody`.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::daemon::{Daemon, start_on_free_ports};

/// The superuser of the test cluster.
pub const USER: &str = "postgres";

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    daemon: Option<Daemon>,
}

/// Debian installs the server programs under /usr/lib/postgresql/<major>/bin, outside
/// PATH; the newest installed major wins.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/<version>/bin: \
             `make deps` installs Debian's postgresql package"
        )
    })
}

/// (uid, gid) of `nobody` when running as root, so the server can start.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    (unsafe { libc::getuid() } == 0).then_some((65534, 65534))
}

impl Postgres {
    /// Creates a cluster in `dir` and starts it; returns once it accepts connections.
    pub fn start(dir: &Path) -> Postgres {
        let bin = bin_dir();
        let user = unprivileged();
        std::fs::create_dir_all(dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.join("data");
        let as_user = |program: &str| {
            let mut command = Command::new(bin.join(program));
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
            // Nothing from the environment picks another cluster or user.
            command
                .env_remove("PGDATA")
                .env_remove("PGHOST")
                .env_remove("PGPORT");
            command.env("LC_ALL", "C");
            command
        };
        let init = as_user("initdb")
            .args([
                "--auth=trust",
                "--username",
                USER,
                "--no-sync",
                "--encoding=UTF8",
            ])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let (port, daemon) = start_on_free_ports(1, |ports| {
            let port = ports[0];
            let mut command = as_user("postgres");
            command
                .arg("-D")
                .arg(&data)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-p", &port.to_string()])
                .arg("-k")
                .arg(dir)
                // A throwaway cluster: no durability needed.
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
            let mut daemon = Daemon::spawn("postgres", command, dir);
            let ready = bin.join("pg_isready");
            daemon.wait_ready(Duration::from_secs(30), || {
                let status = Command::new(&ready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
                    .status()
                    .map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("pg_isready: {status}"))
                }
            })?;
            Ok((port, daemon))
        });
        Postgres {
            port,
            dir: dir.to_path_buf(),
            bin,
            user,
            daemon: Some(daemon),
        }
    }

    /// A connection string for `database` as the superuser, over TCP on loopback.
    pub fn connection(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname={database}",
            self.port
        )
    }

    /// A client of `database`, its connection driven in the background.
    pub async fn client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.connection(database), tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (the daemon's TERM would wait for every client to leave).
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        if let Some((uid, gid)) = self.user {
            stop.uid(uid).gid(gid);
        }
        let _ = stop
            .args(["stop", "-m", "fast", "-w", "-t", "10", "-D"])
            .arg(self.dir.join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
