//! The per-source limit on `/register`: a token bucket per client network (an IPv4
//! address, an IPv6 /64, which is what one site is usually given), so one source cannot
//! fill the cluster with accounts while everyone else still registers.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How many registrations a source may make: `burst` at once, then one per `refill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub refill: Duration,
}

/// Sources tracked at most; beyond it, sources whose buckets are full again are forgotten
/// first, and if every tracked source is still limited, new sources are limited too
/// (memory stays bounded; registration waits rather than the process growing).
const MAX_SOURCES: usize = 65_536;

#[derive(Debug)]
pub struct RegisterLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RegisterLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one registration for `client`'s network at `now`; `Err` holds how long until
    /// the next one is allowed.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst);
        let per_second = 1.0 / self.limit.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = network(client);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| level(b, now, per_second, burst) < burst);
            if buckets.len() >= MAX_SOURCES {
                return Err(self.limit.refill);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = level(bucket, now, per_second, burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

fn level(bucket: &Bucket, now: Instant, per_second: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

/// The network one client is counted as: an IPv4 address, or an IPv6 /64.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_one_per_refill_and_others_are_not_affected() {
        let limiter = RegisterLimiter::new(RateLimit {
            burst: 3,
            refill: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(ip("192.0.2.1"), t0), Ok(()));
        }
        let wait = limiter.take(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(wait.as_secs(), 60);
        // Another source still registers.
        assert_eq!(limiter.take(ip("192.0.2.2"), t0), Ok(()));
        // Half a refill later the wait has halved; a full refill gives one more.
        let wait = limiter
            .take(ip("192.0.2.1"), t0 + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(wait.as_secs(), 30);
        assert_eq!(
            limiter.take(ip("192.0.2.1"), t0 + Duration::from_secs(60)),
            Ok(())
        );
        assert!(
            limiter
                .take(ip("192.0.2.1"), t0 + Duration::from_secs(61))
                .is_err()
        );
        // Idle sources fill up to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.take(ip("192.0.2.1"), later), Ok(()));
        }
        assert!(limiter.take(ip("192.0.2.1"), later).is_err());
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_its_ipv4_address() {
        let limiter = RegisterLimiter::new(RateLimit {
            burst: 1,
            refill: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        assert_eq!(limiter.take(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(limiter.take(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(limiter.take(ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(limiter.take(ip("198.51.100.4"), t0), Ok(()));
        assert!(limiter.take(ip("::ffff:198.51.100.4"), t0).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_refilled_sources_make_room() {
        let limiter = RegisterLimiter::new(RateLimit {
            burst: 1,
            refill: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for n in 0..MAX_SOURCES as u32 {
            assert_eq!(limiter.take(IpAddr::V4(n.into()), t0), Ok(()));
        }
        // Every tracked source is still limited: a new one waits too.
        assert!(limiter.take(ip("203.0.113.1"), t0).is_err());
        // Once they have refilled, they are forgotten and new sources register.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limiter.take(ip("203.0.113.1"), later), Ok(()));
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
