//! Leader election through a coordination.k8s.io Lease, so that with two or more
//! replicas exactly one runs the controller while every replica answers DNS.
//!
//! Expiry is judged by this process's own monotonic clock — how long the lease has gone
//! unrenewed since we last saw it change — never by comparing the holder's timestamps
//! with ours, so clock skew between nodes cannot hand the lease to two holders (the
//! same approach as client-go's leaderelection).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease's resourceVersion when we last saw it change, and when that was.
    observed: Option<(String, Instant)>,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs `work` whenever this process holds the lease, and stops it as soon as the
    /// lease cannot be renewed. Never returns.
    pub async fn run<F, Fut>(mut self, mut work: F, on_change: impl Fn(bool))
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let retry = self.duration / 3;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::time::sleep(retry).await;
                    continue;
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "cannot read or write the leader election lease; retrying");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
            info!(lease = %self.name, identity = %self.identity, "became leader; running the controller");
            on_change(true);
            let renew = async {
                let mut last_renewed = Instant::now();
                loop {
                    tokio::time::sleep(retry).await;
                    match self.try_acquire_or_renew().await {
                        Ok(true) => last_renewed = Instant::now(),
                        Ok(false) => return "another replica holds the lease",
                        Err(e) => {
                            warn!(lease = %self.name, error = %e, "cannot renew the leader election lease");
                            // Step down before the lease could expire for the others.
                            if last_renewed.elapsed() + retry >= self.duration {
                                return "the lease could not be renewed in time";
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = work() => warn!("the controller stopped while leading"),
                reason = renew => warn!(lease = %self.name, reason, "lost leadership; stopping the controller"),
            }
            on_change(false);
            tokio::time::sleep(retry).await;
        }
    }

    /// Takes the lease if it is free or expired, renews it if ours. `Ok(false)` when
    /// another holder has it (or won a race for it).
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let duration_secs = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        self.observe(&lease);
        let holder_duration = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > holder_duration);
        if !ours && held && !expired {
            return Ok(false);
        }

        let mut updated = lease.clone();
        updated.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        // `replace` carries the resourceVersion we read: if someone else wrote in
        // between, the API server answers 409 and we lose this round.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        match &self.observed {
            Some((seen, _)) if *seen == version => {}
            _ => self.observed = Some((version, Instant::now())),
        }
    }
}
