//! [`NaiveTimeZone`]: the zone of the offset-less times another application keeps in its
//! database (Laravel's `app.timezone`), shared by every store over such a table.
//! Uses nothing of the crate: dates and zones only (chrono, chrono-tz).

use std::fmt;

use chrono::{
    DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
};

/// The time zone in which a database's naive times (without an offset: SQL `timestamp`,
/// SQLite text such as `2026-12-02 10:00:00`) are written.
///
/// Laravel writes dates as `Y-m-d H:i:s` in its `app.timezone` (UTC by default), so a store
/// over a Laravel table must know that zone to tell when a token expires. Times that carry
/// their own offset (`timestamptz`, SQLite text ending in `Z` or `+02:00`) are read by that
/// offset whatever this says.
///
/// - [`NaiveTimeZone::UTC`], the default: Laravel's default.
/// - [`NaiveTimeZone::iana`] (feature `timezones`): a named zone such as `Europe/Berlin`,
///   with its daylight-saving rules. Use this for any zone that has summer time.
/// - [`NaiveTimeZone::fixed`]: one offset all year. It is right only for zones without
///   daylight saving (or an `app.timezone` such as `+02:00`): for `Europe/Berlin` it is an
///   hour off half the year, so tokens would expire an hour early or late.
///
/// Local times that do not exist (skipped when clocks go forward) are read with the offset
/// in force before the change, and local times that occur twice (when clocks go back) as the
/// earlier instant, as PHP reads them; the earlier reading also makes an `expires_at` in that
/// hour end sooner rather than later.
///
/// ```
/// use apitoken::store::NaiveTimeZone;
/// use chrono::FixedOffset;
///
/// let utc = NaiveTimeZone::UTC;
/// let india = NaiveTimeZone::fixed(FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
/// assert_eq!(utc.to_string(), "UTC");
/// assert_eq!(india.to_string(), "+05:30");
/// # #[cfg(feature = "timezones")]
/// let berlin = NaiveTimeZone::iana("Europe/Berlin").unwrap();
/// # #[cfg(feature = "timezones")]
/// assert_eq!(berlin.to_string(), "Europe/Berlin");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NaiveTimeZone(Zone);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Zone {
    #[default]
    Utc,
    Fixed(FixedOffset),
    #[cfg(feature = "timezones")]
    Named(chrono_tz::Tz),
}

/// A name given to [`NaiveTimeZone::iana`] that is not in the IANA time zone database.
///
/// ```
/// use apitoken::store::{NaiveTimeZone, UnknownTimeZone};
///
/// # #[cfg(feature = "timezones")]
/// let err: UnknownTimeZone = NaiveTimeZone::iana("Europe/Berlinn").unwrap_err();
/// # #[cfg(feature = "timezones")]
/// assert!(err.to_string().contains("IANA"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IANA time zone name (such as `Europe/Berlin` or `UTC`)")]
#[non_exhaustive]
pub struct UnknownTimeZone;

impl NaiveTimeZone {
    /// Coordinated Universal Time: Laravel's default `app.timezone`.
    ///
    /// ```
    /// use apitoken::store::NaiveTimeZone;
    ///
    /// assert_eq!(NaiveTimeZone::default(), NaiveTimeZone::UTC);
    /// ```
    pub const UTC: Self = Self(Zone::Utc);

    /// One offset from UTC all year, such as `+05:30`. Wrong for zones with daylight saving:
    /// use [`iana`](Self::iana) for those.
    ///
    /// ```
    /// use apitoken::store::NaiveTimeZone;
    /// use chrono::FixedOffset;
    ///
    /// let zone = NaiveTimeZone::fixed(FixedOffset::west_opt(3 * 3600).unwrap());
    /// assert_eq!(zone.to_string(), "-03:00");
    /// ```
    pub fn fixed(offset: FixedOffset) -> Self {
        Self(Zone::Fixed(offset))
    }

    /// A zone of the IANA database by its name, as Laravel's `app.timezone` names it
    /// (`Europe/Berlin`, `America/New_York`, `UTC`), with its daylight-saving rules.
    ///
    /// ```
    /// use apitoken::store::NaiveTimeZone;
    ///
    /// assert!(NaiveTimeZone::iana("Europe/Berlin").is_ok());
    /// assert!(NaiveTimeZone::iana("Mars/Olympus_Mons").is_err());
    /// ```
    #[cfg(feature = "timezones")]
    pub fn iana(name: &str) -> Result<Self, UnknownTimeZone> {
        name.parse::<chrono_tz::Tz>()
            .map(|tz| Self(Zone::Named(tz)))
            .map_err(|_| UnknownTimeZone)
    }

