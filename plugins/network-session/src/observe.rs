//! What one event says about the network, read from its ECS payload (parsed once per event).
//!
//! Everything here is a pure function of one event, so that `process` and `route` classify an
//! event alike: the shard an event is routed to and the session it joins follow from the same
//! decisions.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use storyline_sdk::Event;
use storyline_sdk::community_id::{CommunityId, proto};
use storyline_sdk::ecs::EcsEvent;

/// What an event describes, as far as this rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A DNS lookup (`dns.*` fields, or kind `dns`).
    Dns,
    /// An HTTP request (`http.*` or `url.*` fields, or kind `http`).
    Http,
    /// A TLS handshake (`tls.*` fields, or kind `tls`/`ssl`).
    Tls,
    /// Anything else: flow and firewall records, endpoint events, ...
    Other,
}

/// Classifies an event by its fields first and its kind second: a sensor's kind names vary
/// (`dns`, `zeek.dns`, `query`), its ECS fields do not.
pub fn class(kind: &str, ecs: &EcsEvent<'_>) -> Class {
    let dns = ecs.dns.as_ref().is_some_and(|d| {
        d.question.as_ref().is_some_and(|q| q.name.is_some())
            || d.answers.as_ref().is_some_and(|a| !a.is_empty())
            || d.resolved_ip.as_ref().is_some_and(|r| !r.is_empty())
    });
    if dns || kind.eq_ignore_ascii_case("dns") {
        Class::Dns
    } else if ecs.http.is_some() || ecs.url.is_some() || kind.eq_ignore_ascii_case("http") {
        Class::Http
    } else if ecs.tls.is_some()
        || kind.eq_ignore_ascii_case("tls")
        || kind.eq_ignore_ascii_case("ssl")
    {
        Class::Tls
    } else {
        Class::Other
    }
}

/// The transport protocol: `network.transport` when given, else what the application implies.
/// HTTP and TLS logs rarely say (they run over TCP); DNS logs mostly run over UDP.
pub fn transport(ecs: &EcsEvent<'_>, class: Class) -> Option<u8> {
    ecs.transport().or(match class {
        Class::Dns => Some(proto::UDP),
        Class::Http | Class::Tls => Some(proto::TCP),
        Class::Other => None,
    })
}

/// One side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// The port; `None` when the sensor gave none or the protocol has none (ICMP types and
    /// codes are not shown as ports).
    pub port: Option<u16>,
}

/// A connection's two sides as one event reports them, with client and server decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The side that opened the connection.
    pub client: Endpoint,
    /// The side that accepted it.
    pub server: Endpoint,
    /// The decision follows from the tuple alone (the ports differ, or an ICMP type says who
    /// asked), so reports of the same connection from any sensor, in either direction, decide
    /// alike. When false, the event's `source` was taken as the client.
    pub by_tuple: bool,
}

/// ICMP and ICMPv6 types sent by the side that asks (echo, router and neighbour solicitation,
/// timestamp, information, address mask, MLD query, node information, home agent discovery).
/// Their replies, and every one-way message (unreachable, time exceeded, ...), travel towards
/// the side that started the exchange. ICMP and ICMPv6 numbers do not clash in a way that
/// matters here (ICMPv6 1..4 are one-way errors, like ICMP 3, 4, 11).
const ICMP_REQUESTS: [u16; 11] = [8, 10, 13, 15, 17, 128, 130, 133, 135, 139, 144];

/// The event's connection, when it names both addresses.
///
/// The client is the side with the higher (ephemeral) port when the ports differ; for ICMP the
/// side that sent the request type (see [`ICMP_REQUESTS`]); otherwise the event's source.
pub fn flow(ecs: &EcsEvent<'_>, transport: Option<u8>) -> Option<Flow> {
    let (source_ip, source_port) = ecs.source_addr()?;
    let (destination_ip, destination_port) = ecs.destination_addr()?;
    let icmp = matches!(transport, Some(proto::ICMP | proto::ICMPV6));
    let (source_is_client, by_tuple) = if icmp {
        // Sensors put the ICMP type in source.port (Zeek's convention).
        match source_port {
            Some(ty) => (ICMP_REQUESTS.contains(&ty), true),
            None => (true, false),
        }
    } else {
        match (source_port, destination_port) {
            (Some(s), Some(d)) if s != d => (s > d, true),
            _ => (true, false),
        }
    };
    let (source_port, destination_port) =
        if icmp { (None, None) } else { (source_port, destination_port) };
    let source = Endpoint { ip: source_ip, port: source_port };
    let destination = Endpoint { ip: destination_ip, port: destination_port };
    let (client, server) =
        if source_is_client { (source, destination) } else { (destination, source) };
    Some(Flow { client, server, by_tuple })
}

