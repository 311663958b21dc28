//! Community ID v1: a direction-insensitive hash of a flow's 5-tuple.
//!
//! Sensors (Zeek, Suricata, Elastic Agent, ...) stamp each flow with the same Community ID, so
//! events about one connection can be joined across tools without sharing any state. The
//! algorithm is fixed by the public specification (corelight/community-id-spec):
//!
//! 1. ICMP and ICMPv6 type/code pairs are mapped onto ports: for request/reply message types the
//!    "ports" are (type, counterpart type), so a request and its reply land in one flow; any other
//!    type is *one-way*, keeps (type, code) and is never reordered.
//! 2. Unless the flow is one-way, the endpoints are ordered so the smaller one comes first:
//!    smaller address (network byte order), or equal addresses and smaller port. Both directions
//!    therefore hash alike.
//! 3. SHA-1 is taken over `seed (2 bytes) | src addr (4 or 16) | dst addr (4 or 16) | proto (1) |
//!    0 (1) | src port (2) | dst port (2)`, all big-endian. Ports are left out for protocols that
//!    have none (anything but TCP, UDP, SCTP, ICMP and ICMPv6, e.g. RSVP).
//! 4. The result is printed as `1:` followed by the base64 (default) or hex digest.
//!
//! Two choices go beyond the spec, both to match what sensors emit:
//!
//! - Protocol 1 (ICMP) with two IPv6 addresses is hashed as ICMPv6 (58), as Zeek does: ICMPv4
//!   cannot travel over IPv6, and Zeek's `conn.log` labels ICMPv6 flows `icmp`.
//! - Mixed IPv4/IPv6 tuples are hashed as given (4 + 16 address bytes), ordered by plain byte-wise
//!   comparison; the spec neither defines nor forbids them.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// IANA protocol numbers used by Community ID.
pub mod proto {
    /// Internet Control Message Protocol (IPv4).
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// Stream Control Transmission Protocol.
    pub const SCTP: u8 = 132;
}

/// Every Community ID v1 string starts with the version and a colon.
const VERSION_PREFIX: &str = "1:";

/// A flow's endpoints and transport protocol, in the direction a sensor saw them.
///
/// For ICMP and ICMPv6, `src_port` is the ICMP type and `dst_port` the ICMP code, as sensors
/// report them; the hasher applies the spec's type/code mapping. Zeek's convention (type,
/// counterpart type) gives the same id, since the code is ignored for request/reply types.
/// For protocols without ports (neither TCP, UDP, SCTP, ICMP nor ICMPv6) the ports are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Source (originator) address.
    pub src_ip: IpAddr,
    /// Destination (responder) address.
    pub dst_ip: IpAddr,
    /// IANA protocol number, e.g. [`proto::TCP`].
    pub proto: u8,
    /// Source port, or the ICMP type.
    pub src_port: u16,
    /// Destination port, or the ICMP code.
    pub dst_port: u16,
}

impl FlowTuple {
    /// Builds a tuple; arguments come in the order flow records usually list them.
    #[must_use]
    pub const fn new(
        src_ip: IpAddr,
        src_port: u16,
        dst_ip: IpAddr,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self { src_ip, dst_ip, proto, src_port, dst_port }
    }
}

/// Community ID v1 hasher with a given seed.
///
/// The seed lets a site keep its ids apart from other sites' ids; every tool that must agree
/// on ids needs the same seed. The default, 0, is what sensors use unless configured otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommunityId {
    /// Seed hashed in front of the tuple (big-endian).
    pub seed: u16,
}

impl CommunityId {
    /// Creates a hasher with the given seed.
    #[must_use]
    pub const fn new(seed: u16) -> Self {
        Self { seed }
    }

    /// Raw SHA-1 digest of the tuple; allocation-free, for use as a compact map key.
    #[must_use]
    pub fn digest(&self, t: &FlowTuple) -> [u8; 20] {
        let proto = effective_proto(t);
        let has_ports = carries_ports(proto);
        let (src_port, dst_port, one_way) = match proto {
            proto::ICMP => icmp_ports(icmp4_counterpart, t.src_port, t.dst_port),
            proto::ICMPV6 => icmp_ports(icmp6_counterpart, t.src_port, t.dst_port),
            _ => (t.src_port, t.dst_port, false),
        };
        let src = Octets::of(t.src_ip);
        let dst = Octets::of(t.dst_ip);
        let (src, dst) = (src.as_slice(), dst.as_slice());
        // Same rule as the reference implementation: keep the order if one-way, if the source
        // address is smaller, or if the addresses are equal and the source port is smaller.
        let keep = one_way || src < dst || (src == dst && has_ports && src_port < dst_port);
        let (a, a_port, b, b_port) =
            if keep { (src, src_port, dst, dst_port) } else { (dst, dst_port, src, src_port) };

        let mut h = Sha1::new();
        h.update(self.seed.to_be_bytes());
        h.update(a);
        h.update(b);
        h.update([proto, 0]);
        if has_ports {
            h.update(a_port.to_be_bytes());
            h.update(b_port.to_be_bytes());
        }
        h.finalize().into()
    }

    /// `1:` and the base64 digest: the usual printed form.
    #[must_use]
    pub fn base64(&self, t: &FlowTuple) -> String {
        let digest = self.digest(t);
        // "1:" + 28 base64 characters for 20 bytes.
        let mut out = String::with_capacity(VERSION_PREFIX.len() + 28);
        out.push_str(VERSION_PREFIX);
        STANDARD.encode_string(digest, &mut out);
        out
    }

