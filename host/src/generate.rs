//! A realistic multi-sensor event stream with known ground truth, for the demo, tests and
//! benchmarks.
//!
//! Each generated network session is seen by several sensors, as in a real network:
//!
//! - the DNS resolver logs the lookup that started it (client → resolver:53, answer = server);
//! - the client's endpoint agent logs the process and user that opened the connection;
//! - an HTTP proxy (port 80) or a TLS inspector (port 443) logs the request, without transport;
//! - the firewall logs a flow record when the connection *ends*, stamped with its start or its
//!   end and carrying `event.duration`; some firewalls report the reply direction.
//!
//! Every sensor has its own clock skew (up to `max_skew_ms` either way) and delivery delay; a
//! share of proxy logs arrives minutes late. Events come out in arrival order. Each carries the
//! attribute `gen.session` naming the session it belongs to (the ground truth; rules ignore it).

use serde_json::json;
use storyline_sdk::format::format_rfc3339;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Number of sessions.
    pub sessions: usize,
    /// Event time of the first session, epoch ms.
    pub start_ms: i64,
    /// Mean time between session starts, ms.
    pub interval_ms: i64,
    /// Largest clock skew of a sensor, ms, either direction.
    pub max_skew_ms: i64,
    /// Share (0..=1) of HTTP/TLS logs that arrive 1 to 8 minutes late.
    pub late_share: f64,
    /// Share of flow records that report the reply direction (server → client).
    pub reversed_share: f64,
    /// Seed of the pseudo-random sequence: the same seed gives the same stream.
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            sessions: 1000,
            start_ms: 1_795_525_200_000, // 2026-11-24T13:00:00Z
            interval_ms: 50,
            max_skew_ms: 20_000,
            late_share: 0.05,
            reversed_share: 0.3,
            seed: 1,
        }
    }
}

/// One generated event: its JSONL line, its arrival time and its session.
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    /// When it reaches storyline (true time plus the sensor's delivery delay), epoch ms.
    pub arrival_ms: i64,
    /// Ground truth: the index of the session it belongs to.
    pub session: usize,
    /// The event id.
    pub id: String,
    /// The line in the public event format.
    pub line: String,
}

/// A small deterministic PRNG (SplitMix64): reproducible streams without a dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1).max(1) as u64) as i64
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

const SITES: &[(&str, &str)] = &[
    ("www.example.com", "93.184.216.34"),
    ("api.github.com", "140.82.112.6"),
    ("login.microsoftonline.com", "20.190.160.1"),
    ("updates.vendor.net", "198.51.100.20"),
    ("cdn.jsdelivr.net", "151.101.1.229"),
    ("intranet.corp.local", "10.20.0.15"),
    ("mail.google.com", "142.250.74.69"),
    ("telemetry.badcorp.ru", "203.0.113.66"),
];
const PROCESSES: &[&str] = &["chrome.exe", "curl", "outlook.exe", "python3", "svchost.exe"];
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "svc-backup"];

/// A sensor: name, clock skew, delivery delay.
struct Sensor {
    name: String,
    skew_ms: i64,
    delay_ms: (i64, i64),
}

fn kind_observer(kind: &str) -> &'static str {
    match kind {
        "flow" => "firewall",
        "dns" => "dns-resolver",
        "http" => "proxy",
        "tls" => "tls-inspector",
        _ => "endpoint-agent",
    }
}

