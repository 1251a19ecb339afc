//! Session values: the [`SessionData`] trait the store needs from any session type, and the
//! default express-session-shaped JSON [`Session`] with its [`Cookie`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the store needs to know about a session type.
///
/// Implemented for the default JSON [`Session`]; implement it for a typed session (and use
/// [`JsonSerializer<YourType>`](super::JsonSerializer) or your own
/// [`Serializer`](super::Serializer)) to store that type instead.
pub trait SessionData {
    /// The session's own remaining lifetime at `now`, from its cookie: `None` if the session
    /// does not say (the store then uses one day, as memorystore does), `Some(Duration::ZERO)`
    /// if it has already expired. The store's [`ttl`](super::MemoryStoreBuilder::ttl) and
    /// [`ttl_fn`](super::MemoryStoreBuilder::ttl_fn) options take precedence over it.
    fn cookie_ttl(&self, now: SystemTime) -> Option<Duration>;

    /// [`touch`](super::MemoryStore::touch): takes the cookie (whatever carries the expiry)
    /// of `newer`, and nothing else; the stored user data must stay as it is.
    fn touch_from(&mut self, newer: &Self);

    /// For a [`touch`](super::MemoryStore::touch) that need not decode the stored session
    /// (with [`JsonSerializer`](super::JsonSerializer)): when [`touch_from`](Self::touch_from)
    /// takes exactly one top-level field of the session's JSON object from `newer` (`self`
    /// here), that field's name and its JSON in `self` (`None` if `self` has none, and
    /// `touch_from` then removes it). The default, `None`, makes `touch` decode, call
    /// `touch_from` and encode.
    fn touch_json(&self) -> Option<(&'static str, Option<Vec<u8>>)> {
        None
    }

    /// For [`JsonSerializer`](super::JsonSerializer): appends to `out` exactly what
    /// `serde_json::to_writer` would write for this session, and returns `true`, if the type
    /// has a faster way to write it than through serde. The default returns `false`: the
    /// serializer then uses serde_json (and discards whatever was written to `out`).
    fn write_json(&self, out: &mut Vec<u8>) -> bool {
        let _ = out;
        false
    }
}

/// An express-session-shaped session: a JSON object with a `cookie` object and the user's
/// data beside it, for example
/// `{"cookie":{"originalMaxAge":3600000,"expires":"2026-11-22T10:00:00.000Z","httpOnly":true,"path":"/"},"views":3}`.
///
/// The object is kept as it was given (every field, known or not), so a session
/// round-trips through the store unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Session(Map<String, Value>);

impl Session {
    /// An empty session: no cookie, no data (the store gives it a lifetime of one day unless
    /// its options say otherwise).
    pub fn new() -> Self {
        Self(Map::new())
    }

    /// A session with `cookie` and no data yet.
    pub fn with_cookie(cookie: Cookie) -> Self {
        let mut session = Self::new();
        session.set_cookie(cookie);
        session
    }

    /// A copy of the session's cookie, if it has a `cookie` object.
    pub fn cookie(&self) -> Option<Cookie> {
        match self.0.get(COOKIE) {
            Some(Value::Object(fields)) => Some(Cookie(fields.clone())),
            _ => None,
        }
    }

    /// Replaces the session's cookie.
    pub fn set_cookie(&mut self, cookie: Cookie) {
        self.0.insert(COOKIE.to_string(), Value::Object(cookie.0));
    }

    /// The value of the data field `key` (the cookie is the field `"cookie"`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Sets the data field `key`, returning its previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes the data field `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// The whole JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The whole JSON object, mutably.
    pub fn as_map_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }

    /// The whole JSON object, by value.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

impl From<Map<String, Value>> for Session {
    fn from(map: Map<String, Value>) -> Self {
        Self(map)
    }
}

impl SessionData for Session {
    /// The remaining lifetime by the cookie's `expires` (an ISO-8601 date), else its `maxAge`
    /// (milliseconds), as memorystore reads them.
    fn cookie_ttl(&self, now: SystemTime) -> Option<Duration> {
        match self.0.get(COOKIE) {
            Some(Value::Object(fields)) => Cookie::ttl_of(fields, now),
            _ => None,
        }
    }

    /// Takes `newer`'s `cookie` field (or its absence).
    fn touch_from(&mut self, newer: &Self) {
        match newer.0.get(COOKIE) {
            Some(cookie) => {
                self.0.insert(COOKIE.to_string(), cookie.clone());
            }
            None => {
                self.0.remove(COOKIE);
            }
        }
    }

