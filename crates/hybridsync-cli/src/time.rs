//! Times for people: a UTC date and time, and an age, from epoch milliseconds.

/// `YYYY-MM-DD HH:MM:SS UTC` for `ms` since the Unix epoch.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// How long before `now_ms` `then_ms` was: `12 s`, `5 min`, `3 h`, `2 d` (`in the
/// future` for a clock ahead of ours).
pub(crate) fn age(then_ms: u64, now_ms: u64) -> String {
    let Some(ms) = now_ms.checked_sub(then_ms) else {
        return "in the future".into();
    };
    format!("{} ago", span(ms as f64 / 1000.0))
}

/// A span of seconds as people say it: `12 s`, `5 min`, `3 h`, `2 d`.
pub(crate) fn span(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 (a leap day in a century year) and the year 2038 rollover.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(2_147_483_647_000), "2038-01-19 03:14:07 UTC");
        // The one the issue saw printed as "last seen 1796147879806 ms".
        assert_eq!(utc(1_796_147_879_806), "2026-12-01 17:57:59 UTC");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(10_000, 22_500), "12 s ago");
        assert_eq!(age(0, 5 * 60_000 + 1), "5 min ago");
        assert_eq!(age(0, 3 * 3_600_000), "3 h ago");
        assert_eq!(age(0, 2 * 86_400_000), "2 d ago");
        assert_eq!(age(5_000, 1_000), "in the future");
    }
}
