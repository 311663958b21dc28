//! `storyline ingest --url http://HOST:PORT --token T`: posts the events to a remote host's
//! HTTP API (see [`crate::http`]) and prints its answer as a local ingest prints its own.
//!
//! A plain HTTP/1.1 client over a TCP stream: one request, `Connection: close`, the file sent
//! as it is read with its length declared. No TLS: a remote host behind a TLS proxy is reached
//! with `curl`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use anyhow::{Context, bail};

/// Where to post: `http://host[:port][/prefix]`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port`.
    authority: String,
    /// The path before `/v1/...`, without its trailing `/` (usually empty).
    prefix: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!(
            "--url {url}: only http://HOST:PORT is supported (for https, post with curl; see README \"HTTP API\")"
        );
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        bail!("--url {url}: no host (expected http://HOST:PORT)");
    }
    let authority =
        if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Ok(Target { authority, prefix: prefix.to_string() })
}

/// Posts `file` (or stdin) to the tenant's events on the host at `url`.
pub fn ingest_remote(
    url: &str,
    token: &str,
    tenant: &crate::model::TenantId,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let target = parse_url(url)?;
    let (mut body, length): (Box<dyn Read>, u64) = match file {
        Some(p) if p != Path::new("-") => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let len = f.metadata().with_context(|| format!("cannot read {}", p.display()))?.len();
            (Box::new(f), len)
        }
        _ => {
            let mut all = Vec::new();
            std::io::stdin().read_to_end(&mut all).context("cannot read stdin")?;
            let len = all.len() as u64;
            (Box::new(std::io::Cursor::new(all)), len)
        }
    };
    let name = file.map_or("stdin".to_string(), |p| p.display().to_string());
    let started = std::time::Instant::now();
    let mut conn = TcpStream::connect(&target.authority).with_context(|| {
        format!("cannot connect to {url} (is `storyline run --http-addr` serving there?)")
    })?;
    let head = format!(
        "POST {}/v1/tenants/{tenant}/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        target.prefix, target.authority
    );
    // A host that refuses early (a bad token, a body too large) answers and closes while the
    // body is still being sent: its answer is read all the same.
    let sent = conn.write_all(head.as_bytes()).and_then(|()| {
        std::io::copy(&mut body, &mut conn)?;
        conn.flush()
    });
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    if answer.is_empty() {
        sent.with_context(|| format!("cannot send the events to {url}"))?;
        read.with_context(|| format!("no answer from {url}"))?;
        bail!("{url} closed the connection without an answer; the events may not be stored");
    }
    let answer = String::from_utf8_lossy(&answer);
    let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let text = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if status != 200 {
        let message = json["message"].as_str().unwrap_or(text.trim());
        bail!("{url} refused the events ({status}): {message}");
    }
    let count = |key: &str| json[key].as_u64().unwrap_or(0);
    let (accepted, rejected) = (count("accepted"), count("rejected"));
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: accepted {accepted} events ({:.0} events/s) into tenant {tenant} at {url} ({} shards, {} ms buckets); rejected {rejected} lines",
        accepted as f64 / secs.max(1e-9),
        count("shards"),
        json["bucket_ms"].as_i64().unwrap_or(0),
    );
    if let Some(router) = json["routed_by"].as_str() {
        eprintln!("{name}: routed by {router}");
    }
    let lines = json["rejected_lines"].as_array().into_iter().flatten().map(|line| {
        format!("{name} line {}: {}", line["line"], line["reason"].as_str().unwrap_or(""))
    });
    super::ingest_cmd::rejected_lines(lines, rejected, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_host_port_and_an_optional_prefix() {
        let t = parse_url("http://10.0.0.5:8080").unwrap();
        assert_eq!(t, Target { authority: "10.0.0.5:8080".into(), prefix: String::new() });
        let t = parse_url("http://intake.example/storyline/").unwrap();
        assert_eq!(
            t,
            Target { authority: "intake.example:80".into(), prefix: "/storyline".into() }
        );
        let e = parse_url("https://intake.example").unwrap_err().to_string();
        assert!(e.contains("only http://"), "{e}");
    }
}
