//! The Elastic Common Schema fields that network rules read, as one typed, borrowing struct.
//!
//! ECS writes nested objects (`{"source": {"ip": "10.0.0.1", "port": 51514}}`). Parsing into
//! [`EcsEvent`] reads every field a session rule needs in one pass; strings borrow from the
//! payload; unknown fields are skipped; a missing field is `None`. Ports and numbers given as
//! strings are accepted, because some sensors write them that way.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use crate::community_id::{CommunityId, FlowTuple, transport_number};

/// The ECS fields of one event's payload that network correlation uses.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct EcsEvent<'a> {
    /// `source.*`: the side that sent the first packet, as this sensor saw it.
    #[serde(borrow)]
    pub source: Option<Endpoint<'a>>,
    /// `destination.*`.
    #[serde(borrow)]
    pub destination: Option<Endpoint<'a>>,
    /// `network.*`.
    #[serde(borrow)]
    pub network: Option<Network<'a>>,
    /// `dns.*`.
    #[serde(borrow)]
    pub dns: Option<Dns<'a>>,
    /// `url.*`.
    #[serde(borrow)]
    pub url: Option<Url<'a>>,
    /// `http.*`.
    #[serde(borrow)]
    pub http: Option<Http<'a>>,
    /// `tls.*`.
    #[serde(borrow)]
    pub tls: Option<Tls<'a>>,
    /// `process.*`.
    #[serde(borrow)]
    pub process: Option<Process<'a>>,
    /// `user.*`.
    #[serde(borrow)]
    pub user: Option<Named<'a>>,
    /// `host.*`.
    #[serde(borrow)]
    pub host: Option<Named<'a>>,
    /// `event.*`.
    pub event: Option<EventMeta>,
    /// `rule.*`: the detection rule an alert fired on (Suricata's signature, a Zeek notice).
    #[serde(borrow)]
    pub rule: Option<Rule<'a>>,
    /// `file.*`: a file the event saw cross the connection.
    #[serde(borrow)]
    pub file: Option<Named<'a>>,
    /// `zeek.*`: the ids by which Zeek's records name the files a connection carried (boxed:
    /// most events have none, and the event is moved around whole).
    #[serde(borrow)]
    pub zeek: Option<Box<Zeek<'a>>>,
}

/// The file ids of a Zeek record: a `files` record's own (`fuid`), and those an `http`, `smtp`
/// or `ftp` record lists for the files its transaction carried (`resp_fuids`, `orig_fuids`,
/// `fuids`). Read as Zeek writes them (fields of `zeek`, as `storyline ingest --format zeek`
/// keeps them) and as Elastic's Zeek module nests them (`zeek.files.fuid`,
/// `zeek.http.resp_fuids`...). A value of another shape is ignored, never an error.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Zeek<'a> {
    /// `zeek.fuid`: the file a `files` record describes.
    #[serde(borrow, deserialize_with = "lenient_text")]
    pub fuid: Option<Cow<'a, str>>,
    /// `zeek.resp_fuids`.
    #[serde(borrow, deserialize_with = "lenient_texts")]
    pub resp_fuids: Option<Vec<Cow<'a, str>>>,
    /// `zeek.orig_fuids`.
    #[serde(borrow, deserialize_with = "lenient_texts")]
    pub orig_fuids: Option<Vec<Cow<'a, str>>>,
    /// `zeek.fuids` (SMTP).
    #[serde(borrow, deserialize_with = "lenient_texts")]
    pub fuids: Option<Vec<Cow<'a, str>>>,
    /// `zeek.files.*` (Elastic's layout).
    #[serde(borrow, deserialize_with = "lenient_zeek")]
    pub files: Option<Box<Zeek<'a>>>,
    /// `zeek.http.*` (Elastic's layout).
    #[serde(borrow, deserialize_with = "lenient_zeek")]
    pub http: Option<Box<Zeek<'a>>>,
    /// `zeek.smtp.*` (Elastic's layout).
    #[serde(borrow, deserialize_with = "lenient_zeek")]
    pub smtp: Option<Box<Zeek<'a>>>,
}

