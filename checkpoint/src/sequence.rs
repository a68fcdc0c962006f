//! Kinesis sequence numbers: decimal strings of up to 129 digits, compared
//! numerically. They do not fit a machine integer, so they are kept as the
//! service's own digits, normalised to have no leading zeros, which makes the
//! numeric order "shorter first, then byte by byte". The digits are a shared
//! slice (often of the GetRecords response itself), so cloning or creating
//! one never allocates.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// A Kinesis sequence number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Bytes);

/// The longest sequence number the Kinesis API allows (`0|([1-9]\d{0,128})`).
const MAX_DIGITS: usize = 129;

/// A string that is not a valid Kinesis sequence number; holds the rejected
/// input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Kinesis sequence number: {0:?} (expected 1 to 129 decimal digits)")]
pub struct ParseSequenceError(pub String);

impl SequenceNumber {
    /// Takes the digits without copying them.
    pub fn from_bytes(digits: Bytes) -> Result<Self, ParseSequenceError> {
        // Branch-free over the bytes, so the check vectorises: this runs
        // for every record read.
        let not_digit = digits
            .iter()
            .fold(0u8, |acc, b| acc | u8::from(b.wrapping_sub(b'0') > 9));
        if digits.is_empty() || not_digit != 0 {
            return Err(ParseSequenceError(
                String::from_utf8_lossy(&digits).into_owned(),
            ));
        }
        let zeros = digits.iter().take_while(|b| **b == b'0').count();
        let start = zeros.min(digits.len() - 1);
        if digits.len() - start > MAX_DIGITS {
            return Err(ParseSequenceError(
                String::from_utf8_lossy(&digits).into_owned(),
            ));
        }
        Ok(SequenceNumber(digits.slice(start..)))
    }

    /// The same digits in an allocation of their own. A sequence number
    /// decoded from a response is a slice of its batch's buffer (about a
    /// megabyte for 1,000 records of 1 KiB), and a slice keeps the whole
    /// buffer alive: one kept after the batch (a checkpoint, the last
    /// position handed to a processor) must be detached, or every shard
    /// holds a batch or two outside the read-ahead budget.
    pub fn detached(&self) -> Self {
        SequenceNumber(Bytes::copy_from_slice(&self.0))
    }

    /// The sequence number as its decimal digits, without leading zeros.
    pub fn as_str(&self) -> &str {
        // SAFETY: `from_bytes` is the only constructor and admits ASCII
        // digits only, which are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SequenceNumber::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.as_str())
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
        for bad in ["", "-1", "12 3", "1e5", "LATEST", "١٢", &"9".repeat(130)] {
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

    #[test]
    fn from_bytes_shares_the_buffer() {
        let body = Bytes::from_static(b"xx00042yy");
        let seq = SequenceNumber::from_bytes(body.slice(2..7)).unwrap();
        assert_eq!(seq.as_str(), "42");
        assert_eq!(seq.as_str().as_ptr(), body[5..].as_ptr());
    }
}
