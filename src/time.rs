//! Exact UTC timestamps as `i64` counts of 100-ns ticks since the Unix epoch.
//!
//! Microsoft writes `lastUpdateDateTime` with seven fractional digits, and that value is the
//! version of a Graph item (design §4), so it must survive parsing, storing and formatting
//! without loss. A tick is exactly one unit of the seventh digit; floating point (and most
//! database time types) would round it away. The civil-date arithmetic is Howard Hinnant's
//! `days_from_civil` / `civil_from_days`, done in integers; nothing here can panic.

use std::time::{SystemTime, UNIX_EPOCH};

/// 100-ns ticks in one second.
pub const TICKS_PER_SECOND: i64 = 10_000_000;
const TICKS_PER_DAY: i64 = 86_400 * TICKS_PER_SECOND;
const SECONDS_PER_DAY: i64 = 86_400;

/// Parses an RFC 3339 / ISO-8601 time as Microsoft writes it, to ticks.
///
/// Accepts `YYYY-MM-DD`, then `T`, `t` or a space, then `HH:MM:SS`, an optional fraction of any
/// length (digits past the seventh are truncated, never rounded, so a value can never move into
/// the next tick), then `Z`/`z`, `+hh:mm`, `-hh:mm`, `+hhmm`, or nothing (which means UTC, as
/// design §4 says). Returns `None` for anything else, including out-of-range fields and leap
/// seconds (Microsoft does not send them, and accepting `:60` would make two texts one tick).
pub fn parse_ticks(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut i = 19;
    let mut fraction: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start < 7 {
                fraction = fraction * 10 + i64::from(d - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..7 {
            fraction *= 10;
        }
    }

    let offset_seconds: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2)?;
            // Both "+01:00" and "+0100" occur in the wild; RFC 3339 has only the first.
            let om_at = if b.get(i + 3) == Some(&b':') {
                i + 4
            } else {
                i + 3
            };
            let om = digits(b, om_at, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            i = om_at + 2;
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        Some(_) => return None,
    };
    if i != b.len() {
        return None;
    }

    let days = days_from_civil(year, month, day);
    let secs = days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset_seconds;
    // Years are four digits, so this cannot overflow; checked anyway so that no future widening
    // of the accepted range can turn into a panic.
    secs.checked_mul(TICKS_PER_SECOND)?.checked_add(fraction)
}

/// Formats ticks as `YYYY-MM-DDTHH:MM:SS.fffffffZ` (always seven fractional digits).
pub fn format_ticks(t: i64) -> String {
    let days = t.div_euclid(TICKS_PER_DAY);
    let rem = t.rem_euclid(TICKS_PER_DAY);
    let secs_of_day = rem / TICKS_PER_SECOND;
    let fraction = rem % TICKS_PER_SECOND;
    let mut out = String::with_capacity(28);
    push_date_time(&mut out, days, secs_of_day);
    push_padded(&mut out, fraction, 7);
    out.push('Z');
    out
}

/// Formats whole seconds as `YYYY-MM-DDTHH:MM:SSZ`, the form OData `$filter` bounds take.
pub fn format_seconds(secs: i64) -> String {
    let days = secs.div_euclid(SECONDS_PER_DAY);
    let secs_of_day = secs.rem_euclid(SECONDS_PER_DAY);
    let mut out = String::with_capacity(20);
    push_date_time(&mut out, days, secs_of_day);
    // push_date_time leaves a trailing '.', for the fraction; whole seconds have none.
    out.pop();
    out.push('Z');
    out
}

/// Formats a `$filter` bound given in ticks: whole seconds as [`format_seconds`], anything finer
/// with seven fractional digits (valid OData `DateTimeOffset`, Graph's own precision).
pub fn format_filter_bound(ticks: i64) -> String {
    if ticks.rem_euclid(TICKS_PER_SECOND) == 0 {
        format_seconds(ticks.div_euclid(TICKS_PER_SECOND))
    } else {
        format_ticks(ticks)
    }
}

