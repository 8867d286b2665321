//! Response rate limiting (RRL) for DNS over UDP.
//!
//! The responder answers anyone on port 53, and the source address of a UDP query can
//! be forged: unlimited, it would send answers to whoever an attacker names (a
//! reflection attack), each larger than the query that asked for it. RRL bounds the
//! answers sent to one source prefix (an IPv4 /24 or an IPv6 /56 by default: one
//! network, not one host, since forged sources vary the host part) to a rate with a
//! burst, a token bucket per prefix. Beyond it, every `slip`th answer is sent as a
//! truncated reply (TC set, header and question only), which is no larger than the
//! query; a real resolver takes it as the signal to ask again over TCP (RFC 7766 §5),
//! where the source address cannot be forged and nothing is limited. The others are
//! dropped, and a real resolver retries them after its timeout.
//!
//! Every answer counts, whatever its RCODE: a reflection attack does not care whether
//! it reflects REFUSED or a TXT record.
//!
//! State lives in one fixed table shared by the UDP threads, allocated once: a keyed
//! hash of the prefix picks a shard and a set of a few slots in it. The threads share
//! one table rather than owning one each because SO_REUSEPORT spreads datagrams over
//! the sockets by the whole address and port 4-tuple, not by source address: a
//! resolver randomises its source port for every query (RFC 5452 §9.2), so its queries
//! reach every thread, and per-thread tables would let it through at the rate times the
//! number of threads. Each shard has its own plain mutex, held for a few compares, so
//! threads contend only when they touch the same shard at the same instant.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use crate::wire;

/// How response rate limiting is configured; see [`RrlConfig::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second to one source prefix; 0 turns RRL off.
    pub rate: u32,
    /// Responses a prefix that has been quiet may get at once, before the rate applies
    /// (the size of its token bucket).
    pub burst: u32,
    /// Of the responses over the limit, every `slip`th is sent truncated and the others
    /// dropped: 0 drops them all, 1 truncates them all.
    pub slip: u32,
    /// Leading bits of an IPv4 source that make its prefix.
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 source that make its prefix.
    pub ipv6_prefix: u8,
}

impl RrlConfig {
    /// The defaults, and why:
    ///
    /// - rate 20/s: a validating CA asks a handful of questions per challenge (the TXT,
    ///   perhaps the zone's NS and the name server's address on a cold cache) from each
    ///   of several vantage points, each behind its own resolver in its own network, and
    ///   the resolvers behind any one /24 are few; 20 answers a second leaves room for
    ///   many challenges at once from one of them while bounding what a forged flood
    ///   reflects at one network to 20 small answers a second per replica.
    /// - burst 20: one second's worth, so a resolver that has been quiet gets a burst of
    ///   questions (several challenges validated at once) answered without delay. BIND
    ///   averages over a 15 s window, which allows more; this is the stricter choice.
    /// - slip 2: half of the answers over the limit still reach a real resolver as TC
    ///   and are asked again over TCP at once, while a forged flood reflects at most
    ///   half as many packets, each no larger than the query.
    /// - /24 and /56: the smallest networks commonly given to one site, so a flood that
    ///   varies the host part of a forged source still lands in one bucket.
    pub const DEFAULT: Self = Self {
        rate: 20,
        burst: 20,
        slip: 2,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
    };