impl Zeek<'_> {
    /// The file this record describes.
    pub fn file_id(&self) -> Option<&str> {
        let nested = self.files.as_deref().and_then(|f| f.fuid.as_deref());
        self.fuid.as_deref().or(nested).filter(|id| !id.is_empty() && *id != "-")
    }

    /// The files this record's transaction carried.
    pub fn file_refs(&self) -> impl Iterator<Item = &str> {
        let own = [&self.resp_fuids, &self.orig_fuids, &self.fuids];
        let nested = [&self.http, &self.smtp]
            .into_iter()
            .flatten()
            .flat_map(|z| [&z.resp_fuids, &z.orig_fuids, &z.fuids]);
        own.into_iter()
            .chain(nested)
            .flatten()
            .flatten()
            .map(|id| id.as_ref())
            .filter(|id| !id.is_empty() && *id != "-")
    }
}

/// `source` or `destination`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Endpoint<'a> {
    /// `*.ip`.
    #[serde(borrow, deserialize_with = "text")]
    pub ip: Option<Cow<'a, str>>,
    /// `*.port`.
    #[serde(deserialize_with = "lenient_u16")]
    pub port: Option<u16>,
}

/// `network`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Network<'a> {
    /// `network.transport`: `tcp`, `udp`, `icmp`... or an IANA number.
    #[serde(borrow, deserialize_with = "lenient_text")]
    pub transport: Option<Cow<'a, str>>,
    /// `network.community_id`, when the sensor computed it.
    #[serde(borrow, deserialize_with = "text")]
    pub community_id: Option<Cow<'a, str>>,
    /// `network.protocol`: the application protocol (`http`, `dns`, `tls`).
    #[serde(borrow, deserialize_with = "text")]
    pub protocol: Option<Cow<'a, str>>,
}

/// `dns`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Dns<'a> {
    /// `dns.question`.
    #[serde(borrow)]
    pub question: Option<DnsQuestion<'a>>,
    /// `dns.answers`.
    #[serde(borrow)]
    pub answers: Option<Vec<DnsAnswer<'a>>>,
    /// `dns.resolved_ip`: the addresses found in the answers.
    #[serde(borrow, deserialize_with = "texts")]
    pub resolved_ip: Option<Vec<Cow<'a, str>>>,
}

/// `dns.question`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DnsQuestion<'a> {
    /// `dns.question.name`.
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
}

/// One of `dns.answers`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DnsAnswer<'a> {
    /// `data`: an address for A/AAAA records, a name for CNAME.
    #[serde(borrow, deserialize_with = "text")]
    pub data: Option<Cow<'a, str>>,
    /// `type`: `A`, `AAAA`, `CNAME`...
    #[serde(borrow, rename = "type", deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
}

/// `url`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Url<'a> {
    /// `url.full`.
    #[serde(borrow, deserialize_with = "text")]
    pub full: Option<Cow<'a, str>>,
    /// `url.domain`.
    #[serde(borrow, deserialize_with = "text")]
    pub domain: Option<Cow<'a, str>>,
}

/// `http`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Http<'a> {
    /// `http.request`.
    #[serde(borrow)]
    pub request: Option<HttpRequest<'a>>,
    /// `http.response`.
    pub response: Option<HttpResponse>,
}

/// `http.request`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpRequest<'a> {
    /// `http.request.method`.
    #[serde(borrow, deserialize_with = "text")]
    pub method: Option<Cow<'a, str>>,
}

/// `http.response`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpResponse {
    /// `http.response.status_code`.
    #[serde(deserialize_with = "lenient_u16")]
    pub status_code: Option<u16>,
}

/// `tls`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Tls<'a> {
    /// `tls.client`.
    #[serde(borrow)]
    pub client: Option<TlsClient<'a>>,
}

/// `tls.client`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TlsClient<'a> {
    /// `tls.client.server_name`: the SNI.
    #[serde(borrow, deserialize_with = "text")]
    pub server_name: Option<Cow<'a, str>>,
}

/// `process`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Process<'a> {
    /// `process.name`.
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
    /// `process.pid`.
    #[serde(deserialize_with = "lenient_i64")]
    pub pid: Option<i64>,
}

/// Objects whose only field used here is `name` (`user`, `host`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Named<'a> {
    /// `*.name`.
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
}