    /// The `cookie` field.
    fn touch_json(&self) -> Option<(&'static str, Option<Vec<u8>>)> {
        let cookie = self.0.get(COOKIE).map(|cookie| {
            let mut out = Vec::with_capacity(160);
            super::json::write_value(&mut out, cookie);
            out
        });
        Some((COOKIE, cookie))
    }

    /// The session's JSON object, written by the session writer (`src/session/json.rs`:
    /// serde_json's output, byte for byte, in about a quarter fewer instructions).
    fn write_json(&self, out: &mut Vec<u8>) -> bool {
        super::json::write_object(out, &self.0);
        true
    }
}

const COOKIE: &str = "cookie";

/// An express-session cookie object (`originalMaxAge`, `expires`, `httpOnly`, `path`,
/// `secure`, `sameSite`, `domain`, ...), kept as the JSON object it is, with typed access to
/// the fields the store and applications use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cookie(Map<String, Value>);

impl Default for Cookie {
    /// express-session's default cookie: `{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"}`
    /// (a browser-session cookie: the store gives such a session one day).
    fn default() -> Self {
        let mut fields = Map::new();
        fields.insert("originalMaxAge".into(), Value::Null);
        fields.insert("expires".into(), Value::Null);
        fields.insert("httpOnly".into(), Value::Bool(true));
        fields.insert("path".into(), Value::String("/".into()));
        Self(fields)
    }
}

impl Cookie {
    /// express-session's default cookie (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cookie that expires `max_age` after `now`: `originalMaxAge` in milliseconds and
    /// `expires` as an ISO-8601 date, as express-session writes them. An absurdly long
    /// `max_age` (`Duration::MAX`) saturates: `expires` is the last date the format holds,
    /// `9999-12-31T23:59:59.999Z` (express-session's own cap), never a date that wrapped.
    pub fn expiring_in(max_age: Duration, now: SystemTime) -> Self {
        Self::new().with_max_age(max_age, now)
    }

    /// Sets `originalMaxAge` to `max_age` and `expires` to `now + max_age`, saturating at
    /// the last date the format holds (`9999-12-31T23:59:59.999Z`).
    pub fn with_max_age(mut self, max_age: Duration, now: SystemTime) -> Self {
        let millis = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.0.insert("originalMaxAge".into(), Value::from(millis));
        // Saturate, never wrap: past what SystemTime holds is the latest date there is.
        let expires = now
            .checked_add(max_age)
            .map_or_else(latest, |t| t.min(latest()));
        self.with_expires(expires)
    }

    /// Sets `expires`, formatted as JavaScript's `Date.toISOString()` does
    /// (`2026-11-22T10:00:00.000Z`; dates past the year 9999 are written as its last
    /// millisecond).
    pub fn with_expires(mut self, expires: SystemTime) -> Self {
        self.0
            .insert("expires".into(), Value::String(format_iso8601(expires)));
        self
    }

    /// Sets a `maxAge` field in milliseconds (what memorystore reads when there is no
    /// `expires`).
    pub fn with_max_age_field(mut self, max_age: Duration) -> Self {
        let millis = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.0.insert("maxAge".into(), Value::from(millis));
        self
    }

