//! CSV output of both queries, and how closely two Q2 outputs agree.

use crate::q1::Q1Row;
use crate::q2::{Q2Row, Q2Window};
use mcloud_core::fixed;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Header of the Q1 output.
pub const Q1_HEADER: &str = "ts,slice_minutes,house_id,household_id,plug_id,predicted_load";
/// Header of the Q2 output.
pub const Q2_HEADER: &str = "ts_start,ts_stop,window,house_id,percentage";

/// Writes Q1 rows; house rows leave household_id and plug_id empty.
pub fn write_q1<W: Write>(mut out: W, rows: &[Q1Row]) -> io::Result<()> {
    writeln!(out, "{Q1_HEADER}")?;
    write_q1_rows(&mut out, rows)?;
    out.flush()
}

/// Writes Q1 rows without the header.
pub fn write_q1_rows<W: Write>(out: &mut W, rows: &[Q1Row]) -> io::Result<()> {
    for row in rows {
        let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
        writeln!(
            out,
            "{},{},{},{},{},{}",
            row.ts,
            row.slice_minutes,
            row.house,
            id(row.household),
            id(row.plug),
            fixed::format(row.predicted)
        )?;
    }
    Ok(())
}

/// A percentage `100 · above / plugs` with two decimals, rounded half up in integers so the
/// printed digits never depend on float rounding.
pub fn format_percentage(above: u32, plugs: u32) -> String {
    let plugs = u128::from(plugs.max(1));
    let hundredths = (20_000 * u128::from(above) + plugs) / (2 * plugs);
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

/// Writes Q2 rows.
pub fn write_q2<W: Write>(mut out: W, rows: &[Q2Row]) -> io::Result<()> {
    writeln!(out, "{Q2_HEADER}")?;
    write_q2_rows(&mut out, rows)?;
    out.flush()
}

/// Writes Q2 rows without the header.
pub fn write_q2_rows<W: Write>(out: &mut W, rows: &[Q2Row]) -> io::Result<()> {
    for row in rows {
        writeln!(
            out,
            "{},{},{},{},{}",
            row.ts_start,
            row.ts_stop,
            row.window.label(),
            row.house,
            format_percentage(row.above, row.plugs)
        )?;
    }
    Ok(())
}

/// Writes each query's rows as CSV as the driver computes them (headers first), so a run of
/// any length holds one boundary's rows at a time.
pub struct CsvSink<A: Write, B: Write> {
    q1: A,
    q2: B,
    pub q1_rows: u64,
    pub q2_rows: u64,
}

impl<A: Write, B: Write> CsvSink<A, B> {
    /// Starts both outputs with their headers; pass `io::sink()` for a query not run.
    pub fn new(mut q1: A, mut q2: B) -> io::Result<Self> {
        writeln!(q1, "{Q1_HEADER}")?;
        writeln!(q2, "{Q2_HEADER}")?;
        Ok(CsvSink {
            q1,
            q2,
            q1_rows: 0,
            q2_rows: 0,
        })
    }

    /// Flushes both outputs and hands them back.
    pub fn finish(mut self) -> io::Result<(A, B)> {
        self.q1.flush()?;
        self.q2.flush()?;
        Ok((self.q1, self.q2))
    }
}

impl<A: Write, B: Write> crate::driver::RowSink for CsvSink<A, B> {
    fn q1_rows(&mut self, rows: Vec<Q1Row>) -> Result<(), crate::AnalyticsError> {
        self.q1_rows += rows.len() as u64;
        Ok(write_q1_rows(&mut self.q1, &rows)?)
    }
    fn q2_rows(&mut self, rows: Vec<Q2Row>) -> Result<(), crate::AnalyticsError> {
        self.q2_rows += rows.len() as u64;
        Ok(write_q2_rows(&mut self.q2, &rows)?)
    }
}

/// How many Q2 rows two outputs share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// Keys present in both outputs with the same percentage.
    pub identical: usize,
    /// Keys present in either output.
    pub total: usize,
}

impl Agreement {
    /// identical / total; 1 when both outputs are empty.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.identical as f64 / self.total as f64
        }
    }
}

/// Compares two Q2 outputs row by row on the key (ts_start, window, house): a row counts as
/// identical when the other output has the same key with the same percentage. Meant for
/// outputs written with [`crate::Emit::Every`], where both hold a row per house and boundary.
pub fn q2_agreement(private: &[Q2Row], exact: &[Q2Row]) -> Agreement {
    type Key = (u64, Q2Window, u32);
    let index = |rows: &[Q2Row]| -> BTreeMap<Key, Q2Row> {
        rows.iter()
            .map(|r| ((r.ts_start, r.window, r.house), *r))
            .collect()
    };
    let (private, exact) = (index(private), index(exact));
    let identical = private
        .iter()
        .filter(|(key, row)| exact.get(key).is_some_and(|e| e.same_percentage(row)))
        .count();
    let total = private.len() + exact.keys().filter(|k| !private.contains_key(k)).count();
    Agreement { identical, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_have_two_decimals() {
        assert_eq!(format_percentage(1, 3), "33.33");
        assert_eq!(format_percentage(2, 3), "66.67");
        assert_eq!(format_percentage(0, 5), "0.00");
        assert_eq!(format_percentage(4, 4), "100.00");
    }

    #[test]
    fn writes_headers_and_empty_ids_for_houses() {
        let rows = [Q1Row {
            ts: 120,
            slice_minutes: 1,
            house: 3,
            household: None,
            plug: None,
            predicted: 1_500,
        }];
        let mut out = Vec::new();
        write_q1(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{Q1_HEADER}\n120,1,3,,,1.500\n")
        );
        let row = Q2Row {
            ts_start: 0,
            ts_stop: 3600,
            window: Q2Window::Hour,
            house: 3,
            above: 1,
            plugs: 2,
        };
        let mut out = Vec::new();
        write_q2(&mut out, &[row]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{Q2_HEADER}\n0,3600,1h,3,50.00\n")
        );
        let other = Q2Row { above: 0, ..row };
        assert_eq!(q2_agreement(&[row], &[row]).ratio(), 1.0);
        assert_eq!(q2_agreement(&[row], &[other]).ratio(), 0.0);
        let later = Q2Row {
            ts_start: 30,
            ts_stop: 3630,
            ..row
        };
        assert_eq!(
            q2_agreement(&[row], &[row, later]),
            Agreement {
                identical: 1,
                total: 2
            }
        );
    }
}
