//! UTC calendar times from epoch milliseconds, for object keys and the
//! timestamps of failure records (no time zone database needed).

/// A UTC time as (year, month, day, hour, minute).
pub fn civil(epoch_ms: i64) -> (i64, i64, i64, i64, i64) {
    let secs = epoch_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    let minute = secs.rem_euclid(3600) / 60;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, hour, minute)
}

/// `2026-12-07T09:28:33.120Z`, as Lambda writes times in failure records.
pub fn iso_millis(epoch_ms: i64) -> String {
    let (year, month, day, hour, minute) = civil(epoch_ms);
    let second = epoch_ms.div_euclid(1000).rem_euclid(60);
    let millis = epoch_ms.rem_euclid(1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Now, in epoch milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_written_as_lambda_writes_them() {
        assert_eq!(
            super::iso_millis(1_796_635_713_120),
            "2026-12-07T09:28:33.120Z"
        );
        assert_eq!(super::iso_millis(0), "1970-01-01T00:00:00.000Z");
    }
}
