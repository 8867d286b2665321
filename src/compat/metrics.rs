//! Metrics of the acme-dns API: requests by route and result, and how long they took.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_api_requests_total",
                "acme-dns API requests by route (/register, /update, /deregister, /health) \
                 and result (ok, forbidden, bad_request, rate_limited, too_large, \
                 method_not_allowed, error)",
            ),
            &["route", "result"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kube_acme_dns_api_request_seconds",
                "Time to answer an acme-dns API request, by route (bcrypt and, for /update, \
                 waiting until this replica answers the value, included)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }

    fn record(&self, route: &str, status: StatusCode, started: Instant) {
        self.requests
            .with_label_values(&[route, result(status)])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The result label of an answer.
fn result(status: StatusCode) -> &'static str {
    match status {
        s if s.is_success() => "ok",
        StatusCode::UNAUTHORIZED => "forbidden",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "error",
    }
}

/// Route layer: counts and times every request to a known route. It runs only for the
/// router's own routes, which have no parameters, so the path is the route; unknown
/// paths are not counted and scanners cannot grow the label set.
pub async fn observe(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let route = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record(&route, response.status(), started);
    response
}
