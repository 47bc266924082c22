//! `mcloud bridge`: the sensor side for devices that publish their readings to an MQTT broker.
//!
//! Exactly once from an at-least-once broker: the bridge subscribes with QoS 1 in a persistent
//! session and acknowledges a message only after its readings are durably in the outbox's
//! inbox, which also remembers every reading id it took. A message the broker delivers again
//! (because the bridge crashed before its acknowledgement, or a device published twice) adds
//! nothing; one that was never acknowledged is delivered again after a restart. Rounds then
//! cut the inbox into batches (in the same transaction that empties it) and send them with
//! the sensor's transactions, and the bridge reports its progress so windows close.

use crate::config::Deployment;
use anyhow::{Context, Result};
use clap::Args;
use mcloud_client::{Outbox, Report, Sensor, SensorConfig};
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::Reading;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct BridgeArgs {
    /// The deployment file naming the catalog and the clouds (and the sensor's keys).
    #[arg(long)]
    pub deployment: PathBuf,
    /// The MQTT broker, `host:port`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Speak TLS to the broker, trusting only this CA (PEM) for its certificate, which must
    /// name the host of `--mqtt`. Without it the connection is plain MQTT: keep that to a
    /// broker on the same host or network.
    #[arg(long)]
    pub mqtt_ca: Option<PathBuf>,
    /// A client certificate chain (PEM) for a broker that asks for one (with `--mqtt-key`).
    #[arg(long, requires = "mqtt_key", requires = "mqtt_ca")]
    pub mqtt_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
    /// The topic filter to subscribe to; each message carries DEBS CSV lines
    /// (`id,timestamp,value,property,plug_id,household_id,house_id`).
    #[arg(long, default_value = "mcloud/readings/#")]
    pub topic: String,
    /// The MQTT client id: the broker keeps this session's undelivered messages while the
    /// bridge is down, so a restarted bridge must use the same one.
    #[arg(long, default_value = "mcloud-bridge")]
    pub client_id: String,
    /// The durable outbox (and inbox).
    #[arg(long, default_value = "mcloud-bridge/outbox.redb")]
    pub outbox: PathBuf,
    /// Readings per upload batch (one flag each); a batch is also cut at 1 MiB of body.
    #[arg(long, default_value_t = mcloud_client::sensor::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Upload transactions running at once.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Flag deadline in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub ttl_ms: u64,
    /// How often received readings are cut into batches and sent.
    #[arg(long, default_value_t = 500)]
    pub round_ms: u64,
    /// How far behind the newest reading the bridge's progress stays, for devices whose
    /// readings arrive out of order; a reading older than the progress reported is late.
    #[arg(long, default_value_t = 5)]
    pub lateness_secs: u64,
    /// Also share per-plug load histograms per 30 s window (needed by Q2; the clouds must use
    /// 30 s windows). Readings then wait in the inbox until the stream (less
    /// `--lateness-secs`) has passed their window, so each window's histogram leaves about
    /// once.
    #[arg(long)]
    pub histograms: bool,
    /// Exit once no message arrived for this long and everything received is settled,
    /// closing the windows it covered (for replays and tests); default: run until stopped.
    #[arg(long)]
    pub idle_exit_secs: Option<u64>,
}

/// Most messages taken into the inbox in one transaction.
const RECEIVE_GROUP: usize = 256;

/// A reading stamped further ahead of the wall clock than this is refused as malformed: the
/// clouds refuse it too (their `max_future_secs` defaults to a day), and taken as the newest
/// reading it would push the bridge's progress where no cloud follows, so no window would
/// close again.
const MAX_AHEAD_SECS: u64 = 86_400;

