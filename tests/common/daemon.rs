//! A daemon a test starts (Knot, unbound, Pebble): output in one log file, readiness
//! checked by asking it, stopped when dropped (TERM, then KILL after a grace period).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a daemon gets to exit on TERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    fatal: &'static [&'static str],
}

/// Why a daemon did not become ready, with the end of its log.
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
    /// The log says a port was taken between picking it and binding it.
    pub port_taken: bool,
}

impl Daemon {
    /// Starts `command` with stdin closed and stdout and stderr in `dir/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {name} ({:?}): {e}; `make deps` installs it",
                    command.get_program()
                )
            });
        Daemon {
            name: name.to_string(),
            child,
            log,
            fatal: &[],
        }
    }

    /// Log lines that mean it will never become ready although it keeps running (knotd
    /// serves on when a zone fails to load): waiting stops at the first one.
    pub fn fatal_log_lines(mut self, fatal: &'static [&'static str]) -> Daemon {
        self.fatal = fatal;
        self
    }

    /// Polls `ready` until it returns Ok. Fails early when the daemon exits, and with
    /// the last reason it was not ready and the log tail either way.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<(), String>,
    ) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(self.failure(&format!("{} exited ({status})", self.name)));
            }
            let not_ready = match ready() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if !self.fatal.is_empty() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                if let Some(line) = log
                    .lines()
                    .find(|l| self.fatal.iter().any(|f| l.contains(f)))
                {
                    return Err(
                        self.failure(&format!("{} will not become ready: {line}", self.name))
                    );
                }
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "{} did not become ready within {timeout:?}: {not_ready}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn failure(&self, message: &str) -> StartFailure {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lower = log.to_lowercase();
        let port_taken = [
            "address already in use",
            "cannot bind",
            "could not open ports",
        ]
        .iter()
        .any(|m| lower.contains(m));
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        StartFailure {
            message: format!(
                "{message}\n--- last lines of {} ---\n{}",
                self.log.display(),
                tail.join("\n")
            ),
            port_taken,
        }
    }
}

/// Starts a daemon on newly picked free ports, again when a port was taken between
/// picking and binding (a race with every other process on the machine), and panics with
/// the log tail otherwise.
pub fn start_on_free_ports<T>(
    ports: usize,
    mut start: impl FnMut(&[u16]) -> Result<T, StartFailure>,
) -> T {
    let mut attempt = 1;
    loop {
        match start(&super::free_ports(ports)) {
            Ok(started) => return started,
            Err(e) if e.port_taken && attempt < 3 => attempt += 1,
            Err(e) => panic!("{}", e.message),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) with a pid we own (our unreaped child) has no memory effects.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop on TERM within {GRACE:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon's program: from PATH, else from /usr/sbin, where Debian installs knotd and
/// unbound (not in an unprivileged user's PATH).
pub fn program(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    in_path.unwrap_or_else(|| Path::new("/usr/sbin").join(name))
}