    /// `1:` and the lowercase hex digest (the spec's "no base64" form).
    #[must_use]
    pub fn hex(&self, t: &FlowTuple) -> String {
        let digest = self.digest(t);
        let mut out = String::with_capacity(VERSION_PREFIX.len() + 2 * digest.len());
        out.push_str(VERSION_PREFIX);
        for byte in digest {
            // Nibbles are always below 16, so `from_digit` never falls back.
            out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(byte & 0x0f), 16).unwrap_or('0'));
        }
        out
    }
}

/// Seed 0, base64: the form sensors write into `network.community_id`.
#[must_use]
pub fn community_id(t: &FlowTuple) -> String {
    CommunityId::default().base64(t)
}

/// Maps a transport name or number, as sensors log it, to its IANA protocol number.
///
/// Accepts `tcp`, `udp`, `icmp`, `ipv6-icmp` / `icmpv6` / `icmp6` and `sctp` in any ASCII case,
/// and any all-digit decimal 0..=255. Anything else (including signs and whitespace) is `None`,
/// so a caller can skip the id rather than hash the wrong protocol.
#[must_use]
pub fn transport_number(name: &str) -> Option<u8> {
    const NAMES: [(&str, u8); 7] = [
        ("tcp", proto::TCP),
        ("udp", proto::UDP),
        ("icmp", proto::ICMP),
        ("ipv6-icmp", proto::ICMPV6),
        ("icmpv6", proto::ICMPV6),
        ("icmp6", proto::ICMPV6),
        ("sctp", proto::SCTP),
    ];
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        // `u8::from_str` also takes a leading '+'; the digit check above rules that out.
        return name.parse().ok();
    }
    NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, p)| p)
}

/// An address in network byte order: 4 bytes for IPv4, 16 for IPv6.
enum Octets {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Octets {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a.octets()),
            IpAddr::V6(a) => Self::V6(a.octets()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::V4(b) => b,
            Self::V6(b) => b,
        }
    }
}

/// The protocol number that goes into the hash (see the module docs on ICMP over IPv6).
fn effective_proto(t: &FlowTuple) -> u8 {
    if t.proto == proto::ICMP && t.src_ip.is_ipv6() && t.dst_ip.is_ipv6() {
        proto::ICMPV6
    } else {
        t.proto
    }
}

/// Whether the spec hashes ports for this protocol.
fn carries_ports(proto: u8) -> bool {
    matches!(proto, proto::ICMP | proto::TCP | proto::UDP | proto::ICMPV6 | proto::SCTP)
}

/// ICMP type/code to (port, port, one-way): request/reply types become (type, counterpart),
/// every other type stays (type, code) and is one-way.
fn icmp_ports(counterpart: fn(u16) -> Option<u16>, ty: u16, code: u16) -> (u16, u16, bool) {
    match counterpart(ty) {
        Some(other) => (ty, other, false),
        None => (ty, code, true),
    }
}

/// ICMPv4 request/reply pairs: echo, router advert/solicit, timestamp, info, address mask.
fn icmp4_counterpart(ty: u16) -> Option<u16> {
    Some(match ty {
        0 => 8,
        8 => 0,
        9 => 10,
        10 => 9,
        13 => 14,
        14 => 13,
        15 => 16,
        16 => 15,
        17 => 18,
        18 => 17,
        _ => return None,
    })
}