/// The routing key: the client's address, so that every report of a connection and the DNS
/// lookup its client made before it land on one shard.
///
/// - DNS: the querying client (the side with the higher port, else the source);
/// - a connection whose client follows from the tuple: that client;
/// - otherwise (equal or missing ports) the lower of the two addresses, the same from both
///   directions;
/// - no addresses but a sensor-given community id: that id;
/// - nothing usable: `None` (the event is a story of its own; any shard will do).
pub fn route(event: &Event) -> Option<String> {
    let ecs = EcsEvent::parse_network(&event.payload).ok()?;
    let class = class(&event.kind, &ecs);
    if let Some(f) = flow(&ecs, transport(&ecs, class)) {
        let ip = if class == Class::Dns || f.by_tuple {
            f.client.ip
        } else {
            f.client.ip.min(f.server.ip)
        };
        return Some(ip.to_string());
    }
    if class == Class::Dns
        && let Some((ip, _)) = ecs.source_addr()
    {
        return Some(ip.to_string());
    }
    let given = ecs.network.as_ref().and_then(|n| n.community_id.as_deref());
    given.filter(|id| !id.is_empty()).map(str::to_owned)
}

/// Length of a Community ID v1 in base64: `1:` and 28 characters.
pub const COMMUNITY_ID_LEN: usize = 30;

/// The community id of the event's flow: the sensor's `network.community_id` when it gives a
/// non-empty one, else computed (seed 0) from the tuple, as `EcsEvent::community_id` does but
/// written into `buf` instead of a new `String`: this runs once per event.
pub fn community_id<'b>(
    ecs: &'b EcsEvent<'_>,
    transport: Option<u8>,
    buf: &'b mut [u8; COMMUNITY_ID_LEN],
) -> Option<&'b str> {
    let given = ecs.network.as_ref().and_then(|n| n.community_id.as_deref());
    if let Some(id) = given.filter(|id| !id.is_empty()) {
        return Some(id);
    }
    let digest = CommunityId::default().digest(&ecs.flow_tuple(transport)?);
    buf[..2].copy_from_slice(b"1:");
    base64(&digest, &mut buf[2..]);
    // Only ASCII was written.
    std::str::from_utf8(buf).ok()
}

/// Standard base64 with padding of a 20-byte digest into 28 bytes.
fn base64(digest: &[u8; 20], out: &mut [u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (chunk, o) in digest.chunks(3).zip(out.chunks_mut(4)) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = u32::from(chunk[0]) << 16 | u32::from(b1) << 8 | u32::from(b2);
        let sextet = |shift: u32| ALPHABET[(n >> shift) as usize & 63];
        o[0] = sextet(18);
        o[1] = sextet(12);
        o[2] = if chunk.len() > 1 { sextet(6) } else { b'=' };
        o[3] = if chunk.len() > 2 { sextet(0) } else { b'=' };
    }
}

/// What one event adds to its story's fields, borrowed from the event while it is processed
/// and owned (`Facts<'static>`) while a DNS lookup waits for its connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts<'a> {
    /// The reporting sensor (`Event::source`).
    pub sensor: Cow<'a, str>,
    /// The event kind (`Event::kind`).
    pub kind: Cow<'a, str>,
    /// `dns.question.name` and the answers.
    pub dns: Option<DnsFacts<'a>>,
    /// `http.*` and `url.*`.
    pub http: Option<HttpFacts<'a>>,
    /// `tls.client.server_name`.
    pub sni: Option<Cow<'a, str>>,
    /// `process.name` and `process.pid`.
    pub process: Option<ProcessFacts<'a>>,
    /// `user.name`.
    pub user: Option<Cow<'a, str>>,
    /// `host.name`.
    pub host: Option<Cow<'a, str>>,
}

/// A DNS question and its answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsFacts<'a> {
    /// `dns.question.name`.
    pub name: Option<Cow<'a, str>>,
    /// `dns.answers[].data` (addresses and CNAME targets) and `dns.resolved_ip`, without
    /// duplicates.
    pub answers: Vec<Cow<'a, str>>,
}

