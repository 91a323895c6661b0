//! Small formatting pieces shared by the fleet table and the drill-in views of
//! `dpu-controller status`: byte sizes, ages, staleness and column layout.

use crate::escape::escape_peer;
use crate::status::NodeStatus;

/// The most of one table cell shown (an agent's error can be 4 KiB).
const MAX_CELL: usize = 4096;

/// A connected node's status older than this is shown as stale: the agent sends
/// one about every 10 s.
pub const STALE_AFTER_SECS: i64 = 60;

/// `512B`, `1.5K`, `7.6G`, `16G`: binary units, one decimal below 10.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `42s`, `5m 3s`, `2h 5m`, `3d 4h`.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-11-26T04:55:33.5Z`,
/// `...+02:00`); `None` if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = text.get(from..from + len)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How old the node's last agent status is at `now` (Unix seconds).
pub fn status_age(n: &NodeStatus, now: i64) -> Option<i64> {
    let at = parse_rfc3339(&n.agent_status.as_ref()?.at)?;
    Some(now - at)
}

/// Whether the node's agent status is only a last known value: the node is
/// disconnected, or its agent has not reported for `STALE_AFTER_SECS`.
pub fn is_stale(n: &NodeStatus, now: i64) -> bool {
    n.agent_status.is_some()
        && (!n.connected || status_age(n, now).is_some_and(|a| a > STALE_AFTER_SECS))
}

/// `T (5m 3s ago)`, or just `T` when it does not parse.
pub fn time_and_age(at: &str, now: i64) -> String {
    match parse_rfc3339(at) {
        Some(t) => format!("{at} ({} ago)", human_age(now - t)),
        None => at.to_string(),
    }
}

/// `12.4%` of a share already checked to be finite.
pub fn percent(value: f64) -> String {
    format!("{value:.1}%")
}

/// Rows as left-aligned columns two spaces apart; the last column is not
/// padded, and no line ends in spaces.
///
/// Cells hold text agents sent (errors, names, versions); every control
/// character in them is escaped, so a cell can neither forge a row nor drive
/// the terminal.
pub fn layout<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| escape_peer(&c, MAX_CELL)))
        .collect();
    let mut out = String::new();
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == N {
                line += cell;
            } else {
                line += &format!("{cell:<w$}  ", w = widths[i]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_ages_read_well() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(8 << 30), "8.0G");
        assert_eq!(human_bytes(16 << 30), "16G");
        assert_eq!(human_bytes(u64::MAX), "16384P");
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(303), "5m 3s");
        assert_eq!(human_age(7500), "2h 5m");
        assert_eq!(human_age(-5), "0s");
        assert_eq!(human_age(90_000), "1d 1h");
    }

    #[test]
    fn rfc3339_parses_what_the_controller_writes() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339(&crate::timeutil::rfc3339(1_790_000_000)),
            Some(1_790_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T04:55:33.123456789Z"),
            Some(1_795_668_933)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T06:55:33+02:00"),
            Some(1_795_668_933)
        );
        let now = crate::timeutil::unix_now();
        let written = parse_rfc3339(&crate::status::now_rfc3339()).unwrap();
        assert!((now - written).abs() <= 1);
        for bad in [
            "",
            "T",
            "2026-13-01T00:00:00Z",
            "2026-11-26T04:55:33",
            "2026-11-26T04:55:33.Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn layout_pads_all_but_the_last_column() {
        let rows = [
            ["A".to_string(), "BB".to_string(), "C".to_string()],
            ["aaa".to_string(), "".to_string(), "".to_string()],
        ];
        assert_eq!(layout(&rows), "A    BB  C\naaa\n");
    }
}