/// Formats Cloud Apps epoch milliseconds like [`format_ticks`]: `...SS.mmm0000Z`, so every time
/// in the normalized alert has the same shape whatever its source.
pub fn format_rfc3339_millis_from_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(SECONDS_PER_DAY);
    let secs_of_day = secs.rem_euclid(SECONDS_PER_DAY);
    let mut out = String::with_capacity(28);
    push_date_time(&mut out, days, secs_of_day);
    push_padded(&mut out, millis, 3);
    out.push_str("0000Z");
    out
}

/// Seconds since the Unix epoch by the system clock (negative if the clock is before 1970).
pub fn unix_seconds_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Ticks since the Unix epoch by the system clock.
pub fn now_ticks() -> i64 {
    let ticks = |d: std::time::Duration| i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX);
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => ticks(d),
        Err(e) => -ticks(e.duration()),
    }
}

/// Reads `n` ASCII digits at `at`, or `None` if any is missing or not a digit.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let slice = b.get(at..at.checked_add(n)?)?;
    let mut v: i64 = 0;
    for &c in slice {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0, so the leap day is the last day of the year
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day). Valid for every `i64` day count that
/// ticks can produce (about ±29 million years), with no overflow.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `YYYY-MM-DDTHH:MM:SS.` (the caller adds the fraction and the zone).
fn push_date_time(out: &mut String, days: i64, secs_of_day: i64) {
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push('-');
    }
    push_padded(out, year.abs(), 4);
    out.push('-');
    push_padded(out, month, 2);
    out.push('-');
    push_padded(out, day, 2);
    out.push('T');
    push_padded(out, secs_of_day / 3600, 2);
    out.push(':');
    push_padded(out, secs_of_day / 60 % 60, 2);
    out.push(':');
    push_padded(out, secs_of_day % 60, 2);
    out.push('.');
}

