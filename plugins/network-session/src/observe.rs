//! What one event says about the network, read from its ECS payload (parsed once per event).
//!
//! Everything here is a pure function of one event, so that `process` and `route` classify an
//! event alike: the shard an event is routed to and the session it joins follow from the same
//! decisions.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use storyline_sdk::Event;
use storyline_sdk::community_id::{CommunityId, FlowTuple, proto};
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

/// The key of the session an event's tuple belongs to: its two endpoints in a fixed order
/// (lower address and port first), the same from every sensor and either direction.
///
/// The transport is not part of it: most application logs (Zeek's `ssl`, `kerberos`,
/// `smb_files`, Suricata's `alert`...) do not say it, and they must join the flow record of
/// their connection, which does. Two sessions of different transports on the same two
/// address/port pairs at the same time do not happen in practice (the client's ephemeral port
/// differs). ICMP has no ports: its key is the address pair, marked as ICMP, so that it never
/// meets a portless record of another protocol. Returns `None` when a port is missing: such
/// records look for a connection of their address pair instead (see `State::add`).
pub fn tuple_key(flow: &Flow, transport: Option<u8>) -> Option<String> {
    let (a, b) = (flow.client, flow.server);
    let (low, high) = if (a.ip, a.port) <= (b.ip, b.port) { (a, b) } else { (b, a) };
    // Hex of the addresses' bytes and ports: this runs once per event, and decimal formatting
    // of addresses cost a quarter of the rule's time per event.
    let mut key = String::with_capacity(44);
    if matches!(transport, Some(proto::ICMP | proto::ICMPV6)) {
        key.push_str("icmp ");
        push_ip(&mut key, low.ip);
        key.push(' ');
        push_ip(&mut key, high.ip);
        return Some(key);
    }
    let (lp, hp) = (low.port?, high.port?);
    push_ip(&mut key, low.ip);
    key.push(' ');
    push_hex(&mut key, &lp.to_be_bytes());
    key.push(' ');
    push_ip(&mut key, high.ip);
    key.push(' ');
    push_hex(&mut key, &hp.to_be_bytes());
    Some(key)
}

/// An address as lowercase hex of its bytes (8 digits for IPv4, 32 for IPv6).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_hex(out, &v4.octets()),
        IpAddr::V6(v6) => push_hex(out, &v6.octets()),
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// The key of a session of an address pair whose records carry no ports.
pub fn pair_key(flow: &Flow) -> String {
    crate::story::Pair::new(flow.client.ip, flow.server.ip).key()
}

/// What an event adds beyond [`Facts`]: the alert it raised and the file it saw. Kept apart
/// from `Facts` because DNS lookups, which wait in the state with their facts, carry neither.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extra<'a> {
    /// The signature of an alert (`rule.name`, or the kind for an alert without one).
    pub alert: Option<Cow<'a, str>>,
    /// `file.name`.
    pub file: Option<Cow<'a, str>>,
}

/// The alert and file of an event. An event is an alert when it names a rule (`rule.name`)
/// or its kind is `alert` (Suricata) or `notice` (Zeek).
pub fn extra<'a>(kind: &'a str, ecs: &'a EcsEvent<'_>) -> Extra<'a> {
    let rule = text(ecs.rule.as_ref().and_then(|r| r.name.as_ref()));
    let is_alert = kind.eq_ignore_ascii_case("alert") || kind.eq_ignore_ascii_case("notice");
    let alert = rule.or_else(|| is_alert.then_some(Cow::Borrowed(kind)));
    Extra { alert, file: text(ecs.file.as_ref().and_then(|f| f.name.as_ref())) }
}

/// The community id of an event: the sensor's `network.community_id`, else computed (seed
/// 0) from its tuple as reported (ICMP type and code included). `None` when the transport is
/// unknown.
pub fn community_id_of(ecs: &EcsEvent<'_>, transport: Option<u8>) -> Option<String> {
    ecs.community_id(transport).filter(|id| !id.is_empty())
}

