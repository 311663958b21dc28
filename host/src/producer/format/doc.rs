//! The ECS document the Zeek and Suricata adapters write as an event's payload.
//!
//! Nested objects under Elastic Common Schema names, as `storyline_sdk::ecs::EcsEvent` reads
//! them; a field the sensor did not give is left out, never written as `null`. Texts borrow
//! from the record being read, so building a document copies little.

use std::borrow::Cow;

use serde::Serialize;

/// A text borrowed from the record, or made from it.
pub(super) type Text<'a> = Cow<'a, str>;

/// The ECS fields the adapters fill. Serialized, it is the payload without the sensor's record.
#[derive(Debug, Default, Serialize)]
pub(super) struct Doc<'a> {
    /// `message`: what a notice or weird says in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observer: Option<Observer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Url<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<UserAgent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule<'a>>,
}

/// `event.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Event {
    /// `alert` for a detection (Suricata alert, Zeek notice), `metric` for sensor statistics,
    /// else `event`.
    pub kind: &'static str,
    /// `zeek` or `suricata`.
    pub module: &'static str,
    /// `<module>.<log type>`: `zeek.conn`, `suricata.flow`.
    pub dataset: String,
    /// Nanoseconds the connection lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    /// The sensor's severity of an alert (Suricata: 1 is the most severe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<i64>,
}

/// `observer.*`: the sensor that wrote the record.
#[derive(Debug, Default, Serialize)]
pub(super) struct Observer<'a> {
    /// The sensor's name: the event's source.
    pub name: Text<'a>,
    /// `zeek` or `suricata`.
    pub product: &'static str,
}

/// `source.*` or `destination.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Endpoint<'a> {
    pub ip: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `network.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Network<'a> {
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`...: lowercase, as ECS writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Text<'a>>,
    /// The application protocol when the sensor recognised one (`http`, `dns`, `tls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub community_id: Option<Text<'a>>,
}

/// `dns.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Dns<'a> {
    /// `query` or `answer`, when the sensor says which.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<DnsQuestion<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<DnsAnswer<'a>>,
    /// The answers that are addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved_ip: Vec<Text<'a>>,
    /// `NOERROR`, `NXDOMAIN`...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<Text<'a>>,
}

/// `dns.question.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct DnsQuestion<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text<'a>>,
    /// `A`, `AAAA`, `PTR`...
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Text<'a>>,
}

/// One of `dns.answers`.
#[derive(Debug, Default, Serialize)]
pub(super) struct DnsAnswer<'a> {
    /// An address for A and AAAA records, a name for CNAME and PTR...
    pub data: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text<'a>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Text<'a>>,
}

impl<'a> Dns<'a> {
    /// Adds an answer, and its data to `resolved_ip` when it is an address. The type is
    /// taken from the address when the sensor does not give it (Zeek does not).
    pub fn answer(&mut self, data: Text<'a>, name: Option<Text<'a>>, kind: Option<Text<'a>>) {
        let ip = data.parse::<std::net::IpAddr>().ok();
        let kind = kind.or(match ip {
            Some(std::net::IpAddr::V4(_)) => Some(Text::Borrowed("A")),
            Some(std::net::IpAddr::V6(_)) => Some(Text::Borrowed("AAAA")),
            None => None,
        });
        if ip.is_some() && !self.resolved_ip.contains(&data) {
            self.resolved_ip.push(data.clone());
        }
        self.answers.push(DnsAnswer { data, name, kind });
    }
}

/// `url.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Url<'a> {
    /// The request target as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Text<'a>>,
}

impl<'a> Url<'a> {
    /// The URL of a cleartext HTTP request to `host` (the Host header, which may carry a
    /// port; `port` is added when it does not and is not 80) for `target`, the request target:
    /// a path (`/a?b`), an absolute URL (through a proxy), or an authority (`CONNECT`).
    pub fn of_request(host: Option<&'a str>, port: Option<u16>, target: &'a str) -> Self {
        let domain = host.map(|h| Text::Borrowed(host_name(h)));
        let mut url = Url { original: Some(Text::Borrowed(target)), domain, ..Url::default() };
        let path_and_query = if let Some(rest) =
            target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))
        {
            url.full = Some(Text::Borrowed(target));
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            if url.domain.is_none() && !authority.is_empty() {
                url.domain = Some(Text::Borrowed(host_name(authority)));
            }
            path
        } else if target.starts_with('/') {
            if let Some(host) = host {
                let port = port.filter(|&p| p != 80 && !has_port(host));
                url.full = Some(Text::Owned(match port {
                    Some(p) => format!("http://{host}:{p}{target}"),
                    None => format!("http://{host}{target}"),
                }));
            }
            target
        } else {
            // `CONNECT host:port`, `OPTIONS *`: no path to speak of.
            ""
        };
        if !path_and_query.is_empty() {
            let (path, query) = match path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path_and_query, None),
            };
            url.path = Some(Text::Borrowed(path));
            url.query = query.filter(|q| !q.is_empty()).map(Text::Borrowed);
        }
        url
    }
}

