//! Kinesis sequence numbers: decimal strings of up to 129 digits, compared
//! numerically. They do not fit a machine integer, so they are kept as the
//! service's own string, normalised to have no leading zeros, which makes the
//! numeric order "shorter first, then byte by byte".

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A Kinesis sequence number. Cloning is cheap (a shared string).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

/// The longest sequence number the Kinesis API allows (`0|([1-9]\d{0,128})`).
const MAX_DIGITS: usize = 129;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Kinesis sequence number: {0:?} (expected 1 to 129 decimal digits)")]
pub struct ParseSequenceError(pub String);

impl SequenceNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseSequenceError(s.to_owned()));
        }
        let trimmed = s.trim_start_matches('0');
        let normal = if trimmed.is_empty() { "0" } else { trimmed };
        if normal.len() > MAX_DIGITS {
            return Err(ParseSequenceError(s.to_owned()));
        }
        Ok(SequenceNumber(Arc::from(normal)))
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_do_not_change_the_value() {
        let a: SequenceNumber = "000123".parse().unwrap();
        let b: SequenceNumber = "123".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "123");
        assert_eq!("0000".parse::<SequenceNumber>().unwrap().as_str(), "0");
    }

    #[test]
    fn rejects_what_is_not_a_sequence_number() {
        for bad in ["", "-1", "12 3", "1e5", "LATEST", &"9".repeat(130)] {
            assert!(
                bad.parse::<SequenceNumber>().is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!("9".repeat(129).parse::<SequenceNumber>().is_ok());
    }

    #[test]
    fn order_is_numeric() {
        let mut v: Vec<SequenceNumber> = ["100", "99", "1000", "101", "0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let got: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, ["0", "99", "100", "101", "1000"]);
    }
}