    /// No limit at all.
    pub const OFF: Self = Self {
        rate: 0,
        ..Self::DEFAULT
    };
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What to do with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: send it as it is.
    Send,
    /// Over the limit, and its turn to slip: send it truncated.
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

/// Shards of the table, each behind its own mutex.
const SHARDS: usize = 64;
/// Slots in a set, any of which a prefix hashed to it may take: a new prefix replaces the
/// fullest bucket of its set, so a prefix being limited is not pushed out by a few
/// newcomers that hash alike.
const WAYS: usize = 4;
/// Slots per shard. With 64 shards, 65 536 slots of 32 bytes: 2 MiB for the process,
/// whatever the number of sources. A slot whose bucket is full again carries no state
/// worth keeping, so the table needs room only for the prefixes limited, or close to it,
/// within the last `burst / rate` seconds.
const SLOTS_PER_SHARD: usize = 1024;
const SETS_PER_SHARD: usize = SLOTS_PER_SHARD / WAYS;

/// The limiter, shared by the UDP threads.
pub struct RateLimiter {
    /// None when RRL is off.
    table: Option<Table>,
}

impl RateLimiter {
    /// A limiter with its whole table allocated. Values out of range (which `serve`
    /// refuses with a message) are clamped: burst at least 1, prefixes within the
    /// address length.
    pub fn new(config: RrlConfig) -> Self {
        if config.rate == 0 {
            return Self { table: None };
        }
        let interval = (1_000_000_000 / u64::from(config.rate)).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Shard(Mutex::new(
                    vec![Slot::EMPTY; SLOTS_PER_SHARD].into_boxed_slice(),
                ))
            })
            .collect();
        Self {
            table: Some(Table {
                shards,
                hasher: RandomState::new(),
                epoch: Instant::now(),
                interval,
                capacity: interval * u64::from(config.burst.max(1)),
                slip: config.slip,
                ipv4_mask: u32::MAX << (32 - config.ipv4_prefix.clamp(1, 32)),
                ipv6_mask: u128::MAX << (128 - config.ipv6_prefix.clamp(1, 128)),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.table.is_some()
    }

    /// Counts one answer to `source` at `now` and says what to do with it.
    #[inline]
    pub fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        match &self.table {
            Some(table) => table.check(source, now),
            None => Verdict::Send,
        }
    }

    /// Like [`check`](Self::check), for the UDP answer in `out`: when it is to slip,
    /// `out` is cut down to the truncated reply in place.
    #[inline]
    pub fn apply(&self, source: IpAddr, now: Instant, out: &mut Vec<u8>) -> Verdict {
        let verdict = self.check(source, now);
        if verdict == Verdict::Slip {
            wire::truncate_response(out);
        }
        verdict
    }
}

struct Table {
    shards: Box<[Shard]>,
    /// Keyed with random keys, so no one can pick sources that land in one set and
    /// push a prefix being limited out of the table.
    hasher: RandomState,
    /// Times are kept as nanoseconds since this instant.
    epoch: Instant,
    /// Nanoseconds one response costs: 1 s / rate.
    interval: u64,
    /// Nanoseconds a full bucket holds: burst × interval.
    capacity: u64,
    slip: u32,
    ipv4_mask: u32,
    ipv6_mask: u128,
}

/// Aligned to its own cache lines, so threads locking neighbouring shards do not slow
/// each other down.
#[repr(align(128))]
struct Shard(Mutex<Box<[Slot]>>);

#[derive(Clone, Copy)]
struct Slot {
    prefix: u128,
    /// 4 or 6; 0 for a slot never used.
    family: u8,
    /// Responses over the limit so far, to pick every `slip`th.
    limited: u32,
    /// When the bucket is full again, in nanoseconds since the epoch; at or before now
    /// it is full. The bucket holds `(capacity - (full_at - now)) / interval` tokens,
    /// and each response sent moves this on by one interval (the "theoretical arrival
    /// time" form of a token bucket: one number per slot, updated with integer math).
    full_at: u64,
}

impl Slot {
    const EMPTY: Self = Self {
        prefix: 0,
        family: 0,
        limited: 0,
        full_at: 0,
    };
}

impl Table {
    fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d; it is the same
        // IPv4 source.
        let (family, prefix) = match source.to_canonical() {
            IpAddr::V4(a) => (4u8, u128::from(u32::from(a) & self.ipv4_mask)),
            IpAddr::V6(a) => (6u8, u128::from(a) & self.ipv6_mask),
        };
        let hash = self.hasher.hash_one((family, prefix));
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;

        let shard = &self.shards[hash as usize % SHARDS];
        let mut slots = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        let set_start = ((hash >> 32) as usize % SETS_PER_SHARD) * WAYS;
        let set = &mut slots[set_start..set_start + WAYS];
        let at = match set
            .iter()
            .position(|s| s.family == family && s.prefix == prefix)
        {
            Some(at) => at,
            None => {
                // Replace the slot whose bucket is fullest (an unused one is full): it
                // says the least, and one full already is no different from a new one.
                let (at, _) = set
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.full_at)
                    .expect("a set has slots");
                set[at] = Slot {
                    prefix,
                    family,
                    ..Slot::EMPTY
                };
                at
            }
        };
        let slot = &mut set[at];