    /// Sets `httpOnly`.
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.0.insert("httpOnly".into(), Value::Bool(http_only));
        self
    }

    /// Sets `secure`.
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.0.insert("secure".into(), Value::Bool(secure));
        self
    }

    /// Sets `path`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.0.insert("path".into(), Value::String(path.into()));
        self
    }

    /// Sets `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.0.insert("domain".into(), Value::String(domain.into()));
        self
    }

    /// Sets `sameSite` (`true`, `false`, `"lax"`, `"strict"` or `"none"` in express-session).
    pub fn with_same_site(mut self, same_site: impl Into<Value>) -> Self {
        self.0.insert("sameSite".into(), same_site.into());
        self
    }

    /// `originalMaxAge` in milliseconds, if it is a number.
    pub fn original_max_age(&self) -> Option<f64> {
        self.0.get("originalMaxAge").and_then(Value::as_f64)
    }

    /// `maxAge` in milliseconds, if the object has it as a number.
    pub fn max_age(&self) -> Option<f64> {
        self.0.get("maxAge").and_then(Value::as_f64)
    }

    /// `expires`, if it is an ISO-8601 (RFC 3339) date.
    pub fn expires(&self) -> Option<SystemTime> {
        self.0
            .get("expires")
            .and_then(Value::as_str)
            .and_then(parse_iso8601)
    }

    /// `httpOnly`, if it is a boolean.
    pub fn http_only(&self) -> Option<bool> {
        self.0.get("httpOnly").and_then(Value::as_bool)
    }

    /// `secure`, if it is a boolean.
    pub fn secure(&self) -> Option<bool> {
        self.0.get("secure").and_then(Value::as_bool)
    }

    /// `path`, if it is a string.
    pub fn path(&self) -> Option<&str> {
        self.0.get("path").and_then(Value::as_str)
    }

    /// `domain`, if it is a string.
    pub fn domain(&self) -> Option<&str> {
        self.0.get("domain").and_then(Value::as_str)
    }

    /// `sameSite`, as stored (a boolean or a string).
    pub fn same_site(&self) -> Option<&Value> {
        self.0.get("sameSite")
    }

    /// The whole JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The remaining lifetime at `now`: by `expires` if it is a date, else by `maxAge` if it
    /// is a number; `Some(ZERO)` once past.
    pub fn ttl(&self, now: SystemTime) -> Option<Duration> {
        Self::ttl_of(&self.0, now)
    }

    fn ttl_of(fields: &Map<String, Value>, now: SystemTime) -> Option<Duration> {
        if let Some(expires) = fields
            .get("expires")
            .and_then(Value::as_str)
            .and_then(parse_iso8601)
        {
            return Some(expires.duration_since(now).unwrap_or(Duration::ZERO));
        }
        let millis = fields.get("maxAge").and_then(Value::as_f64)?;
        // memorystore floors the number; NaN and negatives mean "expired".
        Some(if millis >= 1.0 {
            Duration::try_from_secs_f64(millis.floor() / 1000.0).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        })
    }
}

impl From<Cookie> for Value {
    fn from(cookie: Cookie) -> Value {
        Value::Object(cookie.0)
    }
}

/// 9999-12-31T23:59:59.999Z in milliseconds since the epoch: the last date
/// `Date.toISOString()` writes with four digits, and express-session's own cap.
const MAX_MILLIS: i128 = 253_402_300_799_999;

/// The latest `expires` written: [`MAX_MILLIS`] (which every platform's `SystemTime` holds).
fn latest() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(MAX_MILLIS as u64)
}

/// Parses an RFC 3339 date (what `Date.toISOString()` and `JSON.stringify(date)` write), to
/// the nanosecond, over the whole range the format has (years 0000 to 9999: a date as
/// seconds and nanoseconds, which never overflow, where a count of nanoseconds in a `u64`
/// stopped at 2554).
fn parse_iso8601(s: &str) -> Option<SystemTime> {
    // `Date.toISOString()`'s own shape, which is what express-session stores, first: a
    // parse of fixed fields, about half the general parser's instructions (277 against 516 a
    // call, most of the lifetime computed on every `set`). Anything else, or anything out of
    // range, goes to the general parser, which then decides.
    match parse_to_iso_string(s.as_bytes()) {
        Some((secs, millis)) => system_time(secs, Duration::from_millis(millis)),
        None => parse_rfc3339(s),
    }
}