/// Generates the stream described by `config`, in arrival order.
pub fn generate(config: &GenConfig) -> Vec<GenEvent> {
    let mut rng = Rng(config.seed);
    let mut sensor = |name: &str, delay: (i64, i64)| Sensor {
        name: name.to_string(),
        skew_ms: rng.range(-config.max_skew_ms, config.max_skew_ms),
        delay_ms: delay,
    };
    let firewalls = [sensor("fw-paris-01", (0, 2_000)), sensor("fw-lyon-02", (0, 2_000))];
    let resolver = sensor("dns-resolver-01", (0, 500));
    let proxy = sensor("proxy-01", (500, 5_000));
    let tls = sensor("tls-inspect-01", (200, 3_000));
    let edr = sensor("edr-agent", (100, 1_500));

    let mut out = Vec::with_capacity(config.sessions * 5);
    let mut seq = 0u64;
    let mut push = |out: &mut Vec<GenEvent>,
                    rng: &mut Rng,
                    s: &Sensor,
                    session: usize,
                    kind: &str,
                    true_time: i64,
                    extra_delay: i64,
                    payload: serde_json::Value| {
        seq += 1;
        let id = format!("{}-{:x}-{seq:08}", s.name, config.seed);
        let stamped = true_time + s.skew_ms;
        let arrival = true_time + rng.range(s.delay_ms.0, s.delay_ms.1) + extra_delay;
        let mut payload = payload;
        if let Some(obj) = payload.as_object_mut() {
            // What every real sensor adds: who observed it and which dataset it belongs to.
            obj.insert("observer".into(), json!({"name": s.name, "type": kind_observer(kind)}));
            obj.insert("event".into(), {
                let mut ev = obj.get("event").cloned().unwrap_or_else(|| json!({}));
                ev["dataset"] =
                    json!(format!("{}.{kind}", s.name.split('-').next().unwrap_or("x")));
                ev["ingested_by"] = json!("storyline-generate");
                ev
            });
        }
        let line = json!({
            "id": id,
            "source": s.name,
            "kind": kind,
            "time": format_rfc3339(stamped),
            "attributes": {"gen.session": format!("s{session:06}")},
            "payload": payload,
        })
        .to_string();
        out.push(GenEvent { arrival_ms: arrival, session, id, line });
    };

    for i in 0..config.sessions {
        let t0 = config.start_ms + i as i64 * config.interval_ms + rng.range(0, config.interval_ms);
        let (domain, server_ip) = SITES[rng.below(SITES.len() as u64) as usize];
        let https = rng.chance(0.6);
        let server_port: u16 = if https { 443 } else { 80 };
        // Enough client addresses that a 5-tuple is rarely reused within the stream.
        let client_ip = format!("10.1.{}.{}", rng.below(200), 1 + rng.below(250));
        let client_port = 49_152 + rng.below(16_000) as u16;
        let process = PROCESSES[rng.below(PROCESSES.len() as u64) as usize];
        let user = USERS[rng.below(USERS.len() as u64) as usize];
        let host = format!("ws-{}", client_ip.replace('.', "-"));
        let duration_ms = rng.range(50, 120_000);

        // 1. The lookup, shortly before the connection.
        let dns_port = 49_152 + rng.below(16_000) as u16;
        let dns_time = t0 - rng.range(5, 300);
        push(
            &mut out,
            &mut rng,
            &resolver,
            i,
            "dns",
            dns_time,
            0,
            json!({
                "source": {"ip": client_ip, "port": dns_port},
                "destination": {"ip": "10.0.0.53", "port": 53},
                "network": {"transport": "udp", "protocol": "dns"},
                "dns": {"question": {"name": domain}, "answers": [{"type": "A", "data": server_ip}]},
            }),
        );
        // 2. The endpoint agent sees the process open the connection.
        let edr_time = t0 + rng.range(0, 20);
        let pid = 1000 + rng.below(60_000);
        push(
            &mut out,
            &mut rng,
            &edr,
            i,
            "process",
            edr_time,
            0,
            json!({
                "source": {"ip": client_ip, "port": client_port},
                "destination": {"ip": server_ip, "port": server_port},
                "network": {"transport": "tcp"},
                "process": {"name": process, "pid": pid},
                "user": {"name": user},
                "host": {"name": host},
            }),
        );
        // 3. The application log, without transport; sometimes minutes late.
        let late = if rng.chance(config.late_share) { rng.range(60_000, 480_000) } else { 0 };
        let app_time = t0 + rng.range(20, 200);
        if https {
            push(
                &mut out,
                &mut rng,
                &tls,
                i,
                "tls",
                app_time,
                late,
                json!({
                    "source": {"ip": client_ip, "port": client_port},
                    "destination": {"ip": server_ip, "port": server_port},
                    "tls": {"client": {"server_name": domain}, "version": "1.3"},
                }),
            );
        } else {
            let path = format!("/item/{}", rng.below(10_000));
            let status = [200, 200, 200, 304, 404, 500][rng.below(6) as usize];
            let method = if rng.chance(0.8) { "GET" } else { "POST" };
            push(
                &mut out,
                &mut rng,
                &proxy,
                i,
                "http",
                app_time,
                late,
                json!({
                    "source": {"ip": client_ip, "port": client_port},
                    "destination": {"ip": server_ip, "port": server_port},
                    "url": {"full": format!("http://{domain}{path}"), "domain": domain},
                    "http": {"request": {"method": method}, "response": {"status_code": status}},
                }),
            );
        }
        // 4. The firewall's flow record, written when the connection ends.
        let fw = &firewalls[rng.below(2) as usize];
        let end_stamped = rng.chance(0.5);
        let stamp = if end_stamped { t0 + duration_ms } else { t0 };
        let (src, dst) = if rng.chance(config.reversed_share) {
            (
                json!({"ip": server_ip, "port": server_port}),
                json!({"ip": client_ip, "port": client_port}),
            )
        } else {
            (
                json!({"ip": client_ip, "port": client_port}),
                json!({"ip": server_ip, "port": server_port}),
            )
        };
        let bytes = rng.below(2_000_000);
        push(
            &mut out,
            &mut rng,
            fw,
            i,
            "flow",
            stamp,
            duration_ms - (stamp - t0),
            json!({
                "source": src,
                "destination": dst,
                "network": {"transport": "tcp"},
                "event": {"duration": duration_ms * 1_000_000, "action": "allowed"},
                "bytes": bytes,
            }),
        );
    }
    out.sort_by(|a, b| a.arrival_ms.cmp(&b.arrival_ms).then_with(|| a.id.cmp(&b.id)));
    out
}