/// Returns false when some readings did not commit (they are listed on stderr).
pub async fn run(args: BridgeArgs) -> Result<bool> {
    let deployment = Deployment::load(&args.deployment)?;
    let uploader = deployment.uploader(Duration::from_millis(args.ttl_ms))?;
    let sensor = Arc::new(Sensor::new(
        uploader,
        Outbox::open(&args.outbox)?,
        SensorConfig {
            batch_size: args.batch_size.max(1),
            in_flight: args.in_flight.max(1),
            ..SensorConfig::default()
        },
    ));
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--mqtt {}: expected host:port", args.mqtt))?;
    let mut options = MqttOptions::new(&args.client_id, host, port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(10));
    if let Some(ca) = &args.mqtt_ca {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            broker_tls(ca, args.mqtt_cert.as_deref(), args.mqtt_key.as_deref())?,
        )));
    }
    // It subscribes once connected, unless the broker kept its session (and subscription).
    let (client, events) = AsyncClient::new(options, 1024);
    eprintln!(
        "bridge: {} on {}, client id {}",
        args.topic, args.mqtt, args.client_id
    );

    let progress = Arc::new(Progress::default());
    let receiver = tokio::spawn(receive(
        client.clone(),
        events,
        sensor.clone(),
        progress.clone(),
        args.topic.clone(),
    ));
    let mut totals = Report::default();
    let mut clean = true;
    let mut reported = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(args.round_ms)).await;
        if receiver.is_finished() {
            return receiver.await?.map(|()| false);
        }
        let outbox = sensor.outbox();
        let newest = progress.newest.load(Ordering::Relaxed);
        let idle = progress.idle();
        let ending = args
            .idle_exit_secs
            .is_some_and(|limit| idle >= Duration::from_secs(limit));
        // With histograms, only windows the stream has passed are cut (all when ending).
        let before = (args.histograms && !ending).then(|| {
            let passed = newest.saturating_sub(args.lateness_secs);
            passed - passed % HISTOGRAM_WINDOW_SECS
        });
        outbox.cut_inbox(
            sensor.uploader().sensor(),
            args.batch_size.max(1),
            args.histograms,
            sensor.uploader().is_robust(),
            before,
        )?;
        let round = sensor.resume(|_| {}).await?;
        clean &= crate::sensor::report_failures(&round);
        totals.committed_batches += round.committed_batches;
        totals.committed_readings += round.committed_readings;
        // Progress: behind the newest reading by the lateness allowed, and never past a
        // reading that is still in the inbox.
        let mut low = newest.saturating_sub(args.lateness_secs);
        if let Some(oldest) = outbox.inbox_oldest()? {
            low = low.min(oldest);
        }
        if low > reported {
            match sensor.uploader().advance_watermark(low, false).await {
                Ok(()) => {
                    reported = low;
                    // A reading older than this is late at the clouds: its id need not be
                    // remembered, and one arriving from now on is counted as late.
                    outbox.forget_seen_before(low)?;
                }
                Err(e) => tracing::warn!("reporting progress: {e}"),
            }
        }
        if ending {
            let settled = outbox.inbox_oldest()?.is_none() && outbox.pending()?.is_empty();
            if settled {
                if newest > 0 {
                    sensor.uploader().advance_watermark(newest, true).await?;
                }
                break;
            }
        }
    }
    receiver.abort();
    eprintln!(
        "bridge: {} messages, {} readings taken ({} delivered again, {} late, {} malformed lines); {} batches ({} readings) committed",
        progress.messages.load(Ordering::Relaxed),
        progress.taken.load(Ordering::Relaxed),
        progress.repeated.load(Ordering::Relaxed),
        progress.late.load(Ordering::Relaxed),
        progress.malformed.load(Ordering::Relaxed),
        totals.committed_batches,
        totals.committed_readings
    );
    Ok(clean)
}

/// The TLS client configuration for the broker: its CA, and a client certificate if given.
fn broker_tls(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca = read(ca)?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(mcloud_core::tls::service_client_config(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    )?)
}

#[derive(Default)]
struct Progress {
    newest: AtomicU64,
    late: AtomicU64,
    messages: AtomicU64,
    taken: AtomicU64,
    repeated: AtomicU64,
    malformed: AtomicU64,
    /// Milliseconds since `origin` of the last message.
    last_message_ms: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
}

impl Progress {
    fn origin(&self) -> Instant {
        *self.origin.get_or_init(Instant::now)
    }