    /// The instant a naive time in this zone names. `None` only past chrono's range.
    pub(crate) fn to_utc(self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.0 {
            Zone::Utc => Some(naive.and_utc()),
            Zone::Fixed(offset) => local_to_utc(&offset, naive),
            #[cfg(feature = "timezones")]
            Zone::Named(tz) => local_to_utc(&tz, naive),
        }
    }

    /// The naive time in this zone of an instant, as the other application writes it.
    pub(crate) fn to_naive(self, at: DateTime<Utc>) -> NaiveDateTime {
        match self.0 {
            Zone::Utc => at.naive_utc(),
            Zone::Fixed(offset) => at.with_timezone(&offset).naive_local(),
            #[cfg(feature = "timezones")]
            Zone::Named(tz) => at.with_timezone(&tz).naive_local(),
        }
    }

    /// Reads a date and time written as text (SQLite has no time type): `YYYY-MM-DD`, then
    /// a space or `T`, `HH:MM` with optional `:SS` and fraction, then optionally `Z` or an
    /// offset (`+02:00`, `+0200`, `+02`). Laravel writes `Y-m-d H:i:s`; other writers add
    /// the rest. With an offset the text names an instant; without one, a time in this zone.
    /// `None` for anything else, so the caller fails closed.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn parse_text(self, text: &str) -> Option<DateTime<Utc>> {
        // Laravel's own form, read without chrono's format parser (a third of a Sanctum
        // lookup on SQLite went to reading three times); anything else takes the general way.
        match laravel_text(text) {
            Some(naive) => self.to_utc(naive),
            None => self.parse_any_text(text),
        }
    }

    /// [`parse_text`](Self::parse_text) through chrono's parser, for every form.
    fn parse_any_text(self, text: &str) -> Option<DateTime<Utc>> {
        let text = text.trim();
        let date = NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()?;
        let rest = text.get(10..)?.strip_prefix([' ', 'T', 't'])?;
        let (time, rest) = NaiveTime::parse_and_remainder(rest, "%H:%M:%S%.f")
            .or_else(|_| NaiveTime::parse_and_remainder(rest, "%H:%M"))
            .ok()?;
        let naive = date.and_time(time);
        match rest.trim_start() {
            "" => self.to_utc(naive),
            "Z" | "z" => Some(naive.and_utc()),
            offset => local_to_utc(&parse_offset(offset)?, naive),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` exactly, as Laravel writes it, or `None`.
fn laravel_text(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(number(0, 4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(5, 7)?, number(8, 10)?)?;
    let time = NaiveTime::from_hms_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?)?;
    Some(date.and_time(time))
}

/// `+HH:MM`, `+HHMM` or `+HH` (or `-`).
fn parse_offset(text: &str) -> Option<FixedOffset> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let two = |s: &str| -> Option<i32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (hours, minutes) = match digits.len() {
        2 => (two(digits)?, 0),
        4 => (two(&digits[..2])?, two(&digits[2..])?),
        5 if digits.as_bytes()[2] == b':' => (two(&digits[..2])?, two(&digits[3..])?),
        _ => return None,
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// A local time to an instant: a time that occurs twice is the earlier instant; a time
/// skipped by a change of offset is read with the offset in force before it (PHP's reading:
/// `02:30` on the day Berlin skips from 02:00 to 03:00 is 01:30 UTC, shown as 03:30).
fn local_to_utc<Tz: TimeZone>(zone: &Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(at) => Some(at.to_utc()),
        LocalResult::Ambiguous(a, b) => Some(a.to_utc().min(b.to_utc())),
        LocalResult::None => {
            // Zones change offset at most a few times a year, so a day earlier is before
            // this change and after any other.
            use chrono::Offset;
            let before = naive.checked_sub_signed(chrono::TimeDelta::days(1))?;
            let offset = zone.offset_from_utc_datetime(&before).fix();
            offset
                .from_local_datetime(&naive)
                .single()
                .map(|at| at.to_utc())
        }
    }
}

impl fmt::Display for NaiveTimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Zone::Utc => f.write_str("UTC"),
            Zone::Fixed(offset) => write!(f, "{offset}"),
            #[cfg(feature = "timezones")]
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn text_forms() {
        let z = NaiveTimeZone::UTC;
        let at = utc("2026-12-02T08:00:00Z");
        for text in [
            "2026-12-02 10:00:00+02:00",
            "2026-12-02 10:00:00+0200",
            "2026-12-02 10:00:00+02",
            "2026-12-02T10:00:00+02:00",
            "2026-12-02 10:00:00 +02:00",
            "2026-12-02 08:00:00Z",
            "2026-12-02T08:00:00z",
            "2026-12-02 08:00:00",
            "2026-12-02 08:00",
            "2026-12-02T08:00:00.000000Z",
            "2026-12-02 07:00:00-01:00",
        ] {
            assert_eq!(z.parse_text(text), Some(at), "{text}");
        }
        assert_eq!(
            z.parse_text("2026-12-02 08:00:00.25"),
            Some(at + chrono::TimeDelta::milliseconds(250))
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-02",
            "2026-13-02 08:00:00",
            "2026-12-02 25:00:00",
            "2026-12-02 08:00:00+24:00",
            "2026-12-02 08:00:00+2",
            "2026-12-02 08:00:00 UTC+1",
            "1764662400",
            "2026-12-02 08:00:00é",
        ] {
            assert_eq!(z.parse_text(bad), None, "{bad:?}");
        }
    }

    /// The shortcut for Laravel's form reads what the general parser reads, and leaves
    /// everything else (leap seconds, impossible dates, other forms) to it.
    #[test]
    fn laravel_form_reads_as_the_general_parser_does() {
        let z = NaiveTimeZone::fixed(FixedOffset::east_opt(-5400).unwrap());
        let mut read = 0;
        for year in ["0000", "1969", "2024", "2026", "9999"] {
            for month in ["00", "01", "02", "12", "13"] {
                for day in ["00", "01", "28", "29", "30", "31", "32"] {
                    for time in [
                        "00:00:00", "23:59:59", "23:59:60", "24:00:00", "12:60:00", "1a:00:00",
                    ] {
                        let text = format!("{year}-{month}-{day} {time}");
                        let fast = laravel_text(&text).and_then(|naive| z.to_utc(naive));
                        if fast.is_some() {
                            read += 1;
                            assert_eq!(fast, z.parse_any_text(&text), "{text}");
                        }
                        assert_eq!(z.parse_text(&text), z.parse_any_text(&text), "{text}");
                    }
                }
            }
        }
        assert!(read > 100, "{read}");
        for other in [
            "2026-12-02T08:00:00",
            " 2026-12-02 08:00:00",
            "2026-12-02 08:00:00Z",
        ] {
            assert_eq!(laravel_text(other), None, "{other}");
        }
    }

    #[test]
    fn fixed_offsets_read_and_write_naive_times() {
        let z = NaiveTimeZone::fixed(FixedOffset::east_opt(3600).unwrap());
        assert_eq!(
            z.parse_text("2026-12-02 09:00:00"),
            Some(utc("2026-12-02T08:00:00Z"))
        );
        // An explicit offset wins over the zone.
        assert_eq!(
            z.parse_text("2026-12-02 09:00:00Z"),
            Some(utc("2026-12-02T09:00:00Z"))
        );
        assert_eq!(
            z.to_naive(utc("2026-12-02T08:00:00Z")).to_string(),
            "2026-12-02 09:00:00"
        );
    }

    #[cfg(feature = "timezones")]
    #[test]
    fn named_zones_follow_daylight_saving() {
        let z = NaiveTimeZone::iana("Europe/Berlin").unwrap();
        let read = |t: &str| z.parse_text(t).unwrap();
        assert_eq!(read("2026-01-15 12:00:00"), utc("2026-01-15T11:00:00Z"));
        assert_eq!(read("2026-07-15 12:00:00"), utc("2026-07-15T10:00:00Z"));
        // Skipped (02:00 to 03:00 on 29 March): the offset before, as PHP reads it.
        assert_eq!(read("2026-03-29 02:30:00"), utc("2026-03-29T01:30:00Z"));
        // Twice (03:00 back to 02:00 on 25 October): the earlier instant.
        assert_eq!(read("2026-10-25 02:30:00"), utc("2026-10-25T00:30:00Z"));
        assert_eq!(
            z.to_naive(utc("2026-07-15T10:00:00Z")).to_string(),
            "2026-07-15 12:00:00"
        );
    }
}
