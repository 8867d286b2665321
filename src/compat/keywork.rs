//! bcrypt on threads of its own, at a lower CPU priority than the rest of the process.
//!
//! Every `/update` costs one bcrypt check (about 50 ms of CPU at acme-dns's cost 10), and
//! so does every request with a wrong key: that is the point of bcrypt, and it makes a
//! storm of bad credentials the cheapest way to keep this process's cores busy. The DNS
//! threads must not feel it. On Linux a thread's nice value is its own, so these threads
//! run at nice [`NICE`]: when they and the DNS threads want the same core, the scheduler
//! gives the DNS threads about ten times the share; when the DNS threads are idle, the
//! checks still get every core they are allowed.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex, mpsc},
    thread,
};

use tokio::sync::oneshot;
use tracing::warn;

/// The nice value of the bcrypt threads. At 10 a thread weighs 110 against the default
/// 1024 in the kernel's fair scheduler.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads taking jobs in order.
#[derive(Debug)]
pub struct KeyWork {
    jobs: mpsc::Sender<Job>,
}

impl KeyWork {
    /// Starts `threads` threads (at least one), named `api-bcrypt-<n>`.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("api-bcrypt-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job; the
                        // sender going away (the API stopped) ends the thread.
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on one of the threads; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic stays in its job, and the thread goes on to the next. The caller
            // may have gone (its request was cancelled); nothing to tell then.
            let _ = done.send(panic::catch_unwind(AssertUnwindSafe(work)));
        });
        self.jobs.send(job).ok()?;
        result.await.ok()?.ok()
    }
}

/// Sets the calling thread's nice value to [`NICE`]. Failing (a sandbox that forbids
/// it) costs only the priority, so it is logged and the thread works on.
fn lower_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority only reads its integer arguments; PRIO_PROCESS with a thread
    // ID changes that one thread on Linux.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) };
    if result != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not lower the priority of a bcrypt thread; API key checks compete with DNS answers"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(tid: libc::pid_t) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Field 19 (nice), counted after the command name's closing parenthesis.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn jobs_run_on_threads_at_the_lower_priority_and_results_come_back() {
        let work = KeyWork::new(2).unwrap();
        // SAFETY: gettid has no preconditions.
        let caller = unsafe { libc::gettid() };
        let tid = work.run(|| unsafe { libc::gettid() }).await.unwrap();
        assert_ne!(tid, caller, "the job ran on the caller's thread");
        assert_eq!(nice_of(tid), NICE);
        assert_eq!(nice_of(caller), 0, "the caller's priority changed");
        let sum = work.run(|| (1..=10).sum::<u32>()).await;
        assert_eq!(sum, Some(55));
        assert_eq!(work.run(|| panic!("a failing job")).await, None::<()>);
        // Both threads are still there after a panic.
        let a = work.run(|| unsafe { libc::gettid() }).await;
        let b = work.run(|| unsafe { libc::gettid() }).await;
        assert!(a.is_some() && b.is_some());
        for _ in 0..4 {
            assert_eq!(work.run(|| panic!("a failing job")).await, None::<()>);
        }
        assert_eq!(work.run(|| 7).await, Some(7));
    }
}
