//! The DEBS 2014 smart-plug CSV: `id,timestamp,value,property,plug_id,household_id,house_id`.

use crate::fixed::{self, FixedError};
use crate::reading::{GroupKey, Metric, Reading};
use std::io::BufRead;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CsvError {
    #[error("line {line}: expected 7 comma-separated fields, found {found}")]
    FieldCount { line: usize, found: usize },
    #[error("line {line}: field {field} {value:?} is not a valid {kind}")]
    Parse {
        line: usize,
        field: &'static str,
        value: String,
        kind: &'static str,
    },
    #[error("line {line}: property must be 0 (work) or 1 (load), found {value}")]
    Property { line: usize, value: u32 },
    #[error("line {line}: {source}")]
    Value { line: usize, source: FixedError },
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
}

fn field<T: std::str::FromStr>(
    line: usize,
    name: &'static str,
    kind: &'static str,
    raw: &str,
) -> Result<T, CsvError> {
    raw.trim().parse().map_err(|_| CsvError::Parse {
        line,
        field: name,
        value: raw.to_string(),
        kind,
    })
}

/// Parses one CSV line (1-based `line` for messages).
pub fn parse_line(line: usize, text: &str) -> Result<Reading, CsvError> {
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() != 7 {
        return Err(CsvError::FieldCount {
            line,
            found: parts.len(),
        });
    }
    let id: u64 = field(line, "id", "unsigned integer", parts[0])?;
    let ts: u64 = field(line, "timestamp", "unsigned integer", parts[1])?;
    let value: f64 = field(line, "value", "number", parts[2])?;
    let property: u32 = field(line, "property", "unsigned integer", parts[3])?;
    let plug: u32 = field(line, "plug_id", "unsigned integer", parts[4])?;
    let household: u32 = field(line, "household_id", "unsigned integer", parts[5])?;
    let house: u32 = field(line, "house_id", "unsigned integer", parts[6])?;
    let metric = match property {
        0 => Metric::Work,
        1 => Metric::Load,
        value => return Err(CsvError::Property { line, value }),
    };
    let value = fixed::encode(value).map_err(|source| CsvError::Value { line, source })?;
    Ok(Reading {
        id,
        ts,
        value,
        metric,
        group: GroupKey {
            house,
            household,
            plug,
        },
    })
}

/// One reading as a CSV line, the inverse of [`parse_line`] (what a device publishes to a
/// bridge, for example).
pub fn format_line(r: &Reading) -> String {
    let property = match r.metric {
        Metric::Work => 0,
        Metric::Load => 1,
    };
    format!(
        "{},{},{},{property},{},{},{}",
        r.id,
        r.ts,
        fixed::format(u128::from(r.value)),
        r.group.plug,
        r.group.household,
        r.group.house
    )
}

/// Reads every line of a DEBS CSV (blank lines are skipped).
pub fn read_all(input: impl BufRead) -> Result<Vec<Reading>, CsvError> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_text = line?;
        if line_text.trim().is_empty() {
            continue;
        }
        out.push(parse_line(i + 1, &line_text)?);
    }
    Ok(out)
}

/// Reads a DEBS CSV file.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Reading>, CsvError> {
    let file = std::fs::File::open(path)?;
    read_all(std::io::BufReader::new(file))
}

/// What a pass over a DEBS CSV file found: every line parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    pub readings: u64,
    /// The newest timestamp, None for a file without readings.
    pub newest: Option<u64>,
}

/// Parses every line of a DEBS CSV file without keeping any: a file as large as the real
/// DEBS 2014 one (136 GB) is checked and measured before a stream of it starts.
pub fn scan_file(path: &std::path::Path) -> Result<Scanned, CsvError> {
    let mut scanned = Scanned::default();
    for reading in stream_file(path)? {
        let ts = reading?.ts;
        scanned.readings += 1;
        scanned.newest = Some(scanned.newest.map_or(ts, |n| n.max(ts)));
    }
    Ok(scanned)
}

/// The readings of a DEBS CSV file one at a time, in file order (blank lines are skipped).
pub fn stream_file(
    path: &std::path::Path,
) -> Result<impl Iterator<Item = Result<Reading, CsvError>>, CsvError> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(file.lines().enumerate().filter_map(|(i, line)| match line {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(parse_line(i + 1, &text)),
        Err(e) => Some(Err(CsvError::Io(e))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_line_parses_back() {
        for line in [
            "2,1377986401,19.927,1,11,0,0",
            "7,1377986402,0.000,0,3,2,40",
        ] {
            let r = parse_line(1, line).unwrap();
            assert_eq!(format_line(&r), line);
            assert_eq!(parse_line(1, &format_line(&r)).unwrap(), r);
        }
    }

    #[test]
    fn parses_a_debs_line() {
        let r = parse_line(1, "2,1377986401,19.927,1,11,0,0").unwrap();
        assert_eq!(r.id, 2);
        assert_eq!(r.ts, 1377986401);
        assert_eq!(r.value, 19_927);
        assert_eq!(r.metric, Metric::Load);
        assert_eq!(
            r.group,
            GroupKey {
                house: 0,
                household: 0,
                plug: 11
            }
        );
    }

    #[test]
    fn names_the_problem() {
        let e = parse_line(7, "1,2,3").unwrap_err().to_string();
        assert!(
            e.contains("line 7") && e.contains("7 comma-separated"),
            "{e}"
        );
        let e = parse_line(3, "1,x,3,1,0,0,0").unwrap_err().to_string();
        assert!(e.contains("timestamp"), "{e}");
        let e = parse_line(3, "1,2,3,4,0,0,0").unwrap_err().to_string();
        assert!(e.contains("property"), "{e}");
        let e = parse_line(3, "1,2,-3,1,0,0,0").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn a_streamed_file_gives_what_a_read_one_does_and_a_scan_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let good = "2,1377986401,19.927,1,11,0,0\n\n7,1377986405,0.000,0,3,2,40\n3,1377986403,1.5,1,11,0,0\n";
        std::fs::write(&path, good).unwrap();
        let streamed: Vec<Reading> = stream_file(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(streamed, read_file(&path).unwrap());
        assert_eq!(
            scan_file(&path).unwrap(),
            Scanned {
                readings: 3,
                newest: Some(1377986405)
            }
        );
        std::fs::write(&path, format!("{good}4,1377986406,oops,1,11,0,0\n")).unwrap();
        let e = scan_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("value"), "{e}");
    }
}
