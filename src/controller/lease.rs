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
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease's resourceVersion when we last saw it change, and when that was.
    observed: Option<(String, Instant)>,
    /// Whether the lease's deletion has been logged.
    deletion_reported: bool,
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
            deletion_reported: false,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs `work` whenever this process holds the lease, and stops it as soon as the
    /// lease cannot be renewed. Returns only when `shutdown` is cancelled, after handing
    /// the lease back if it held it.
    pub async fn run<F, Fut>(
        mut self,
        mut work: F,
        on_change: impl Fn(bool),
        shutdown: CancellationToken,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let retry = self.duration / 3;
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return,
                attempt = self.try_acquire_or_renew() => attempt,
            };
            match attempt {
                Ok(true) => {}
                Ok(false) => {
                    if sleep_or_shutdown(retry, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "cannot read or write the leader election lease; retrying");
                    if sleep_or_shutdown(retry, &shutdown).await {
                        return;
                    }
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
                () = shutdown.cancelled() => {}
            }
            on_change(false);
            if shutdown.is_cancelled() {
                self.release().await;
                return;
            }
            if sleep_or_shutdown(retry, &shutdown).await {
                return;
            }
        }
    }

    /// Hands the lease back at shutdown, so another replica takes over at its next try
    /// rather than after the lease's whole duration. Best effort: if this fails, the
    /// lease expires as it would after a crash.
    async fn release(&mut self) {
        let lease = match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                warn!(lease = %self.name, error = %e, "cannot release the leader election lease; it expires instead");
                return;
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let mut released = lease;
        released.spec = Some(LeaseSpec {
            holder_identity: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &released)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader election lease"),
            Err(e) => {
                warn!(lease = %self.name, error = %e, "cannot release the leader election lease; it expires instead")
            }
        }
    }

    /// Takes the lease if it is free or expired, renews it if ours. `Ok(false)` when
    /// another holder has it (or won a race for it).
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let duration_secs = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            if self.observed.is_some() {
                // Deleted after we saw it, so by whoever owns it (`helm uninstall`
                // deletes the chart's Lease while the pods are still stopping): made
                // again now, it would outlive the uninstall.
                if !self.deletion_reported {
                    self.deletion_reported = true;
                    warn!(lease = %self.name, "the leader election lease was deleted; not recreating it, so no replica runs the controller until one restarts (`helm upgrade` recreates the chart's lease)");
                }
                return Ok(false);
            }
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

/// Sleeps for `period`; true when `shutdown` was cancelled first.
async fn sleep_or_shutdown(period: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(period) => false,
    }
}

