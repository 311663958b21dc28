//! JSON field access without building a tree or copying the payload.
//!
//! Two ways in, both borrowing strings from the payload where it has no escapes:
//!
//! - [`get`] walks one dotted path (`"dns.answers.0.data"`) in a single pass, skipping every
//!   other field without allocating;
//! - [`parse`] deserialises into a typed struct with borrowed fields (`Cow<'a, str>`), the
//!   fastest way to read many fields (see [`crate::ecs`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A value found at a path.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(serde_json::Number),
    /// A string, borrowed from the payload unless it contained escapes.
    Str(Cow<'a, str>),
    /// An object or array, as its raw JSON text.
    Raw(&'a str),
}

impl<'a> JsonValue<'a> {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer number or a string holding one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            JsonValue::Number(n) => n.as_i64(),
            JsonValue::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Parses a payload into a typed struct that may borrow from it.
pub fn parse<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// The value at a dotted `path` in a JSON payload, `None` when any step is missing or of
/// another type. A numeric step indexes an array. Fails only when the payload is not JSON.
///
/// ```
/// use storyline_sdk::json::get;
/// let p = br#"{"dns": {"answers": [{"data": "93.184.216.34"}]}, "big": [1, 2, 3]}"#;
/// let v = get(p, "dns.answers.0.data").unwrap().unwrap();
/// assert_eq!(v.as_str(), Some("93.184.216.34"));
/// assert!(get(p, "dns.question.name").unwrap().is_none());
/// ```
pub fn get<'a>(payload: &'a [u8], path: &str) -> Result<Option<JsonValue<'a>>, serde_json::Error> {
    let steps: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('.').collect() };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let found = PathSeed { steps: &steps }.deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

struct PathSeed<'p> {
    steps: &'p [&'p str],
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<JsonValue<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.steps.split_first() {
            None => {
                let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
                leaf(raw).map(Some).map_err(de::Error::custom)
            }
            Some((step, rest)) => d.deserialize_any(StepVisitor { step, rest }),
        }
    }
}

fn leaf(raw: &RawValue) -> Result<JsonValue<'_>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<&str>(text) {
            Ok(s) => JsonValue::Str(Cow::Borrowed(s)),
            // Escapes must be decoded into a new string.
            Err(_) => JsonValue::Str(Cow::Owned(serde_json::from_str::<String>(text)?)),
        },
        Some(b't') => JsonValue::Bool(true),
        Some(b'f') => JsonValue::Bool(false),
        Some(b'n') => JsonValue::Null,
        Some(b'{') | Some(b'[') => JsonValue::Raw(text),
        _ => JsonValue::Number(serde_json::from_str(text)?),
    })
}

struct StepVisitor<'p> {
    step: &'p str,
    rest: &'p [&'p str],
}

impl<'de> Visitor<'de> for StepVisitor<'_> {
    type Value = Option<JsonValue<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.step {
                found = map.next_value_seed(PathSeed { steps: self.rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted: Option<usize> = self.step.parse().ok();
        let mut found = None;
        let mut i = 0usize;
        loop {
            if Some(i) == wanted {
                match seq.next_element_seed(PathSeed { steps: self.rest })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }

    // A scalar where an object was expected: the path does not exist.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[u8] = br#"{"source":{"ip":"10.0.0.1","port":51514},"x":null,
        "dns":{"question":{"name":"ex\u0061mple.com"},"answers":[{"data":"1.1.1.1"},{"data":"2.2.2.2"}]},
        "flag":true,"n":-3.5,"obj":{"a":[1,{"b":2}]}}"#;

    #[test]
    fn finds_nested_values_and_borrows_plain_strings() {
        let ip = get(P, "source.ip").unwrap().unwrap();
        assert!(matches!(ip, JsonValue::Str(Cow::Borrowed("10.0.0.1"))), "got {ip:?}");
        assert_eq!(get(P, "source.port").unwrap().unwrap().as_i64(), Some(51514));
        assert_eq!(get(P, "dns.answers.1.data").unwrap().unwrap().as_str(), Some("2.2.2.2"));
        assert_eq!(get(P, "flag").unwrap(), Some(JsonValue::Bool(true)));
        assert_eq!(get(P, "x").unwrap(), Some(JsonValue::Null));
        assert_eq!(get(P, "obj.a.1.b").unwrap().unwrap().as_i64(), Some(2));
    }

    #[test]
    fn unescapes_strings_with_escapes() {
        let v = get(P, "dns.question.name").unwrap().unwrap();
        assert!(matches!(v, JsonValue::Str(Cow::Owned(ref s)) if s == "example.com"), "got {v:?}");
    }

    #[test]
    fn missing_or_mistyped_steps_are_none() {
        for path in ["nope", "source.ip.deeper", "dns.answers.7.data", "dns.answers.x", "n.y"] {
            assert_eq!(get(P, path).unwrap(), None, "{path}");
        }
    }

    #[test]
    fn objects_come_back_raw_and_bad_json_is_an_error() {
        let v = get(P, "obj").unwrap().unwrap();
        assert_eq!(v, JsonValue::Raw(r#"{"a":[1,{"b":2}]}"#));
        assert!(get(b"{\"a\": ", "a").is_err());
        assert!(get(b"{\"a\": 1} trailing", "a").is_err());
    }
}