/// The community id (seed 0) of a flow with its transport; see [`community_id_of`].
pub fn flow_community_id(flow: &Flow, transport: Option<u8>) -> Option<String> {
    let t = transport.filter(|t| !matches!(*t, proto::ICMP | proto::ICMPV6))?;
    let (c, s) = (flow.client, flow.server);
    let tuple = FlowTuple::new(c.ip, c.port.unwrap_or(0), s.ip, s.port.unwrap_or(0), t);
    Some(CommunityId::default().base64(&tuple))
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

/// Whether an event is of a kind whose records may list the files their transaction carried
/// (Zeek's `http`, `smtp` and `ftp`; `zeek.http`... as Elastic names them).
pub fn may_carry_files(event: &Event) -> bool {
    let kind = event.kind.as_bytes();
    [&b"http"[..], b"smtp", b"ftp"]
        .iter()
        .any(|k| kind.len() >= k.len() && kind[kind.len() - k.len()..].eq_ignore_ascii_case(k))
}

/// Whether a record names a file list (`resp_fuids`, `orig_fuids`, `fuids`): a look at its
/// bytes, without parsing it.
pub fn lists_files(event: &Event) -> bool {
    event.payload.windows(6).any(|w| w == b"fuids\"")
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
    fn tuple_keys_are_the_same_from_either_direction_and_with_or_without_transport() {
        let a = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":51514},"destination":{"ip":"93.184.216.34","port":443}}"#,
        );
        let b = ecs(
            r#"{"source":{"ip":"93.184.216.34","port":443},"destination":{"ip":"10.0.0.5","port":51514}}"#,
        );
        let fa = flow(&a, Some(proto::TCP)).unwrap();
        let fb = flow(&b, None).unwrap();
        assert_eq!(tuple_key(&fa, Some(proto::TCP)), tuple_key(&fb, None));
        assert_eq!(tuple_key(&fa, None).unwrap(), "0a000005 c93a 5db8d822 01bb");
        // Equal ports: the same key whichever side a sensor calls the source.
        let n1 = ecs(
            r#"{"source":{"ip":"10.0.0.9","port":123},"destination":{"ip":"10.0.0.5","port":123}}"#,
        );
        let n2 = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":123},"destination":{"ip":"10.0.0.9","port":123}}"#,
        );
        let (f1, f2) = (flow(&n1, None).unwrap(), flow(&n2, None).unwrap());
        assert_eq!(tuple_key(&f1, None), tuple_key(&f2, None));
        // ICMP keys name the protocol; a portless record has no tuple key.
        let icmp = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":8},"destination":{"ip":"10.0.0.9","port":0}}"#,
        );
        let fi = flow(&icmp, Some(proto::ICMP)).unwrap();
        assert_eq!(tuple_key(&fi, Some(proto::ICMP)).unwrap(), "icmp 0a000005 0a000009");
        let portless = ecs(r#"{"source":{"ip":"10.0.0.5"},"destination":{"ip":"10.0.0.9"}}"#);
        let fp = flow(&portless, None).unwrap();
        assert_eq!(tuple_key(&fp, None), None);
        assert_eq!(pair_key(&fp), "10.0.0.5 10.0.0.9");
    }

    #[test]
    fn the_community_id_is_the_sensors_else_the_standard_one_of_the_flow() {
        let e = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":51514},"destination":{"ip":"93.184.216.34","port":443}}"#,
        );
        let f = flow(&e, Some(proto::TCP)).unwrap();
        assert_eq!(community_id_of(&e, Some(proto::TCP)), flow_community_id(&f, Some(proto::TCP)));
        assert_eq!(community_id_of(&e, None), None, "no transport, no id");
        let given = ecs(
            r#"{"source":{"ip":"10.0.0.5","port":1},"destination":{"ip":"10.0.0.6","port":2},"network":{"community_id":"1:abc"}}"#,
        );
        assert_eq!(community_id_of(&given, None).as_deref(), Some("1:abc"));
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
