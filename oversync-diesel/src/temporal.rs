//! Date and time text: parses the forms Diesel's SQLite types, PostgreSQL's JSON output and
//! RFC 3339 use, and writes Diesel's SQLite forms (what `chrono` values become through
//! Diesel) or the form sent to the server. Hand-written so the runtime needs no date crate.
//!
//! Diesel writes fractions of a second with 3, 6 or 9 digits as the value needs (none when
//! zero); [`Moment::local_timestamp`] and friends do the same, so a value that went through the
//! server reads back as the text Diesel would have written for it.

/// A civil date and time of day, with the UTC offset the text carried, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Moment {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// Seconds east of UTC; `None` for text without an offset.
    offset: Option<i32>,
}

/// A small cursor over ASCII text.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Exactly `n` decimal digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let slice = self.bytes.get(self.pos..self.pos + n)?;
        let mut value = 0u32;
        for b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(b - b'0');
        }
        self.pos += n;
        Some(value)
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DD`, years 0001..=9999 (what both SQLite text and PostgreSQL print plainly).
fn parse_date(c: &mut Cursor) -> Option<(i32, u32, u32)> {
    let year = c.digits(4)? as i32;
    if !c.eat(b'-') {
        return None;
    }
    let month = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    (year >= 1 && (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month))
        .then_some((year, month, day))
}

/// `HH:MM[:SS[.f{1,9}]]`.
fn parse_time(c: &mut Cursor) -> Option<(u32, u32, u32, u32)> {
    let hour = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let minute = c.digits(2)?;
    let (mut second, mut nanos) = (0, 0);
    if c.eat(b':') {
        second = c.digits(2)?;
        if c.eat(b'.') {
            let mut digits = 0;
            while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
                if digits == 9 {
                    return None;
                }
                nanos = nanos * 10 + u32::from(b - b'0');
                digits += 1;
                c.pos += 1;
            }
            if digits == 0 {
                return None;
            }
            nanos *= 10u32.pow(9 - digits);
        }
    }
    (hour < 24 && minute < 60 && second < 60).then_some((hour, minute, second, nanos))
}

/// `Z`, `±HH`, `±HH:MM`, `±HHMM`, `±HH:MM:SS` (PostgreSQL prints seconds for odd zones).
fn parse_offset(c: &mut Cursor) -> Option<Option<i32>> {
    if c.done() {
        return Some(None);
    }
    if c.eat(b'Z') || c.eat(b'z') {
        return Some(Some(0));
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return None;
    };
    let hours = c.digits(2)?;
    let colon = c.eat(b':');
    let minutes = if colon || c.peek().is_some_and(|b| b.is_ascii_digit()) {
        c.digits(2)?
    } else {
        0
    };
    let seconds = if colon && c.eat(b':') {
        c.digits(2)?
    } else {
        0
    };
    if hours > 15 || minutes > 59 || seconds > 59 {
        return None;
    }
    Some(Some(sign * (hours * 3600 + minutes * 60 + seconds) as i32))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Diesel's `%.f`: nothing for zero, else 3, 6 or 9 digits, as few as keep the value.
fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    }
}

impl Moment {
    /// A date and time: `YYYY-MM-DD` then `T`, `t` or a space, a time, an optional offset.
    pub(crate) fn parse_timestamp(text: &str) -> Option<Moment> {
        let mut c = Cursor::new(text);
        let (year, month, day) = parse_date(&mut c)?;
        if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
            return None;
        }
        let (hour, minute, second, nanos) = parse_time(&mut c)?;
        let offset = parse_offset(&mut c)?;
        c.done().then_some(Moment {
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanos,
            offset,
        })
    }

    /// The moment in UTC (text without an offset is taken as UTC already, as Diesel does for
    /// `TimestamptzSqlite`). `None` when the shift leaves years 1..=9999.
    fn to_utc(self) -> Option<Moment> {
        let Some(offset) = self.offset.filter(|o| *o != 0) else {
            return Some(Moment {
                offset: Some(0),
                ..self
            });
        };
        let secs = days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
            - i64::from(offset);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let in_day = secs.rem_euclid(86_400) as u32;
        (1..=9999).contains(&year).then_some(Moment {
            year: year as i32,
            month,
            day,
            hour: in_day / 3600,
            minute: in_day / 60 % 60,
            second: in_day % 60,
            nanos: self.nanos,
            offset: Some(0),
        })
    }

    fn date_text(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    fn time_text(&self) -> String {
        format!(
            "{:02}:{:02}:{:02}{}",
            self.hour,
            self.minute,
            self.second,
            fraction(self.nanos)
        )
    }

    /// Diesel's `Timestamp` text for the moment in UTC: `YYYY-MM-DD HH:MM:SS[.f]`.
    pub(crate) fn local_timestamp(self) -> Option<String> {
        let m = self.to_utc()?;
        Some(format!("{} {}", m.date_text(), m.time_text()))
    }

    /// Diesel's `TimestamptzSqlite` text of a `DateTime<Utc>`: `YYYY-MM-DD HH:MM:SS[.f]+00:00`.
    pub(crate) fn local_timestamptz(self) -> Option<String> {
        Some(format!("{}+00:00", self.local_timestamp()?))
    }

    /// RFC 3339 in UTC, which PostgreSQL `timestamp` and `timestamptz` columns both take as
    /// the same instant whatever the server session's time zone.
    pub(crate) fn wire_timestamp(self) -> Option<String> {
        let m = self.to_utc()?;
        Some(format!("{}T{}Z", m.date_text(), m.time_text()))
    }
}

/// A date alone, `YYYY-MM-DD`; returns Diesel's `Date` text (the same text).
pub(crate) fn canonical_date(text: &str) -> Option<String> {
    let mut c = Cursor::new(text);
    let (year, month, day) = parse_date(&mut c)?;
    c.done().then(|| format!("{year:04}-{month:02}-{day:02}"))
}

/// A time of day, `HH:MM[:SS[.f]]` with an optional offset (a `timetz`), which is dropped:
/// Diesel's `Time` is a wall-clock time. Returns Diesel's `Time` text.
pub(crate) fn canonical_time(text: &str) -> Option<String> {
    let mut c = Cursor::new(text);
    let (hour, minute, second, nanos) = parse_time(&mut c)?;
    parse_offset(&mut c)?;
    c.done()
        .then(|| format!("{hour:02}:{minute:02}:{second:02}{}", fraction(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Option<String> {
        Moment::parse_timestamp(text)?.local_timestamp()
    }

    #[test]
    fn server_and_diesel_timestamp_forms_become_diesel_text() {
        for (input, want) in [
            (
                "2026-12-01 19:39:31.502061202",
                "2026-12-01 19:39:31.502061202",
            ),
            ("2026-12-01T19:38:25.351548", "2026-12-01 19:38:25.351548"),
            (
                "2026-12-01 19:38:25.351548+00",
                "2026-12-01 19:38:25.351548",
            ),
            (
                "2026-12-01T19:38:25.351548+00:00",
                "2026-12-01 19:38:25.351548",
            ),
            ("2026-12-01T19:38:25.35Z", "2026-12-01 19:38:25.350"),
            ("2026-12-01T19:38:25", "2026-12-01 19:38:25"),
            ("2026-12-01 19:38", "2026-12-01 19:38:00"),
            ("2026-12-01T01:30:00+02:00", "2026-11-30 23:30:00"),
            ("2026-12-31T23:30:00-01:00", "2027-01-01 00:30:00"),
            ("2024-03-01T00:00:00+0530", "2024-02-29 18:30:00"),
            ("2026-12-01T19:38:25.1+05:30:15", "2026-12-01 14:08:10.100"),
            ("0001-01-01T00:00:00Z", "0001-01-01 00:00:00"),
        ] {
            assert_eq!(ts(input).as_deref(), Some(want), "{input}");
        }
        assert_eq!(
            Moment::parse_timestamp("2026-12-01T19:38:25.351548+00")
                .unwrap()
                .local_timestamptz()
                .as_deref(),
            Some("2026-12-01 19:38:25.351548+00:00")
        );
        assert_eq!(
            Moment::parse_timestamp("2026-12-01 19:39:31.502061202")
                .unwrap()
                .wire_timestamp()
                .as_deref(),
            Some("2026-12-01T19:39:31.502061202Z")
        );
    }

    #[test]
    fn malformed_text_is_not_a_timestamp() {
        for bad in [
            "",
            "infinity",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "2026-12-01",
            "2026-12-01X19:38:25",
            "2026-12-01 24:00:00",
            "2026-12-01 19:60:00",
            "2026-12-01 19:38:25.",
            "2026-12-01 19:38:25.1234567890",
            "2026-12-01 19:38:25+1",
            "2026-12-01 19:38:25 junk",
            "0001-01-01T00:00:00+01:00",
            "12026-12-01 19:38:25",
            "2026-12-01 19:38:25 BC",
        ] {
            assert_eq!(ts(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(canonical_date("2024-02-29").as_deref(), Some("2024-02-29"));
        assert_eq!(canonical_date("2023-02-29"), None);
        assert_eq!(canonical_date("2024-02-29T00:00:00"), None);
        assert_eq!(
            canonical_time("19:38:25.351548").as_deref(),
            Some("19:38:25.351548")
        );
        assert_eq!(
            canonical_time("19:38:25.5").as_deref(),
            Some("19:38:25.500")
        );
        assert_eq!(canonical_time("19:38").as_deref(), Some("19:38:00"));
        assert_eq!(canonical_time("19:38:25+02").as_deref(), Some("19:38:25"));
        assert_eq!(canonical_time("00:00:00").as_deref(), Some("00:00:00"));
        assert_eq!(canonical_time("25:00:00"), None);
    }

    #[test]
    fn day_arithmetic_matches_the_calendar() {
        for days in [-719_162i64, -1, 0, 1, 59, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y as i32, m, d), days, "{days}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