/// The election against an in-memory Lease API (GET, POST, PUT with resourceVersion
/// checks, as the API server does them), so takeover and races are tested in
/// milliseconds without a cluster.
#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use http::{Method, Request, Response, StatusCode};
    use serde_json::{Value, json};

    use super::*;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    /// The stored Lease and the next resourceVersion to hand out.
    #[derive(Default)]
    struct LeaseApi {
        lease: Option<Value>,
        version: u64,
        /// Every request fails with 503, as when the API server is unreachable.
        unavailable: bool,
    }

    fn client(api: Arc<Mutex<LeaseApi>>) -> Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(Body::new(body), usize::MAX)
                    .await
                    .unwrap();
                let mut api = api.lock().unwrap();
                let (code, reply) = if api.unavailable {
                    status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
                } else {
                    respond(&mut api, &parts.method, parts.uri.path(), &body)
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(reply.to_string()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "ops")
    }

    fn status(code: StatusCode, reason: &str) -> (StatusCode, Value) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": reason, "code": code.as_u16()});
        (code, body)
    }

    fn respond(
        api: &mut LeaseApi,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let named = path.strip_prefix(PATH).and_then(|p| p.strip_prefix('/'));
        match (method, named) {
            (&Method::GET, Some(_)) => match &api.lease {
                Some(lease) => (StatusCode::OK, lease.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (&Method::POST, None) if api.lease.is_some() => {
                status(StatusCode::CONFLICT, "AlreadyExists")
            }
            (&Method::POST, None) | (&Method::PUT, Some(_)) => {
                let mut lease: Value = serde_json::from_slice(body).unwrap();
                if method == Method::PUT {
                    let current = api
                        .lease
                        .as_ref()
                        .map(|l| l["metadata"]["resourceVersion"].clone());
                    if current != Some(lease["metadata"]["resourceVersion"].clone()) {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                }
                api.version += 1;
                lease["metadata"]["resourceVersion"] = json!(api.version.to_string());
                lease["metadata"]["namespace"] = json!("ops");
                api.lease = Some(lease.clone());
                (StatusCode::OK, lease)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }

    fn election(api: &Arc<Mutex<LeaseApi>>, identity: &str, duration: Duration) -> LeaderElection {
        LeaderElection::new(client(api.clone()), "ops", "lead", identity, duration)
    }

    fn holder(api: &Arc<Mutex<LeaseApi>>) -> (String, i64) {
        let api = api.lock().unwrap();
        let spec = &api.lease.as_ref().unwrap()["spec"];
        (
            spec["holderIdentity"].as_str().unwrap().to_string(),
            spec["leaseTransitions"].as_i64().unwrap(),
        )
    }

    #[tokio::test]
    async fn the_first_replica_creates_the_lease_and_the_second_waits() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let mut a = election(&api, "a", Duration::from_secs(15));
        let mut b = election(&api, "b", Duration::from_secs(15));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api), ("a".into(), 0));
    }

    #[tokio::test]
    async fn a_lease_left_unrenewed_for_its_duration_is_taken_over() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let duration = Duration::from_millis(300);
        let mut a = election(&api, "a", duration);
        let mut b = election(&api, "b", duration);
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!b.try_acquire_or_renew().await.unwrap(), "not expired yet");
        // `a` stops renewing. The lease duration in the object is whole seconds (1 s).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api), ("b".into(), 1));
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "the old holder sees the new one and does not take it back"
        );
    }

    #[tokio::test]
    async fn a_holder_whose_clock_is_far_behind_keeps_the_lease_while_it_renews() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let mut b = election(&api, "b", Duration::from_secs(1));
        // The holder writes renewTime from a clock a day behind, but keeps renewing.
        for _ in 0..4 {
            {
                let mut api = api.lock().unwrap();
                api.version += 1;
                let version = api.version.to_string();
                api.lease = Some(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "lead", "namespace": "ops", "resourceVersion": version},
                    "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 1,
                             "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0},
                }));
            }
            assert!(!b.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert_eq!(holder(&api).0, "skewed");
    }

    #[tokio::test]
    async fn a_lease_renewed_from_a_clock_far_ahead_still_expires_when_renewals_stop() {
        let api = Arc::new(Mutex::new(LeaseApi {
            version: 7,
            ..Default::default()
        }));
        api.lock().unwrap().lease = Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "lead", "namespace": "ops", "resourceVersion": "7"},
            "spec": {"holderIdentity": "ahead", "leaseDurationSeconds": 1,
                     "renewTime": "2099-01-01T00:00:00.000000Z", "leaseTransitions": 3},
        }));
        let mut b = election(&api, "b", Duration::from_secs(1));
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api), ("b".into(), 4));
    }

    #[tokio::test]
    async fn two_replicas_racing_for_an_expired_lease_get_one_winner() {
        let api = Arc::new(Mutex::new(LeaseApi {
            version: 1,
            ..Default::default()
        }));
        let mut b = election(&api, "b", Duration::from_secs(1));
        let mut c = election(&api, "c", Duration::from_secs(1));
        api.lock().unwrap().lease = Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "lead", "namespace": "ops", "resourceVersion": "1"},
            "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 1, "leaseTransitions": 0},
        }));
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(!c.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (won_b, won_c) = tokio::join!(b.try_acquire_or_renew(), c.try_acquire_or_renew());
        let winners = [won_b.unwrap(), won_c.unwrap()];
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_before_others_could_take_over() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let a = election(&api, "a", Duration::from_millis(3000));
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<Instant>();
        let leading = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let run = {
            let leading = leading.clone();
            let api = api.clone();
            async move {
                let stopped_tx = Mutex::new(Some(stopped_tx));
                a.run(
                    || {
                        // Lose the API server as soon as we lead.
                        api.lock().unwrap().unavailable = true;
                        std::future::pending::<()>()
                    },
                    move |now_leading| {
                        leading.lock().unwrap().push(now_leading);
                        if !now_leading && let Some(tx) = stopped_tx.lock().unwrap().take() {
                            let _ = tx.send(Instant::now());
                        }
                    },
                    CancellationToken::new(),
                )
                .await
            }
        };
        let stopped = tokio::select! {
            () = run => unreachable!("the election returns only at shutdown"),
            stopped = stopped_rx => stopped.unwrap(),
        };
        assert_eq!(*leading.lock().unwrap(), [true, false]);
        // Renewals fail; the leader stops within the lease duration (3 s), before
        // another replica may consider the lease expired.
        assert!(
            stopped - started < Duration::from_millis(3000),
            "{:?}",
            stopped - started
        );
    }

    #[tokio::test]
    async fn a_leader_shutting_down_hands_the_lease_over_at_once() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        // A long lease: without the release, `b` would wait a minute.
        let a = election(&api, "a", Duration::from_secs(60));
        let mut b = election(&api, "b", Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        let (led_tx, led_rx) = tokio::sync::oneshot::channel::<()>();
        let led_tx = Mutex::new(Some(led_tx));
        let run = tokio::spawn(a.run(
            std::future::pending::<()>,
            move |leading| {
                if leading && let Some(tx) = led_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            },
            shutdown.clone(),
        ));
        led_rx.await.unwrap();
        assert!(!b.try_acquire_or_renew().await.unwrap(), "`a` holds it");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the election returns at shutdown")
            .unwrap();
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "released: taken over without waiting for expiry"
        );
        assert_eq!(holder(&api), ("b".into(), 1));
    }

    #[tokio::test]
    async fn a_replica_not_leading_returns_at_shutdown_and_leaves_the_lease_alone() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let mut a = election(&api, "a", Duration::from_secs(60));
        assert!(a.try_acquire_or_renew().await.unwrap());
        let b = election(&api, "b", Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(b.run(std::future::pending::<()>, |_| {}, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the election returns at shutdown")
            .unwrap();
        assert_eq!(holder(&api), ("a".into(), 0));
    }

    #[tokio::test]
    async fn a_lease_deleted_after_it_was_seen_is_not_made_again() {
        let api = Arc::new(Mutex::new(LeaseApi::default()));
        let mut a = election(&api, "a", Duration::from_secs(15));
        assert!(a.try_acquire_or_renew().await.unwrap());
        api.lock().unwrap().lease = None;
        assert!(!a.try_acquire_or_renew().await.unwrap());
        assert!(api.lock().unwrap().lease.is_none(), "not recreated");
        // A replica starting afresh makes it.
        let mut b = election(&api, "b", Duration::from_secs(15));
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(holder(&api), ("b".into(), 0));
    }
}