        let from = slot.full_at.max(now);
        if from + self.interval <= now + self.capacity {
            slot.full_at = from + self.interval;
            return Verdict::Send;
        }
        let limited = slot.limited;
        slot.limited = limited.wrapping_add(1);
        // The first answer over the limit slips, so a resolver that has just crossed it
        // hears at once that it should use TCP.
        if self.slip != 0 && limited % self.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Slots in use, for tests.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap().iter().filter(|s| s.family != 0).count())
            .sum()
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use super::*;

    fn limiter(rate: u32, burst: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RrlConfig {
            rate,
            burst,
            slip,
            ..RrlConfig::DEFAULT
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The verdicts for `n` answers to `source`, all at `now`.
    fn verdicts(rrl: &RateLimiter, source: &str, now: Instant, n: usize) -> Vec<Verdict> {
        (0..n).map(|_| rrl.check(ip(source), now)).collect()
    }

    fn count(verdicts: &[Verdict], which: Verdict) -> usize {
        verdicts.iter().filter(|v| **v == which).count()
    }

    #[test]
    fn defaults_are_on() {
        assert_eq!(RrlConfig::default().rate, 20);
        assert!(RateLimiter::new(RrlConfig::default()).enabled());
        assert!(!RateLimiter::new(RrlConfig::OFF).enabled());
    }

    #[test]
    fn a_source_over_the_rate_is_slipped_and_dropped_in_the_configured_ratio() {
        let now = Instant::now();
        let rrl = limiter(10, 5, 2);
        let all = verdicts(&rrl, "192.0.2.1", now, 105);
        assert!(all[..5].iter().all(|v| *v == Verdict::Send), "{all:?}");
        // Over the limit: slip, drop, slip, drop, …, the first one slipping.
        for (i, v) in all[5..].iter().enumerate() {
            let expected = if i % 2 == 0 {
                Verdict::Slip
            } else {
                Verdict::Drop
            };
            assert_eq!(*v, expected, "answer {} over the limit", i + 1);
        }

        let rrl = limiter(10, 5, 3);
        let over = &verdicts(&rrl, "192.0.2.1", now, 95)[5..];
        assert_eq!(count(over, Verdict::Slip), 30);
        assert_eq!(count(over, Verdict::Drop), 60);

        // 1: every answer over the limit is truncated; 0: every one dropped.
        let rrl = limiter(10, 5, 1);
        let over = &verdicts(&rrl, "192.0.2.1", now, 55)[5..];
        assert_eq!(count(over, Verdict::Slip), 50);
        let rrl = limiter(10, 5, 0);
        let over = &verdicts(&rrl, "192.0.2.1", now, 55)[5..];
        assert_eq!(count(over, Verdict::Drop), 50);
    }

    #[test]
    fn another_prefix_is_unaffected() {
        let rrl = limiter(10, 5, 2);
        let now = Instant::now();
        verdicts(&rrl, "192.0.2.1", now, 50);
        assert_ne!(rrl.check(ip("192.0.2.1"), now), Verdict::Send);
        let other = verdicts(&rrl, "198.51.100.1", now, 5);
        assert!(other.iter().all(|v| *v == Verdict::Send), "{other:?}");
        let v6 = verdicts(&rrl, "2001:db8::1", now, 5);
        assert!(v6.iter().all(|v| *v == Verdict::Send), "{v6:?}");
    }

    #[test]
    fn sources_in_one_ipv4_slash_24_share_a_bucket() {
        let now = Instant::now();
        let rrl = limiter(10, 5, 0);
        verdicts(&rrl, "192.0.2.1", now, 5);
        // Same /24, another host: the bucket is already empty.
        assert_eq!(rrl.check(ip("192.0.2.200"), now), Verdict::Drop);
        // The same source as seen on a dual-stack socket.
        assert_eq!(rrl.check(ip("::ffff:192.0.2.7"), now), Verdict::Drop);
        // The /24 next door has its own.
        let next = verdicts(&rrl, "192.0.3.1", now, 5);
        assert!(next.iter().all(|v| *v == Verdict::Send), "{next:?}");

        // The prefix length is configurable: /32 gives each host its own bucket.
        let rrl = RateLimiter::new(RrlConfig {
            rate: 10,
            burst: 5,
            slip: 0,
            ipv4_prefix: 32,
            ..RrlConfig::DEFAULT
        });
        verdicts(&rrl, "192.0.2.1", now, 5);
        assert_eq!(rrl.check(ip("192.0.2.1"), now), Verdict::Drop);
        assert_eq!(rrl.check(ip("192.0.2.2"), now), Verdict::Send);
    }

    #[test]
    fn sources_in_one_ipv6_slash_56_share_a_bucket() {
        let now = Instant::now();
        let rrl = limiter(10, 5, 0);
        verdicts(&rrl, "2001:db8:0:1::1", now, 5);
        // 2001:db8:0:00xx::/56 is one prefix.
        assert_eq!(rrl.check(ip("2001:db8:0:ff::2"), now), Verdict::Drop);
        // 2001:db8:0:01xx:: is the next /56.
        let next = verdicts(&rrl, "2001:db8:0:100::1", now, 5);
        assert!(next.iter().all(|v| *v == Verdict::Send), "{next:?}");

        let rrl = RateLimiter::new(RrlConfig {
            rate: 10,
            burst: 5,
            slip: 0,
            ipv6_prefix: 64,
            ..RrlConfig::DEFAULT
        });
        verdicts(&rrl, "2001:db8:0:1::1", now, 5);
        assert_eq!(rrl.check(ip("2001:db8:0:1::2"), now), Verdict::Drop);
        assert_eq!(rrl.check(ip("2001:db8:0:2::1"), now), Verdict::Send);
    }

    #[test]
    fn the_bucket_refills_with_time_up_to_the_burst() {
        let rrl = limiter(10, 5, 0);
        // After the limiter's epoch, as every time the server passes.
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(
            count(&verdicts(&rrl, "192.0.2.1", at(0), 10), Verdict::Send),
            5
        );
        // 10/s: one answer back every 100 ms.
        assert_eq!(rrl.check(ip("192.0.2.1"), at(50)), Verdict::Drop);
        assert_eq!(rrl.check(ip("192.0.2.1"), at(100)), Verdict::Send);
        assert_eq!(rrl.check(ip("192.0.2.1"), at(100)), Verdict::Drop);
        assert_eq!(
            count(&verdicts(&rrl, "192.0.2.1", at(400), 10), Verdict::Send),
            3
        );
        // A long quiet spell gives back the burst, no more.
        assert_eq!(
            count(&verdicts(&rrl, "192.0.2.1", at(60_000), 10), Verdict::Send),
            5
        );
        // A steady 10/s is never limited.
        let steady: Vec<Verdict> = (1..=100)
            .map(|i| rrl.check(ip("192.0.2.1"), at(70_000 + i * 100)))
            .collect();
        assert!(steady.iter().all(|v| *v == Verdict::Send), "{steady:?}");
    }

    #[test]
    fn rate_zero_turns_rrl_off() {
        let now = Instant::now();
        let rrl = limiter(0, 5, 2);
        assert!(!rrl.enabled());
        let all = verdicts(&rrl, "192.0.2.1", now, 10_000);
        assert!(all.iter().all(|v| *v == Verdict::Send));
        let mut out = vec![0u8; 40];
        assert_eq!(rrl.apply(ip("192.0.2.1"), now, &mut out), Verdict::Send);
        assert_eq!(out.len(), 40, "the answer is left alone");
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_a_limited_source_among_100_000_others() {
        let now = Instant::now();
        let rrl = limiter(10, 5, 0);
        let table = rrl.table.as_ref().unwrap();
        let slots = table.slots();
        assert_eq!(slots, SHARDS * SLOTS_PER_SHARD);
        assert!(
            slots * std::mem::size_of::<Slot>() <= 2 << 20,
            "2 MiB at most"
        );
        verdicts(&rrl, "192.0.2.1", now, 5);
        for i in 0..100_000u32 {
            // A new /24 each time (IPv4) and a new /56 (IPv6), all at once.
            let v4 = Ipv4Addr::from(0x0A00_0000 + (i << 8));
            let v6 = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 72);
            assert_eq!(rrl.check(v4.into(), now), Verdict::Send);
            assert_eq!(rrl.check(v6.into(), now), Verdict::Send);
            if i % 100 == 0 {
                assert_eq!(
                    rrl.check(ip("192.0.2.1"), now),
                    Verdict::Drop,
                    "still limited after {i} other sources"
                );
            }
        }
        assert_eq!(table.slots(), slots, "never grows");
        assert!(table.used() <= slots);
        assert!(
            table.used() > slots / 2,
            "the table is used, not left empty"
        );
    }

    #[test]
    fn threads_share_one_bucket_per_prefix() {
        // SO_REUSEPORT sends one source's queries to every thread: together they get
        // the burst, not the burst each.
        let now = Instant::now();
        let rrl = limiter(1, 50, 0);
        let sent: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| count(&verdicts(&rrl, "192.0.2.1", now, 100), Verdict::Send)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(sent, 50);
    }
}
