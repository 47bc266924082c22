//! A synthetic smart-plug data set with the DEBS 2014 schema: houses of households of plugs,
//! each plug an appliance with a daily rhythm (fridges cycle, lights and TVs follow the
//! evening, computers the working day, washers switch on rarely and draw a lot, some plugs
//! stay idle). Every plug reports load (W) and accumulated work (kWh) each interval, in
//! timestamp order. Deterministic for a given seed.

use crate::fixed;
use crate::reading::{GroupKey, Metric, Reading};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct SyntheticConfig {
    pub houses: u32,
    pub households_per_house: u32,
    pub plugs_per_household: u32,
    /// Unix seconds of the first reading.
    pub start_ts: u64,
    pub duration_secs: u64,
    /// Seconds between two readings of one plug.
    pub interval_secs: u64,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            houses: 10,
            households_per_house: 2,
            plugs_per_household: 5,
            // 2013-09-01 00:00 UTC, where the DEBS 2014 data starts.
            start_ts: 1_377_993_600,
            duration_secs: 3600,
            interval_secs: 1,
            seed: 2014,
        }
    }
}

impl SyntheticConfig {
    pub fn plugs(&self) -> u64 {
        self.houses as u64 * self.households_per_house as u64 * self.plugs_per_household as u64
    }

    /// Number of readings the generator yields (load and work for every plug and step).
    pub fn len(&self) -> u64 {
        self.plugs() * self.duration_secs.div_ceil(self.interval_secs.max(1)) * 2
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug)]
enum Appliance {
    Fridge { cycle: u64, offset: u64 },
    Light,
    Television,
    Computer,
    Washer,
    Idle,
}

struct Plug {
    key: GroupKey,
    appliance: Appliance,
    on: bool,
    /// Accumulated work in Wh, kept exact as a float and rounded when reported.
    work_wh: f64,
}

/// Iterator over synthetic readings.
pub struct Synthetic {
    config: SyntheticConfig,
    plugs: Vec<Plug>,
    rng: ChaCha8Rng,
    ts: u64,
    next_plug: usize,
    pending_work: Option<Reading>,
    next_id: u64,
}

impl Synthetic {
    pub fn new(config: SyntheticConfig) -> Synthetic {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut plugs = Vec::new();
        for house in 0..config.houses {
            for household in 0..config.households_per_house {
                for plug in 0..config.plugs_per_household {
                    let appliance = match rng.gen_range(0..10) {
                        0..=2 => Appliance::Fridge {
                            cycle: rng.gen_range(1800..3000),
                            offset: rng.gen_range(0..3000),
                        },
                        3 | 4 => Appliance::Light,
                        5 => Appliance::Television,
                        6 => Appliance::Computer,
                        7 => Appliance::Washer,
                        _ => Appliance::Idle,
                    };
                    plugs.push(Plug {
                        key: GroupKey {
                            house,
                            household,
                            plug,
                        },
                        appliance,
                        on: false,
                        work_wh: rng.gen_range(0.0..100_000.0),
                    });
                }
            }
        }
        Synthetic {
            ts: config.start_ts,
            config,
            plugs,
            rng,
            next_plug: 0,
            pending_work: None,
            next_id: 1,
        }
    }

    fn load_watts(plug: &mut Plug, ts: u64, rng: &mut ChaCha8Rng) -> f64 {
        let hour = (ts % 86_400) / 3600;
        let evening = (18..23).contains(&hour);
        let working = (8..18).contains(&hour);
        let noise = 1.0 + rng.gen_range(-0.03..0.03);
        let mut switch = |p_on: f64, p_off: f64| {
            let p = if plug.on { p_off } else { p_on };
            if rng.gen_bool(p) {
                plug.on = !plug.on;
            }
            plug.on
        };
        let watts = match plug.appliance {
            Appliance::Fridge { cycle, offset } => {
                if (ts + offset) % cycle < cycle * 2 / 5 {
                    120.0
                } else {
                    2.0
                }
            }
            Appliance::Light => {
                let on = if evening {
                    switch(0.01, 0.0005)
                } else {
                    switch(0.0002, 0.01)
                };
                if on {
                    60.0
                } else {
                    0.0
                }
            }
            Appliance::Television => {
                let on = if evening {
                    switch(0.005, 0.001)
                } else {
                    switch(0.0001, 0.01)
                };
                if on {
                    110.0
                } else {
                    1.0
                }
            }
            Appliance::Computer => {
                let on = if working || evening {
                    switch(0.005, 0.0005)
                } else {
                    switch(0.0001, 0.005)
                };
                if on {
                    80.0 + 120.0 * ((ts % 600) as f64 / 600.0)
                } else {
                    0.5
                }
            }
            Appliance::Washer => {
                if switch(0.00005, 0.0005) {
                    2000.0
                } else {
                    0.0
                }
            }
            Appliance::Idle => 0.0,
        };
        watts * noise
    }

    fn reading(&mut self, value: f64, metric: Metric, group: GroupKey) -> Reading {
        let id = self.next_id;
        self.next_id += 1;
        // Generated values are finite, non-negative and far below the limit.
        let value = fixed::encode(value).unwrap_or(0);
        Reading {
            id,
            ts: self.ts,
            value,
            metric,
            group,
        }
    }
}

impl Iterator for Synthetic {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        if let Some(work) = self.pending_work.take() {
            return Some(work);
        }
        if self.next_plug == self.plugs.len() {
            self.next_plug = 0;
            self.ts += self.config.interval_secs.max(1);
        }
        if self.plugs.is_empty() || self.ts >= self.config.start_ts + self.config.duration_secs {
            return None;
        }
        let index = self.next_plug;
        self.next_plug += 1;
        let ts = self.ts;
        let interval = self.config.interval_secs.max(1) as f64;
        let watts = Self::load_watts(&mut self.plugs[index], ts, &mut self.rng);
        let plug = &mut self.plugs[index];
        plug.work_wh += watts * interval / 3600.0;
        let (group, work_kwh) = (plug.key, plug.work_wh / 1000.0);
        let load = self.reading(watts, Metric::Load, group);
        let work = self.reading(work_kwh, Metric::Work, group);
        self.pending_work = Some(work);
        Some(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_the_announced_number_of_sorted_readings() {
        let config = SyntheticConfig {
            duration_secs: 120,
            ..Default::default()
        };
        let readings: Vec<_> = Synthetic::new(config.clone()).collect();
        assert_eq!(readings.len() as u64, config.len());
        assert!(readings.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(readings
            .iter()
            .any(|r| r.metric == Metric::Load && r.value > 0));
        let again: Vec<_> = Synthetic::new(config).collect();
        assert_eq!(readings, again);
    }
}