/// One HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpFacts<'a> {
    /// `http.request.method`.
    pub method: Option<Cow<'a, str>>,
    /// `url.full`.
    pub url: Option<Cow<'a, str>>,
    /// `url.domain`.
    pub domain: Option<Cow<'a, str>>,
    /// `http.response.status_code`.
    pub status: Option<u16>,
}

/// A process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFacts<'a> {
    /// `process.name`.
    pub name: Option<Cow<'a, str>>,
    /// `process.pid`.
    pub pid: Option<i64>,
}

/// A present, non-empty text, borrowed.
fn text<'a>(v: Option<&'a Cow<'_, str>>) -> Option<Cow<'a, str>> {
    v.map(|s| s.as_ref()).filter(|s| !s.is_empty()).map(Cow::Borrowed)
}

/// The facts of one event; borrows from it and from its parsed payload, allocating only for
/// the list of DNS answers.
pub fn facts<'a>(event: &'a Event, ecs: &'a EcsEvent<'_>) -> Facts<'a> {
    let dns = ecs.dns.as_ref().and_then(|d| {
        let name = text(d.question.as_ref().and_then(|q| q.name.as_ref()));
        let mut answers: Vec<Cow<'a, str>> = Vec::new();
        let given = d.answers.iter().flatten().filter_map(|a| a.data.as_ref());
        for a in given.chain(d.resolved_ip.iter().flatten()) {
            if !a.is_empty() && !answers.iter().any(|x| x == a) {
                answers.push(Cow::Borrowed(a.as_ref()));
            }
        }
        (name.is_some() || !answers.is_empty()).then_some(DnsFacts { name, answers })
    });
    let method = text(ecs.http.as_ref().and_then(|h| h.request.as_ref()?.method.as_ref()));
    let status = ecs.http.as_ref().and_then(|h| h.response.as_ref()?.status_code);
    let url = text(ecs.url.as_ref().and_then(|u| u.full.as_ref()));
    let domain = text(ecs.url.as_ref().and_then(|u| u.domain.as_ref()));
    let http = (method.is_some() || status.is_some() || url.is_some() || domain.is_some())
        .then_some(HttpFacts { method, url, domain, status });
    let process = ecs.process.as_ref().and_then(|p| {
        let name = text(p.name.as_ref());
        (name.is_some() || p.pid.is_some()).then_some(ProcessFacts { name, pid: p.pid })
    });
    Facts {
        sensor: Cow::Borrowed(&event.source),
        kind: Cow::Borrowed(&event.kind),
        dns,
        http,
        sni: text(ecs.tls.as_ref().and_then(|t| t.client.as_ref()?.server_name.as_ref())),
        process,
        user: text(ecs.user.as_ref().and_then(|u| u.name.as_ref())),
        host: text(ecs.host.as_ref().and_then(|h| h.name.as_ref())),
    }
}

fn owned(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    c.map(|c| Cow::Owned(c.into_owned()))
}

