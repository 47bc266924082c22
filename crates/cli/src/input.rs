//! Where readings come from: a DEBS 2014 CSV or the synthetic generator.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Synthetic duration when the command line names none.
const DEFAULT_HOURS: f64 = 1.0;

#[derive(Args, Clone, Debug)]
pub struct InputArgs {
    /// Replay this DEBS 2014 CSV instead of synthetic data.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Synthetic data: number of houses.
    #[arg(long, default_value_t = 10, conflicts_with = "input")]
    pub houses: u32,
    /// Synthetic data: households per house.
    #[arg(long, default_value_t = 2, conflicts_with = "input")]
    pub households: u32,
    /// Synthetic data: plugs per household.
    #[arg(long, default_value_t = 5, conflicts_with = "input")]
    pub plugs: u32,
    /// Synthetic data: hours of readings [default: 1, or what the command says].
    #[arg(long, conflicts_with_all = ["days", "input"])]
    pub hours: Option<f64>,
    /// Synthetic data: days of readings (instead of --hours).
    #[arg(long, conflicts_with = "input")]
    pub days: Option<f64>,
    /// Synthetic data: seconds between two readings of a plug.
    #[arg(long, default_value_t = 1, conflicts_with = "input")]
    pub interval: u64,
    /// Synthetic data: random seed.
    #[arg(long, default_value_t = 2014)]
    pub seed: u64,
}

impl InputArgs {
    pub fn synthetic_config(&self) -> SyntheticConfig {
        SyntheticConfig {
            houses: self.houses,
            households_per_house: self.households,
            plugs_per_household: self.plugs,
            duration_secs: (self.duration_hours() * 3600.0).round().max(1.0) as u64,
            interval_secs: self.interval.max(1),
            seed: self.seed,
            ..SyntheticConfig::default()
        }
    }

    /// The same input as `mcloud sensor` flags, for a sensor in another process.
    pub fn to_args(&self) -> Vec<String> {
        if let Some(path) = &self.input {
            return vec!["--input".into(), path.display().to_string()];
        }
        let args: Vec<String> = [
            ("--houses", self.houses.to_string()),
            ("--households", self.households.to_string()),
            ("--plugs", self.plugs.to_string()),
            ("--hours", self.duration_hours().to_string()),
            ("--interval", self.interval.to_string()),
            ("--seed", self.seed.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        args
    }

    /// The synthetic duration asked for; one hour when neither --hours nor --days was given.
    pub fn duration_hours(&self) -> f64 {
        self.days
            .map(|d| d * 24.0)
            .or(self.hours)
            .unwrap_or(DEFAULT_HOURS)
    }

    /// Whether the command line named a duration (a command may pick its own default).
    pub fn duration_given(&self) -> bool {
        self.days.is_some() || self.hours.is_some()
    }

    /// Loads every reading, in input order, with a description for the summary.
    pub fn load(&self) -> Result<(Vec<Reading>, String)> {
        match &self.input {
            Some(path) => {
                let readings = mcloud_core::csv::read_file(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok((readings, format!("{}", path.display())))
            }
            None => {
                let config = self.synthetic_config();
                let description = self.synthetic_description(&config);
                Ok((Synthetic::new(config).collect(), description))
            }
        }
    }
}

/// An input as a stream: a synthetic one is generated as it is sent and a CSV file read as it
/// is sent, so a long run holds no more of it in memory than the batches in flight.
pub struct Stream {
    pub readings: Box<dyn Iterator<Item = Reading> + Send>,
    pub len: u64,
    /// The newest timestamp in the input.
    pub end: Option<u64>,
    pub description: String,
    /// Why a CSV file stopped parsing while it was streamed (it had parsed whole before).
    failed: Arc<OnceLock<String>>,
}

impl Stream {
    /// What tells, once the readings are consumed, whether they all were.
    pub fn completion(&self) -> Completion {
        Completion(self.failed.clone())
    }
}

pub struct Completion(Arc<OnceLock<String>>);

impl Completion {
    /// Fails if the stream ended early because its file no longer parsed (it changed after
    /// the first pass): the readings before that point were sent.
    pub fn check(&self) -> Result<()> {
        match self.0.get() {
            Some(e) => anyhow::bail!("the input changed while it was sent: {e}"),
            None => Ok(()),
        }
    }
}

impl InputArgs {
    pub fn stream(&self) -> Result<Stream> {
        let failed = Arc::new(OnceLock::new());
        if let Some(path) = &self.input {
            // Two passes: every line is checked before the first reading leaves, so a bad
            // line stops the run with nothing sent; the second pass streams.
            let scanned = mcloud_core::csv::scan_file(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let slot = failed.clone();
            let readings = mcloud_core::csv::stream_file(path)
                .with_context(|| format!("reading {}", path.display()))?
                .map_while(move |r| r.map_err(|e| slot.set(e.to_string())).ok());
            return Ok(Stream {
                len: scanned.readings,
                end: scanned.newest,
                readings: Box::new(readings),
                description: format!("{}", path.display()),
                failed,
            });
        }
        let config = self.synthetic_config();
        let steps = config.duration_secs.div_ceil(config.interval_secs.max(1));
        Ok(Stream {
            len: config.len(),
            end: (!config.is_empty())
                .then(|| config.start_ts + (steps - 1) * config.interval_secs.max(1)),
            description: self.synthetic_description(&config),
            readings: Box::new(Synthetic::new(config)),
            failed,
        })
    }

    fn synthetic_description(&self, config: &SyntheticConfig) -> String {
        format!(
            "synthetic: {} plugs in {} houses, {} h at {} s",
            config.plugs(),
            config.houses,
            self.duration_hours(),
            config.interval_secs
        )
    }
}

/// A replay speedup must be a positive finite multiple of real time.
pub fn check_speedup(speedup: Option<f64>) -> Result<()> {
    match speedup {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            anyhow::bail!("--speedup must be a positive multiple of real time, got {s}")
        }
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

pub fn write_output(
    format: OutputFormat,
    revealed: &mcloud_collector::RevealedResult,
) -> Result<()> {
    let stdout = std::io::stdout();
    let written = render_output(format, revealed, &mut stdout.lock());
    match written {
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Writes `revealed` in `format` to `out`.
pub fn render_output(
    format: OutputFormat,
    revealed: &mcloud_collector::RevealedResult,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Table => mcloud_collector::output::write_table(out, revealed),
        OutputFormat::Csv => mcloud_collector::output::write_csv(out, revealed),
        OutputFormat::Json => mcloud_collector::output::write_json(out, revealed),
    }
}

/// A progress bar on stderr (drawn only on a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} readings ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