/// A Host header without its port: `example.com:8080` → `example.com`, `[::1]:80` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // One colon: a port. More than one: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn has_port(host: &str) -> bool {
    host_name(host).len() != host.trim_start_matches('[').trim_end_matches(']').len()
}

/// `http.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Http<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequest<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpResponse>,
}

/// `http.request.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct HttpRequest<'a> {
    pub method: Text<'a>,
}

/// `http.response.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct HttpResponse {
    pub status_code: u16,
}

/// `user_agent.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct UserAgent<'a> {
    pub original: Text<'a>,
}

/// `tls.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Tls<'a> {
    pub client: TlsClient<'a>,
}

/// `tls.client.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct TlsClient<'a> {
    /// The SNI.
    pub server_name: Text<'a>,
}

/// `file.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct File<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `user.*`.
#[derive(Debug, Default, Serialize)]
pub(super) struct User<'a> {
    pub name: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Text<'a>>,
}

/// `rule.*`: the detection that raised an alert.
#[derive(Debug, Default, Serialize)]
pub(super) struct Rule<'a> {
    pub name: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Text<'a>>,
}

/// The payload: `doc`'s fields, then the sensor's record under `key`. `write_record` writes the
/// record as JSON; the record is not parsed again (a JSON line is copied as it came).
pub(super) fn payload(
    doc: &Doc<'_>,
    key: &str,
    write_record: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, doc)?;
    // A struct serializes as `{...}`: reopen it for one more member.
    out.pop();
    if out.len() > 1 {
        out.push(b',');
    }
    serde_json::to_writer(&mut out, key)?;
    out.push(b':');
    write_record(&mut out)?;
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_follows_the_ecs_fields_in_one_object() {
        let empty = payload(&Doc::default(), "zeek", |out| {
            out.extend_from_slice(b"{\"uid\":\"C1\"}");
            Ok(())
        })
        .unwrap();
        assert_eq!(empty, br#"{"zeek":{"uid":"C1"}}"#);
        let doc = Doc { message: Some("hi".into()), ..Doc::default() };
        let full = payload(&doc, "zeek", |out| serde_json::to_writer(out, &1)).unwrap();
        assert_eq!(full, br#"{"message":"hi","zeek":1}"#);
    }

    #[test]
    fn request_targets_become_urls() {
        let u = Url::of_request(Some("example.org"), Some(80), "/a/b?x=1");
        assert_eq!(u.full.as_deref(), Some("http://example.org/a/b?x=1"));
        assert_eq!((u.path.as_deref(), u.query.as_deref()), (Some("/a/b"), Some("x=1")));
        let u = Url::of_request(Some("example.org"), Some(8080), "/");
        assert_eq!(u.full.as_deref(), Some("http://example.org:8080/"));
        let u = Url::of_request(Some("example.org:8080"), Some(8080), "/");
        assert_eq!(u.full.as_deref(), Some("http://example.org:8080/"));
        assert_eq!(u.domain.as_deref(), Some("example.org"));
        let u = Url::of_request(None, None, "http://proxied.example/p");
        assert_eq!(u.full.as_deref(), Some("http://proxied.example/p"));
        assert_eq!((u.domain.as_deref(), u.path.as_deref()), (Some("proxied.example"), Some("/p")));
        let u = Url::of_request(Some("tunnel.example:443"), None, "tunnel.example:443");
        assert_eq!((u.full, u.path), (None, None));
        assert_eq!(host_name("[2001:db8::1]:8080"), "2001:db8::1");
        assert_eq!(host_name("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn answers_that_are_addresses_are_typed_and_resolved() {
        let mut dns = Dns::default();
        dns.answer("alias.example".into(), None, None);
        dns.answer("192.0.2.7".into(), None, None);
        dns.answer("2001:db8::7".into(), None, None);
        dns.answer("192.0.2.7".into(), None, Some("A".into()));
        let kinds: Vec<_> = dns.answers.iter().map(|a| a.kind.as_deref()).collect();
        assert_eq!(kinds, [None, Some("A"), Some("AAAA"), Some("A")]);
        assert_eq!(dns.resolved_ip, ["192.0.2.7", "2001:db8::7"]);
    }
}