impl Facts<'_> {
    /// A copy that owns its text, to be kept in the state.
    pub fn into_owned(self) -> Facts<'static> {
        Facts {
            sensor: Cow::Owned(self.sensor.into_owned()),
            kind: Cow::Owned(self.kind.into_owned()),
            dns: self.dns.map(|d| DnsFacts {
                name: owned(d.name),
                answers: d.answers.into_iter().map(|a| Cow::Owned(a.into_owned())).collect(),
            }),
            http: self.http.map(|h| HttpFacts {
                method: owned(h.method),
                url: owned(h.url),
                domain: owned(h.domain),
                status: h.status,
            }),
            sni: owned(self.sni),
            process: self.process.map(|p| ProcessFacts { name: owned(p.name), pid: p.pid }),
            user: owned(self.user),
            host: owned(self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecs(p: &str) -> EcsEvent<'_> {
        EcsEvent::parse(p.as_bytes()).unwrap()
    }

    #[test]
    fn client_is_the_higher_port_from_either_direction() {
        let a = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":51514},"destination":{"ip":"93.184.216.34","port":443}}"#,
        );
        let b = ecs(
            r#"{"source":{"ip":"93.184.216.34","port":443},"destination":{"ip":"10.0.0.5","port":51514}}"#,
        );
        let fa = flow(&a, Some(proto::TCP)).unwrap();
        let fb = flow(&b, Some(proto::TCP)).unwrap();
        assert_eq!(fa, fb);
        assert_eq!(fa.client.ip.to_string(), "10.0.0.5");
        assert!(fa.by_tuple);
    }

    #[test]
    fn icmp_client_is_the_side_that_asked() {
        let request = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":8},"destination":{"ip":"10.0.0.9","port":0}}"#,
        );
        let reply = ecs(
            r#"{"source":{"ip":"10.0.0.9","port":0},"destination":{"ip":"10.0.0.5","port":0}}"#,
        );
        let unreachable = ecs(
            r#"{"source":{"ip":"10.0.0.1","port":3},"destination":{"ip":"10.0.0.5","port":1}}"#,
        );
        for e in [request, reply, unreachable] {
            let f = flow(&e, Some(proto::ICMP)).unwrap();
            assert_eq!(f.client.ip.to_string(), "10.0.0.5", "{e:?}");
            assert_eq!(f.client.port, None);
        }
    }

    #[test]
    fn equal_ports_take_the_source_as_client_without_deciding_by_tuple() {
        let e = ecs(
            r#"{"source":{"ip":"10.0.0.9","port":123},"destination":{"ip":"10.0.0.5","port":123}}"#,
        );
        let f = flow(&e, Some(proto::UDP)).unwrap();
        assert_eq!((f.client.ip.to_string(), f.by_tuple), ("10.0.0.9".to_string(), false));
    }

    #[test]
    fn community_id_written_in_place_matches_the_sdk() {
        let mut buf = [0u8; COMMUNITY_ID_LEN];
        for (i, (src, dst)) in [("10.0.0.5", "93.184.216.34"), ("2001:db8::1", "2001:db8::2")]
            .into_iter()
            .cycle()
            .take(400)
            .enumerate()
        {
            let (sport, dport) = (1000 + i as u16 * 37, 80 + i as u16);
            let p = format!(
                r#"{{"source":{{"ip":"{src}","port":{sport}}},"destination":{{"ip":"{dst}","port":{dport}}}}}"#
            );
            let e = ecs(&p);
            for t in [proto::TCP, proto::UDP, proto::ICMP, 47] {
                let want = e.community_id(Some(t)).unwrap();
                assert_eq!(community_id(&e, Some(t), &mut buf), Some(want.as_str()));
            }
        }
        let given = ecs(r#"{"network":{"community_id":"1:abc"}}"#);
        assert_eq!(community_id(&given, None, &mut buf), Some("1:abc"));
        let empty = ecs(r#"{"network":{"community_id":""}}"#);
        assert_eq!(community_id(&empty, None, &mut buf), None);
    }

    #[test]
    fn classes_and_default_transports() {
        let dns = ecs(r#"{"dns":{"question":{"name":"example.com"}}}"#);
        assert_eq!(class("query", &dns), Class::Dns);
        assert_eq!(transport(&dns, Class::Dns), Some(proto::UDP));
        let http = ecs(r#"{"url":{"full":"http://x/"}}"#);
        assert_eq!(class("proxy", &http), Class::Http);
        assert_eq!(transport(&http, Class::Http), Some(proto::TCP));
        let tls = ecs(r#"{"network":{"transport":"udp"}}"#);
        assert_eq!(class("tls", &tls), Class::Tls);
        assert_eq!(transport(&tls, Class::Tls), Some(proto::UDP), "the sensor's word wins");
        assert_eq!(transport(&ecs("{}"), Class::Other), None);
    }

    #[test]
    fn facts_skip_empty_values_and_deduplicate_answers() {
        let e = ecs(
            r#"{"dns":{"question":{"name":"a.example"},"answers":[{"data":"1.2.3.4"},{"data":""}],"resolved_ip":["1.2.3.4","5.6.7.8"]},"user":{"name":""},"process":{"pid":7}}"#,
        );
        let ev = Event {
            id: "e".into(),
            source: "s".into(),
            kind: "dns".into(),
            event_time: 0,
            insert_time: 0,
            attributes: Vec::new(),
            payload: Vec::new(),
        };
        let f = facts(&ev, &e);
        let d = f.dns.clone().unwrap();
        assert_eq!(d.answers, ["1.2.3.4", "5.6.7.8"]);
        assert_eq!(f.user, None);
        assert_eq!(f.process, Some(ProcessFacts { name: None, pid: Some(7) }));
        assert_eq!(f.clone().into_owned(), f);
    }
}