/// ICMPv6 request/reply pairs: echo, MLD query/report, router and neighbor discovery,
/// who-are-you, home agent address discovery.
fn icmp6_counterpart(ty: u16) -> Option<u16> {
    Some(match ty {
        128 => 129,
        129 => 128,
        130 => 131,
        131 => 130,
        133 => 134,
        134 => 133,
        135 => 136,
        136 => 135,
        139 => 140,
        140 => 139,
        144 => 145,
        145 => 144,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    //! Known answers from the Community ID spec repository and the Zeek test suite, copied here
    //! as data so the tests need no files.

    use super::*;

    /// RSVP, the spec's example of a protocol without ports.
    const RSVP: u8 = 46;

    /// Printed form a vector is given in.
    #[derive(Debug, Clone, Copy)]
    enum Form {
        B64,
        Hex,
    }
    use Form::{B64, Hex};

    /// One known answer: seed, tuple as (proto, src, src port, dst, dst port), expected id.
    #[derive(Debug)]
    struct Vector {
        seed: u16,
        proto: u8,
        src: &'static str,
        src_port: u16,
        dst: &'static str,
        dst_port: u16,
        form: Form,
        id: &'static str,
    }

    #[allow(clippy::too_many_arguments)]
    const fn v(
        seed: u16,
        proto: u8,
        src: &'static str,
        src_port: u16,
        dst: &'static str,
        dst_port: u16,
        form: Form,
        id: &'static str,
    ) -> Vector {
        Vector { seed, proto, src, src_port, dst, dst_port, form, id }
    }

    /// All 23 tuples of the spec's `baseline_deflt.json` (seed 0, base64). ICMP ports follow Zeek:
    /// (type, counterpart type) for request/reply types. RSVP rows have no ports (0 here).
    #[rustfmt::skip]
    const BASELINE_DEFLT: &[Vector] = &[
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 135, "fe80::260:97ff:fe07:69ea", 136, B64, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 136, "fe80::200:86ff:fe05:80da", 135, B64, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 135, "fe80::200:86ff:fe05:80da", 136, B64, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 136, "fe80::260:97ff:fe07:69ea", 135, B64, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
        v(0, proto::ICMPV6, "3ffe:501:1800:2345::2", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, B64, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
        v(0, proto::ICMPV6, "3ffe:501:410:0:2c0:dfff:fe47:33e", 1, "3ffe:507:0:1:200:86ff:fe05:80da", 4, B64, "1:hLZd0XGWojozrvxqE0dWB1iM6R0="),
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 128, "3ffe:501:0:1001::2", 129, B64, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
        v(0, proto::ICMPV6, "3ffe:501:0:1001::2", 129, "3ffe:507:0:1:200:86ff:fe05:80da", 128, B64, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 133, "ff02::2", 134, B64, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 134, "ff02::1", 133, B64, "1:pkvHqCL88/tg1k4cPigmZXUtL00="),
        v(0, proto::ICMP, "192.168.0.89", 8, "192.168.0.1", 0, B64, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        v(0, proto::ICMP, "192.168.0.1", 0, "192.168.0.89", 8, B64, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        v(0, proto::ICMP, "10.0.0.1", 11, "10.0.0.2", 0, B64, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
        v(0, proto::TCP, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, "2607:f8b0:400c:c03::1a", 25, B64, "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
        v(0, proto::TCP, "2607:f8b0:400c:c03::1a", 25, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, B64, "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
        v(0, proto::SCTP, "192.168.170.8", 7, "192.168.170.56", 7, B64, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
        v(0, proto::SCTP, "192.168.170.56", 7, "192.168.170.8", 7, B64, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
        v(0, proto::TCP, "128.232.110.120", 34855, "66.35.250.204", 80, B64, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        v(0, proto::TCP, "66.35.250.204", 80, "128.232.110.120", 34855, B64, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        v(0, proto::UDP, "192.168.1.52", 54585, "8.8.8.8", 53, B64, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
        v(0, proto::UDP, "8.8.8.8", 53, "192.168.1.52", 54585, B64, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
        v(0, RSVP, "10.1.12.1", 0, "10.1.12.2", 0, B64, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
        v(0, RSVP, "10.1.12.2", 0, "10.1.12.1", 0, B64, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    ];

    /// All 23 tuples of the spec's `baseline_seed1.json` (seed 1, base64). ICMP ports follow Zeek:
    /// (type, counterpart type) for request/reply types. RSVP rows have no ports (0 here).
    #[rustfmt::skip]
    const BASELINE_SEED1: &[Vector] = &[
        v(1, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 135, "fe80::260:97ff:fe07:69ea", 136, B64, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
        v(1, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 136, "fe80::200:86ff:fe05:80da", 135, B64, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
        v(1, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 135, "fe80::200:86ff:fe05:80da", 136, B64, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
        v(1, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 136, "fe80::260:97ff:fe07:69ea", 135, B64, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
        v(1, proto::ICMPV6, "3ffe:501:1800:2345::2", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, B64, "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
        v(1, proto::ICMPV6, "3ffe:501:410:0:2c0:dfff:fe47:33e", 1, "3ffe:507:0:1:200:86ff:fe05:80da", 4, B64, "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
        v(1, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 128, "3ffe:501:0:1001::2", 129, B64, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
        v(1, proto::ICMPV6, "3ffe:501:0:1001::2", 129, "3ffe:507:0:1:200:86ff:fe05:80da", 128, B64, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
        v(1, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 133, "ff02::2", 134, B64, "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
        v(1, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 134, "ff02::1", 133, B64, "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
        v(1, proto::ICMP, "192.168.0.89", 8, "192.168.0.1", 0, B64, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
        v(1, proto::ICMP, "192.168.0.1", 0, "192.168.0.89", 8, B64, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
        v(1, proto::ICMP, "10.0.0.1", 11, "10.0.0.2", 0, B64, "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
        v(1, proto::TCP, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, "2607:f8b0:400c:c03::1a", 25, B64, "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
        v(1, proto::TCP, "2607:f8b0:400c:c03::1a", 25, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, B64, "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
        v(1, proto::SCTP, "192.168.170.8", 7, "192.168.170.56", 7, B64, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
        v(1, proto::SCTP, "192.168.170.56", 7, "192.168.170.8", 7, B64, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
        v(1, proto::TCP, "128.232.110.120", 34855, "66.35.250.204", 80, B64, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
        v(1, proto::TCP, "66.35.250.204", 80, "128.232.110.120", 34855, B64, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
        v(1, proto::UDP, "192.168.1.52", 54585, "8.8.8.8", 53, B64, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
        v(1, proto::UDP, "8.8.8.8", 53, "192.168.1.52", 54585, B64, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
        v(1, RSVP, "10.1.12.1", 0, "10.1.12.2", 0, B64, "1:rYir8gphR31noO9iDRQmF/BteEI="),
        v(1, RSVP, "10.1.12.2", 0, "10.1.12.1", 0, B64, "1:rYir8gphR31noO9iDRQmF/BteEI="),
    ];

    /// All 23 tuples of the spec's `baseline_nob64.json` (seed 0, hex). ICMP ports follow Zeek:
    /// (type, counterpart type) for request/reply types. RSVP rows have no ports (0 here).
    #[rustfmt::skip]
    const BASELINE_NOB64: &[Vector] = &[
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 135, "fe80::260:97ff:fe07:69ea", 136, Hex, "1:7461f21af8cc7e58e0e81a69c26ddb8342cef136"),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 136, "fe80::200:86ff:fe05:80da", 135, Hex, "1:7461f21af8cc7e58e0e81a69c26ddb8342cef136"),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 135, "fe80::200:86ff:fe05:80da", 136, Hex, "1:cdabf24ff71ecd0af57e6226602c189cc5db81c9"),
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 136, "fe80::260:97ff:fe07:69ea", 135, Hex, "1:cdabf24ff71ecd0af57e6226602c189cc5db81c9"),
        v(0, proto::ICMPV6, "3ffe:501:1800:2345::2", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, Hex, "1:d8e6d5060227dbca19be26d866164c06087b59d4"),
        v(0, proto::ICMPV6, "3ffe:501:410:0:2c0:dfff:fe47:33e", 1, "3ffe:507:0:1:200:86ff:fe05:80da", 4, Hex, "1:84b65dd17196a23a33aefc6a13475607588ce91d"),
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 128, "3ffe:501:0:1001::2", 129, Hex, "1:f935be1ed2c7bd5d719c6855d65bfb5e826ba908"),
        v(0, proto::ICMPV6, "3ffe:501:0:1001::2", 129, "3ffe:507:0:1:200:86ff:fe05:80da", 128, Hex, "1:f935be1ed2c7bd5d719c6855d65bfb5e826ba908"),
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 133, "ff02::2", 134, Hex, "1:84efac3781fe306e4c63ff2122b5cfa9ce19433d"),
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 134, "ff02::1", 133, Hex, "1:a64bc7a822fcf3fb60d64e1c3e282665752d2f4d"),
        v(0, proto::ICMP, "192.168.0.89", 8, "192.168.0.1", 0, Hex, "1:5f4b27617a60c22bfd4d9b6a83ae2c833527e839"),
        v(0, proto::ICMP, "192.168.0.1", 0, "192.168.0.89", 8, Hex, "1:5f4b27617a60c22bfd4d9b6a83ae2c833527e839"),
        v(0, proto::ICMP, "10.0.0.1", 11, "10.0.0.2", 0, Hex, "1:607c6d022ac21bfff43b391c540ba4a8a40df713"),
        v(0, proto::TCP, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, "2607:f8b0:400c:c03::1a", 25, Hex, "1:fea15a78047e8057b52988cccd50ec32ffb0814e"),
        v(0, proto::TCP, "2607:f8b0:400c:c03::1a", 25, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, Hex, "1:fea15a78047e8057b52988cccd50ec32ffb0814e"),
        v(0, proto::SCTP, "192.168.170.8", 7, "192.168.170.56", 7, Hex, "1:30fd84b5108050866f4f0e8cc491cb57b37b243b"),
        v(0, proto::SCTP, "192.168.170.56", 7, "192.168.170.8", 7, Hex, "1:30fd84b5108050866f4f0e8cc491cb57b37b243b"),
        v(0, proto::TCP, "128.232.110.120", 34855, "66.35.250.204", 80, Hex, "1:2d053da9994af81e45dca0e67afea6e4f3226eb8"),
        v(0, proto::TCP, "66.35.250.204", 80, "128.232.110.120", 34855, Hex, "1:2d053da9994af81e45dca0e67afea6e4f3226eb8"),
        v(0, proto::UDP, "192.168.1.52", 54585, "8.8.8.8", 53, Hex, "1:77f14fe445b7c22635bc29dd87095e451287a304"),
        v(0, proto::UDP, "8.8.8.8", 53, "192.168.1.52", 54585, Hex, "1:77f14fe445b7c22635bc29dd87095e451287a304"),
        v(0, RSVP, "10.1.12.1", 0, "10.1.12.2", 0, Hex, "1:28794b920a095bb89f513c934a0c957e4147ccac"),
        v(0, RSVP, "10.1.12.2", 0, "10.1.12.1", 0, Hex, "1:28794b920a095bb89f513c934a0c957e4147ccac"),
    ];

    /// All 48 rows of the spec README's tables (16 tuples x default / seed 1 / hex).
    /// ICMP ports are (type, code); RSVP rows have no ports (0 here).
    #[rustfmt::skip]
    const README_TABLES: &[Vector] = &[
        // Default settings
        v(0, proto::TCP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:wCb3OG7yAFWelaUydu0D+125CLM="), // Bidirectional flow, out ...
        v(0, proto::TCP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:wCb3OG7yAFWelaUydu0D+125CLM="), // ... and back
        v(0, proto::UDP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="), // Bidirectional flow, out ...
        v(0, proto::UDP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="), // ... and back
        v(0, proto::SCTP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="), // Bidirectional flow, out ...
        v(0, proto::SCTP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="), // ... and back
        v(0, proto::ICMP, "1.2.3.4", 8, "5.6.7.8", 0, B64, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="), // ICMP flow treatment via types/codes: echo request ...
        v(0, proto::ICMP, "5.6.7.8", 0, "1.2.3.4", 0, B64, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="), // ... and response
        v(0, proto::ICMP, "1.2.3.4", 11, "5.6.7.8", 0, B64, "1:f/YiSyWqczrTgfUCZlBUnvHRcPk="), // Unidirectional ICMP treatment
        v(0, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 128, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="), // ICMP flow treatment via types/codes: echo request ...
        v(0, proto::ICMPV6, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 129, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, B64, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="), // ... and response
        v(0, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 146, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:fYC8+pz24E+EhANP1EZhpX0Dw10="), // Unidirectional treatment
        v(0, RSVP, "1.2.3.4", 0, "5.6.7.8", 0, B64, "1:ikv3kmf89luf73WPz1jOs49S768="), // Example of port-less but bidirectional protocol, out ...
        v(0, RSVP, "5.6.7.8", 0, "1.2.3.4", 0, B64, "1:ikv3kmf89luf73WPz1jOs49S768="), // ... and back
        v(0, RSVP, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="), // Port-less example for IPv6, out ...
        v(0, RSVP, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, B64, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0="), // ... and back
        // A custom seed=1 value
        v(1, proto::TCP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="), // Bidirectional flow, out ...
        v(1, proto::TCP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="), // ... and back
        v(1, proto::UDP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="), // Bidirectional flow, out ...
        v(1, proto::UDP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="), // ... and back
        v(1, proto::SCTP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="), // Bidirectional flow, out ...
        v(1, proto::SCTP, "5.6.7.8", 3344, "1.2.3.4", 1122, B64, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="), // ... and back
        v(1, proto::ICMP, "1.2.3.4", 8, "5.6.7.8", 0, B64, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="), // ICMP flow treatment via types/codes: echo request ...
        v(1, proto::ICMP, "5.6.7.8", 0, "1.2.3.4", 0, B64, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="), // ... and response
        v(1, proto::ICMP, "1.2.3.4", 11, "5.6.7.8", 0, B64, "1:1DD7cWGC/Yg91YGsQeni8du3pIA="), // Unidirectional ICMP treatment
        v(1, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 128, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="), // ICMP flow treatment via types/codes: echo request ...
        v(1, proto::ICMPV6, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 129, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, B64, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="), // ... and response
        v(1, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 146, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s="), // Unidirectional treatment
        v(1, RSVP, "1.2.3.4", 0, "5.6.7.8", 0, B64, "1:/buhqeOmaRCopOZFy9HnoJd5XW8="), // Example of port-less but bidirectional protocol, out ...
        v(1, RSVP, "5.6.7.8", 0, "1.2.3.4", 0, B64, "1:/buhqeOmaRCopOZFy9HnoJd5XW8="), // ... and back
        v(1, RSVP, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, B64, "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="), // Port-less example for IPv6, out ...
        v(1, RSVP, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, B64, "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="), // ... and back
        // No base64-encoding
        v(0, proto::TCP, "1.2.3.4", 1122, "5.6.7.8", 3344, Hex, "1:c026f7386ef200559e95a53276ed03fb5db908b3"), // Bidirectional flow, out ...
        v(0, proto::TCP, "5.6.7.8", 3344, "1.2.3.4", 1122, Hex, "1:c026f7386ef200559e95a53276ed03fb5db908b3"), // ... and back
        v(0, proto::UDP, "1.2.3.4", 1122, "5.6.7.8", 3344, Hex, "1:d0cbbd227431eb3e1988264cffb1d78b658c84e8"), // Bidirectional flow, out ...
        v(0, proto::UDP, "5.6.7.8", 3344, "1.2.3.4", 1122, Hex, "1:d0cbbd227431eb3e1988264cffb1d78b658c84e8"), // ... and back
        v(0, proto::SCTP, "1.2.3.4", 1122, "5.6.7.8", 3344, Hex, "1:10ab7832cc6ec9a13a98bfa19ab12443d72c0c3f"), // Bidirectional flow, out ...
        v(0, proto::SCTP, "5.6.7.8", 3344, "1.2.3.4", 1122, Hex, "1:10ab7832cc6ec9a13a98bfa19ab12443d72c0c3f"), // ... and back
        v(0, proto::ICMP, "1.2.3.4", 8, "5.6.7.8", 0, Hex, "1:72ba1d4472f6144b078dbbf752446b7dbb386d9d"), // ICMP flow treatment via types/codes: echo request ...
        v(0, proto::ICMP, "5.6.7.8", 0, "1.2.3.4", 0, Hex, "1:72ba1d4472f6144b078dbbf752446b7dbb386d9d"), // ... and response
        v(0, proto::ICMP, "1.2.3.4", 11, "5.6.7.8", 0, Hex, "1:7ff6224b25aa733ad381f5026650549ef1d170f9"), // Unidirectional ICMP treatment
        v(0, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 128, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, Hex, "1:d1b7fb872309530b777cc103ef3f0b21f46905ea"), // ICMP flow treatment via types/codes: echo request ...
        v(0, proto::ICMPV6, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 129, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, Hex, "1:d1b7fb872309530b777cc103ef3f0b21f46905ea"), // ... and response
        v(0, proto::ICMPV6, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 146, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, Hex, "1:7d80bcfa9cf6e04f8484034fd44661a57d03c35d"), // Unidirectional treatment
        v(0, RSVP, "1.2.3.4", 0, "5.6.7.8", 0, Hex, "1:8a4bf79267fcf65b9fef758fcf58ceb38f52efaf"), // Example of port-less but bidirectional protocol, out ...
        v(0, RSVP, "5.6.7.8", 0, "1.2.3.4", 0, Hex, "1:8a4bf79267fcf65b9fef758fcf58ceb38f52efaf"), // ... and back
        v(0, RSVP, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, Hex, "1:c10ff69b0ae75cfe259897077462f978f8d1f9ed"), // Port-less example for IPv6, out ...
        v(0, RSVP, "fe80:1011:1213:1415:1617:1819:1A1B:1C1D", 0, "fe80:0001:0203:0405:0607:0809:0A0B:0C0D", 0, Hex, "1:c10ff69b0ae75cfe259897077462f978f8d1f9ed"), // ... and back
    ];

    /// 29 of the 31 ids Zeek computes for connection ids (Zeek test suite), all seed
    /// as given and base64. ICMP ports follow Zeek; ports Zeek does not know are 0.
    ///
    /// Left out: the 2 rows with protocol 65535, for which Zeek returns an empty id ("no
    /// transport protocol known"). `FlowTuple::proto` is an IANA number (`u8`), so an unknown
    /// transport cannot be expressed; such input stops at `transport_number`, which returns
    /// `None` (tested in `transport_names_and_numbers`), and the caller emits no id.
    #[rustfmt::skip]
    const ZEEK_BIF: &[Vector] = &[
        v(0, proto::ICMP, "192.168.0.89", 8, "192.168.0.1", 0, B64, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="), // icmp.pcap
        v(0, proto::ICMPV6, "3ffe:501:0:1802:260:97ff:feb6:7ff0", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, B64, "1:bnQKq8A2r//dWnkRW2EYcMhShjc="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:501:1800:2345::2", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, B64, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:501:410:0:2c0:dfff:fe47:33e", 1, "3ffe:507:0:1:200:86ff:fe05:80da", 4, B64, "1:hLZd0XGWojozrvxqE0dWB1iM6R0="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 1, "3ffe:501:4819::42", 4, B64, "1:jwuBy9UWZK1KUFqJV5cHdVpfrlY="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 128, "3ffe:501:0:1001::2", 129, B64, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 128, "3ffe:507:0:1:260:97ff:fe07:69ea", 129, B64, "1:GpbEQrKqfWtsfsFiqg8fufoZe5Y="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 135, "3ffe:507:0:1:260:97ff:fe07:69ea", 136, B64, "1:ORxAZfN3ld7Sv73/HQTNnvgxbpY="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:200:86ff:fe05:80da", 135, "ff02::1:ff07:69ea", 136, B64, "1:MEixa66kuz0OMvlQqnAIzP3n2xg="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:260:97ff:fe07:69ea", 135, "3ffe:507:0:1:200:86ff:fe05:80da", 136, B64, "1:BtEUCMYecYjJ7spEkVZDiCFaMTY="), // icmp6.pcap
        v(0, proto::ICMPV6, "3ffe:507:0:1:260:97ff:fe07:69ea", 3, "3ffe:507:0:1:200:86ff:fe05:80da", 0, B64, "1:NdobDX8PQNJbAyfkWxhtL2Pqp5w="), // icmp6.pcap
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 133, "ff02::2", 134, B64, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="), // icmp6.pcap
        v(0, proto::ICMPV6, "fe80::200:86ff:fe05:80da", 135, "fe80::260:97ff:fe07:69ea", 136, B64, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="), // icmp6.pcap
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 134, "ff02::1", 133, B64, "1:pkvHqCL88/tg1k4cPigmZXUtL00="), // icmp6.pcap
        v(0, proto::ICMPV6, "fe80::260:97ff:fe07:69ea", 135, "fe80::200:86ff:fe05:80da", 136, B64, "1:zavyT/cezQr1fmImYCwYnMXbgck="), // icmp6.pcap
        v(0, proto::TCP, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, "2607:f8b0:400c:c03::1a", 25, B64, "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="), // ipv6.pcap
        v(0, proto::SCTP, "192.168.170.8", 0, "192.168.170.56", 0, B64, "1:U5cVwrVgLshgANPmc8hKzEcqp1M="), // sctp.pcap: SCTP ports unknown to Zeek, hashed as 0/0 (real ports 7/7 give 1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=)
        v(0, proto::TCP, "128.232.110.120", 34855, "66.35.250.204", 80, B64, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="), // tcp.pcap
        v(0, proto::UDP, "192.168.1.52", 54585, "8.8.8.8", 53, B64, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="), // udp.pcap
        v(0, proto::TCP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:wCb3OG7yAFWelaUydu0D+125CLM="), // v1
        v(0, proto::UDP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="), // v1
        v(0, proto::ICMP, "1.2.3.4", 8, "5.6.7.8", 0, B64, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="), // v1
        v(0, proto::ICMP, "fe80:1:203:405:607:809:a0b:c0d", 128, "fe80:1011:1213:1415:1617:1819:1a1b:1c1d", 129, B64, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="), // v1: protocol 1 with IPv6 addresses is hashed as ICMPv6
        v(1, proto::TCP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="), // v1
        v(1, proto::UDP, "1.2.3.4", 1122, "5.6.7.8", 3344, B64, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="), // v1
        v(1, proto::ICMP, "1.2.3.4", 8, "5.6.7.8", 0, B64, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="), // v1
        v(1, proto::ICMP, "fe80:1:203:405:607:809:a0b:c0d", 128, "fe80:1011:1213:1415:1617:1819:1a1b:1c1d", 129, B64, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="), // v1: protocol 1 with IPv6 addresses is hashed as ICMPv6
        v(0, 10, "1.2.3.4", 0, "5.6.7.8", 0, B64, "1:7bYuQ7nyGBIQn7uDcQ5WraAnhWI="), // v1: port-less protocol, ports left out of the hash
        v(1, 10, "fe80:1:203:405:607:809:a0b:c0d", 0, "fe80:1011:1213:1415:1617:1819:1a1b:1c1d", 0, B64, "1:rcMO2BlHXpMNFXyyWqSDUQCBRBc="), // v1: port-less protocol, ports left out of the hash
    ];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("bad address {s:?} in test data: {e}"))
    }

    fn tuple(src: &str, src_port: u16, dst: &str, dst_port: u16, proto: u8) -> FlowTuple {
        FlowTuple::new(ip(src), src_port, ip(dst), dst_port, proto)
    }

    fn reversed(t: &FlowTuple) -> FlowTuple {
        FlowTuple::new(t.dst_ip, t.dst_port, t.src_ip, t.src_port, t.proto)
    }

    /// Checks every vector of a table, reporting all mismatches at once.
    fn check(table: &[Vector], expected_len: usize) {
        assert_eq!(table.len(), expected_len, "vector count");
        let failures: Vec<String> = table
            .iter()
            .filter_map(|vec| {
                let t = tuple(vec.src, vec.src_port, vec.dst, vec.dst_port, vec.proto);
                let cid = CommunityId::new(vec.seed);
                let got = match vec.form {
                    Form::B64 => cid.base64(&t),
                    Form::Hex => cid.hex(&t),
                };
                (got != vec.id).then(|| format!("{vec:?}: got {got}"))
            })
            .collect();
        assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn spec_baseline_default() {
        check(BASELINE_DEFLT, 23);
    }

    #[test]
    fn spec_baseline_seed1() {
        check(BASELINE_SEED1, 23);
    }

    #[test]
    fn spec_baseline_hex() {
        check(BASELINE_NOB64, 23);
    }

    #[test]
    fn spec_readme_tables() {
        check(README_TABLES, 48);
    }

    #[test]
    fn zeek_bif() {
        check(ZEEK_BIF, 29);
    }

    #[test]
    fn community_id_is_seed0_base64() {
        let all = [BASELINE_DEFLT, README_TABLES, ZEEK_BIF];
        for vec in all.iter().flat_map(|t| t.iter()) {
            if vec.seed == 0 && matches!(vec.form, Form::B64) {
                let t = tuple(vec.src, vec.src_port, vec.dst, vec.dst_port, vec.proto);
                assert_eq!(community_id(&t), vec.id, "{vec:?}");
            }
        }
    }

    #[test]
    fn printed_forms_encode_the_digest() {
        let all = [BASELINE_DEFLT, BASELINE_SEED1, BASELINE_NOB64, README_TABLES, ZEEK_BIF];
        for vec in all.iter().flat_map(|t| t.iter()) {
            let t = tuple(vec.src, vec.src_port, vec.dst, vec.dst_port, vec.proto);
            let cid = CommunityId::new(vec.seed);
            let digest = cid.digest(&t);
            let b64 = cid.base64(&t);
            let hex = cid.hex(&t);
            assert_eq!(b64.len(), 30, "{b64}");
            assert_eq!(hex.len(), 42, "{hex}");
            let decoded = STANDARD.decode(b64.strip_prefix("1:").expect("prefix")).expect("base64");
            assert_eq!(decoded, digest);
            let hex_digest: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, format!("1:{hex_digest}"));
        }
    }

    /// The hash input layout of the spec, built by hand for one TCP and one RSVP tuple.
    #[test]
    fn hash_input_layout() {
        let t = tuple("5.6.7.8", 3344, "1.2.3.4", 1122, proto::TCP);
        let mut input = vec![0, 1]; // seed 1
        input.extend([1, 2, 3, 4, 5, 6, 7, 8, proto::TCP, 0]);
        input.extend(1122u16.to_be_bytes());
        input.extend(3344u16.to_be_bytes());
        let expected: [u8; 20] = Sha1::digest(&input).into();
        assert_eq!(CommunityId::new(1).digest(&t), expected);

        let t = tuple("5.6.7.8", 9, "1.2.3.4", 9, RSVP);
        let input = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, RSVP, 0];
        let expected: [u8; 20] = Sha1::digest(input).into();
        assert_eq!(CommunityId::default().digest(&t), expected);
    }

    #[test]
    fn both_directions_hash_alike() {
        let addrs = [
            ("10.0.0.1", "10.0.0.2"),
            ("10.0.0.1", "10.0.0.1"),
            ("fe80::1", "fe80::2"),
            ("2001:db8::1", "2001:db8::1"),
            ("10.0.0.1", "2001:db8::1"),
            ("::ffff:10.0.0.1", "10.0.0.1"),
        ];
        let ports = [(0, 0), (80, 80), (1122, 3344), (65535, 1), (53, 0)];
        let protos = [proto::TCP, proto::UDP, proto::SCTP, RSVP, 10, 0, 255];
        for (a, b) in addrs {
            for (pa, pb) in ports {
                for p in protos {
                    for seed in [0, 1, u16::MAX] {
                        let t = tuple(a, pa, b, pb, p);
                        let cid = CommunityId::new(seed);
                        assert_eq!(cid.digest(&t), cid.digest(&reversed(&t)), "{t:?}");
                    }
                }
            }
        }
    }

    /// A request from A and its reply from B are one flow, for every request/reply type pair;
    /// the code does not matter for these types.
    #[test]
    fn icmp_request_and_reply_pair_up() {
        let v4: &[(u16, u16)] = &[(8, 0), (9, 10), (13, 14), (15, 16), (17, 18)];
        let v6: &[(u16, u16)] =
            &[(128, 129), (130, 131), (133, 134), (135, 136), (139, 140), (144, 145)];
        let cases = [
            ("192.0.2.1", "192.0.2.9", proto::ICMP, v4),
            ("fe80::9", "fe80::1", proto::ICMPV6, v6),
        ];
        for (a, b, p, pairs) in cases {
            for &(req, rep) in pairs {
                let request = tuple(a, req, b, 0, p);
                let reply = tuple(b, rep, a, 0, p);
                let reply_zeek_style = tuple(b, rep, a, req, p);
                let reply_odd_code = tuple(b, rep, a, 7, p);
                let id = community_id(&request);
                assert_eq!(community_id(&reply), id, "{request:?}");
                assert_eq!(community_id(&reply_zeek_style), id, "{request:?}");
                assert_eq!(community_id(&reply_odd_code), id, "{request:?}");
            }
        }
    }

    /// One-way ICMP types keep (type, code) and their direction, as the spec says.
    #[test]
    fn icmp_one_way_types_keep_direction() {
        for (a, b, p, ty) in [
            ("10.0.0.1", "10.0.0.2", proto::ICMP, 11),
            ("10.0.0.2", "10.0.0.1", proto::ICMP, 3),
            ("fe80::1", "fe80::2", proto::ICMPV6, 146),
            ("fe80::2", "fe80::1", proto::ICMPV6, 1),
        ] {
            let t = tuple(a, ty, b, 0, p);
            assert_ne!(community_id(&t), community_id(&reversed(&t)), "{t:?}");
            assert_ne!(
                community_id(&t),
                community_id(&tuple(a, ty, b, 1, p)),
                "code counts: {t:?}"
            );
        }
    }

    #[test]
    fn portless_protocols_ignore_ports() {
        for (a, b) in [("1.2.3.4", "5.6.7.8"), ("fe80::1", "fe80::2")] {
            for p in [RSVP, 10, 0, 255] {
                let zero = community_id(&tuple(a, 0, b, 0, p));
                assert_eq!(community_id(&tuple(a, 1122, b, 3344, p)), zero);
                assert_eq!(community_id(&tuple(b, 7, a, 9, p)), zero);
            }
        }
        // Port-bearing protocols do hash their ports.
        assert_ne!(
            community_id(&tuple("1.2.3.4", 0, "5.6.7.8", 0, proto::SCTP)),
            community_id(&tuple("1.2.3.4", 7, "5.6.7.8", 7, proto::SCTP)),
        );
    }

    /// Protocol 1 becomes ICMPv6 only when both addresses are IPv6; mixed tuples hash as given.
    #[test]
    fn icmp_over_ipv6_is_icmpv6() {
        let v6 = tuple("fe80::1", 128, "fe80::2", 0, proto::ICMP);
        let as_58 = FlowTuple { proto: proto::ICMPV6, ..v6 };
        assert_eq!(community_id(&v6), community_id(&as_58));

        let mixed = tuple("10.0.0.1", 8, "fe80::2", 0, proto::ICMP);
        let mixed_58 = FlowTuple { proto: proto::ICMPV6, ..mixed };
        assert_ne!(community_id(&mixed), community_id(&mixed_58));
        assert_eq!(
            community_id(&mixed),
            community_id(&tuple("fe80::2", 0, "10.0.0.1", 0, proto::ICMP))
        );

        let v4_as_58 = tuple("10.0.0.1", 128, "10.0.0.2", 0, proto::ICMPV6);
        assert_ne!(
            community_id(&v4_as_58),
            community_id(&FlowTuple { proto: proto::ICMP, ..v4_as_58 })
        );
    }

    #[test]
    fn seeds_separate_ids() {
        let t = tuple("1.2.3.4", 1122, "5.6.7.8", 3344, proto::TCP);
        let ids: Vec<String> =
            [0, 1, 2, u16::MAX].iter().map(|&s| CommunityId::new(s).base64(&t)).collect();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(CommunityId::default(), CommunityId::new(0));
    }

    /// Every protocol number and extreme port or ICMP type hashes without panicking.
    #[test]
    fn any_input_hashes() {
        let addrs = ["0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"];
        for p in 0..=u8::MAX {
            for a in addrs {
                for b in addrs {
                    for (pa, pb) in
                        [(0, 0), (u16::MAX, 0), (0, u16::MAX), (u16::MAX, u16::MAX), (256, 300)]
                    {
                        let t = tuple(a, pa, b, pb, p);
                        assert_eq!(community_id(&t).len(), 30);
                        assert_eq!(CommunityId::new(u16::MAX).hex(&t).len(), 42);
                    }
                }
            }
        }
    }

    #[test]
    fn transport_names_and_numbers() {
        for (name, want) in [
            ("tcp", Some(proto::TCP)),
            ("TCP", Some(proto::TCP)),
            ("6", Some(proto::TCP)),
            ("udp", Some(proto::UDP)),
            ("Udp", Some(proto::UDP)),
            ("17", Some(proto::UDP)),
            ("icmp", Some(proto::ICMP)),
            ("ICMP", Some(proto::ICMP)),
            ("1", Some(proto::ICMP)),
            ("ipv6-icmp", Some(proto::ICMPV6)),
            ("IPv6-ICMP", Some(proto::ICMPV6)),
            ("icmpv6", Some(proto::ICMPV6)),
            ("icmp6", Some(proto::ICMPV6)),
            ("58", Some(proto::ICMPV6)),
            ("sctp", Some(proto::SCTP)),
            ("SCTP", Some(proto::SCTP)),
            ("132", Some(proto::SCTP)),
            ("0", Some(0)),
            ("46", Some(RSVP)),
            ("255", Some(255)),
            ("006", Some(6)),
            ("256", None),
            ("65535", None),
            ("99999999999999999999999", None),
            ("", None),
            ("+6", None),
            ("-1", None),
            (" tcp", None),
            ("tcp ", None),
            ("6 ", None),
            ("rsvp", None),
            ("unknown_transport", None),
            ("tcp\0", None),
            ("ＴＣＰ", None),
            ("٦", None),
        ] {
            assert_eq!(transport_number(name), want, "{name:?}");
        }
    }
}