/// Cuts a generated stream into buckets by arrival time, as a worker reading insert-time
/// buckets of `bucket_ms` sees it: events in id order, insert time = arrival, watermark = end.
pub fn arrival_buckets(
    events: &[GenEvent],
    tenant: &str,
    bucket_ms: i64,
) -> Vec<crate::model::Bucket> {
    let bucket_ms = bucket_ms.max(1);
    let mut out: Vec<crate::model::Bucket> = Vec::new();
    for (i, g) in events.iter().enumerate() {
        let start = g.arrival_ms.div_euclid(bucket_ms) * bucket_ms;
        if out.last().map(|b| b.start) != Some(start) {
            out.push(crate::model::Bucket {
                tenant: tenant.to_string(),
                shard: 0,
                start,
                end: start + bucket_ms,
                watermark: start + bucket_ms,
                events: Vec::new(),
            });
        }
        // Generated lines are valid by construction; a failure here is a generator bug.
        let Ok(parsed) = storyline_sdk::format::parse_line(&g.line, i + 1) else { continue };
        let id = g.id.clone();
        if let Some(b) = out.last_mut() {
            b.events.push(parsed.into_event(|| id, g.arrival_ms));
        }
    }
    for b in &mut out {
        b.events.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_every_line_parses() {
        let config = GenConfig { sessions: 50, ..GenConfig::default() };
        let a = generate(&config);
        assert_eq!(a, generate(&config));
        assert_eq!(a.len(), 200);
        for (i, e) in a.iter().enumerate() {
            let parsed = storyline_sdk::format::parse_line(&e.line, i + 1).unwrap();
            assert_eq!(parsed.id.as_deref(), Some(e.id.as_str()));
        }
        assert!(a.windows(2).all(|w| w[0].arrival_ms <= w[1].arrival_ms));
    }

    #[test]
    fn skew_and_lateness_are_present() {
        let config = GenConfig { sessions: 400, late_share: 0.1, ..GenConfig::default() };
        let events = generate(&config);
        let late = events
            .iter()
            .filter(|e| {
                let t = storyline_sdk::format::parse_line(&e.line, 1).unwrap().time;
                e.arrival_ms - t > 60_000
            })
            .count();
        assert!(late > 0, "some events arrive more than a minute after their time");
        let mut other = config.clone();
        other.seed = 2;
        assert_ne!(generate(&other), events);
    }
}
