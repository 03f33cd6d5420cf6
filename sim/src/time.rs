//! Microsoft's timestamps at their full precision.
//!
//! Graph writes `DateTimeOffset` values with up to seven fractional digits (100-ns "ticks").
//! Comparing them as text or as floating point loses the seventh digit, so everything in the
//! simulator holds a time as an `i64` count of 100-ns ticks since the Unix epoch and converts only
//! at the edges. No date library is needed for the proleptic Gregorian calendar used here.

use std::time::{SystemTime, UNIX_EPOCH};

/// 100-ns ticks per second.
pub const TICKS_PER_SEC: i64 = 10_000_000;

/// Ticks between 0001-01-01 (the .NET epoch, used in Defender alert ids) and 1970-01-01.
pub const DOTNET_EPOCH_OFFSET: i64 = 621_355_968_000_000_000;

/// Converts a `SystemTime` to ticks since the Unix epoch (negative before 1970).
pub fn ticks(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos() / 100).unwrap_or(i64::MAX),
    }
}

/// Ticks of the current wall-clock time.
pub fn now_ticks() -> i64 {
    ticks(SystemTime::now())
}

// Howard Hinnant's days-from-civil and civil-from-days: exact integer arithmetic for any year.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Splits ticks into (year, month, day, hour, minute, second, fraction in ticks).
fn fields(ticks: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let secs = ticks.div_euclid(TICKS_PER_SEC);
    let frac = ticks.rem_euclid(TICKS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, sod / 3600, sod % 3600 / 60, sod % 60, frac)
}

/// Writes `YYYY-MM-DDTHH:MM:SS.fffffffZ`, the form Graph uses for `lastUpdateDateTime`.
pub fn write_iso7(out: &mut String, ticks: i64) {
    let (y, mo, d, h, mi, s, f) = fields(ticks);
    // Hand-rolled digits: this runs ~15 times per rendered alert, and `write!` is slow.
    let mut buf = *b"0000-00-00T00:00:00.0000000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v.rem_euclid(10)) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, mo);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 7, f);
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// `YYYY-MM-DDTHH:MM:SS.fffffffZ`.
pub fn iso7(ticks: i64) -> String {
    let mut s = String::with_capacity(28);
    write_iso7(&mut s, ticks);
    s
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ`: the millisecond form Defender uses for activity times.
pub fn iso3(ticks: i64) -> String {
    let (y, mo, d, h, mi, s, f) = fields(ticks);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        f / 10_000
    )
}

/// `YYYY-MM-DDTHH:MM:SS` without fraction or zone: Graph's `innerError.date`.
pub fn iso_plain(ticks: i64) -> String {
    let (y, mo, d, h, mi, s, _) = fields(ticks);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ`: whole seconds, the form Outlook's message times take.
pub fn iso_secs(ticks: i64) -> String {
    iso_plain(ticks) + "Z"
}

/// `Mon, 3 Jun 2024 10:12:14 +0000`: an RFC 5322 date, as mail headers carry it.
pub fn rfc5322(ticks: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = fields(ticks);
    let day = ticks
        .div_euclid(TICKS_PER_SEC)
        .div_euclid(86_400)
        .rem_euclid(7);
    let wd = DAYS[usize::try_from(day).unwrap_or(0) % 7];
    let mn = MONTHS[usize::try_from(mo - 1).unwrap_or(0) % 12];
    format!("{wd}, {d} {mn} {y:04} {h:02}:{mi:02}:{s:02} +0000")
}

/// `YYYY-MM-DD HH:MM:SSZ`: Entra's `timestamp` in token errors.
pub fn entra_timestamp(ticks: i64) -> String {
    let (y, mo, d, h, mi, s, _) = fields(ticks);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = s.get(at..at + n)?;
    let mut v = 0i64;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Parses an ISO-8601 `DateTimeOffset`: `YYYY-MM-DDTHH:MM[:SS[.f{1,7}]]` followed by `Z`, an
/// offset `±HH:MM`, or nothing (then UTC, as Graph treats it). Returns ticks since the Unix
/// epoch, exact to 100 ns; `None` for anything else (more than seven fractional digits cannot be
/// represented exactly, so they are refused rather than rounded).
pub fn parse(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = digits(b, 14, 2)?;
    let mut i = 16;
    let mut second = 0;
    let mut frac = 0i64;
    if b.get(i) == Some(&b':') {
        second = digits(b, i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let n = i - start;
            if n == 0 || n > 7 {
                return None;
            }
            frac = digits(b, start, n)? * 10i64.pow(7 - n as u32);
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Some(secs * TICKS_PER_SEC + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_seven_digits() {
        let t = parse("2021-05-02T14:19:01.3266667Z");
        assert_eq!(t.map(iso7).as_deref(), Some("2021-05-02T14:19:01.3266667Z"));
    }

    #[test]
    fn accepts_fewer_digits_offsets_and_no_zone() {
        assert_eq!(
            parse("2021-04-26T07:45:50.116Z"),
            parse("2021-04-26T07:45:50.1160000Z")
        );
        assert_eq!(parse("2021-04-26T07:45:50"), parse("2021-04-26T07:45:50Z"));
        assert_eq!(
            parse("2021-04-26T09:45:50+02:00"),
            parse("2021-04-26T07:45:50Z")
        );
        assert_eq!(parse("2021-04-26T07:45Z"), parse("2021-04-26T07:45:00Z"));
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "2021-02-30T00:00:00Z",
            "2021-04-26T07:45:50.12345678Z",
            "2021-04-26 07:45:50Z",
            "2021-04-26T07:45:50Zx",
            "2021-04-26T07:45:50.",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn the_epoch_and_dotnet_ticks_agree() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("0001-01-01T00:00:00Z"), Some(-DOTNET_EPOCH_OFFSET));
        assert_eq!(iso7(-1), "1969-12-31T23:59:59.9999999Z");
        assert_eq!(entra_timestamp(0), "1970-01-01 00:00:00Z");
    }
}