/// `rule`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Rule<'a> {
    /// `rule.name`: the signature or notice.
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
    /// `rule.id`.
    #[serde(borrow, deserialize_with = "lenient_text")]
    pub id: Option<Cow<'a, str>>,
}

/// `event`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct EventMeta {
    /// `event.duration` in nanoseconds: flow records cover a connection of this length.
    #[serde(deserialize_with = "lenient_i64")]
    pub duration: Option<i64>,
    /// `event.module` is `zeek` (any case), as `storyline ingest --format zeek` and Elastic's
    /// Zeek module write it: the record is Zeek's, timed by Zeek's analyzers.
    #[serde(rename = "module", deserialize_with = "names_zeek")]
    pub zeek: bool,
}

impl EcsEvent<'_> {
    /// Whether Zeek wrote the record (`event.module: zeek`).
    pub fn from_zeek(&self) -> bool {
        self.event.as_ref().is_some_and(|e| e.zeek)
    }
}

fn names_zeek<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(lenient_text(d)?.is_some_and(|m| m.eq_ignore_ascii_case("zeek")))
}

impl<'a> EcsEvent<'a> {
    /// Parses a payload. An empty payload gives an event with no fields.
    pub fn parse(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        if payload.is_empty() { Ok(EcsEvent::default()) } else { serde_json::from_slice(payload) }
    }

    /// Parses only what says where a connection goes and what it carries: `source`,
    /// `destination`, `network`, `dns`, `url`, `http` and `tls`; the other fields stay `None`
    /// and are skipped unread (faster, for routing decisions made once per event).
    pub fn parse_network(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Part<'a> {
            #[serde(borrow)]
            source: Option<Endpoint<'a>>,
            #[serde(borrow)]
            destination: Option<Endpoint<'a>>,
            #[serde(borrow)]
            network: Option<Network<'a>>,
            #[serde(borrow)]
            dns: Option<Dns<'a>>,
            #[serde(borrow)]
            url: Option<Url<'a>>,
            #[serde(borrow)]
            http: Option<Http<'a>>,
            #[serde(borrow)]
            tls: Option<Tls<'a>>,
        }
        if payload.is_empty() {
            return Ok(EcsEvent::default());
        }
        let p: Part<'a> = serde_json::from_slice(payload)?;
        Ok(EcsEvent {
            source: p.source,
            destination: p.destination,
            network: p.network,
            dns: p.dns,
            url: p.url,
            http: p.http,
            tls: p.tls,
            ..EcsEvent::default()
        })
    }

    /// Source address and port, when the address parses.
    pub fn source_addr(&self) -> Option<(IpAddr, Option<u16>)> {
        endpoint_addr(self.source.as_ref())
    }

    /// Destination address and port, when the address parses.
    pub fn destination_addr(&self) -> Option<(IpAddr, Option<u16>)> {
        endpoint_addr(self.destination.as_ref())
    }

    /// `network.transport` as an IANA protocol number.
    pub fn transport(&self) -> Option<u8> {
        self.network.as_ref()?.transport.as_deref().and_then(transport_number)
    }

    /// The flow tuple, when both endpoints and the protocol are known. `default_transport`
    /// is used when the event does not say (HTTP and TLS logs usually don't: pass TCP).
    pub fn flow_tuple(&self, default_transport: Option<u8>) -> Option<FlowTuple> {
        let (src_ip, src_port) = self.source_addr()?;
        let (dst_ip, dst_port) = self.destination_addr()?;
        let proto = self.transport().or(default_transport)?;
        Some(FlowTuple::new(src_ip, src_port.unwrap_or(0), dst_ip, dst_port.unwrap_or(0), proto))
    }

    /// `network.community_id` when the sensor gave one, else computed (seed 0) from the tuple.
    pub fn community_id(&self, default_transport: Option<u8>) -> Option<String> {
        if let Some(id) = self.network.as_ref().and_then(|n| n.community_id.as_deref()) {
            return Some(id.to_string());
        }
        self.flow_tuple(default_transport).map(|t| CommunityId::new(0).base64(&t))
    }

    /// `event.duration` in milliseconds (0 when absent or negative).
    pub fn duration_ms(&self) -> i64 {
        self.event.as_ref().and_then(|e| e.duration).map_or(0, |ns| (ns / 1_000_000).max(0))
    }

    /// The DNS question name.
    pub fn dns_question(&self) -> Option<&str> {
        self.dns.as_ref()?.question.as_ref()?.name.as_deref()
    }

    /// Every address in the DNS answers (`dns.answers[].data` that parse as IPs, and
    /// `dns.resolved_ip`), without duplicates, in the order given.
    pub fn dns_answer_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        let Some(dns) = self.dns.as_ref() else { return out };
        let answers = dns.answers.iter().flatten().filter_map(|a| a.data.as_deref());
        let resolved = dns.resolved_ip.iter().flatten().map(|s| s.as_ref());
        for ip in answers.chain(resolved).filter_map(|s| s.parse::<IpAddr>().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

fn endpoint_addr(e: Option<&Endpoint<'_>>) -> Option<(IpAddr, Option<u16>)> {
    let e = e?;
    let ip = e.ip.as_deref()?.parse().ok()?;
    Some((ip, e.port))
}

/// A JSON value read leniently where ECS expects a number or a text: sensors write ports and
/// ids both ways, and a value of another type (array, object, boolean) reads as nothing
/// instead of failing the event. A visitor, not an untagged enum: an untagged enum buffers the
/// value and builds an error message for each variant it rejects, on every event.
enum Scalar<'a> {
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Nothing,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a text")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Nothing, Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Nothing)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Nothing)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Nothing)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nothing)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nothing)
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match d.deserialize_any(ScalarVisitor)? {
        Scalar::Int(n) => Some(n),
        Scalar::Float(f) if f.is_finite() => Some(f as i64),
        Scalar::Text(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Ok(lenient_i64(d)?.and_then(|n| u16::try_from(n).ok()))
}

/// A string that borrows from the input when it has no escapes. serde's own `Cow<str>` (and so
/// `Option<Cow<str>>`) always copies; only a field typed exactly `Cow<str>` borrows.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Text<'de>>::deserialize(d)?.map(|t| t.0))
}

fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cow<'de, str>>>, D::Error> {
    Ok(Option::<Vec<Text<'de>>>::deserialize(d)?.map(|v| v.into_iter().map(|t| t.0).collect()))
}

/// The `visit_*` methods of a visitor of `Option<_>` that take a number, a boolean or a null
/// for `None`.
macro_rules! none_for_scalars {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// Texts from a list (elements that are not texts are left out) or a single text; `None` from
/// any other value.
fn lenient_texts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cow<'de, str>>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<Cow<'de, str>>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of texts")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element_seed(LenientTextSeed)? {
                out.extend(item);
            }
            Ok(Some(out))
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(vec![Cow::Borrowed(v)]))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(vec![Cow::Owned(v.to_owned())]))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        none_for_scalars!();
    }
    d.deserialize_any(V)
}