/// The general parser: any RFC 3339 date, to the nanosecond.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let date =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    system_time(
        date.unix_timestamp(),
        Duration::from_nanos(u64::from(date.nanosecond())),
    )
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (what `Date.toISOString()` writes for the years
/// 0000 to 9999) into seconds since the epoch and milliseconds; `None` for any other shape and
/// for fields out of range (the caller then asks the general parser).
fn parse_to_iso_string(s: &[u8]) -> Option<(i64, u64)> {
    if s.len() != 24
        || s[4] != b'-'
        || s[7] != b'-'
        || s[10] != b'T'
        || s[13] != b':'
        || s[16] != b':'
        || s[19] != b'.'
        || s[23] != b'Z'
    {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<i64> {
        s[from..to].iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let millis = digits(20, 23)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date: count from 0000-03-01 so that the
    // leap day ends a year, in whole 400-year eras of 146,097 days.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some((secs, millis as u64))
}

/// The epoch plus `secs` (negative: before it) plus `nanos`.
fn system_time(secs: i64, nanos: Duration) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

/// Formats like `Date.toISOString()`: `YYYY-MM-DDTHH:MM:SS.mmmZ`, clamped to the years
/// 0000..=9999 that format can express.
fn format_iso8601(t: SystemTime) -> String {
    /// 0000-01-01T00:00:00.000Z in milliseconds since the epoch.
    const MIN_MILLIS: i128 = -62_167_219_200_000;
    let millis = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i128,
        Err(before) => -(before.duration().as_millis() as i128),
    }
    .clamp(MIN_MILLIS, MAX_MILLIS);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000)
        .ok()
        .and_then(|date| date.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn iso8601_round_trips_at_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let s = format_iso8601(t);
        assert_eq!(s, "2026-11-18T11:06:40.123Z");
        assert_eq!(parse_iso8601(&s), Some(t));
        assert_eq!(
            parse_iso8601("1970-01-01T00:00:01Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(
            format_iso8601(UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 100)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    proptest::proptest! {
        /// The fixed-shape parser agrees with the general one on every date of the format's
        /// range (leap days, century years, before the epoch), and on mangled strings it
        /// either agrees or leaves them to the general parser.
        #[test]
        fn the_to_iso_string_parser_agrees_with_the_general_one(
            millis in -62_167_219_200_000i64..=253_402_300_799_999,
            mangle in proptest::option::of((0usize..24, proptest::num::u8::ANY)),
        ) {
            let t = if millis >= 0 {
                UNIX_EPOCH + Duration::from_millis(millis as u64)
            } else {
                UNIX_EPOCH - Duration::from_millis(millis.unsigned_abs())
            };
            let mut s = format_iso8601(t).into_bytes();
            if let Some((at, byte)) = mangle {
                s[at] = byte;
            }
            let Ok(s) = String::from_utf8(s) else { return Ok(()) };
            let fast = parse_to_iso_string(s.as_bytes())
                .and_then(|(secs, ms)| system_time(secs, Duration::from_millis(ms)));
            let general = parse_rfc3339(&s);
            if mangle.is_none() {
                proptest::prop_assert_eq!(fast, Some(t));
            }
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, general, "{}", s);
            }
            proptest::prop_assert_eq!(parse_iso8601(&s), general, "{}", s);
        }
    }

    #[test]
    fn the_to_iso_string_parser_refuses_what_is_out_of_range() {
        for s in [
            "2026-02-29T00:00:00.000Z",
            "2100-02-29T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-00-01T00:00:00.000Z",
            "2026-04-31T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:60:00.000Z",
            "2026-01-01T00:00:60.000Z",
            "2026-01-01T00:00:00.000+",
            "+026-01-01T00:00:00.000Z",
        ] {
            assert_eq!(parse_to_iso_string(s.as_bytes()), None, "{s}");
            assert_eq!(parse_iso8601(s), parse_rfc3339(s), "{s}");
        }
        assert!(parse_to_iso_string(b"2000-02-29T23:59:59.999Z").is_some());
        assert!(parse_to_iso_string(b"0000-01-01T00:00:00.000Z").is_some());
    }

    #[test]
    fn cookie_ttl_follows_expires_then_max_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut session = Session::new();
        assert_eq!(session.cookie_ttl(now), None);
        session.set_cookie(Cookie::new());
        assert_eq!(session.cookie_ttl(now), None, "express's default cookie");
        session.set_cookie(Cookie::new().with_max_age_field(Duration::from_millis(400)));
        assert_eq!(session.cookie_ttl(now), Some(Duration::from_millis(400)));
        session.set_cookie(Cookie::expiring_in(Duration::from_secs(60), now));
        assert_eq!(session.cookie_ttl(now), Some(Duration::from_secs(60)));
        assert_eq!(
            session.cookie_ttl(now + Duration::from_secs(61)),
            Some(Duration::ZERO)
        );
        let mut negative = Map::new();
        negative.insert("maxAge".into(), Value::from(-5));
        assert_eq!(Cookie(negative).ttl(now), Some(Duration::ZERO));
    }

    #[test]
    fn touch_takes_only_the_cookie() {
        let now = UNIX_EPOCH;
        let mut stored = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(1), now));
        stored.insert("views", 3);
        let mut newer = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(9), now));
        newer.insert("views", 100);
        stored.touch_from(&newer);
        assert_eq!(stored.get("views"), Some(&Value::from(3)));
        assert_eq!(stored.cookie(), newer.cookie());
    }
}