    fn heard(&self) {
        let ms = self.origin().elapsed().as_millis() as u64;
        self.last_message_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.origin().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_message_ms.load(Ordering::Relaxed)))
    }
}

/// Drives the MQTT connection in a task of its own (a poll is never cut short, so nothing
/// it read is dropped), and takes each group of messages that arrived into the inbox, then
/// acknowledges them. Ends with an error only if the outbox refuses a write (connection errors
/// are retried: rumqttc reconnects on the next poll).
async fn receive(
    client: AsyncClient,
    mut events: EventLoop,
    sensor: Arc<Sensor>,
    progress: Arc<Progress>,
    topic: String,
) -> Result<()> {
    progress.heard();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Publish>();
    let subscriber = client.clone();
    let connection = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    eprintln!("bridge: subscribed to {topic}");
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    // A broker that lost the session (or a first start) needs the
                    // subscription again; what was published meanwhile is the broker's to keep.
                    if let Err(e) = subscriber.subscribe(&topic, QoS::AtLeastOnce).await {
                        tracing::warn!("mqtt: subscribing again: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("mqtt: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let _stop = AbortOnDrop(connection);
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < RECEIVE_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let mut readings = Vec::new();
        for p in &group {
            readings.extend(parse(p, &progress));
        }
        let received = sensor.outbox().receive(&readings)?;
        if received.late > 0 {
            tracing::warn!(
                late = received.late,
                "dropped readings older than the progress the bridge reported (late at the clouds)"
            );
        }
        progress
            .late
            .fetch_add(received.late as u64, Ordering::Relaxed);
        progress
            .repeated
            .fetch_add(received.repeated as u64, Ordering::Relaxed);
        progress
            .taken
            .fetch_add(received.new.len() as u64, Ordering::Relaxed);
        if let Some(newest) = received.new.iter().map(|r| r.ts).max() {
            progress.newest.fetch_max(newest, Ordering::Relaxed);
        }
        // Durable now: the broker may forget them.
        for p in &group {
            client.ack(p).await?;
        }
        progress.heard();
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The readings of one message; a malformed line is logged, counted and dropped (the message
/// is still acknowledged: delivering it again could not make it valid).
fn parse(p: &Publish, progress: &Progress) -> Vec<Reading> {
    progress.messages.fetch_add(1, Ordering::Relaxed);
    let Ok(text) = std::str::from_utf8(&p.payload) else {
        progress.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %p.topic, "a message that is not UTF-8 text was dropped");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match mcloud_core::csv::parse_line(i + 1, line) {
            Ok(r) if r.ts > mcloud_core::auth::now_secs().saturating_add(MAX_AHEAD_SECS) => {
                progress.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %p.topic, ts = r.ts, "dropped a reading stamped more than a day ahead");
            }
            Ok(r) => out.push(r),
            Err(e) => {
                progress.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %p.topic, "dropped a malformed reading: {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of a message is a reading or is counted as malformed: a line that does not
    /// parse, one stamped more than a day ahead, and a message that is not text.
    #[test]
    fn a_message_gives_its_readings_and_counts_the_rest() {
        let progress = Progress::default();
        let future = mcloud_core::auth::now_secs() + 2 * MAX_AHEAD_SECS;
        let payload = format!(
            "1,1377986401,19.927,1,11,0,0\n\nnot,a,reading\n2,{future},1.000,1,11,0,0\n3,1377986402,0.500,0,11,0,0\n"
        );
        let message = Publish::new("mcloud/readings/h0", QoS::AtLeastOnce, payload);
        let readings = parse(&message, &progress);
        assert_eq!(readings.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(progress.malformed.load(Ordering::Relaxed), 2);
        let binary = Publish::new("mcloud/readings/h0", QoS::AtLeastOnce, vec![0xff, 0xfe]);
        assert!(parse(&binary, &progress).is_empty());
        assert_eq!(progress.malformed.load(Ordering::Relaxed), 3);
        assert_eq!(progress.messages.load(Ordering::Relaxed), 2);
    }
}