/// A nested `zeek.*` object; `None` from any other value.
fn lenient_zeek<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<Zeek<'de>>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Box<Zeek<'de>>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Zeek::deserialize(de::value::MapAccessDeserializer::new(map)).map(|z| Some(Box::new(z)))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        none_for_scalars!();
    }
    d.deserialize_any(V)
}

/// One element of [`lenient_texts`]: a text, or `None` for anything else.
struct LenientTextSeed;

impl<'de> de::DeserializeSeed<'de> for LenientTextSeed {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        lenient_text(d)
    }
}

fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(match d.deserialize_any(ScalarVisitor)? {
        Scalar::Int(n) => Some(Cow::Owned(n.to_string())),
        Scalar::Text(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeek_records_are_told_by_their_event_module() {
        let zeek = |p: &[u8]| EcsEvent::parse(p).unwrap().from_zeek();
        assert!(zeek(br#"{"event": {"module": "zeek", "dataset": "zeek.dns"}}"#));
        assert!(zeek(br#"{"event": {"module": "Zeek"}}"#));
        assert!(!zeek(br#"{"event": {"module": "suricata"}}"#));
        assert!(!zeek(br#"{"event": {"module": ["zeek"]}}"#), "another shape is ignored");
        assert!(!zeek(br#"{"observer": {"product": "zeek"}}"#));
        assert!(!zeek(b""));
    }

    #[test]
    fn zeek_file_ids_are_read_in_both_layouts_and_odd_shapes_are_ignored() {
        let own =
            br#"{"zeek": {"fuid": "F1", "resp_fuids": ["F2", true, "F3"], "orig_fuids": "F4"}}"#;
        let e = EcsEvent::parse(own).unwrap();
        let z = e.zeek.as_ref().unwrap();
        assert_eq!(z.file_id(), Some("F1"));
        assert_eq!(z.file_refs().collect::<Vec<_>>(), ["F2", "F3", "F4"]);
        let elastic = br#"{"zeek": {"files": {"fuid": "F5"}, "http": {"resp_fuids": ["F6"]},
            "smtp": {"fuids": ["F7", "-"]}}}"#;
        let e = EcsEvent::parse(elastic).unwrap();
        let z = e.zeek.as_ref().unwrap();
        assert_eq!(z.file_id(), Some("F5"));
        assert_eq!(z.file_refs().collect::<Vec<_>>(), ["F6", "F7"]);
        let odd =
            br#"{"source": {"ip": "10.0.0.1"}, "zeek": {"fuid": ["x"], "resp_fuids": {"a": 1},
            "http": "text", "files": [1, 2], "smtp": null}}"#;
        let e = EcsEvent::parse(odd).unwrap();
        let z = e.zeek.as_ref().unwrap();
        assert_eq!((z.file_id(), z.file_refs().count()), (None, 0));
        assert!(e.source.is_some(), "the rest of the event still parses");
    }

    #[test]
    fn strings_borrow_from_the_payload() {
        let payload = br#"{"source": {"ip": "10.0.0.1"}, "network": {"community_id": "1:x", "protocol": "dns"},
            "dns": {"question": {"name": "a.example"}, "answers": [{"data": "10.0.0.2", "type": "A"}],
                    "resolved_ip": ["10.0.0.2"]},
            "url": {"full": "http://a/", "domain": "a"}, "http": {"request": {"method": "GET"}},
            "tls": {"client": {"server_name": "a"}}, "process": {"name": "curl"},
            "user": {"name": "u"}, "host": {"name": "h"}}"#;
        let e = EcsEvent::parse(payload).unwrap();
        let borrowed = |c: &Option<Cow<'_, str>>| matches!(c, Some(Cow::Borrowed(_)));
        let dns = e.dns.as_ref().unwrap();
        let answer = &dns.answers.as_ref().unwrap()[0];
        let checks = [
            borrowed(&e.source.as_ref().unwrap().ip),
            borrowed(&e.network.as_ref().unwrap().community_id),
            borrowed(&e.network.as_ref().unwrap().protocol),
            borrowed(&dns.question.as_ref().unwrap().name),
            borrowed(&answer.data),
            borrowed(&answer.kind),
            matches!(dns.resolved_ip.as_ref().unwrap()[0], Cow::Borrowed(_)),
            borrowed(&e.url.as_ref().unwrap().full),
            borrowed(&e.url.as_ref().unwrap().domain),
            borrowed(&e.http.as_ref().unwrap().request.as_ref().unwrap().method),
            borrowed(&e.tls.as_ref().unwrap().client.as_ref().unwrap().server_name),
            borrowed(&e.process.as_ref().unwrap().name),
            borrowed(&e.user.as_ref().unwrap().name),
            borrowed(&e.host.as_ref().unwrap().name),
        ];
        assert_eq!(checks, [true; 14]);
        // An escaped string cannot borrow; it is still read.
        let e = EcsEvent::parse(br#"{"source": {"ip": "10.0.0.\u0031"}}"#).unwrap();
        assert_eq!(e.source.unwrap().ip.as_deref(), Some("10.0.0.1"));
    }
    use crate::community_id::proto;

    #[test]
    fn reads_nested_ecs_fields() {
        let p = br#"{"source":{"ip":"10.0.0.5","port":"51514"},"destination":{"ip":"93.184.216.34","port":443},
            "network":{"transport":"tcp"},"tls":{"client":{"server_name":"example.com"}},
            "process":{"name":"curl","pid":4242},"user":{"name":"alice"},"event":{"duration":2500000000},
            "unknown":{"deep":[1,2,3]}}"#;
        let e = EcsEvent::parse(p).unwrap();
        assert_eq!(e.source_addr(), Some(("10.0.0.5".parse().unwrap(), Some(51514))));
        assert_eq!(e.transport(), Some(proto::TCP));
        assert_eq!(e.tls.unwrap().client.unwrap().server_name.as_deref(), Some("example.com"));
        assert_eq!(e.process.unwrap().pid, Some(4242));
        assert_eq!(e.event.unwrap().duration, Some(2_500_000_000));
    }

    #[test]
    fn the_network_part_reads_the_same_addressing_and_skips_the_rest() {
        let p = br#"{"source":{"ip":"10.0.0.5","port":"51514"},"destination":{"ip":"93.184.216.34","port":443},
            "network":{"transport":"tcp","community_id":"1:x"},"dns":{"question":{"name":"a.example"}},
            "url":{"full":"https://a.example/"},"http":{"request":{"method":"GET"}},"tls":{"client":{"server_name":"a.example"}},
            "process":{"name":"curl","pid":4242},"user":{"name":"alice"},"host":{"name":"ws"},"event":{"duration":5}}"#;
        let full = EcsEvent::parse(p).unwrap();
        let part = EcsEvent::parse_network(p).unwrap();
        let addressing = EcsEvent { process: None, user: None, host: None, event: None, ..full };
        assert_eq!(part, addressing);
        assert_eq!(EcsEvent::parse_network(b"").unwrap(), EcsEvent::default());
        assert!(EcsEvent::parse_network(b"[1]").is_err());
    }

    #[test]
    fn community_id_is_direction_insensitive_and_prefers_the_sensors() {
        let a = br#"{"source":{"ip":"10.0.0.5","port":51514},"destination":{"ip":"93.184.216.34","port":443}}"#;
        let b = br#"{"source":{"ip":"93.184.216.34","port":443},"destination":{"ip":"10.0.0.5","port":51514},"network":{"transport":6}}"#;
        let ea = EcsEvent::parse(a).unwrap();
        let eb = EcsEvent::parse(b).unwrap();
        assert_eq!(ea.community_id(None), None, "no transport and no default");
        assert_eq!(ea.community_id(Some(proto::TCP)), eb.community_id(None));
        let given = br#"{"network":{"community_id":"1:abc"}}"#;
        assert_eq!(EcsEvent::parse(given).unwrap().community_id(None).as_deref(), Some("1:abc"));
    }

    #[test]
    fn dns_answers_collect_addresses_only() {
        let p = br#"{"dns":{"question":{"name":"example.com"},"answers":[{"type":"CNAME","data":"edge.example.net"},{"type":"A","data":"93.184.216.34"}],"resolved_ip":["93.184.216.34","2606:2800::1"]}}"#;
        let e = EcsEvent::parse(p).unwrap();
        assert_eq!(e.dns_question(), Some("example.com"));
        let ips: Vec<String> = e.dns_answer_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["93.184.216.34", "2606:2800::1"]);
    }

    #[test]
    fn wrong_types_in_optional_fields_do_not_fail_the_event() {
        let p = br#"{"source":{"ip":"10.0.0.5","port":[1]},"process":{"pid":"x"},"network":null}"#;
        let e = EcsEvent::parse(p).unwrap();
        assert_eq!(e.source_addr(), Some(("10.0.0.5".parse().unwrap(), None)));
        // A nested value where a scalar belongs is skipped whole; the fields after it still read.
        let p = br#"{"source":{"port":{"a":[1,{"b":2}]},"ip":"10.0.0.6"},"event":{"duration":true},
            "destination":{"ip":"10.0.0.7","port":"8080"},"http":{"response":{"status_code":2.0e2}}}"#;
        let e = EcsEvent::parse(p).unwrap();
        assert_eq!(e.source_addr(), Some(("10.0.0.6".parse().unwrap(), None)));
        assert_eq!(e.destination_addr(), Some(("10.0.0.7".parse().unwrap(), Some(8080))));
        assert_eq!(e.duration_ms(), 0);
        assert_eq!(e.http.unwrap().response.unwrap().status_code, Some(200));
        assert!(EcsEvent::parse(br#"{"source":{"port":[1,}}"#).is_err(), "broken JSON still fails");
        assert!(EcsEvent::parse(b"not json").is_err());
        assert_eq!(EcsEvent::parse(b"").unwrap(), EcsEvent::default());
    }
}
