//! The host's clock.
//!
//! A plugin has no clock of its own worth trusting: use [`now`] so that tests (the
//! `now:` of a `rekon test` case, [`FakeHost::now`](crate::testing::FakeHost::now)) can
//! fix it. Timestamps in Kubernetes objects are RFC 3339 strings;
//! [`format_rfc3339`] and [`parse_rfc3339`] convert.

/// Wall-clock time in milliseconds since the Unix epoch, from the host.
///
/// On native targets: the installed [`FakeHost`](crate::testing::FakeHost)'s time, or
/// the system clock when no fake is installed or it has no fixed time.
pub fn now() -> i64 {
    use crate::sys::Host as _;
    crate::host().now_ms()
}

/// The host's time as RFC 3339 in UTC with second precision, as Kubernetes writes
/// timestamps: `2026-01-01T00:00:00Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(now())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC with second precision
/// (sub-second digits are truncated, as in Kubernetes' `metav1.Time`).
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// Parses an RFC 3339 timestamp (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00.250+01:00`)
/// into milliseconds since the Unix epoch. `None` if it is not RFC 3339.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(secs * 1000 + millis)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01, proleptic Gregorian (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_epoch_and_a_leap_day() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(951_782_400_000 + 1_999),
            "2000-02-29T00:00:01Z"
        );
        assert_eq!(format_rfc3339(-1_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parse_inverts_format_across_centuries() {
        for ms in [
            0,
            1_767_225_600_000,
            4_102_444_800_000,
            -2_208_988_800_000,
            951_868_799_000,
        ] {
            assert_eq!(
                parse_rfc3339(&format_rfc3339(ms)),
                Some(ms),
                "{}",
                format_rfc3339(ms)
            );
        }
    }

    #[test]
    fn parse_reads_fractions_and_offsets() {
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00Z"),
            Some(1_767_225_600_000)
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00.25+01:00"),
            Some(1_767_225_600_250)
        );
        assert_eq!(
            parse_rfc3339("2025-12-31T19:00:00.123456-05:00"),
            Some(1_767_225_600_123)
        );
    }

    #[test]
    fn parse_refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "x026-01-01T00:00:00Z",
            "2026-01-01T00:00:00+1:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
