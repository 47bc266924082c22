//! Readings are fixed-point integers: value × SCALE, so sums are exact to the last unit.

use thiserror::Error;

/// Three decimals: the DEBS 2014 data carries at most three (W for load, kWh for work).
pub const SCALE: u64 = 1000;

/// Largest accepted fixed-point value (about 10^12 W or kWh): squares stay below 2^80 and a
/// year of sums of squares stays far below the field modulus.
pub const MAX_FIXED: u64 = 1 << 40;

#[derive(Debug, Error, PartialEq)]
pub enum FixedError {
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    #[error("value {0} is negative; readings must be >= 0")]
    Negative(f64),
    #[error("value {0} is out of range (max {max})", max = MAX_FIXED as f64 / SCALE as f64)]
    TooLarge(f64),
}

/// Encodes a decimal reading as an exact fixed-point integer.
pub fn encode(value: f64) -> Result<u64, FixedError> {
    if !value.is_finite() {
        return Err(FixedError::NotFinite(value));
    }
    if value < 0.0 {
        return Err(FixedError::Negative(value));
    }
    let scaled = (value * SCALE as f64).round();
    if scaled > MAX_FIXED as f64 {
        return Err(FixedError::TooLarge(value));
    }
    Ok(scaled as u64)
}

/// Decimal form of a fixed-point integer, exact (no float rounding in the printed digits).
pub fn format(fixed: u128) -> String {
    let scale = SCALE as u128;
    format!("{}.{:03}", fixed / scale, fixed % scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_three_decimals_exactly() {
        assert_eq!(encode(68.451), Ok(68_451));
        assert_eq!(encode(0.0), Ok(0));
        assert_eq!(encode(9.472), Ok(9_472));
        assert_eq!(format(68_451), "68.451");
        assert_eq!(format(5), "0.005");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(encode(-1.0), Err(FixedError::Negative(_))));
        assert!(matches!(encode(f64::NAN), Err(FixedError::NotFinite(_))));
        assert!(matches!(encode(1e12), Err(FixedError::TooLarge(_))));
    }
}
