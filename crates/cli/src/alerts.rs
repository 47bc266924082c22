//! Q2 outliers as mailbox alerts: `mcloud analytics --alert-to USER` sends USER (the owner of
//! the houses it ran over) one message per house whose share of plugs above the global
//! median reached `--alert-percent` in some window, for the owner's apps to pick up whenever
//! they come online.

use mcloud_analytics::{AnalyticsError, Q1Row, Q2Row, RowSink};
use std::collections::BTreeMap;

/// Rows listed in one house's alert; the rest are counted.
const MAX_ROWS_PER_ALERT: usize = 100;

/// The outliers seen so far, by house.
pub struct Outliers {
    percent: f64,
    houses: BTreeMap<u32, (Vec<Q2Row>, usize)>,
}

impl Outliers {
    pub fn new(percent: f64) -> Outliers {
        Outliers {
            percent,
            houses: BTreeMap::new(),
        }
    }

    fn see(&mut self, rows: &[Q2Row]) {
        for row in rows.iter().filter(|r| r.percentage() >= self.percent) {
            let (kept, count) = self.houses.entry(row.house).or_default();
            *count += 1;
            if kept.len() < MAX_ROWS_PER_ALERT {
                kept.push(*row);
            }
        }
    }

    /// One message per house: what happened, then the rows as Q2's CSV has them.
    pub fn messages(&self) -> Vec<(u32, String)> {
        self.houses
            .iter()
            .map(|(house, (rows, count))| {
                let mut text = format!(
                    "mcloud alert: house {house} had at least {}% of its plugs above the global median in {count} Q2 window(s)\n{}\n",
                    self.percent,
                    mcloud_analytics::Q2_HEADER
                );
                for r in rows {
                    text += &format!(
                        "{},{},{},{},{:.2}\n",
                        r.ts_start,
                        r.ts_stop,
                        r.window.label(),
                        r.house,
                        r.percentage()
                    );
                }
                if *count > rows.len() {
                    text += &format!("... and {} more\n", count - rows.len());
                }
                (*house, text)
            })
            .collect()
    }
}

/// Passes rows on to `inner`, noting Q2 outliers on the way.
pub struct Noting<'a> {
    pub inner: &'a mut dyn RowSink,
    pub outliers: &'a mut Outliers,
}

impl RowSink for Noting<'_> {
    fn q1_rows(&mut self, rows: Vec<Q1Row>) -> Result<(), AnalyticsError> {
        self.inner.q1_rows(rows)
    }

    fn q2_rows(&mut self, rows: Vec<Q2Row>) -> Result<(), AnalyticsError> {
        self.outliers.see(&rows);
        self.inner.q2_rows(rows)
    }
}