/// Appends a non-negative number zero-padded to at least `width` digits.
fn push_padded(out: &mut String, v: i64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..width {
        out.push('0');
    }
    for &c in &buf[i..] {
        out.push(char::from(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_times_parse_exactly_to_the_tick() {
        let t = parse_ticks("2021-04-27T12:19:27.7211305Z");
        assert_eq!(t, Some(1_619_525_967 * TICKS_PER_SECOND + 7_211_305));
        assert_eq!(
            format_ticks(t.unwrap_or_default()),
            "2021-04-27T12:19:27.7211305Z"
        );
    }

    #[test]
    fn fraction_lengths_from_zero_to_more_than_seven_digits() {
        let base = 1_619_525_967 * TICKS_PER_SECOND;
        assert_eq!(parse_ticks("2021-04-27T12:19:27Z"), Some(base));
        assert_eq!(
            parse_ticks("2021-04-27T12:19:27.7Z"),
            Some(base + 7_000_000)
        );
        assert_eq!(
            parse_ticks("2021-04-27T12:19:27.116Z"),
            Some(base + 1_160_000)
        );
        // Digits past the seventh are truncated, never rounded up into the next tick.
        assert_eq!(
            parse_ticks("2021-04-27T12:19:27.123456789Z"),
            Some(base + 1_234_567)
        );
        assert_eq!(
            parse_ticks("2021-04-27T12:19:27.99999999999Z"),
            Some(base + 9_999_999)
        );
        assert_eq!(parse_ticks("2021-04-27T12:19:27.Z"), None);
    }

    #[test]
    fn offsets_no_offset_and_space_separator() {
        let utc = parse_ticks("2021-04-27T12:19:27.5Z");
        assert_eq!(parse_ticks("2021-04-27T12:19:27.5"), utc);
        assert_eq!(parse_ticks("2021-04-27 12:19:27.5"), utc);
        assert_eq!(parse_ticks("2021-04-27t12:19:27.5z"), utc);
        assert_eq!(parse_ticks("2021-04-27T14:19:27.5+02:00"), utc);
        assert_eq!(parse_ticks("2021-04-27T14:19:27.5+0200"), utc);
        assert_eq!(parse_ticks("2021-04-27T07:49:27.5-04:30"), utc);
        assert_eq!(parse_ticks("2021-04-27T12:19:27.5+00:00"), utc);
    }

    #[test]
    fn garbage_and_out_of_range_values_are_none_not_panics() {
        for s in [
            "",
            "2021",
            "2021-13-45T99:99:99Z",
            "2021-02-29T00:00:00Z",
            "2021-04-31T00:00:00Z",
            "2021-04-27T24:00:00Z",
            "2021-04-27T12:19:60Z",
            "2021-04-27T12:19:27ZZ",
            "2021-04-27T12:19:27+25:00",
            "2021-04-27T12:19:27+01",
            "2021-04-27X12:19:27Z",
            "+2021-04-27T12:19:27Z",
            "12345-04-27T12:19:27Z",
            "99999999999999999999-01-01T00:00:00Z",
            "２０２１-04-27T12:19:27Z",
            "2021-04-27T12:19:27.\u{e9}Z",
            "2021-04-27T12:19:27.5Z trailing",
        ] {
            assert_eq!(parse_ticks(s), None, "{s:?}");
        }
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(parse_ticks("2020-02-29T00:00:00Z").is_some());
        assert!(parse_ticks("2000-02-29T00:00:00Z").is_some());
        assert!(parse_ticks("1900-02-29T00:00:00Z").is_none());
        assert!(parse_ticks("2100-02-29T00:00:00Z").is_none());
        let feb29 = parse_ticks("2024-02-29T23:59:59.9999999Z").unwrap_or_default();
        assert_eq!(format_ticks(feb29 + 1), "2024-03-01T00:00:00.0000000Z");
    }

    #[test]
    fn round_trips_every_day_across_four_centuries() {
        // One sample per day from 1900 to 2300 covers every month length and leap rule.
        let start = parse_ticks("1900-01-01T00:00:00Z").unwrap_or_default();
        let end = parse_ticks("2300-01-01T00:00:00Z").unwrap_or_default();
        let mut t = start + 1_234_567; // a fraction and an odd time of day
        while t < end {
            let s = format_ticks(t);
            assert_eq!(parse_ticks(&s), Some(t), "{s}");
            t += TICKS_PER_DAY + 37 * TICKS_PER_SECOND;
        }
    }

    #[test]
    fn epoch_and_times_before_it() {
        assert_eq!(format_ticks(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(format_ticks(-1), "1969-12-31T23:59:59.9999999Z");
        assert_eq!(parse_ticks("1969-12-31T23:59:59.9999999Z"), Some(-1));
        assert_eq!(
            parse_ticks("0000-03-01T00:00:00Z")
                .map(format_ticks)
                .as_deref(),
            Some("0000-03-01T00:00:00.0000000Z")
        );
    }

    #[test]
    fn formatting_extreme_values_does_not_panic() {
        for t in [i64::MIN, i64::MIN + 1, i64::MAX, -TICKS_PER_DAY * 800_000] {
            assert!(format_ticks(t).ends_with('Z'));
            assert!(format_seconds(t).ends_with('Z'));
            assert!(format_rfc3339_millis_from_ms(t).ends_with('Z'));
        }
    }

    #[test]
    fn seconds_and_milliseconds_formats() {
        assert_eq!(format_seconds(1_619_525_967), "2021-04-27T12:19:27Z");
        assert_eq!(format_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339_millis_from_ms(1_621_941_916_475),
            "2021-05-25T11:25:16.4750000Z"
        );
        assert_eq!(
            format_rfc3339_millis_from_ms(-1),
            "1969-12-31T23:59:59.9990000Z"
        );
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(unix_seconds_now() > 1_577_836_800);
        assert!(now_ticks() > 1_577_836_800 * TICKS_PER_SECOND);
    }
}
